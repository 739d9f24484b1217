//! Batch normalisation over [C, M] (M = N·H·W contiguous per channel), as PyTorch's BatchNorm2d:
//! biased variance to normalise, unbiased variance into the running estimate, momentum 0.1.

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
    let _ = (c, m, x, gamma, beta, eps, momentum, running_mean, running_var, y, save_mean, save_invstd);
    todo!("ops helper")
}

/// Evaluation-mode forward with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_eval_forward(c: usize, m: usize, x: &[f32], gamma: &[f32], beta: &[f32], running_mean: &[f32], running_var: &[f32], eps: f32, y: &mut [f32]) {
    let _ = (c, m, x, gamma, beta, running_mean, running_var, eps, y);
    todo!("ops helper")
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
    let _ = (c, m, x, gamma, save_mean, save_invstd, dy, dx, dgamma, dbeta);
    todo!("ops helper")
}
