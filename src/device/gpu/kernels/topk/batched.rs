//! The batched update: every pass launched once for all layers, the layers described by a table
//! of `TopkParams` records (see kernels/topk.cu, "Batched update"), each layer's scratch a slice
//! of one [`TopkBatchWorkspace`] ([`BatchLayout`]).

use super::launch::{
    clear_blocks, col_blocks, digits, hist_blocks, index_digits, linear_x, shaped,
};
use super::{
    layer_addresses, topk_clear_batched_u32, topk_colscan_batched_u32, topk_compact_batched_f32,
    topk_csc_scatter_batched_u32, topk_grow_batched_f32, topk_hist_batched_f32,
    topk_prune_batched_f32, topk_scan_batched_u32, Geometry, SparseLayerRefs, TopkParams,
    SCAN_THREADS, SLOT, THREADS,
};
use crate::device::gpu::{Buf, Dim3, Gpu, KernelDef, LaunchCfg};
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

/// Kinds of flattened launch, in the order of the `starts` table.
pub const KIND_CLEAR: usize = 0;
pub const KIND_PRUNE: usize = 1;
pub const KIND_TILES: usize = 2;
pub const KIND_COLS: usize = 3;
pub const KIND_SCATTER: usize = 4;
pub const KINDS: usize = 5;

/// The one parameter struct of every batched topk kernel (mirrors `TopkBatchParams` in
/// kernels/topk.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TopkBatchParams {
    /// `TopkParams[nlayers]`: each layer's addresses (its workspace slices included) and shape.
    pub table: u64,
    /// u32[KINDS·(nlayers+1)]: per kind, the first flattened block of each layer, then the total.
    pub starts: u64,
    pub nlayers: u32,
    /// `topk_hist_batched_f32`: 0 prune, 1 grow.
    pub slot: u32,
    /// `topk_hist_batched_f32`: digit pass, 0..3 magnitude, 3.. index digit `pass - 3` of each
    /// layer's own index width.
    pub pass: u32,
    pub pad: u32,
}

/// Element offsets of one layer's scratch in a batched workspace (or, in
/// [`BatchLayout::total`], the extents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSlice {
    /// mark (u32[size]).
    pub mark: usize,
    /// old_values and old_momentum (f32[nnz] each).
    pub old: usize,
    /// state (u32[2·SLOT]).
    pub state: usize,
    /// tile_cnt (u32[ntiles+1]).
    pub tile: usize,
    /// csc_cnt (u32[ncells]).
    pub csc: usize,
}

/// Where each layer's scratch lives in one workspace, back to back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    pub slices: Vec<BatchSlice>,
    pub total: BatchSlice,
}

impl BatchLayout {
    pub fn new(geoms: &[Geometry]) -> Self {
        let mut t = BatchSlice::default();
        let mut slices = Vec::with_capacity(geoms.len());
        for g in geoms {
            slices.push(t);
            t.mark += g.size;
            t.old += g.nnz;
            t.state += 2 * SLOT;
            t.tile += g.ntiles + 1;
            t.csc += g.ncells();
        }
        BatchLayout { slices, total: t }
    }
}

/// Scratch of a batched update: every layer's slice of each workspace buffer, the layer table
/// and the block prefix sums. Grows as needed; reusable across updates.
pub struct TopkBatchWorkspace {
    pub mark: Buf,
    pub old_values: Buf,
    pub old_momentum: Buf,
    pub state: Buf,
    pub tile_cnt: Buf,
    pub csc_cnt: Buf,
    /// `TopkParams[nlayers]`, then the u32[KINDS·(nlayers+1)] block prefix sums (one copy to
    /// the device per update).
    pub table: Buf,
}

impl TopkBatchWorkspace {
    /// A workspace large enough for `layout`.
    pub fn new(gpu: &Gpu, layout: &BatchLayout) -> Result<Self> {
        let t = &layout.total;
        let n = layout.slices.len().max(1);
        Ok(TopkBatchWorkspace {
            mark: gpu.zeros::<u32>(t.mark.max(1))?,
            old_values: gpu.zeros::<f32>(t.old.max(1))?,
            old_momentum: gpu.zeros::<f32>(t.old.max(1))?,
            state: gpu.zeros::<u32>(t.state.max(1))?,
            tile_cnt: gpu.zeros::<u32>(t.tile.max(1))?,
            csc_cnt: gpu.zeros::<u32>(t.csc.max(1))?,
            table: gpu.zeros::<u8>(table_bytes(n))?,
        })
    }

    /// Reallocates the buffers that are too small for `layout`.
    pub fn ensure(&mut self, gpu: &Gpu, layout: &BatchLayout) -> Result<()> {
        let grow = |b: &mut Buf, bytes: usize| -> Result<()> {
            if b.bytes() < bytes {
                *b = gpu.zeros::<u8>(bytes)?;
            }
            Ok(())
        };
        let (t, n) = (&layout.total, layout.slices.len());
        grow(&mut self.mark, 4 * t.mark)?;
        grow(&mut self.old_values, 4 * t.old)?;
        grow(&mut self.old_momentum, 4 * t.old)?;
        grow(&mut self.state, 4 * t.state)?;
        grow(&mut self.tile_cnt, 4 * t.tile)?;
        grow(&mut self.csc_cnt, 4 * t.csc)?;
        grow(&mut self.table, table_bytes(n))
    }

    /// The device addresses of the layer table and of the prefix sums after it, for `n` layers.
    pub fn table_addresses(&self, n: usize) -> (u64, u64) {
        let a = self.table.addr();
        (a, a + (std::mem::size_of::<TopkParams>() * n) as u64)
    }
}

/// Bytes of the layer table and the prefix sums of `n` layers.
fn table_bytes(n: usize) -> usize {
    std::mem::size_of::<TopkParams>() * n.max(1) + 4 * KINDS * (n + 1)
}

impl BatchPlan {
    /// The table, then the prefix sums, as one block of bytes (what `update_layers` copies to
    /// `TopkBatchWorkspace::table`).
    pub fn table_bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = bytemuck::cast_slice(&self.table).to_vec();
        b.extend_from_slice(bytemuck::cast_slice(&self.starts));
        b
    }
}

/// One launch of a batched update.
#[derive(Clone, Copy, Debug)]
pub struct BatchStep {
    pub kernel: &'static KernelDef,
    pub cfg: LaunchCfg,
    pub params: TopkBatchParams,
}

/// A batched update: the layer table and block prefix sums to upload, and the launches.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    pub table: Vec<TopkParams>,
    pub starts: Vec<u32>,
    pub steps: Vec<BatchStep>,
}

/// The launches of one batched update of `layers` (geometry, k with 1 ≤ k ≤ nnz, and a
/// `TopkParams` holding the layer's and its score's addresses), their scratch laid out by
/// `BatchLayout::new` in workspace buffers whose base addresses `ws` holds (mark, old_values,
/// old_momentum, state, tile_cnt, csc_cnt; 0 on the host twins), the table at `table` and the
/// prefix sums at `starts`. Each layer's record is what [`plan`] would give its launches, pass
/// fields aside; the batched kernels run the same per-layer code.
pub fn plan_batched(
    layers: &[(Geometry, usize, TopkParams)],
    ws: &TopkParams,
    table: u64,
    starts: u64,
) -> BatchPlan {
    let n = layers.len();
    let geoms: Vec<Geometry> = layers.iter().map(|l| l.0).collect();
    let layout = BatchLayout::new(&geoms);
    let at = |base: u64, off: usize| if base == 0 { 0 } else { base + 4 * off as u64 };
    let mut recs = Vec::with_capacity(n);
    let mut pre = vec![0u32; KINDS * (n + 1)];
    let mut sum = [0usize; KINDS];
    for (i, ((g, k, base), sl)) in layers.iter().zip(&layout.slices).enumerate() {
        recs.push(shaped(
            g,
            *k,
            TopkParams {
                mark: at(ws.mark, sl.mark),
                old_values: at(ws.old_values, sl.old),
                old_momentum: at(ws.old_momentum, sl.old),
                state: at(ws.state, sl.state),
                tile_cnt: at(ws.tile_cnt, sl.tile),
                csc_cnt: at(ws.csc_cnt, sl.csc),
                ..*base
            },
        ));
        let blocks = [
            clear_blocks(g),
            g.nnz.div_ceil(THREADS as usize).max(1),
            g.ntiles,
            col_blocks(g),
            col_blocks(g) * g.nchunks,
        ];
        for (kind, b) in blocks.into_iter().enumerate() {
            pre[kind * (n + 1) + i] = sum[kind] as u32;
            sum[kind] += b;
        }
    }
    for (kind, s) in sum.iter().enumerate() {
        pre[kind * (n + 1) + n] = *s as u32;
    }
    let p = TopkBatchParams {
        table,
        starts,
        nlayers: n as u32,
        ..TopkBatchParams::zeroed()
    };
    let mut steps = Vec::new();
    let mut push = |kernel: &'static KernelDef, cfg: LaunchCfg, params: TopkBatchParams| {
        steps.push(BatchStep {
            kernel,
            cfg,
            params,
        })
    };
    let flat = |kind: usize| linear_x(sum[kind].max(1));
    push(&topk_clear_batched_u32, flat(KIND_CLEAR), p);
    for slot in 0..2u32 {
        let count = |g: &Geometry| if slot == 0 { g.nnz } else { g.size };
        let blocks = geoms
            .iter()
            .map(|g| hist_blocks(count(g)))
            .max()
            .unwrap_or(1);
        let index_passes = geoms
            .iter()
            .map(|g| index_digits(count(g)).len())
            .max()
            .unwrap_or(0);
        let hist = LaunchCfg {
            grid: Dim3::xy(blocks as u32, n as u32),
            block: Dim3::x(THREADS),
            smem: 0,
        };
        for pass in 0..(digits(32).len() + index_passes) as u32 {
            push(
                &topk_hist_batched_f32,
                hist,
                TopkBatchParams { slot, pass, ..p },
            );
        }
        if slot == 0 {
            push(&topk_prune_batched_f32, flat(KIND_PRUNE), p);
        }
    }
    push(&topk_grow_batched_f32, flat(KIND_TILES), p);
    push(&topk_colscan_batched_u32, flat(KIND_COLS), p);
    let per_layer = LaunchCfg {
        grid: Dim3::x(n.max(1) as u32),
        block: Dim3::x(SCAN_THREADS),
        smem: 0,
    };
    push(&topk_scan_batched_u32, per_layer, p);
    push(&topk_compact_batched_f32, flat(KIND_TILES), p);
    push(&topk_csc_scatter_batched_u32, flat(KIND_SCATTER), p);
    BatchPlan {
        table: recs,
        starts: pre,
        steps,
    }
}

/// The per-layer digit a batched histogram pass `pass` of `slot` works on for a layer of
/// geometry `g`: (word, shift, width), or None when the layer's key has no such digit (the
/// kernel returns). The same digits, in the same order, as [`plan`] launches for the layer.
pub fn batch_digit(g: &Geometry, slot: u32, pass: u32) -> Option<(u32, u32, u32)> {
    let mag = digits(32);
    let pass = pass as usize;
    if pass < mag.len() {
        let (shift, width) = mag[pass];
        return Some((0, shift, width));
    }
    let n = if slot == 0 { g.nnz } else { g.size };
    index_digits(n)
        .get(pass - mag.len())
        .map(|&(shift, width)| (1, shift, width))
}

/// One layer of a batched update: the layer, its score (f32[rows·cols]) and k.
#[derive(Clone, Copy)]
pub struct BatchItem<'a> {
    pub layer: SparseLayerRefs<'a>,
    pub score: &'a Buf,
    pub k_prune: usize,
}

/// [`update_layer_refs`] of every item at once: each pass of the update is launched once for
/// all layers (about 17 launches in all, against 14–20 per layer), plus one copy of the layer
/// table (a few KiB) to the device. The results are bit for bit those of updating the layers one by one.
/// Items with `k_prune` = 0 are left alone. The layers must not share buffers.
pub fn update_layers(gpu: &Gpu, items: &[BatchItem], ws: &mut TopkBatchWorkspace) -> Result<()> {
    let mut layers = Vec::with_capacity(items.len());
    for it in items {
        let layer = &it.layer;
        let g = layer.update_geometry(it.k_prune, it.score)?;
        if it.k_prune > 0 {
            layers.push((g, it.k_prune, layer_addresses(layer, it.score)));
        }
    }
    if layers.is_empty() {
        return Ok(());
    }
    ensure!(
        layers.len() <= 65535,
        "topk: {} layers in one batched update (at most 65535)",
        layers.len()
    );
    let geoms: Vec<Geometry> = layers.iter().map(|l| l.0).collect();
    ws.ensure(gpu, &BatchLayout::new(&geoms))?;
    let (table, starts) = ws.table_addresses(layers.len());
    let plan = plan_batched(&layers, &batch_addresses(ws), table, starts);
    ensure!(
        plan.starts.iter().all(|&s| s < i32::MAX as u32),
        "topk: too many blocks for one batched launch"
    );
    gpu.write(&mut ws.table, &plan.table_bytes())?;
    for s in &plan.steps {
        gpu.launch(s.kernel, s.cfg, &s.params)?;
    }
    Ok(())
}

/// The base addresses of a batched workspace's scratch buffers (other fields 0).
pub fn batch_addresses(ws: &TopkBatchWorkspace) -> TopkParams {
    TopkParams {
        mark: ws.mark.addr(),
        old_values: ws.old_values.addr(),
        old_momentum: ws.old_momentum.addr(),
        state: ws.state.addr(),
        tile_cnt: ws.tile_cnt.addr(),
        csc_cnt: ws.csc_cnt.addr(),
        ..TopkParams::zeroed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::gpu::kernels::topk::plan;

    #[test]
    fn batch_digits_follow_each_layers_plan() {
        // A layer's batched histogram passes that do work are exactly its per-layer passes.
        for (rows, cols, nnz) in [(3usize, 5usize, 7usize), (64, 64, 3000), (300, 300, 2)] {
            let g = Geometry::new(rows, cols, nnz).unwrap();
            let per: Vec<(u32, u32, u32, u32)> = plan(&g, 1, TopkParams::default())
                .iter()
                .filter(|s| s.kernel.name == "topk_hist_f32")
                .map(|s| {
                    (
                        s.params.slot,
                        s.params.word,
                        s.params.shift,
                        s.params.digit_bits,
                    )
                })
                .collect();
            let batched: Vec<(u32, u32, u32, u32)> = (0..2)
                .flat_map(|slot| {
                    (0..8).filter_map(move |pass| {
                        batch_digit(&g, slot, pass).map(|(w, sh, wd)| (slot, w, sh, wd))
                    })
                })
                .collect();
            assert_eq!(per, batched, "{rows}×{cols}, nnz {nnz}");
        }
    }
}
