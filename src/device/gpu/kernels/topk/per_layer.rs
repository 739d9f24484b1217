//! The per-layer update: its scratch ([`TopkWorkspace`]), the launch sequence of one layer
//! ([`plan`]) and its run on the device ([`update_layer`]); the simple form the batched update is
//! checked against.

use super::launch::{
    clear_blocks, col_blocks, digits, hist_blocks, index_digits, linear_x, shaped,
};
use super::layer_addresses;
use super::{
    topk_clear_u32, topk_colscan_u32, topk_compact_f32, topk_csc_scatter_u32, topk_grow_f32,
    topk_hist_f32, topk_prune_f32, topk_scan_u32, Geometry, SparseLayerBufs, SparseLayerRefs,
    TopkParams, SCAN_THREADS, SLOT, THREADS,
};
use crate::device::gpu::{Buf, Dim3, Gpu, KernelDef, LaunchCfg};
use anyhow::Result;

/// One launch of the update.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub kernel: &'static KernelDef,
    pub cfg: LaunchCfg,
    pub params: TopkParams,
}

/// Scratch buffers of an update; one can serve every layer (it grows as needed).
pub struct TopkWorkspace {
    /// u32[size]: see kernels/topk.cu.
    pub mark: Buf,
    pub old_values: Buf,
    pub old_momentum: Buf,
    /// u32[2·SLOT]: the two radix-select slots.
    pub state: Buf,
    pub tile_cnt: Buf,
    pub csc_cnt: Buf,
}

impl TopkWorkspace {
    /// A workspace large enough for `g`.
    pub fn new(gpu: &Gpu, g: &Geometry) -> Result<Self> {
        Ok(TopkWorkspace {
            mark: gpu.zeros::<u32>(g.size)?,
            old_values: gpu.zeros::<f32>(g.nnz)?,
            old_momentum: gpu.zeros::<f32>(g.nnz)?,
            state: gpu.zeros::<u32>(2 * SLOT)?,
            tile_cnt: gpu.zeros::<u32>(g.ntiles + 1)?,
            csc_cnt: gpu.zeros::<u32>(g.ncells())?,
        })
    }

    /// Reallocates the buffers that are too small for `g`.
    pub fn ensure(&mut self, gpu: &Gpu, g: &Geometry) -> Result<()> {
        let grow = |b: &mut Buf, n: usize| -> Result<()> {
            if b.len_of::<u32>() < n {
                *b = gpu.zeros::<u32>(n)?;
            }
            Ok(())
        };
        grow(&mut self.mark, g.size)?;
        grow(&mut self.old_values, g.nnz)?;
        grow(&mut self.old_momentum, g.nnz)?;
        grow(&mut self.tile_cnt, g.ntiles + 1)?;
        grow(&mut self.csc_cnt, g.ncells())
    }
}

/// The launches of one update of a layer of geometry `g` pruning and regrowing `k` (1 ≤ k ≤ nnz),
/// with `base` holding the buffer addresses (its pass and shape fields are overwritten).
pub fn plan(g: &Geometry, k: usize, base: TopkParams) -> Vec<Step> {
    let p = shaped(g, k, base);
    let mut steps = Vec::new();
    let mut push = |kernel: &'static KernelDef, cfg: LaunchCfg, p: TopkParams| {
        steps.push(Step {
            kernel,
            cfg,
            params: p,
        })
    };
    push(&topk_clear_u32, linear_x(clear_blocks(g)), p);
    for (slot, n) in [(0u32, g.nnz), (1, g.size)] {
        let hist = LaunchCfg {
            grid: Dim3::x(hist_blocks(n) as u32),
            block: Dim3::x(THREADS),
            smem: 0,
        };
        let passes = digits(32)
            .into_iter()
            .map(|d| (0u32, d))
            .chain(index_digits(n).into_iter().map(|d| (1u32, d)));
        for (word, (shift, width)) in passes {
            let mut q = p;
            q.slot = slot;
            q.word = word;
            q.shift = shift;
            q.digit_bits = width;
            push(&topk_hist_f32, hist, q);
        }
        if slot == 0 {
            push(&topk_prune_f32, LaunchCfg::linear(g.nnz, THREADS), p);
        }
    }
    let tiles = LaunchCfg {
        grid: Dim3::x(g.ntiles as u32),
        block: Dim3::x(THREADS),
        smem: 0,
    };
    push(&topk_grow_f32, tiles, p);
    push(&topk_colscan_u32, LaunchCfg::linear(g.cols, THREADS), p);
    let one = LaunchCfg {
        grid: Dim3::x(1),
        block: Dim3::x(SCAN_THREADS),
        smem: 0,
    };
    push(&topk_scan_u32, one, p);
    push(&topk_compact_f32, tiles, p);
    let scatter = LaunchCfg {
        grid: Dim3::xy(col_blocks(g) as u32, g.nchunks as u32),
        block: Dim3::x(THREADS),
        smem: 0,
    };
    push(&topk_csc_scatter_u32, scatter, p);
    steps
}

/// The addresses of `layer`, `ws` and `score` in a parameter struct (shape and pass fields 0).
pub fn addresses(layer: &SparseLayerRefs, ws: &TopkWorkspace, score: &Buf) -> TopkParams {
    TopkParams {
        mark: ws.mark.addr(),
        old_values: ws.old_values.addr(),
        old_momentum: ws.old_momentum.addr(),
        state: ws.state.addr(),
        tile_cnt: ws.tile_cnt.addr(),
        csc_cnt: ws.csc_cnt.addr(),
        ..layer_addresses(layer, score)
    }
}

/// One topology update of `layer` in place on the device, as `sparse::topology::update_layer`
/// with `PruneRule::Magnitude` and `GrowRule::Gradient` (or `Momentum`, passing the gradient's
/// momentum as `score`): prunes the `k_prune` active weights of smallest |w|, regrows as many
/// positions inactive after pruning with the largest |score| (ties: lower position first, both
/// ways), at value 0 and momentum 0; survivors keep value and momentum. `score` is f32[rows·cols].
/// `k_prune` = `prune_count(rate, nnz)`; 0 changes nothing. Launches only (asynchronous on a GPU);
/// nothing is copied to the host.
pub fn update_layer(
    gpu: &Gpu,
    layer: &mut SparseLayerBufs,
    ws: &mut TopkWorkspace,
    k_prune: usize,
    score: &Buf,
) -> Result<()> {
    update_layer_refs(gpu, &layer.refs(), ws, k_prune, score)
}

/// [`update_layer`] on borrowed buffers.
pub fn update_layer_refs(
    gpu: &Gpu,
    layer: &SparseLayerRefs,
    ws: &mut TopkWorkspace,
    k_prune: usize,
    score: &Buf,
) -> Result<()> {
    let g = layer.update_geometry(k_prune, score)?;
    if k_prune == 0 {
        return Ok(());
    }
    ws.ensure(gpu, &g)?;
    for s in plan(&g, k_prune, addresses(layer, ws, score)) {
        gpu.launch(s.kernel, s.cfg, &s.params)?;
    }
    Ok(())
}
