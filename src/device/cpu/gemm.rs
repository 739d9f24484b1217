//! Row-major f32 GEMM on top of the `gemm` crate (AVX-512 kernels, rayon over both cores).

use gemm::Parallelism;

/// Above this many multiply-adds (m·n·k) the GEMM is split over rayon's threads; below it the
/// threading overhead outweighs the gain.
const PAR_MIN_FLOPS: usize = 64 * 64 * 64;

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
    if k == 0 {
        // An empty sum: the product is zero.
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // Strides in elements, as (row stride, column stride) of the logical matrices.
    // op(a)[i, p]: a[i·k + p] when stored [m, k]; a[p·m + i] when stored [k, m].
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    // op(b)[p, j]: b[p·n + j] when stored [k, n]; b[j·k + p] when stored [n, k].
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let parallelism = if m.saturating_mul(n).saturating_mul(k) > PAR_MIN_FLOPS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above guarantee a holds m·k, b holds k·n and c holds m·n floats. With
    // the strides chosen above every index the kernel forms, row·rs + col·cs for row < rows and
    // col < cols of each logical matrix, is below m·k, k·n and m·n respectively (e.g. for a
    // stored [k, m]: i + p·m ≤ (m−1) + (k−1)·m < m·k), so all reads and writes stay inside
    // the slices. `c` is borrowed mutably and does not alias `a` or `b` (Rust borrow rules).
    // With read_dst = false the kernel ignores alpha and never reads c; with read_dst = true
    // it computes c = 1·c + 1·op(a)·op(b). The conj flags are meaningless for real f32.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}
