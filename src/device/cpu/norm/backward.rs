//! Batch norm's backward: dx, dgamma and dbeta of either training forward, the sums taken from x
//! and dy or given by the op that computed dy, and the per-channel coefficients (`DxCoefs`) that
//! let another op compute dx rows as it needs them.

use rayon::prelude::*;

use super::forward::{bn_scale, BnIn};
use super::sums::{dot_centered_f64, masked_sums, per_channel, sum_f64, PAR_MIN};

/// What a backward reads: the forward's input and layer (`fwd`; beta is read only behind the
/// ReLU), its saved mean and 1/sqrt(var + eps) per channel, and dy [c, m].
#[derive(Clone, Copy)]
pub struct BnGradIn<'a> {
    pub fwd: BnIn<'a>,
    pub save_mean: &'a [f32],
    pub save_invstd: &'a [f32],
    pub dy: &'a [f32],
}

/// What a backward writes (overwritten): dx [c, m], dgamma and dbeta [c].
pub struct BwdOut<'a> {
    pub dx: &'a mut [f32],
    pub dgamma: &'a mut [f32],
    pub dbeta: &'a mut [f32],
}

/// Backward of the training-mode forward.
pub fn batchnorm_backward(g: BnGradIn, o: BwdOut) {
    batchnorm_backward_with(false, None, g, o)
}

/// Backward of `batchnorm_relu_train_forward` (dy is the gradient of the ReLU's output). The
/// ReLU mask is recomputed from x, gamma, beta and the saved statistics with the forward's
/// arithmetic, and the masked dy is never stored: one pass for the sums, one for dx.
pub fn batchnorm_relu_backward(g: BnGradIn, o: BwdOut) {
    batchnorm_backward_with(true, None, g, o)
}

/// The backward of either training forward: `batchnorm_relu_backward` when `relu`, else
/// `batchnorm_backward`. With `relu`, `given` may hold its two reductions as the op that
/// computed dy took them (`DirectGeom::backward_with_relu_sums`): per channel (Σ dy',
/// Σ dy'·(out − β)) over the forward's output `out`, with dy' = dy where out > 0. Then it makes
/// one pass, for dx, on each channel where these sums are accurate (see `from_relu_sums`); the
/// others take theirs from x as usual.
pub fn batchnorm_backward_with(relu: bool, given: Option<&[(f64, f64)]>, g: BnGradIn, o: BwdOut) {
    check_backward(relu, given, g, o.dgamma, o.dbeta);
    if relu {
        backward::<true>(given, g, o)
    } else {
        backward::<false>(given, g, o)
    }
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
#[inline(always)]
fn channel_coefs<const RELU: bool>(
    ci: usize,
    xc: &[f32],
    dyc: &[f32],
    given: Option<&[(f64, f64)]>,
    g: BnGradIn,
) -> (DxCoefs, f64, f64) {
    let (m, gamma, beta) = (g.fwd.m, g.fwd.gamma, g.fwd.beta);
    // With xhat = (x − mean)·invstd and y = gamma·xhat + beta:
    //   dbeta = Σ dy,  dgamma = Σ dy·xhat,
    //   dx = gamma·invstd·(dy − dbeta/m − xhat·dgamma/m),
    // which is dx = a·dy + b·(x − mean) + c0 with the per-channel constants below.
    let mean = g.save_mean[ci] as f64;
    let invstd = g.save_invstd[ci] as f64;
    // The forward's output was positive where (x − mean)·scale + beta > 0.
    let relu = RELU.then(|| (bn_scale(gamma[ci], invstd), beta[ci]));
    let from_given = given.and_then(|s| from_relu_sums(s[ci], gamma[ci], beta[ci], invstd));
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
pub fn batchnorm_backward_coefs(
    relu: bool,
    given: Option<&[(f64, f64)]>,
    g: BnGradIn,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Vec<DxCoefs> {
    check_backward(relu, given, g, dgamma, dbeta);
    let (c, m) = (g.fwd.c, g.fwd.m);
    assert_eq!(g.fwd.x.len(), c * m, "batchnorm: input length");
    let one = |ci: usize| {
        let (xc, dyc) = (&g.fwd.x[ci * m..][..m], &g.dy[ci * m..][..m]);
        crate::device::cpu::simd(
            #[inline(always)]
            || {
                if relu {
                    channel_coefs::<true>(ci, xc, dyc, given, g)
                } else {
                    channel_coefs::<false>(ci, xc, dyc, given, g)
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

/// The lengths every backward checks (beta only behind the ReLU, the sums where given).
fn check_backward(
    relu: bool,
    given: Option<&[(f64, f64)]>,
    g: BnGradIn,
    dgamma: &[f32],
    dbeta: &[f32],
) {
    let c = g.fwd.c;
    for (name, v) in [
        ("gamma", g.fwd.gamma),
        ("save_mean", g.save_mean),
        ("save_invstd", g.save_invstd),
        ("dgamma", dgamma),
        ("dbeta", dbeta),
    ] {
        assert_eq!(v.len(), c, "batchnorm: {name} length");
    }
    assert_eq!(g.dy.len(), c * g.fwd.m, "batchnorm: dy length");
    if relu {
        assert_eq!(g.fwd.beta.len(), c, "batchnorm: beta length");
    }
    if let Some(s) = given {
        assert_eq!(s.len(), c, "batchnorm: sums length");
    }
}

fn backward<const RELU: bool>(given: Option<&[(f64, f64)]>, g: BnGradIn, o: BwdOut) {
    let (c, m) = (g.fwd.c, g.fwd.m);
    // Per channel, the sums (where not given) and then dx, while the channel is in L2.
    let grads = per_channel(
        c,
        m,
        g.fwd.x,
        o.dx,
        #[inline(always)]
        |ci, xc, dxc| {
            let dyc = &g.dy[ci * m..][..m];
            let (coefs, dg, db) = channel_coefs::<RELU>(ci, xc, dyc, given, g);
            coefs.apply(dyc, xc, dxc);
            (dg, db)
        },
    );
    for (ci, &(dg, db)) in grads.iter().enumerate() {
        o.dgamma[ci] = dg as f32;
        o.dbeta[ci] = db as f32;
    }
}
