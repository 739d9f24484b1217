//! Batch normalisation over [C, M] (M = N·H·W contiguous per channel), as PyTorch's BatchNorm2d:
//! biased variance to normalise, unbiased variance into the running estimate, momentum 0.1.
//!
//! About 650 lines of code and 140 of tests: batch norm's training, evaluation and backward forms,
//! alone and fused with ReLU and with the sparse convolutions' sums, share their blocked sums and
//! coefficient code.

use rayon::prelude::*;

/// Below this many floats (c·m) batch normalisation stays serial.
const PAR_MIN: usize = 1 << 15;

/// Floats summed in f32 lanes before the partial sum is moved into f64: short enough that the
/// f32 partials stay accurate, long enough that the inner loop runs in SIMD registers.
const BLOCK: usize = 1024;
const LANES: usize = 16;

/// Σ f(x_i) with f32 lane accumulators inside blocks and f64 across blocks (vectorises, and
/// accurate for the ~10⁵-element channels of a CNN batch).
#[inline(always)]
fn blocked_sum(x: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f64 {
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
fn dot_centered_f64(a: &[f32], b: &[f32], shift: f32) -> f64 {
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
fn masked_sums(dy: &[f32], x: &[f32], keep: impl Fn(f32) -> bool, shift: f32) -> (f64, f64) {
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
fn per_channel<T: Send>(
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
        super::simd(
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
fn affine(x: &[f32], y: &mut [f32], center: f32, scale: f32, shift: f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v - center) * scale + shift;
    }
}

/// y = max((x − center)·scale + shift, 0): `affine` and ReLU in one pass.
#[inline(always)]
fn affine_relu(x: &[f32], y: &mut [f32], center: f32, scale: f32, shift: f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = ((v - center) * scale + shift).max(0.0);
    }
}

/// Training-mode forward. Writes y, the batch mean and 1/sqrt(var + eps) per channel, and
/// updates running_mean / running_var in place: r = (1 − momentum)·r + momentum·batch.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_train_forward(
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) {
    train_forward::<false>(
        c,
        m,
        x,
        gamma,
        beta,
        eps,
        momentum,
        running_mean,
        running_var,
        y,
        save_mean,
        save_invstd,
    )
}

/// `batchnorm_train_forward` followed by ReLU, in the same pass over the output.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_train_forward(
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) {
    train_forward::<true>(
        c,
        m,
        x,
        gamma,
        beta,
        eps,
        momentum,
        running_mean,
        running_var,
        y,
        save_mean,
        save_invstd,
    )
}

/// The per-channel scale of the normalised output, as the forward computes it (the fused
/// backward recomputes the ReLU mask from x with exactly these f32 operations).
#[inline]
fn bn_scale(gamma: f32, invstd: f64) -> f32 {
    (gamma as f64 * invstd) as f32
}

#[allow(clippy::too_many_arguments)]
fn train_forward<const RELU: bool>(
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
) {
    assert!(m > 0, "batchnorm: no values per channel");
    for (name, v) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", &*running_mean),
        ("running_var", &*running_var),
        ("save_mean", &*save_mean),
        ("save_invstd", &*save_invstd),
    ] {
        assert_eq!(v.len(), c, "batchnorm: {name} length");
    }
    // Two passes per channel (mean, then Σ(x − mean)²) for a stable variance.
    let stats = per_channel(
        c,
        m,
        x,
        y,
        #[inline(always)]
        |ci, xc, yc| {
            let mean = sum_f64(xc) / m as f64;
            let mean32 = mean as f32;
            let var = blocked_sum(xc, |v| (v - mean32) * (v - mean32)) / m as f64;
            let invstd = 1.0 / (var + eps as f64).sqrt();
            // The fused backward knows invstd only as the saved f32: build the scale from that
            // value so its recomputed ReLU mask matches this output bit for bit.
            let scale = bn_scale(gamma[ci], if RELU { invstd as f32 as f64 } else { invstd });
            if RELU {
                affine_relu(xc, yc, mean32, scale, beta[ci]);
            } else {
                affine(xc, yc, mean32, scale, beta[ci]);
            }
            (mean, var, invstd)
        },
    );
    // PyTorch puts the unbiased variance into the running estimate (m = 1 has none: keep var).
    let unbias = if m > 1 {
        m as f64 / (m - 1) as f64
    } else {
        1.0
    };
    let mo = momentum as f64;
    for (ci, &(mean, var, invstd)) in stats.iter().enumerate() {
        save_mean[ci] = mean as f32;
        save_invstd[ci] = invstd as f32;
        running_mean[ci] = ((1.0 - mo) * running_mean[ci] as f64 + mo * mean) as f32;
        running_var[ci] = ((1.0 - mo) * running_var[ci] as f64 + mo * var * unbias) as f32;
    }
}

/// Evaluation-mode forward with the running statistics, followed by ReLU in the same pass when
/// `relu` (the same bits as the two ops).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_eval_forward_with(
    relu: bool,
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    y: &mut [f32],
) {
    for (name, v) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        assert_eq!(v.len(), c, "batchnorm: {name} length");
    }
    per_channel(
        c,
        m,
        x,
        y,
        #[inline(always)]
        |ci, xc, yc| {
            let scale = gamma[ci] as f64 / (running_var[ci] as f64 + eps as f64).sqrt();
            // One branch per channel; each arm is its own vector loop.
            if relu {
                affine_relu(xc, yc, running_mean[ci], scale as f32, beta[ci]);
            } else {
                affine(xc, yc, running_mean[ci], scale as f32, beta[ci]);
            }
        },
    );
}

/// Backward of the training-mode forward. Overwrites dx, dgamma, dbeta.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    backward::<false>(
        None,
        c,
        m,
        x,
        gamma,
        &[],
        save_mean,
        save_invstd,
        dy,
        dx,
        dgamma,
        dbeta,
    )
}

/// Backward of `batchnorm_relu_train_forward` (dy is the gradient of the ReLU's output). The
/// ReLU mask is recomputed from x, gamma, beta and the saved statistics with the forward's
/// arithmetic, and the masked dy is never stored: one pass for the sums, one for dx.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_backward(
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    assert_eq!(beta.len(), c, "batchnorm: beta length");
    backward::<true>(
        None,
        c,
        m,
        x,
        gamma,
        beta,
        save_mean,
        save_invstd,
        dy,
        dx,
        dgamma,
        dbeta,
    )
}

/// The backward of either training forward: `batchnorm_relu_backward` when `relu`, else
/// `batchnorm_backward`. With `relu`, `given` may hold its two reductions as the op that
/// computed dy took them (`DirectGeom::backward_with_relu_sums`): per channel (Σ dy',
/// Σ dy'·(out − β)) over the forward's output `out`, with dy' = dy where out > 0. Then it makes
/// one pass, for dx, on each channel where these sums are accurate (see `from_relu_sums`); the
/// others take theirs from x as usual.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_with(
    relu: bool,
    given: Option<&[(f64, f64)]>,
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    if relu {
        assert_eq!(beta.len(), c, "batchnorm: beta length");
    }
    if let Some(g) = given {
        assert_eq!(g.len(), c, "batchnorm: sums length");
    }
    let run = if relu {
        backward::<true>
    } else {
        backward::<false>
    };
    run(
        given,
        c,
        m,
        x,
        gamma,
        beta,
        save_mean,
        save_invstd,
        dy,
        dx,
        dgamma,
        dbeta,
    )
}

/// (Σ dy', Σ dy'·(x − mean)) from (Σ dy', Σ dy'·(out − β)): where out > 0, out − β is
/// (x − mean)·scale up to the rounding of the forward's f32 arithmetic, an error of about
/// 2⁻²⁴·(2 + |β/γ|) relative to each term. So these sums are used while |β| ≤ 16·|γ| (about the
/// error of the f32 sums themselves) and γ ≠ 0; None otherwise.
fn from_relu_sums((s1, s2): (f64, f64), gamma: f32, beta: f32, invstd: f64) -> Option<(f64, f64)> {
    let scale = bn_scale(gamma, invstd) as f64;
    let accurate = gamma != 0.0 && scale.is_normal() && beta.abs() <= 16.0 * gamma.abs();
    accurate.then(|| (s1, s2 / scale))
}

/// One channel of batch norm's backward as a map: dx = a·dy' + b·(x − mean) + c0, with dy' = dy
/// where the forward's ReLU kept the value ((x − mean)·scale + shift > 0; every value without
/// the ReLU). `batchnorm_backward_coefs` gives them, so that another op can compute dx rows as
/// it needs them (`DirectGeom::weight_grad_through_bn`) instead of reading a stored dx.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DxCoefs {
    pub a: f32,
    pub b: f32,
    pub c0: f32,
    pub mean: f32,
    /// The forward's ReLU mask: (scale, shift).
    pub relu: Option<(f32, f32)>,
}

impl DxCoefs {
    /// dx = a·dy' + b·(x − mean) + c0 over one row (the same arithmetic wherever it runs).
    #[inline(always)]
    pub fn apply(&self, dy: &[f32], x: &[f32], dx: &mut [f32]) {
        let (a, b, c0, mean) = (self.a, self.b, self.c0, self.mean);
        match self.relu {
            Some((scale, shift)) => {
                for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
                    let g = if (v - mean) * scale + shift > 0.0 {
                        g
                    } else {
                        0.0
                    };
                    *o = a * g + b * (v - mean) + c0;
                }
            }
            None => {
                for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
                    *o = a * g + b * (v - mean) + c0;
                }
            }
        }
    }
}

/// One channel's coefficients and (dgamma, dbeta), its sums from `given` where accurate, else
/// from its x and dy (one read).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn channel_coefs<const RELU: bool>(
    ci: usize,
    m: usize,
    xc: &[f32],
    dyc: &[f32],
    given: Option<&[(f64, f64)]>,
    gamma: &[f32],
    beta: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
) -> (DxCoefs, f64, f64) {
    // With xhat = (x − mean)·invstd and y = gamma·xhat + beta:
    //   dbeta = Σ dy,  dgamma = Σ dy·xhat,
    //   dx = gamma·invstd·(dy − dbeta/m − xhat·dgamma/m),
    // which is dx = a·dy + b·(x − mean) + c0 with the per-channel constants below.
    let mean = save_mean[ci] as f64;
    let invstd = save_invstd[ci] as f64;
    // The forward's output was positive where (x − mean)·scale + beta > 0.
    let relu = RELU.then(|| (bn_scale(gamma[ci], invstd), beta[ci]));
    let from_given = given.and_then(|g| from_relu_sums(g[ci], gamma[ci], beta[ci], invstd));
    let (sum_dy, dot) = match (from_given, relu) {
        (Some(sums), _) => sums,
        (None, Some((scale, shift))) => {
            let mean32 = mean as f32;
            masked_sums(dyc, xc, |v| (v - mean32) * scale + shift > 0.0, mean32)
        }
        (None, None) => (sum_f64(dyc), dot_centered_f64(dyc, xc, mean as f32)),
    };
    let dg = dot * invstd;
    let a = gamma[ci] as f64 * invstd;
    let b = -a * invstd * dg / m as f64;
    let c0 = -a * sum_dy / m as f64;
    let coefs = DxCoefs {
        a: a as f32,
        b: b as f32,
        c0: c0 as f32,
        mean: mean as f32,
        relu,
    };
    (coefs, dg, sum_dy)
}

/// The coefficients of batch norm's backward per channel (`DxCoefs`), and dgamma and dbeta,
/// without computing dx: `relu` for `batchnorm_relu_backward` (beta then used), `given` as
/// `batchnorm_backward_with` takes it. One read of x and dy for the channels whose sums
/// are not given.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_coefs(
    relu: bool,
    given: Option<&[(f64, f64)]>,
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Vec<DxCoefs> {
    check_backward(c, m, gamma, save_mean, save_invstd, dy, dgamma, dbeta);
    assert_eq!(x.len(), c * m, "batchnorm: input length");
    if relu {
        assert_eq!(beta.len(), c, "batchnorm: beta length");
    }
    if let Some(g) = given {
        assert_eq!(g.len(), c, "batchnorm: sums length");
    }
    let one = |ci: usize| {
        let (xc, dyc) = (&x[ci * m..][..m], &dy[ci * m..][..m]);
        super::simd(
            #[inline(always)]
            || {
                if relu {
                    channel_coefs::<true>(
                        ci,
                        m,
                        xc,
                        dyc,
                        given,
                        gamma,
                        beta,
                        save_mean,
                        save_invstd,
                    )
                } else {
                    channel_coefs::<false>(
                        ci,
                        m,
                        xc,
                        dyc,
                        given,
                        gamma,
                        beta,
                        save_mean,
                        save_invstd,
                    )
                }
            },
        )
    };
    let all: Vec<(DxCoefs, f64, f64)> = if c * m >= PAR_MIN {
        (0..c).into_par_iter().map(one).collect()
    } else {
        (0..c).map(one).collect()
    };
    all.into_iter()
        .enumerate()
        .map(|(ci, (coefs, dg, db))| {
            dgamma[ci] = dg as f32;
            dbeta[ci] = db as f32;
            coefs
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn check_backward(
    c: usize,
    m: usize,
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dgamma: &[f32],
    dbeta: &[f32],
) {
    for (name, v) in [
        ("gamma", gamma),
        ("save_mean", save_mean),
        ("save_invstd", save_invstd),
        ("dgamma", dgamma),
        ("dbeta", dbeta),
    ] {
        assert_eq!(v.len(), c, "batchnorm: {name} length");
    }
    assert_eq!(dy.len(), c * m, "batchnorm: dy length");
}

#[allow(clippy::too_many_arguments)]
fn backward<const RELU: bool>(
    given: Option<&[(f64, f64)]>,
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    check_backward(c, m, gamma, save_mean, save_invstd, dy, dgamma, dbeta);
    // Per channel, the sums (where not given) and then dx, while the channel is in L2.
    let grads = per_channel(
        c,
        m,
        x,
        dx,
        #[inline(always)]
        |ci, xc, dxc| {
            let dyc = &dy[ci * m..][..m];
            let (coefs, dg, db) =
                channel_coefs::<RELU>(ci, m, xc, dyc, given, gamma, beta, save_mean, save_invstd);
            coefs.apply(dyc, xc, dxc);
            (dg, db)
        },
    );
    for (ci, &(dg, db)) in grads.iter().enumerate() {
        dgamma[ci] = dg as f32;
        dbeta[ci] = db as f32;
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
    /// The fused evaluation forward gives the bits of batch norm, then ReLU.
    #[test]
    fn fused_eval_forward_is_batchnorm_then_relu() {
        let (c, m) = (3, 2000);
        let mut r = crate::rng::Rng::new(4);
        let x: Vec<f32> = (0..c * m).map(|_| r.normal()).collect();
        let (g, b, rm, rv) = (
            [1.2, -0.4, 0.9],
            [0.1, 0.3, -0.2],
            [0.05, -0.1, 0.2],
            [0.8, 1.5, 0.3],
        );
        let (mut y, mut yr) = (vec![0.0; c * m], vec![0.0; c * m]);
        batchnorm_eval_forward_with(false, c, m, &x, &g, &b, &rm, &rv, 1e-5, &mut y);
        batchnorm_eval_forward_with(true, c, m, &x, &g, &b, &rm, &rv, 1e-5, &mut yr);
        let want: Vec<f32> = y.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(yr, want);
        assert!(yr.contains(&0.0) && yr.iter().any(|&v| v > 0.0));
    }

    /// The backward from sums over the output (`batchnorm_backward_with`) matches the one
    /// that takes them from x; channels where those sums are not accurate enough (|β| > 16|γ|,
    /// γ = 0) take theirs from x, bit for bit as the plain backward.
    #[test]
    fn backward_from_output_sums_matches() {
        let (c, m) = (5, 3000);
        let mut r = crate::rng::Rng::new(9);
        let x: Vec<f32> = (0..c * m).map(|_| r.normal() * 3.0 + 1.0).collect();
        let dy: Vec<f32> = (0..c * m).map(|_| r.normal()).collect();
        // The last two channels: |β| > 16|γ|, and γ = 0.
        let gamma = [1.3, -0.7, 0.2, 0.1, 0.0];
        let beta = [0.4, 0.3, -1.5, 2.0, 0.5];
        let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
        let (mut out, mut mean, mut invstd) = (vec![0.0; c * m], vec![0.0; c], vec![0.0; c]);
        batchnorm_relu_train_forward(
            c,
            m,
            &x,
            &gamma,
            &beta,
            1e-5,
            0.1,
            &mut rm,
            &mut rv,
            &mut out,
            &mut mean,
            &mut invstd,
        );
        let sums: Vec<(f64, f64)> = (0..c)
            .map(|ci| {
                let (mut s1, mut s2) = (0f64, 0f64);
                for i in ci * m..(ci + 1) * m {
                    if out[i] > 0.0 {
                        s1 += dy[i] as f64;
                        s2 += dy[i] as f64 * (out[i] - beta[ci]) as f64;
                    }
                }
                (s1, s2)
            })
            .collect();
        let run = |given: Option<&[(f64, f64)]>| {
            let (mut dx, mut dg, mut db) = (vec![0.0; c * m], vec![0.0; c], vec![0.0; c]);
            match given {
                Some(s) => batchnorm_backward_with(
                    true,
                    Some(s),
                    c,
                    m,
                    &x,
                    &gamma,
                    &beta,
                    &mean,
                    &invstd,
                    &dy,
                    &mut dx,
                    &mut dg,
                    &mut db,
                ),
                None => batchnorm_relu_backward(
                    c, m, &x, &gamma, &beta, &mean, &invstd, &dy, &mut dx, &mut dg, &mut db,
                ),
            }
            (dx, dg, db)
        };
        let (want_dx, want_dg, want_db) = run(None);
        let (dx, dg, db) = run(Some(&sums));
        for ci in 0..c {
            let range = ci * m..(ci + 1) * m;
            if ci >= 3 {
                assert_eq!(dx[range.clone()], want_dx[range], "channel {ci}: from x");
                assert_eq!((dg[ci], db[ci]), (want_dg[ci], want_db[ci]));
                continue;
            }
            assert!((dg[ci] - want_dg[ci]).abs() <= 1e-4 * want_dg[ci].abs().max(1.0));
            assert!((db[ci] - want_db[ci]).abs() <= 1e-4 * want_db[ci].abs().max(1.0));
            let big = want_dx[range.clone()]
                .iter()
                .fold(0f32, |a, v| a.max(v.abs()));
            for i in range {
                assert!((dx[i] - want_dx[i]).abs() <= 1e-4 * big, "dx[{i}]");
            }
        }
    }
}
