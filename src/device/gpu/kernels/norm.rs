//! Kernels of kernels/norm.cu: batch normalisation over [C, M] (M = N·H·W per channel) —
//! training forward (plain and fused with ReLU), evaluation forward, and the two backwards.

use super::elementwise::{ensure_count, ensure_len};
use crate::device::gpu::{Buf, Dim3, Gpu, KernelDef, LaunchCfg};
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("norm" =>
    norm_fwd_train_f32,
    norm_fwd_train_relu_f32,
    norm_fwd_eval_f32,
    norm_bwd_f32,
    norm_bwd_relu_f32,
);

/// Parameters of every kernel of norm.cu (mirrors `NormParams`); unused fields are ignored.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct NormParams {
    /// Input [C, M].
    pub x: u64,
    pub gamma: u64,
    pub beta: u64,
    /// [C]: updated by the training forward, read by the evaluation forward.
    pub running_mean: u64,
    pub running_var: u64,
    /// [C]: written by the training forward, read by the backward.
    pub save_mean: u64,
    pub save_invstd: u64,
    /// Forward: y [C, M]; backward: dx [C, M].
    pub y: u64,
    /// Backward: dy [C, M].
    pub dy: u64,
    /// Backward outputs [C] (overwritten).
    pub dgamma: u64,
    pub dbeta: u64,
    pub c: u32,
    pub m: u32,
    pub eps: f32,
    pub momentum: f32,
}

/// Buffers of a training-mode forward.
pub struct BnTrainFwd<'a> {
    pub x: &'a Buf,
    pub gamma: &'a Buf,
    pub beta: &'a Buf,
    pub running_mean: &'a Buf,
    pub running_var: &'a Buf,
    pub y: &'a Buf,
    pub save_mean: &'a Buf,
    pub save_invstd: &'a Buf,
}

/// Buffers of a backward.
pub struct BnBwd<'a> {
    pub x: &'a Buf,
    pub gamma: &'a Buf,
    /// Read by the fused BN+ReLU backward only (its mask is recomputed from x).
    pub beta: &'a Buf,
    pub save_mean: &'a Buf,
    pub save_invstd: &'a Buf,
    pub dy: &'a Buf,
    pub dx: &'a Buf,
    pub dgamma: &'a Buf,
    pub dbeta: &'a Buf,
}

fn check_shape(c: usize, m: usize, kernel: &str) -> Result<()> {
    ensure!(c > 0, "{kernel}: no channels");
    ensure!(m > 0, "{kernel}: no values per channel");
    ensure!(c <= 65535, "{kernel}: {c} channels exceed the grid's limit");
    ensure_count(c * m, kernel)?;
    Ok(())
}

fn per_channel(buffers: &[(&Buf, &str)], n: usize, kernel: &str) -> Result<()> {
    for (b, what) in buffers {
        ensure_len::<f32>(b, n, kernel, what)?;
    }
    Ok(())
}

/// `[(b.f, "f"), …]`: the named fields of `b` with their names, for `per_channel`.
macro_rules! named {
    ($b:ident: $($f:ident),*) => { [$(($b.$f, stringify!($f))),*] };
}

/// The addresses and shape every training-side kernel reads: x, gamma, beta, the saved
/// statistics and y (the backward's dx).
fn saved_params(c: usize, m: usize, [x, gamma, beta, mean, invstd, y]: [&Buf; 6]) -> NormParams {
    NormParams {
        x: x.addr(),
        gamma: gamma.addr(),
        beta: beta.addr(),
        save_mean: mean.addr(),
        save_invstd: invstd.addr(),
        y: y.addr(),
        c: c as u32,
        m: m as u32,
        ..Default::default()
    }
}

/// One block per channel; 1024 threads for long channels.
fn channel_cfg(c: usize, m: usize) -> LaunchCfg {
    LaunchCfg {
        grid: Dim3::x(c as u32),
        block: Dim3::x(if m >= 1 << 16 { 1024 } else { 256 }),
        smem: 0,
    }
}

/// Training-mode forward over x [c, m]: y, save_mean, save_invstd written, running stats
/// updated in place (`momentum` weighs the batch). `relu` fuses the following ReLU.
pub fn train_fwd(
    gpu: &Gpu,
    b: &BnTrainFwd,
    c: usize,
    m: usize,
    eps: f32,
    momentum: f32,
    relu: bool,
) -> Result<()> {
    let k: &KernelDef = if relu {
        &norm_fwd_train_relu_f32
    } else {
        &norm_fwd_train_f32
    };
    check_shape(c, m, k.name)?;
    per_channel(&named!(b: x, y), c * m, k.name)?;
    let chans = named!(b: gamma, beta, running_mean, running_var, save_mean, save_invstd);
    per_channel(&chans, c, k.name)?;
    let p = NormParams {
        running_mean: b.running_mean.addr(),
        running_var: b.running_var.addr(),
        eps,
        momentum,
        ..saved_params(
            c,
            m,
            [b.x, b.gamma, b.beta, b.save_mean, b.save_invstd, b.y],
        )
    };
    gpu.launch(k, channel_cfg(c, m), &p)
}

/// Evaluation-mode forward: y = (x − running_mean)·gamma/sqrt(running_var + eps) + beta.
#[allow(clippy::too_many_arguments)]
pub fn eval_fwd(
    gpu: &Gpu,
    x: &Buf,
    gamma: &Buf,
    beta: &Buf,
    running_mean: &Buf,
    running_var: &Buf,
    y: &Buf,
    c: usize,
    m: usize,
    eps: f32,
) -> Result<()> {
    let name = norm_fwd_eval_f32.name;
    check_shape(c, m, name)?;
    per_channel(&[(x, "x"), (y, "y")], c * m, name)?;
    per_channel(
        &[
            (gamma, "gamma"),
            (beta, "beta"),
            (running_mean, "running_mean"),
            (running_var, "running_var"),
        ],
        c,
        name,
    )?;
    let p = NormParams {
        x: x.addr(),
        gamma: gamma.addr(),
        beta: beta.addr(),
        running_mean: running_mean.addr(),
        running_var: running_var.addr(),
        y: y.addr(),
        c: c as u32,
        m: m as u32,
        eps,
        ..Default::default()
    };
    let cfg = LaunchCfg {
        grid: Dim3::xy(m.div_ceil(256).min(1024) as u32, c as u32),
        block: Dim3::x(256),
        smem: 0,
    };
    gpu.launch(&norm_fwd_eval_f32, cfg, &p)
}

/// Backward of the training forward (`relu`: of the fused BN+ReLU, dy being the gradient of
/// the ReLU's output): dx, dgamma, dbeta overwritten.
pub fn bwd(gpu: &Gpu, b: &BnBwd, c: usize, m: usize, relu: bool) -> Result<()> {
    let k: &KernelDef = if relu {
        &norm_bwd_relu_f32
    } else {
        &norm_bwd_f32
    };
    check_shape(c, m, k.name)?;
    per_channel(&named!(b: x, dy, dx), c * m, k.name)?;
    let chans = named!(b: gamma, beta, save_mean, save_invstd, dgamma, dbeta);
    per_channel(&chans, c, k.name)?;
    let p = NormParams {
        dy: b.dy.addr(),
        dgamma: b.dgamma.addr(),
        dbeta: b.dbeta.addr(),
        ..saved_params(
            c,
            m,
            [b.x, b.gamma, b.beta, b.save_mean, b.save_invstd, b.dx],
        )
    };
    gpu.launch(k, channel_cfg(c, m), &p)
}
