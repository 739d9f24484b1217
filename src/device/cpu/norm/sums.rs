//! The blocked sums and per-channel loops every form of batch norm runs: f32 lanes inside
//! blocks, f64 across them, the same bits in every vector build.

use rayon::prelude::*;

/// Below this many floats (c·m) batch normalisation stays serial.
pub(super) const PAR_MIN: usize = 1 << 15;

/// Floats summed in f32 lanes before the partial sum is moved into f64: short enough that the
/// f32 partials stay accurate, long enough that the inner loop runs in SIMD registers.
const BLOCK: usize = 1024;
const LANES: usize = 16;

/// Σ f(x_i) with f32 lane accumulators inside blocks and f64 across blocks (vectorises, and
/// accurate for the ~10⁵-element channels of a CNN batch).
#[inline(always)]
pub(super) fn blocked_sum(x: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut it = block.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                acc[l] += f(c[l]);
            }
        }
        let tail: f32 = it.remainder().iter().map(|&v| f(v)).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// Σ x_i, accumulated as `blocked_sum` does. Shared with the convolution's bias gradient.
#[inline(always)]
pub(crate) fn sum_f64(x: &[f32]) -> f64 {
    blocked_sum(x, |v| v)
}

/// Σ a_i·(b_i − shift) with the same blocking as `blocked_sum`.
#[inline(always)]
pub(super) fn dot_centered_f64(a: &[f32], b: &[f32], shift: f32) -> f64 {
    let mut total = 0f64;
    for (ba, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut acc = [0f32; LANES];
        let (mut ia, mut ib) = (ba.chunks_exact(LANES), bb.chunks_exact(LANES));
        for (ca, cb) in (&mut ia).zip(&mut ib) {
            for l in 0..LANES {
                acc[l] += ca[l] * (cb[l] - shift);
            }
        }
        let tail: f32 = ia
            .remainder()
            .iter()
            .zip(ib.remainder())
            .map(|(&u, &v)| u * (v - shift))
            .sum();
        total += acc.iter().map(|&s| s as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// (Σ dy', Σ dy'·(x − shift)) with dy' = dy where `keep(x)`, else 0, blocked as `blocked_sum`.
/// dy' is written to a block-sized buffer first: a plain map vectorises, while the select inside
/// the lane loops became a masked scalar load per element.
#[inline(always)]
pub(super) fn masked_sums(
    dy: &[f32],
    x: &[f32],
    keep: impl Fn(f32) -> bool,
    shift: f32,
) -> (f64, f64) {
    let (mut s_total, mut d_total) = (0f64, 0f64);
    let mut buf = [0f32; BLOCK];
    for (bd, bx) in dy.chunks(BLOCK).zip(x.chunks(BLOCK)) {
        let kept = &mut buf[..bd.len()];
        for ((o, &g), &v) in kept.iter_mut().zip(bd).zip(bx) {
            *o = if keep(v) { g } else { 0.0 };
        }
        s_total += sum_f64(kept);
        d_total += dot_centered_f64(kept, bx, shift);
    }
    (s_total, d_total)
}

/// Runs `f(channel, x_c, y_c)` for each channel, over rayon when the tensor is large, and
/// collects what each call returns.
pub(super) fn per_channel<T: Send>(
    c: usize,
    m: usize,
    x: &[f32],
    y: &mut [f32],
    f: impl Fn(usize, &[f32], &mut [f32]) -> T + Sync,
) -> Vec<T> {
    assert_eq!(x.len(), c * m, "batchnorm: input length");
    assert_eq!(y.len(), c * m, "batchnorm: output length");
    if m == 0 {
        return (0..c).map(|ci| f(ci, &[], &mut [])).collect();
    }
    let f = |ci, xc: &[f32], yc: &mut [f32]| {
        crate::device::cpu::simd(
            #[inline(always)]
            || f(ci, xc, yc),
        )
    };
    if c * m >= PAR_MIN {
        x.par_chunks(m)
            .zip(y.par_chunks_mut(m))
            .enumerate()
            .map(|(ci, (xc, yc))| f(ci, xc, yc))
            .collect()
    } else {
        x.chunks(m)
            .zip(y.chunks_mut(m))
            .enumerate()
            .map(|(ci, (xc, yc))| f(ci, xc, yc))
            .collect()
    }
}

/// y = (x − center)·scale + shift (centring first keeps precision when |mean| ≫ std).
#[inline(always)]
pub(super) fn affine(x: &[f32], y: &mut [f32], center: f32, scale: f32, shift: f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v - center) * scale + shift;
    }
}

/// y = max((x − center)·scale + shift, 0): `affine` and ReLU in one pass.
#[inline(always)]
pub(super) fn affine_relu(x: &[f32], y: &mut [f32], center: f32, scale: f32, shift: f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = ((v - center) * scale + shift).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loops give the same bits built for AVX-512 / AVX2 (`simd`) as for the baseline target:
    /// no fused multiply-adds, the same lane order.
    #[test]
    fn vector_builds_give_the_same_bits() {
        let mut r = crate::rng::Rng::new(3);
        let n = 3 * BLOCK + 37;
        let x: Vec<f32> = (0..n).map(|_| r.normal() * 2.0 + 0.5).collect();
        let dy: Vec<f32> = (0..n).map(|_| r.normal()).collect();
        let keep = |v: f32| (v - 0.25) * 1.5 + 0.1 > 0.0;
        let sums = || {
            let mut y = vec![0f32; n];
            affine_relu(&x, &mut y, 0.25, 1.5, 0.1);
            (
                sum_f64(&x),
                dot_centered_f64(&dy, &x, 0.25),
                masked_sums(&dy, &x, keep, 0.25),
                y,
            )
        };
        let plain = sums();
        let vector = crate::device::cpu::simd(sums);
        assert_eq!(plain, vector);
        // The masked sums equal the plain definition.
        let (s, d) = plain.2;
        let (mut s0, mut d0) = (0f64, 0f64);
        for (&g, &v) in dy.iter().zip(&x) {
            if keep(v) {
                s0 += g as f64;
                d0 += g as f64 * (v - 0.25) as f64;
            }
        }
        assert!(
            (s - s0).abs() < 1e-3 && (d - d0).abs() < 1e-3,
            "{s} {s0} {d} {d0}"
        );
    }
}
