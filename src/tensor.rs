//! `Tensor`: a shape and f32 storage on a device.
//!
//! Activations of convolutional layers on the CPU are laid out **[C, H, W, N]**, the batch
//! innermost ("CHWN"): a convolution is one GEMM `W[Cout, Cin·k·k] · col[Cin·k·k, OH·OW·N]` whose
//! result is already the next activation, batch-norm statistics are over contiguous rows, and
//! every tap of a sparse convolution reads whole rows of N values (`sparse::conv`). Loader
//! batches are [C, N, H, W] (the CUDA engine's layout); the model turns them around once.
//! Feature vectors (after global pooling) are [F, N]; logits are [N, K].

use crate::device::Device;
use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
    device: Device,
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Self {
        let n = shape.iter().product();
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; n],
            device: Device::Cpu,
        }
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape: shape.to_vec(),
            data: vec![value; n],
            device: Device::Cpu,
        }
    }

    /// Wraps `data`; fails if its length does not match the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("shape {:?} needs {} values, got {}", shape, n, data.len());
        }
        Ok(Self {
            shape: shape.to_vec(),
            data,
            device: Device::Cpu,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }

    /// Same data, new shape of equal size.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.data.len() {
            bail!(
                "cannot reshape {:?} ({} values) to {:?}",
                self.shape,
                self.data.len(),
                shape
            );
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Element-wise `self += other` (shapes must match).
    pub fn add_assign(&mut self, other: &Tensor) {
        assert_eq!(self.shape, other.shape, "add_assign shape mismatch");
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += *b;
        }
    }
}

/// Swaps the first two axes of a tensor whose layout is [A, B, rest…] → [B, A, rest…]
/// (NCHW ↔ CNHW, [N, K] ↔ [K, N]).
pub fn swap01(x: &[f32], a: usize, b: usize, inner: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), a * b * inner);
    debug_assert_eq!(out.len(), a * b * inner);
    for i in 0..a {
        for j in 0..b {
            let src = (i * b + j) * inner;
            let dst = (j * a + i) * inner;
            out[dst..dst + inner].copy_from_slice(&x[src..src + inner]);
        }
    }
}

/// out[c, j, i] = x[c, i, j] for x [c, a, b]: a batch of `c` transposes, each in blocks of
/// T output rows (one 64-byte line of each input row per block), the blocks in parallel. On
/// AVX-512 the full 16×16 tiles of a block go through registers (`transpose_tile_avx512`); the
/// element-by-element loop took 0.18 ms for the CMNIST batch [3, 256, 784], the tiles 0.045.
pub fn transpose_inner(x: &[f32], c: usize, a: usize, b: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    const T: usize = 16;
    assert_eq!(x.len(), c * a * b, "transpose_inner: x length");
    assert_eq!(out.len(), c * a * b, "transpose_inner: out length");
    if x.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let avx512 = crate::sparse::csr::Kernels::detect() == crate::sparse::csr::Kernels::Avx512;
    // Output rows j0..j0 + rows (the block `ob`) from input columns j0..j0 + rows.
    let block = |xs: &[f32], j0: usize, ob: &mut [f32]| {
        let rows = ob.len() / a;
        let mut i = 0;
        #[cfg(target_arch = "x86_64")]
        if avx512 && rows == T {
            while i + T <= a {
                // SAFETY: the CPU has AVX-512F (checked above); the tile's 16 input rows of 16
                // floats at column j0 and its 16 output rows of 16 floats at i lie inside xs and
                // ob (i + 16 ≤ a, j0 + 16 ≤ b, asserted in the function).
                unsafe { transpose_tile_avx512(xs, b, j0, ob, a, i) };
                i += T;
            }
        }
        for i in i..a {
            let src = &xs[i * b + j0..][..rows];
            for (jj, &v) in src.iter().enumerate() {
                ob[jj * a + i] = v;
            }
        }
    };
    out.par_chunks_mut(a * b)
        .zip(x.par_chunks(a * b))
        .for_each(|(os, xs)| {
            os.par_chunks_mut(T * a)
                .enumerate()
                .for_each(|(jb, ob)| block(xs, jb * T, ob))
        });
}

/// ob[jj·a + i + r] = xs[(i + r)·b + j0 + jj] for r, jj < 16: one 16×16 tile through registers
/// (unpack 32-bit and 64-bit pairs, then two rounds of 128-bit lane shuffles).
///
/// # Safety
/// The CPU has AVX-512F; xs holds rows i..i + 16 of b floats with j0 + 16 ≤ b, and ob holds 16
/// rows of a floats with i + 16 ≤ a.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_tile_avx512(
    xs: &[f32],
    b: usize,
    j0: usize,
    ob: &mut [f32],
    a: usize,
    i: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(j0 + 16 <= b && i + 16 <= a);
    debug_assert!(xs.len() >= (i + 16) * b && ob.len() >= 16 * a);
    // SAFETY (caller): every load reads 16 floats of row i + r at j0, every store writes 16
    // floats of row jj at i, all inside the slices; the unaligned forms need no alignment.
    unsafe {
        let r: [__m512; 16] =
            std::array::from_fn(|k| _mm512_loadu_ps(xs.as_ptr().add((i + k) * b + j0)));
        let lo = |p: __m512, q: __m512| _mm512_unpacklo_ps(p, q);
        let hi = |p: __m512, q: __m512| _mm512_unpackhi_ps(p, q);
        let t: [__m512; 16] = std::array::from_fn(|k| {
            let (p, q) = (r[k & !1], r[k | 1]);
            if k % 2 == 0 {
                lo(p, q)
            } else {
                hi(p, q)
            }
        });
        // 64-bit pairs: u[4g + m] from t[4g + (m >> 1)] and t[4g + (m >> 1) + 2].
        let u: [__m512; 16] = std::array::from_fn(|k| {
            let (g, m) = (k / 4, k % 4);
            let p = _mm512_castps_pd(t[4 * g + m / 2]);
            let q = _mm512_castps_pd(t[4 * g + m / 2 + 2]);
            _mm512_castpd_ps(if m % 2 == 0 {
                _mm512_unpacklo_pd(p, q)
            } else {
                _mm512_unpackhi_pd(p, q)
            })
        });
        // 128-bit lanes, first round: v[8h + m] from u[8h + m % 4] and u[8h + m % 4 + 4].
        let v: [__m512; 16] = std::array::from_fn(|k| {
            let (h, m) = (k / 8, k % 8);
            let (p, q) = (u[8 * h + m % 4], u[8 * h + m % 4 + 4]);
            if m < 4 {
                _mm512_shuffle_f32x4::<0x88>(p, q)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(p, q)
            }
        });
        for k in 0..16 {
            let (p, q) = (v[k % 8], v[k % 8 + 8]);
            let o = if k < 8 {
                _mm512_shuffle_f32x4::<0x88>(p, q)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(p, q)
            };
            _mm512_storeu_ps(ob.as_mut_ptr().add(k * a + i), o);
        }
    }
}

impl Drop for Tensor {
    /// Large storage goes back to this thread's pool, so the next step's buffers of the same
    /// sizes (`overwritten`, `pooled`) are reused memory instead of zero-filled fresh pages.
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.data));
    }
}

/// A vector of `n` floats that `write` fills completely (every element written, none read
/// first); the kernels that produce whole outputs take their buffers from here.
///
/// The buffer is initialised memory: a pooled one (of a dropped `Tensor` or `Pooled`, holding
/// stale values) for large sizes when one fits, else zeroed. (Uninitialised memory would be
/// undefined behaviour behind a `&mut [f32]`.) So `write` must not read it before writing.
pub fn overwritten(n: usize, write: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut v = take_pooled(n);
    write(&mut v);
    v
}

/// At most this many buffers wait in a thread's pool for reuse (the smallest are dropped).
const POOL_MAX: usize = 64;
/// Buffers smaller than this are not pooled (the allocator serves them well).
const POOL_MIN: usize = 1 << 14;

std::thread_local! {
    /// Buffers given back on this thread (dropped `Tensor`s and `Pooled`s): initialised memory,
    /// so reusing one needs neither a zero-fill nor fresh pages.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Puts `v` in this thread's pool if it is large enough to be worth keeping.
fn give_back(v: Vec<f32>) {
    if v.capacity() < POOL_MIN {
        return;
    }
    // try_with: during thread teardown the pool may already be gone; then v is freed.
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        p.push(v);
        if p.len() > POOL_MAX {
            let i = (0..p.len())
                .min_by_key(|&i| p[i].capacity())
                .expect("non-empty");
            p.swap_remove(i);
        }
    });
}

/// `n` floats of initialised memory: the smallest pooled buffer of capacity n..=2n (resized to
/// n; its contents are stale values), else a fresh zeroed one.
fn take_pooled(n: usize) -> Vec<f32> {
    if n >= POOL_MIN {
        let reused = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                // By capacity, not length: a buffer once truncated for a smaller request keeps
                // its allocation and can serve its original size again.
                let fit = (0..p.len())
                    .filter(|&i| p[i].capacity() >= n && p[i].capacity() <= 2 * n)
                    .min_by_key(|&i| p[i].capacity());
                fit.map(|i| p.swap_remove(i))
            })
            .ok()
            .flatten();
        if let Some(mut v) = reused {
            // Growing back within the capacity zero-fills only the extension.
            v.resize(n, 0.0);
            return v;
        }
    }
    vec![0.0; n]
}

/// A float buffer that goes back to its thread's pool when dropped, for the large scratch and
/// saved buffers of a training step (im2col and its gradient) that live outside `Tensor`s.
#[derive(Default)]
pub struct Pooled(Vec<f32>);

impl std::ops::Deref for Pooled {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

/// Like `overwritten`, but the buffer returns to the pool when the `Pooled` is dropped.
pub fn pooled(n: usize, write: impl FnOnce(&mut [f32])) -> Pooled {
    Pooled(overwritten(n, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_are_reused_at_the_requested_length() {
        let n = POOL_MIN * 2;
        let a = pooled(n, |v| v.fill(1.0));
        assert_eq!(a.len(), n);
        let ptr = a.as_ptr();
        drop(a);
        // Best fit within 2x: the buffer comes back, truncated, holding what write put there.
        let b = pooled(n - 100, |v| {
            assert_eq!(v.len(), n - 100);
            v.fill(2.0)
        });
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.iter().all(|&x| x == 2.0));
        drop(b);
        // A dropped tensor's storage is reused by overwritten().
        let t = Tensor::from_vec(&[n], vec![3.0; n]).unwrap();
        let tp = t.data().as_ptr();
        drop(t);
        let c = overwritten(n, |v| v.fill(4.0));
        assert!(c.as_ptr() == tp || c.as_ptr() == ptr);
        assert_eq!(c.len(), n);
        // Much smaller or larger requests get fresh buffers of the right length.
        let d = pooled(10 * n, |v| {
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32)
        });
        assert_eq!(d.len(), 10 * n);
        assert_eq!(d[10 * n - 1], (10 * n - 1) as f32);
        let e = pooled(0, |v| assert!(v.is_empty()));
        assert!(e.is_empty());
    }
}
