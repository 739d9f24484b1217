//! Kernels of kernels/pool.cu: max-pooling with saved argmax (forward, gather backward) and
//! global average pooling, over CNHW activations seen as C·N planes.

use super::elementwise::{ensure_count, ensure_len, grid_stride};
use crate::device::cpu::pool::pool_out;
use crate::device::gpu::{Buf, Gpu};
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("pool" =>
    pool_max_fwd_f32,
    pool_max_bwd_f32,
    pool_avg_fwd_f32,
    pool_avg_bwd_f32,
);

/// Parameters of `pool_max_fwd_f32` and `pool_max_bwd_f32` (mirrors `MaxPoolParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct MaxPoolParams {
    /// Forward input x [planes, h, w] (unused by the backward).
    pub x: u64,
    /// Forward output y [planes, oh, ow]; the backward's dx [planes, h, w].
    pub y: u64,
    /// u32 [planes, oh, ow]: written forward, read backward.
    pub argmax: u64,
    /// Backward input dy [planes, oh, ow] (unused by the forward).
    pub dy: u64,
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub k: u32,
    pub stride: u32,
    pub pad: u32,
}

/// Parameters of `pool_avg_fwd_f32` and `pool_avg_bwd_f32` (mirrors `AvgPoolParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct AvgPoolParams {
    /// Forward: x [planes, hw]; backward: dy [planes].
    pub x: u64,
    /// Forward: y [planes]; backward: dx [planes, hw].
    pub y: u64,
    pub planes: u32,
    pub hw: u32,
    /// 1/hw rounded to f32 (the backward's factor, as the CPU).
    pub inv_hw: f32,
    pub pad_: u32,
}

/// The max-pool geometry of `planes` h×w planes, checked as the CPU does; returns the params
/// with oh/ow filled (addresses zero).
#[allow(clippy::too_many_arguments)]
pub fn max_pool_params(
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<MaxPoolParams> {
    ensure!(
        k > 0 && stride > 0,
        "max-pool: kernel and stride must be positive"
    );
    ensure!(
        h + 2 * pad >= k && w + 2 * pad >= k,
        "max-pool: kernel {k} larger than the padded {h}x{w} plane"
    );
    ensure!(
        h * w < u32::MAX as usize,
        "max-pool: {h}x{w} plane too large for u32 indices"
    );
    let (oh, ow) = (pool_out(h, k, stride, pad), pool_out(w, k, stride, pad));
    ensure_count(planes * h * w, "pool_max")?;
    ensure_count(planes * oh * ow, "pool_max")?;
    Ok(MaxPoolParams {
        planes: planes as u32,
        h: h as u32,
        w: w as u32,
        oh: oh as u32,
        ow: ow as u32,
        k: k as u32,
        stride: stride as u32,
        pad: pad as u32,
        ..Default::default()
    })
}

/// Max-pool forward: x [planes, h, w] → y [planes, oh, ow] and argmax (u32, same shape).
/// Returns (oh, ow).
#[allow(clippy::too_many_arguments)]
pub fn max_fwd(
    gpu: &Gpu,
    x: &Buf,
    y: &Buf,
    argmax: &Buf,
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<(usize, usize)> {
    let mut p = max_pool_params(planes, h, w, k, stride, pad)?;
    let (oh, ow) = (p.oh as usize, p.ow as usize);
    let name = pool_max_fwd_f32.name;
    ensure_len::<f32>(x, planes * h * w, name, "x")?;
    ensure_len::<f32>(y, planes * oh * ow, name, "y")?;
    ensure_len::<u32>(argmax, planes * oh * ow, name, "argmax")?;
    let total = planes * oh * ow;
    if total > 0 {
        (p.x, p.y, p.argmax) = (x.addr(), y.addr(), argmax.addr());
        gpu.launch(&pool_max_fwd_f32, grid_stride(total, 256), &p)?;
    }
    Ok((oh, ow))
}

/// Max-pool backward: dx [planes, h, w] (overwritten) from dy and the forward's argmax
/// [planes, oh, ow]. The geometry must be the forward's.
#[allow(clippy::too_many_arguments)]
pub fn max_bwd(
    gpu: &Gpu,
    dy: &Buf,
    argmax: &Buf,
    dx: &Buf,
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<()> {
    let mut p = max_pool_params(planes, h, w, k, stride, pad)?;
    let (oh, ow) = (p.oh as usize, p.ow as usize);
    let name = pool_max_bwd_f32.name;
    ensure_len::<f32>(dy, planes * oh * ow, name, "dy")?;
    ensure_len::<u32>(argmax, planes * oh * ow, name, "argmax")?;
    ensure_len::<f32>(dx, planes * h * w, name, "dx")?;
    let total = planes * h * w;
    if total > 0 {
        (p.dy, p.argmax, p.y) = (dy.addr(), argmax.addr(), dx.addr());
        gpu.launch(&pool_max_bwd_f32, grid_stride(total, 256), &p)?;
    }
    Ok(())
}

fn avg_params(planes: usize, hw: usize, kernel: &str) -> Result<AvgPoolParams> {
    ensure!(hw > 0, "{kernel}: global pooling of empty planes");
    ensure_count(planes * hw, kernel)?;
    Ok(AvgPoolParams {
        planes: planes as u32,
        hw: hw as u32,
        inv_hw: 1.0 / hw as f32,
        ..Default::default()
    })
}

/// Global average pool forward: x [planes, hw] → y [planes] (planes = C·N of a CNHW tensor, so
/// y is the [C, N] feature matrix).
pub fn avg_fwd(gpu: &Gpu, x: &Buf, y: &Buf, planes: usize, hw: usize) -> Result<()> {
    let name = pool_avg_fwd_f32.name;
    let mut p = avg_params(planes, hw, name)?;
    ensure_len::<f32>(x, planes * hw, name, "x")?;
    ensure_len::<f32>(y, planes, name, "y")?;
    if planes == 0 {
        return Ok(());
    }
    (p.x, p.y) = (x.addr(), y.addr());
    // One warp per plane, 8 warps per block.
    gpu.launch(&pool_avg_fwd_f32, grid_stride(planes * 32, 256), &p)
}

/// Global average pool backward: dx [planes, hw] = dy [planes] / hw.
pub fn avg_bwd(gpu: &Gpu, dy: &Buf, dx: &Buf, planes: usize, hw: usize) -> Result<()> {
    let name = pool_avg_bwd_f32.name;
    let mut p = avg_params(planes, hw, name)?;
    ensure_len::<f32>(dy, planes, name, "dy")?;
    ensure_len::<f32>(dx, planes * hw, name, "dx")?;
    if planes == 0 {
        return Ok(());
    }
    (p.x, p.y) = (dy.addr(), dx.addr());
    gpu.launch(&pool_avg_bwd_f32, grid_stride(planes * hw, 256), &p)
}
