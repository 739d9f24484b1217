//! `rest device --check` for the topology-update (topk) kernels, per layer and batched (`topk/`
//! beside this file): each kernel against its CPU twin (`device::cpu::twin::topk`) on random
//! inputs; tolerances in `device::gpu::check`.

use super::topk;
use crate::device::cpu::twin;
use crate::device::gpu::checker::{Checker, Cmp, PerKernel};
use crate::device::gpu::{Buf, Gpu};
use crate::sparse::topology::{prune_count, random_layer};
use anyhow::Result;

fn compare_topk(a: &twin::topk::HostTopk, b: &twin::topk::HostTopk) -> Cmp {
    let mut r = Cmp::new();
    r.u32s(&a.positions, &b.positions)
        .bits(&a.values, &b.values)
        .bits(&a.momentum, &b.momentum)
        .u32s(&a.row_ptr, &b.row_ptr)
        .u32s(&a.col_idx, &b.col_idx)
        .u32s(&a.col_ptr, &b.col_ptr)
        .u32s(&a.csc_row, &b.csc_row)
        .u32s(&a.csc_pos, &b.csc_pos)
        .u32s(&a.mark, &b.mark)
        .bits(&a.old_values, &b.old_values)
        .bits(&a.old_momentum, &b.old_momentum)
        .u32s(&a.state, &b.state)
        .u32s(&a.tile_cnt, &b.tile_cnt)
        .u32s(&a.csc_cnt, &b.csc_cnt);
    r
}

/// What an update rewrites completely, poisoned before a check: a layer's CSR and CSC index
/// (`index_bufs!`), and a workspace's scratch (`scratch_bufs!`, per-layer or batched; borrowed
/// mutably with `mut`, else shared to read it back).
macro_rules! index_bufs {
    ($l:expr) => {
        [
            &mut $l.row_ptr,
            &mut $l.col_idx,
            &mut $l.col_ptr,
            &mut $l.csc_row,
            &mut $l.csc_pos,
        ]
    };
}
macro_rules! scratch_bufs {
    ($ws:expr $(, $m:tt)?) => {
        [
            &$($m)? $ws.mark,
            &$($m)? $ws.old_values,
            &$($m)? $ws.old_momentum,
            &$($m)? $ws.state,
            &$($m)? $ws.tile_cnt,
            &$($m)? $ws.csc_cnt,
        ]
    };
}

/// Fills each buffer with 0xFF bytes (NaN, u32::MAX).
fn poison<const N: usize>(gpu: &Gpu, bufs: [&mut Buf; N]) -> Result<()> {
    for b in bufs {
        gpu.fill_bytes(b, 0xFF)?;
    }
    Ok(())
}

/// Everything the device holds for one layer's update, as the twins' host mirror.
fn download_topk(
    c: &Checker,
    layer: &topk::SparseLayerBufs,
    ws: &topk::TopkWorkspace,
    score: &Buf,
) -> Result<twin::topk::HostTopk> {
    mirror(
        c,
        layer,
        scratch_bufs!(ws),
        &topk::BatchSlice::default(),
        score,
    )
}

pub(crate) fn check(c: &mut Checker) -> Result<()> {
    let gpu = c.gpu;
    // (rows, cols, density): a small conv weight (67 × 5·3·3); a wider one with several 2048-wide
    // tiles and CSC counting chunks. Prune (and regrow) half the active weights.
    for (rows, cols, density) in [(67usize, 45usize, 0.3f64), (40, 300, 0.1)] {
        let size = rows * cols;
        let nnz = ((size as f64 * density).round() as usize).max(1);
        let dense = c.normal(size, 1.0, 0.0);
        let w = random_layer(rows, cols, nnz, &dense, &mut c.rng);
        let momentum = c.normal(nnz, 0.1, 0.0);
        let score = c.normal(size, 1.0, 0.0);
        let k = prune_count(0.5, nnz);
        let g = topk::Geometry::new(rows, cols, nnz)?;
        let shape = format!("{rows}×{cols}, nnz {nnz}, prune {k}");

        let mut layer = topk::SparseLayerBufs::upload(gpu, &w, &momentum)?;
        let bscore = c.up(&score)?;
        let mut ws = topk::TopkWorkspace::new(gpu, &g)?;
        // Poison what the update fully rewrites: CSR/CSC and the whole workspace.
        poison(gpu, index_bufs!(layer))?;
        poison(gpu, scratch_bufs!(ws, mut))?;
        // One row per kernel: its launches merged (each checked from the device's state).
        let mut per_kernel = PerKernel::default();
        for step in topk::plan(&g, k, topk::addresses(&layer.refs(), &ws, &bscore)) {
            let mut host = download_topk(c, &layer, &ws, &bscore)?;
            twin::topk::run_step(&step, &mut host);
            gpu.launch(step.kernel, step.cfg, &step.params)?;
            let dev = download_topk(c, &layer, &ws, &bscore)?;
            let r = compare_topk(&dev, &host);
            per_kernel.add(step.kernel, r);
        }
        per_kernel.rows(c, &shape);
    }
    Ok(())
}

/// One layer and its slice of a batched workspace, as the twins' host mirror.
fn download_topk_slice(
    c: &Checker,
    layer: &topk::SparseLayerBufs,
    ws: &topk::TopkBatchWorkspace,
    sl: &topk::BatchSlice,
    score: &Buf,
) -> Result<twin::topk::HostTopk> {
    mirror(c, layer, scratch_bufs!(ws), sl, score)
}

/// A layer and its scratch at the offsets `sl` of the buffers `scratch` (mark, old_values,
/// old_momentum, state, tile_cnt, csc_cnt; offsets 0 for a per-layer workspace).
fn mirror(
    c: &Checker,
    layer: &topk::SparseLayerBufs,
    [mark, old_values, old_momentum, state, tile_cnt, csc_cnt]: [&Buf; 6],
    sl: &topk::BatchSlice,
    score: &Buf,
) -> Result<twin::topk::HostTopk> {
    let g = topk::Geometry::new(layer.rows, layer.cols, layer.nnz)?;
    let u = |b: &Buf, at: usize, n: usize| -> Result<Vec<u32>> {
        Ok(c.read_u32(b, at + n)?[at..].to_vec())
    };
    let f = |b: &Buf, at: usize, n: usize| -> Result<Vec<f32>> {
        Ok(c.read(b, at + n)?[at..].to_vec())
    };
    Ok(twin::topk::HostTopk {
        rows: layer.rows,
        cols: layer.cols,
        positions: u(&layer.positions, 0, g.nnz)?,
        values: f(&layer.values, 0, g.nnz)?,
        momentum: f(&layer.momentum, 0, g.nnz)?,
        row_ptr: u(&layer.row_ptr, 0, g.rows + 1)?,
        col_idx: u(&layer.col_idx, 0, g.nnz)?,
        col_ptr: u(&layer.col_ptr, 0, g.cols + 1)?,
        csc_row: u(&layer.csc_row, 0, g.nnz)?,
        csc_pos: u(&layer.csc_pos, 0, g.nnz)?,
        score: f(score, 0, g.size)?,
        mark: u(mark, sl.mark, g.size)?,
        old_values: f(old_values, sl.old, g.nnz)?,
        old_momentum: f(old_momentum, sl.old, g.nnz)?,
        state: u(state, sl.state, 2 * topk::SLOT)?,
        tile_cnt: u(tile_cnt, sl.tile, g.ntiles + 1)?,
        csc_cnt: u(csc_cnt, sl.csc, g.ncells())?,
    })
}

pub(crate) fn check_batched(c: &mut Checker) -> Result<()> {
    let gpu = c.gpu;
    // (rows, cols, density, rate): three layers of different shapes, densities and k (so their
    // index digits differ: positions of 5, 12 and 14 bits), updated by one batched plan.
    let shapes = [
        (3usize, 7usize, 0.5f64, 0.4f64),
        (67, 45, 0.3, 0.5),
        (40, 300, 0.1, 0.3),
    ];
    let mut layers = Vec::new();
    let mut scores = Vec::new();
    let mut recs = Vec::new();
    let mut desc = Vec::new();
    for &(rows, cols, density, rate) in &shapes {
        let size = rows * cols;
        let nnz = ((size as f64 * density).round() as usize).max(1);
        let dense = c.normal(size, 1.0, 0.0);
        let w = random_layer(rows, cols, nnz, &dense, &mut c.rng);
        let momentum = c.normal(nnz, 0.1, 0.0);
        let score = c.normal(size, 1.0, 0.0);
        let k = prune_count(rate, nnz);
        let mut layer = topk::SparseLayerBufs::upload(gpu, &w, &momentum)?;
        poison(gpu, index_bufs!(layer))?;
        recs.push((topk::Geometry::new(rows, cols, nnz)?, k));
        desc.push(format!("{rows}×{cols} nnz {nnz} k {k}"));
        layers.push(layer);
        scores.push(c.up(&score)?);
    }
    let shape = desc.join(", ");
    let geoms: Vec<topk::Geometry> = recs.iter().map(|r| r.0).collect();
    let layout = topk::BatchLayout::new(&geoms);
    let mut ws = topk::TopkBatchWorkspace::new(gpu, &layout)?;
    poison(gpu, scratch_bufs!(ws, mut))?;
    let items: Vec<(topk::Geometry, usize, topk::TopkParams)> = recs
        .iter()
        .zip(&layers)
        .zip(&scores)
        .map(|((&(g, k), l), s)| (g, k, topk::layer_addresses(&l.refs(), s)))
        .collect();
    let (table, starts) = ws.table_addresses(items.len());
    let plan = topk::plan_batched(&items, &topk::batch_addresses(&ws), table, starts);
    gpu.write(&mut ws.table, &plan.table_bytes())?;
    let snapshot = |c: &Checker, ws: &topk::TopkBatchWorkspace| -> Result<Vec<_>> {
        layers
            .iter()
            .zip(&layout.slices)
            .zip(&scores)
            .map(|((l, sl), s)| download_topk_slice(c, l, ws, sl, s))
            .collect()
    };
    let mut per_kernel = PerKernel::default();
    for step in &plan.steps {
        let mut host = snapshot(c, &ws)?;
        twin::topk::run_batch_step(step, &plan.table, &mut host);
        gpu.launch(step.kernel, step.cfg, &step.params)?;
        let dev = snapshot(c, &ws)?;
        let mut r = Cmp::new();
        for (d, h) in dev.iter().zip(&host) {
            r.merge(&compare_topk(d, h));
        }
        per_kernel.add(step.kernel, r);
    }
    per_kernel.rows(c, &shape);
    Ok(())
}
