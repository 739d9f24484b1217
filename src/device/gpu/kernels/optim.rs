//! Kernels of kernels/optim.cu: SGD with momentum and weight decay, in place.

use super::elementwise::{ensure_count, ensure_len, grid_stride};
use crate::device::gpu::cost::{f32s, Cost};
use crate::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("optim" => optim_sgd_f32, optim_sgd_multi_f32);

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

/// Elements one block of `optim_sgd_multi_f32` updates (`SGD_MULTI_CHUNK`).
pub const SGD_MULTI_CHUNK: usize = 2048;

/// One tensor of `optim_sgd_multi_f32`'s table (mirrors `SgdRecord`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SgdRecord {
    pub w: u64,
    pub grad: u64,
    pub buf: u64,
    pub n: u32,
    pub pad: u32,
}

/// Parameters of `optim_sgd_multi_f32` (mirrors `SgdMultiParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SgdMultiParams {
    /// `SgdRecord[ntensors]`.
    pub table: u64,
    /// u32[ntensors + 1]: the first block of every tensor, then the total.
    pub starts: u64,
    pub ntensors: u32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// The tensors one `sgd_multi` launch updates: their records and block prefix sums, on the
/// device. It keeps raw addresses: the buffers it was built from must outlive it and must not
/// be reallocated (build a new table if they are).
pub struct SgdTable {
    table: Buf,
    starts: Buf,
    /// Host copy of the records (what the twin and the tests need).
    records: Vec<SgdRecord>,
    blocks: u32,
}

impl SgdTable {
    /// A table over `tensors` = (w, grad, momentum buffer, n) each; n may be 0.
    pub fn new(gpu: &Gpu, tensors: &[(&Buf, &Buf, &Buf, usize)]) -> Result<Self> {
        let name = optim_sgd_multi_f32.name;
        let mut records = Vec::with_capacity(tensors.len());
        let mut starts = Vec::with_capacity(tensors.len() + 1);
        let mut blocks = 0u64;
        for (i, &(w, grad, buf, n)) in tensors.iter().enumerate() {
            let n32 = ensure_count(n, name)?;
            ensure_len::<f32>(w, n, name, &format!("w[{i}]"))?;
            ensure_len::<f32>(grad, n, name, &format!("grad[{i}]"))?;
            ensure_len::<f32>(buf, n, name, &format!("buf[{i}]"))?;
            starts.push(blocks as u32);
            blocks += n.div_ceil(SGD_MULTI_CHUNK) as u64;
            ensure!(
                blocks <= i32::MAX as u64,
                "{name}: {blocks} blocks exceed CUDA's grid"
            );
            records.push(SgdRecord {
                w: w.addr(),
                grad: grad.addr(),
                buf: buf.addr(),
                n: n32,
                pad: 0,
            });
        }
        starts.push(blocks as u32);
        // At least one record, so the buffer is never empty.
        let pad = [SgdRecord::default()];
        let upload: &[SgdRecord] = if records.is_empty() { &pad } else { &records };
        Ok(SgdTable {
            table: gpu.upload(upload)?,
            starts: gpu.upload(&starts)?,
            records,
            blocks: blocks as u32,
        })
    }

    /// The records, in the order given.
    pub fn records(&self) -> &[SgdRecord] {
        &self.records
    }

    /// The launch's grid.x (0: nothing to update, no launch).
    pub fn blocks(&self) -> u32 {
        self.blocks
    }
}

/// One SGD step over every tensor of `table` in one launch (`sgd` on each, bit for bit).
pub fn sgd_multi(
    gpu: &Gpu,
    table: &SgdTable,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
) -> Result<()> {
    if table.blocks == 0 {
        return Ok(());
    }
    let p = SgdMultiParams {
        table: table.table.addr(),
        starts: table.starts.addr(),
        ntensors: table.records.len() as u32,
        lr,
        momentum,
        weight_decay,
    };
    let cfg = LaunchCfg {
        grid: Dim3::x(table.blocks),
        block: Dim3::x(256),
        smem: 0,
    };
    gpu.launch_costed(&optim_sgd_multi_f32, cfg, &p, || {
        sgd_cost(table.records.iter().map(|r| r.n as usize).sum())
    })
}

/// SGD with momentum over `n` weights: reads weight, gradient and momentum, writes weight and
/// momentum (`optim_sgd_multi_f32`'s wrapper states it so: its sizes are in a device table; the
/// per-tensor kernel's `KernelCost` in `costs.rs` uses it too).
pub fn sgd_cost(n: usize) -> Cost {
    Cost::streaming(f32s(3 * n), f32s(2 * n), 6 * n as u64)
}
