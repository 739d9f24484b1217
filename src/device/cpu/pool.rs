//! Max-pooling over planes and global average pooling.

use rayon::prelude::*;

/// Below this many floats (input side) pooling stays serial.
const PAR_MIN: usize = 1 << 15;

/// Marks a max-pool output whose window holds only padding: it has no input and no gradient.
const NO_INPUT: u32 = u32::MAX;

/// Output side of a pooling window: (size + 2·pad − k) / stride + 1.
pub fn pool_out(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - k) / stride + 1
}

/// y[c, n] = mean over the hw pixels of x[c, n, :].
pub fn global_avgpool_forward(c: usize, n: usize, hw: usize, x: &[f32], y: &mut [f32]) {
    let Some(inv) = avgpool_forward_scale(c, n, hw, x, y) else {
        return;
    };
    if x.len() >= PAR_MIN {
        y.par_iter_mut()
            .zip(x.par_chunks(hw))
            .for_each(|(o, p)| *o = (p.iter().map(|&v| v as f64).sum::<f64>() * inv) as f32);
    } else {
        y.iter_mut()
            .zip(x.chunks(hw))
            .for_each(|(o, p)| *o = (p.iter().map(|&v| v as f64).sum::<f64>() * inv) as f32);
    }
}

/// Checks either global average-pool forward's lengths (x holds c·n·hw floats, y c·n) and gives
/// 1/hw; None, with y all NaN, when there are no pixels.
fn avgpool_forward_scale(c: usize, n: usize, hw: usize, x: &[f32], y: &mut [f32]) -> Option<f64> {
    assert_eq!(x.len(), c * n * hw, "global_avgpool_forward: x length");
    assert_eq!(y.len(), c * n, "global_avgpool_forward: y length");
    if hw == 0 {
        y.fill(f32::NAN);
        return None;
    }
    Some(1.0 / hw as f64)
}

/// dx[c, n, p] = dy[c, n] / hw.
pub fn global_avgpool_backward(c: usize, n: usize, hw: usize, dy: &[f32], dx: &mut [f32]) {
    assert_eq!(dy.len(), c * n, "global_avgpool_backward: dy length");
    assert_eq!(dx.len(), c * n * hw, "global_avgpool_backward: dx length");
    if hw == 0 {
        return;
    }
    let inv = 1.0 / hw as f32;
    let parallel = dx.len() >= PAR_MIN;
    super::for_each_chunk(dx, hw, parallel, |i, p| p.fill(dy[i] * inv));
}

/// Max-pool of x [c, h, w, n] (batch innermost; padding counts as −∞): y [c, oh, ow, n], and for
/// each output the in-plane pixel index ih·w + iw of its maximum (first maximum wins), for
/// backward. With n = 1 this pools the [c, h, w] planes of any layout.
#[allow(clippy::too_many_arguments)]
pub fn maxpool_forward_chwn(
    c: usize,
    h: usize,
    w: usize,
    n: usize,
    k: usize,
    stride: usize,
    pad: usize,
    x: &[f32],
    y: &mut [f32],
    argmax: &mut [u32],
) {
    assert!(
        k > 0 && stride > 0 && h + 2 * pad >= k && w + 2 * pad >= k,
        "maxpool: kernel {k}/{stride} does not fit the padded {h}x{w} plane"
    );
    let (oh, ow) = (pool_out(h, k, stride, pad), pool_out(w, k, stride, pad));
    assert_eq!(x.len(), c * h * w * n, "maxpool_forward: x length");
    assert_eq!(y.len(), c * oh * ow * n, "maxpool_forward: y length");
    assert_eq!(argmax.len(), y.len(), "maxpool_forward: argmax length");
    assert!(
        h * w < NO_INPUT as usize,
        "maxpool: plane too large for u32 indices"
    );
    if y.is_empty() {
        return;
    }
    let clip = |o: usize, size: usize| {
        let s0 = (o * stride) as isize - pad as isize;
        (
            s0.max(0) as usize,
            ((s0 + k as isize).min(size as isize)).max(0) as usize,
        )
    };
    // Per output pixel, its first tap's row initialises the maxima, then each further tap
    // updates them lane by lane with selects, no branch: with a branch per element the loop
    // stayed scalar and mispredicted on every new maximum (ResNet-18's stem pool, [64, 16, 16,
    // 64]: 2.8 ms on a 2-vCPU Xeon).
    let channel = |xc: &[f32], yc: &mut [f32], ac: &mut [u32]| {
        super::simd(
            #[inline(always)]
            || {
                for (p, (yv, av)) in yc
                    .chunks_exact_mut(n)
                    .zip(ac.chunks_exact_mut(n))
                    .enumerate()
                {
                    let ((r0, r1), (c0, c1)) = (clip(p / ow, h), clip(p % ow, w));
                    let mut taps = (r0..r1).flat_map(|ih| (c0..c1).map(move |iw| ih * w + iw));
                    let Some(first) = taps.next() else {
                        yv.fill(f32::NEG_INFINITY);
                        av.fill(NO_INPUT);
                        continue;
                    };
                    yv.copy_from_slice(&xc[first * n..][..n]);
                    av.fill(first as u32);
                    for pix in taps {
                        let tap = pix as u32;
                        for ((o, a), &v) in
                            yv.iter_mut().zip(av.iter_mut()).zip(&xc[pix * n..][..n])
                        {
                            // The first maximum wins; a NaN wins over any number and the first
                            // NaN is kept (as in PyTorch).
                            let take = v > *o || (v.is_nan() && !o.is_nan());
                            *o = if take { v } else { *o };
                            *a = if take { tap } else { *a };
                        }
                    }
                }
            },
        )
    };
    let (pin, pout) = (h * w * n, oh * ow * n);
    let run =
        |(ci, (yc, ac)): (usize, (&mut [f32], &mut [u32]))| channel(&x[ci * pin..][..pin], yc, ac);
    if x.len() >= PAR_MIN {
        let outs = y.par_chunks_mut(pout).zip(argmax.par_chunks_mut(pout));
        outs.enumerate().for_each(run);
    } else {
        let outs = y.chunks_mut(pout).zip(argmax.chunks_mut(pout));
        outs.enumerate().for_each(run);
    }
}

/// dx [c, h, w, n] (overwritten) from dy [c, oh, ow, n] through `maxpool_forward_chwn`'s argmax
/// (n = 1: [planes, h, w] from [planes, oh, ow]).
pub fn maxpool_backward_chwn(n: usize, hw: usize, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    assert_eq!(argmax.len(), dy.len(), "maxpool_backward: argmax length");
    let c = dx.len().checked_div(hw * n).unwrap_or(0);
    assert_eq!(dx.len(), c * hw * n, "maxpool_backward: dx length");
    if c == 0 {
        return;
    }
    let pout = dy.len() / c;
    let channel = |dyc: &[f32], ac: &[u32], dxc: &mut [f32]| {
        dxc.fill(0.0);
        for (gv, av) in dyc.chunks_exact(n).zip(ac.chunks_exact(n)) {
            for (j, (&g, &a)) in gv.iter().zip(av).enumerate() {
                if a != NO_INPUT {
                    dxc[a as usize * n + j] += g;
                }
            }
        }
    };
    let parallel = dx.len() >= PAR_MIN;
    super::for_each_chunk(dx, hw * n, parallel, |ci, dxc| {
        channel(&dy[ci * pout..][..pout], &argmax[ci * pout..][..pout], dxc)
    });
}

/// y[c, n] = mean over the hw pixels of x [c, hw, n] (batch innermost).
pub fn global_avgpool_forward_chwn(c: usize, n: usize, hw: usize, x: &[f32], y: &mut [f32]) {
    let Some(inv) = avgpool_forward_scale(c, n, hw, x, y) else {
        return;
    };
    let channel = |xc: &[f32], yc: &mut [f32]| {
        super::simd(
            #[inline(always)]
            || {
                let mut acc = vec![0f64; n];
                for px in xc.chunks_exact(n) {
                    for (a, &v) in acc.iter_mut().zip(px) {
                        *a += v as f64;
                    }
                }
                for (o, a) in yc.iter_mut().zip(acc) {
                    *o = (a * inv) as f32;
                }
            },
        )
    };
    if x.len() >= PAR_MIN {
        x.par_chunks(hw * n)
            .zip(y.par_chunks_mut(n))
            .for_each(|(xc, yc)| channel(xc, yc));
    } else {
        x.chunks(hw * n)
            .zip(y.chunks_mut(n))
            .for_each(|(xc, yc)| channel(xc, yc));
    }
}

/// dx[c, p, n] = dy[c, n] / hw (batch innermost).
pub fn global_avgpool_backward_chwn(c: usize, n: usize, hw: usize, dy: &[f32], dx: &mut [f32]) {
    assert_eq!(dy.len(), c * n, "global_avgpool_backward: dy length");
    assert_eq!(dx.len(), c * hw * n, "global_avgpool_backward: dx length");
    if hw == 0 || n == 0 {
        return;
    }
    let inv = 1.0 / hw as f32;
    let parallel = dx.len() >= PAR_MIN;
    super::for_each_chunk(dx, hw * n, parallel, |ci, dxc| {
        let dyc = &dy[ci * n..][..n];
        for px in dxc.chunks_exact_mut(n) {
            for (d, &g) in px.iter_mut().zip(dyc) {
                *d = g * inv;
            }
        }
    });
}
