//! Kernels of kernels/xent.cu: fused reweighted softmax cross-entropy over class-major logits
//! [K, N] (the linear layer's output as it is), with per-group loss / accuracy sums.

use super::elementwise::{ensure_count, ensure_len};
use crate::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("xent" => xent_fused_f32, xent_reduce_f32);

/// Floats of one statistics row: [0] weighted mean loss (partials: Σ w·l), then per group g < 8
/// [1 + 3g] Σ loss, [2 + 3g] correct predictions, [3 + 3g] samples.
pub const XENT_STATS: usize = 25;
/// The most groups the statistics hold.
pub const XENT_MAX_GROUPS: usize = 8;
/// Samples (threads) per block of `xent_fused_f32`.
pub const XENT_THREADS: u32 = 256;

/// Parameters of both kernels (mirrors `XentParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct XentParams {
    /// [K, N] class-major.
    pub logits: u64,
    /// u32 [N], each < K.
    pub labels: u64,
    /// [N], ≥ 0.
    pub weights: u64,
    /// u32 [N], or 0 (null): every sample in group 0.
    pub groups: u64,
    /// [N] per-sample losses.
    pub losses: u64,
    /// [K, N] class-major.
    pub dlogits: u64,
    /// [blocks, XENT_STATS].
    pub partials: u64,
    /// [XENT_STATS].
    pub stats: u64,
    pub n: u32,
    pub k: u32,
    /// 1 / Σ weights, computed on the host.
    pub inv_wsum: f32,
    /// ≤ XENT_MAX_GROUPS.
    pub num_groups: u32,
    /// Rows of `partials` (the fused kernel's grid).
    pub blocks: u32,
    /// Samples per block of the fused kernel (its blockDim.x; what the twin splits by).
    pub per_block: u32,
}

/// Floats the `partials` scratch buffer needs for `n` samples.
pub fn partials_len(n: usize) -> usize {
    n.div_ceil(XENT_THREADS as usize).max(1) * XENT_STATS
}

/// The statistics of one batch, decoded from the `stats` buffer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XentStats {
    /// Σ w_i·l_i / Σ w_i.
    pub loss: f32,
    /// Per group: (Σ l_i, correct predictions, samples).
    pub groups: Vec<(f32, f32, f32)>,
}

impl XentStats {
    pub fn decode(stats: &[f32], num_groups: usize) -> Self {
        XentStats {
            loss: stats[0],
            groups: (0..num_groups.min(XENT_MAX_GROUPS))
                .map(|g| (stats[1 + 3 * g], stats[2 + 3 * g], stats[3 + 3 * g]))
                .collect(),
        }
    }
}

/// Buffers of one cross-entropy.
pub struct XentBufs<'a> {
    /// [K, N] class-major.
    pub logits: &'a Buf,
    /// u32 [N]: each < K (validated by the caller, which has them on the host).
    pub labels: &'a Buf,
    pub weights: &'a Buf,
    /// u32 [N] group ids, or None (one group).
    pub groups: Option<&'a Buf>,
    pub losses: &'a Buf,
    /// [K, N] class-major.
    pub dlogits: &'a Buf,
    /// Scratch of `partials_len(n)` floats.
    pub partials: &'a Buf,
    /// [XENT_STATS] floats (see `XentStats`).
    pub stats: &'a Buf,
}

/// Loss, gradient and statistics of `n` samples over `k` classes: the fused kernel, then the
/// reduction of its per-block partials. `inv_wsum` = 1/Σ weights (> 0, from the host).
pub fn fused(
    gpu: &Gpu,
    b: &XentBufs,
    n: usize,
    k: usize,
    num_groups: usize,
    inv_wsum: f32,
) -> Result<()> {
    let name = xent_fused_f32.name;
    ensure!(n > 0 && k > 0, "{name}: {n} samples of {k} classes");
    ensure_count(n * k, name)?;
    ensure!(
        (1..=XENT_MAX_GROUPS).contains(&num_groups),
        "{name}: {num_groups} groups (1 to {XENT_MAX_GROUPS} supported)"
    );
    ensure!(
        inv_wsum.is_finite() && inv_wsum > 0.0,
        "{name}: 1/Σweights = {inv_wsum}, must be positive and finite"
    );
    ensure_len::<f32>(b.logits, n * k, name, "logits")?;
    ensure_len::<f32>(b.dlogits, n * k, name, "dlogits")?;
    ensure_len::<u32>(b.labels, n, name, "labels")?;
    ensure_len::<f32>(b.weights, n, name, "weights")?;
    ensure_len::<f32>(b.losses, n, name, "losses")?;
    if let Some(g) = b.groups {
        ensure_len::<u32>(g, n, name, "groups")?;
    }
    ensure_len::<f32>(b.partials, partials_len(n), name, "partials")?;
    ensure_len::<f32>(b.stats, XENT_STATS, name, "stats")?;
    let blocks = n.div_ceil(XENT_THREADS as usize);
    let p = XentParams {
        logits: b.logits.addr(),
        labels: b.labels.addr(),
        weights: b.weights.addr(),
        groups: b.groups.map_or(0, |g| g.addr()),
        losses: b.losses.addr(),
        dlogits: b.dlogits.addr(),
        partials: b.partials.addr(),
        stats: b.stats.addr(),
        n: n as u32,
        k: k as u32,
        inv_wsum,
        num_groups: num_groups as u32,
        blocks: blocks as u32,
        per_block: XENT_THREADS,
    };
    gpu.launch(
        &xent_fused_f32,
        LaunchCfg {
            grid: Dim3::x(blocks as u32),
            block: Dim3::x(XENT_THREADS),
            smem: 0,
        },
        &p,
    )?;
    gpu.launch(
        &xent_reduce_f32,
        LaunchCfg {
            grid: Dim3::x(1),
            block: Dim3::x(256),
            smem: 0,
        },
        &p,
    )
}
