//! Layout changes of activations: swapping the first two axes (NCHW ↔ CNHW, [N, K] ↔ [K, N]) and
//! the batched transpose that turns a loader batch [C, N, H·W] into the CPU engine's
//! batch-innermost [C, H·W, N] (16×16 tiles through AVX-512 registers where the CPU has them).

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
    let avx512 = super::isa::Kernels::detect() == super::isa::Kernels::Avx512;
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
