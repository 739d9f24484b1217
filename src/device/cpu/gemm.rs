//! Row-major f32 GEMM on top of the `gemm` crate (AVX-512 kernels, rayon over both cores).

use gemm::Parallelism;
use rayon::prelude::*;

/// Above this many multiply-adds (m·n·k) the GEMM is split over rayon's threads; below it the
/// threading overhead outweighs the gain.
const PAR_MIN_FLOPS: usize = 64 * 64 * 64;
/// Reductions of at least this many terms per thread, into outputs of at most
/// `SPLIT_K_MAX_OUT` floats, are split over the threads along k (see `matmul`).
const SPLIT_K_MIN: usize = 4096;
const SPLIT_K_MAX_OUT: usize = 1 << 14;

/// A strided matrix inside a slice: element (i, j) is `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    off: usize,
    rs: usize,
    cs: usize,
}

impl View<'_> {
    /// Asserts every element of a rows×cols view lies inside `data` (rows, cols > 0).
    fn check(&self, rows: usize, cols: usize, what: &str) {
        let last = self.off + (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(
            last < self.data.len(),
            "matmul: {what} needs index {last}, has {} floats",
            self.data.len()
        );
    }
}

/// c[m, n] (row-major, contiguous) = (accumulate ? c : 0) + a[m, k]·b[k, n] on strided views.
#[allow(clippy::too_many_arguments)]
fn gemm_views(
    m: usize,
    k: usize,
    n: usize,
    a: View<'_>,
    b: View<'_>,
    c: &mut [f32],
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert!(m > 0 && k > 0 && n > 0);
    a.check(m, k, "a");
    b.check(k, n, "b");
    assert!(
        c.len() >= m * n,
        "matmul: c has {} floats, needs {m}·{n}",
        c.len()
    );
    // SAFETY: `check` above proved that the largest index the kernel can form for each
    // operand, off + (rows−1)·rs + (cols−1)·cs, lies inside its slice, and all strides are
    // non-negative, so every element read is in bounds; c holds m·n floats and is written at
    // i·n + j < m·n (row stride n, column stride 1). `c` is a unique borrow, so it does not
    // alias `a` or `b`. With read_dst = false the kernel never reads c and ignores alpha; with
    // read_dst = true it computes c = 1·c + 1·a·b. The conj flags mean nothing for f32.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `c[m, n] = (accumulate ? c : 0) + op(a)[m, k] · op(b)[k, n]`, all row-major and contiguous.
/// `a_t`: `a` is stored [k, m] and used transposed; `b_t`: `b` is stored [n, k].
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k,
        "matmul: a has {} floats, needs {m}·{k}",
        a.len()
    );
    assert!(
        b.len() >= k * n,
        "matmul: b has {} floats, needs {k}·{n}",
        b.len()
    );
    assert!(
        c.len() >= m * n,
        "matmul: c has {} floats, needs {m}·{n}",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if k == 0 {
        // An empty sum: the product is zero.
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // op(a)[i, p] is a[i·k + p] when stored [m, k] and a[p·m + i] when stored [k, m];
    // op(b)[p, j] is b[p·n + j] when stored [k, n] and b[j·k + p] when stored [n, k].
    let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
    // The sub-views of columns p0.. of op(a) and rows p0.. of op(b).
    let a_at = |p0: usize| View {
        data: a,
        off: p0 * a_cs,
        rs: a_rs,
        cs: a_cs,
    };
    let b_at = |p0: usize| View {
        data: b,
        off: p0 * b_rs,
        rs: b_rs,
        cs: b_cs,
    };

    // A long reduction into a small output (the first conv layer's weight gradient:
    // 64×48 from k = n·oh·ow = 50 K) parallelises poorly inside the GEMM (it packs the
    // long operands on one thread), so split k over the threads instead: each computes a
    // serial partial product of its slice, and the partials are summed.
    let t = rayon::current_num_threads();
    if t > 1 && k >= SPLIT_K_MIN * t && m * n <= SPLIT_K_MAX_OUT {
        let chunk = k.div_ceil(t);
        let parts: Vec<Vec<f32>> = (0..k.div_ceil(chunk))
            .into_par_iter()
            .map(|i| {
                let p0 = i * chunk;
                let mut part = vec![0f32; m * n];
                let kk = chunk.min(k - p0);
                gemm_views(
                    m,
                    kk,
                    n,
                    a_at(p0),
                    b_at(p0),
                    &mut part,
                    false,
                    Parallelism::None,
                );
                part
            })
            .collect();
        for (j, cv) in c.iter_mut().enumerate() {
            let s: f32 = parts.iter().map(|p| p[j]).sum();
            *cv = if accumulate { *cv + s } else { s };
        }
        return;
    }
    let flops = m.saturating_mul(n).saturating_mul(k);
    if flops <= PAR_MIN_FLOPS {
        return gemm_views(m, k, n, a_at(0), b_at(0), c, accumulate, Parallelism::None);
    }
    gemm_views(
        m,
        k,
        n,
        a_at(0),
        b_at(0),
        c,
        accumulate,
        Parallelism::Rayon(0),
    )
}
