//! Batch norm's forward passes: training (batch statistics, running estimates updated) and
//! evaluation (running statistics), each alone or fused with the ReLU after it.

use super::sums::{affine, affine_relu, blocked_sum, per_channel, sum_f64};

/// A batch norm's input and layer: c channels of m values each (x [c, m], one contiguous row
/// per channel) and the per-channel gamma and beta.
#[derive(Clone, Copy)]
pub struct BnIn<'a> {
    pub c: usize,
    pub m: usize,
    pub x: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

impl<'a> BnIn<'a> {
    pub fn new(c: usize, m: usize, x: &'a [f32], gamma: &'a [f32], beta: &'a [f32]) -> Self {
        BnIn {
            c,
            m,
            x,
            gamma,
            beta,
        }
    }
}

/// What a training-mode forward writes: y, the batch mean and 1/sqrt(var + eps) per channel;
/// running_mean and running_var are updated in place.
pub struct TrainFwdOut<'a> {
    pub running_mean: &'a mut [f32],
    pub running_var: &'a mut [f32],
    pub y: &'a mut [f32],
    pub save_mean: &'a mut [f32],
    pub save_invstd: &'a mut [f32],
}

/// Training-mode forward: writes `o`, the running estimates as r = (1 − momentum)·r +
/// momentum·batch.
pub fn batchnorm_train_forward(i: BnIn, eps: f32, momentum: f32, o: TrainFwdOut) {
    train_forward::<false>(i, eps, momentum, o)
}

/// `batchnorm_train_forward` followed by ReLU, in the same pass over the output.
pub fn batchnorm_relu_train_forward(i: BnIn, eps: f32, momentum: f32, o: TrainFwdOut) {
    train_forward::<true>(i, eps, momentum, o)
}

/// The per-channel scale of the normalised output, as the forward computes it (the fused
/// backward recomputes the ReLU mask from x with exactly these f32 operations).
#[inline]
pub(super) fn bn_scale(gamma: f32, invstd: f64) -> f32 {
    (gamma as f64 * invstd) as f32
}

fn train_forward<const RELU: bool>(i: BnIn, eps: f32, momentum: f32, o: TrainFwdOut) {
    let (c, m, gamma, beta) = (i.c, i.m, i.gamma, i.beta);
    let TrainFwdOut {
        running_mean,
        running_var,
        y,
        save_mean,
        save_invstd,
    } = o;
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
        i.x,
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
pub fn batchnorm_eval_forward_with(
    relu: bool,
    i: BnIn,
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    y: &mut [f32],
) {
    let (c, gamma, beta) = (i.c, i.gamma, i.beta);
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
        i.m,
        i.x,
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
