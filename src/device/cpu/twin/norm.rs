//! CPU twins of kernels/norm.cu: the functions of `device::cpu::norm`.

use crate::device::cpu::norm::{self, BnGradIn, BnIn};
/// Outputs of a training-mode forward (running statistics updated in place), and of a backward.
pub use crate::device::cpu::norm::{BwdOut, TrainFwdOut};
pub use crate::device::gpu::kernels::norm::NormParams;

/// The batch norm of `p`'s c channels of m values.
fn layer<'a>(p: &NormParams, x: &'a [f32], gamma: &'a [f32], beta: &'a [f32]) -> BnIn<'a> {
    BnIn::new(p.c as usize, p.m as usize, x, gamma, beta)
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
    let forward = if relu {
        norm::batchnorm_relu_train_forward
    } else {
        norm::batchnorm_train_forward
    };
    forward(layer(p, x, gamma, beta), p.eps, p.momentum, o)
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
    let fwd = layer(p, x, gamma, beta);
    norm::batchnorm_eval_forward_with(false, fwd, running_mean, running_var, p.eps, y)
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
    let g = BnGradIn {
        fwd: layer(p, x, gamma, beta),
        save_mean: mean,
        save_invstd: invstd,
        dy,
    };
    norm::batchnorm_backward_with(relu, None, g, o)
}
