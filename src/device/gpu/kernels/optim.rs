//! Kernels of kernels/optim.cu: SGD with momentum and weight decay, in place.

use super::elementwise::{ensure_count, ensure_len, grid_stride};
use crate::device::gpu::{Buf, Gpu};
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("optim" => optim_sgd_f32);

/// Parameters of `optim_sgd_f32` (mirrors `SgdParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SgdParams {
    /// Weights, updated in place.
    pub w: u64,
    pub grad: u64,
    /// Momentum buffer, updated in place.
    pub buf: u64,
    pub n: u32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// One SGD step over `n` values: g = grad + wd·w; buf = μ·buf + g; w −= lr·buf (`optim::Sgd`).
#[allow(clippy::too_many_arguments)]
pub fn sgd(
    gpu: &Gpu,
    w: &Buf,
    grad: &Buf,
    buf: &Buf,
    n: usize,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
) -> Result<()> {
    let name = optim_sgd_f32.name;
    let n32 = ensure_count(n, name)?;
    ensure_len::<f32>(w, n, name, "w")?;
    ensure_len::<f32>(grad, n, name, "grad")?;
    ensure_len::<f32>(buf, n, name, "buf")?;
    if n == 0 {
        return Ok(());
    }
    let p = SgdParams {
        w: w.addr(),
        grad: grad.addr(),
        buf: buf.addr(),
        n: n32,
        lr,
        momentum,
        weight_decay,
    };
    gpu.launch(&optim_sgd_f32, grid_stride(n, 256), &p)
}
