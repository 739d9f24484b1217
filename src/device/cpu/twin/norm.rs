//! CPU twins of kernels/norm.cu: the functions of `device::cpu::norm`.

use crate::device::cpu::norm;
pub use crate::device::gpu::kernels::norm::NormParams;

/// Outputs of a training-mode forward (running statistics are updated in place).
pub struct TrainFwdOut<'a> {
    pub running_mean: &'a mut [f32],
    pub running_var: &'a mut [f32],
    pub y: &'a mut [f32],
    pub save_mean: &'a mut [f32],
    pub save_invstd: &'a mut [f32],
}

/// Outputs of a backward.
pub struct BwdOut<'a> {
    pub dx: &'a mut [f32],
    pub dgamma: &'a mut [f32],
    pub dbeta: &'a mut [f32],
}

fn dims(p: &NormParams) -> (usize, usize) {
    (p.c as usize, p.m as usize)
}

pub fn norm_fwd_train_f32(p: &NormParams, x: &[f32], gamma: &[f32], beta: &[f32], o: TrainFwdOut) {
    train(false, p, x, gamma, beta, o)
}

pub fn norm_fwd_train_relu_f32(
    p: &NormParams,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    o: TrainFwdOut,
) {
    train(true, p, x, gamma, beta, o)
}

/// Either training forward: `relu` picks the fused one.
fn train(relu: bool, p: &NormParams, x: &[f32], gamma: &[f32], beta: &[f32], o: TrainFwdOut) {
    let (c, m) = dims(p);
    let forward = if relu {
        norm::batchnorm_relu_train_forward
    } else {
        norm::batchnorm_train_forward
    };
    forward(
        c,
        m,
        x,
        gamma,
        beta,
        p.eps,
        p.momentum,
        o.running_mean,
        o.running_var,
        o.y,
        o.save_mean,
        o.save_invstd,
    )
}

#[allow(clippy::too_many_arguments)]
pub fn norm_fwd_eval_f32(
    p: &NormParams,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
) {
    let (c, m) = dims(p);
    norm::batchnorm_eval_forward_with(
        false,
        c,
        m,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        p.eps,
        y,
    )
}

#[allow(clippy::too_many_arguments)]
pub fn norm_bwd_f32(
    p: &NormParams,
    x: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    o: BwdOut,
) {
    bwd(false, p, [x, gamma, &[], save_mean, save_invstd, dy], o)
}

#[allow(clippy::too_many_arguments)]
pub fn norm_bwd_relu_f32(
    p: &NormParams,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dy: &[f32],
    o: BwdOut,
) {
    bwd(true, p, [x, gamma, beta, save_mean, save_invstd, dy], o)
}

/// Either backward (`relu` picks the fused one's), its inputs x, gamma, beta (unused without
/// `relu`), save_mean, save_invstd and dy.
fn bwd(relu: bool, p: &NormParams, [x, gamma, beta, mean, invstd, dy]: [&[f32]; 6], o: BwdOut) {
    let (c, m) = dims(p);
    norm::batchnorm_backward_with(
        relu, None, c, m, x, gamma, beta, mean, invstd, dy, o.dx, o.dgamma, o.dbeta,
    )
}
