//! `rest bench gpu`, topk section: one topology update (prune and regrow) of every masked weight
//! of ResNet-18, one layer at a time and batched, with each path's launch count (`topology_update`
//! in the JSON).

use super::timing::{Plan, Timer};
use crate::device::gpu::kernels::topk;
use crate::device::gpu::Buf;
use crate::rng::Rng;
use crate::sparse::density::{layer_nnz, DensityRule};
use crate::sparse::topology::{prune_count, random_layer};
use anyhow::{Context, Result};

#[derive(Clone, Debug, serde::Serialize)]
pub struct TopkRow {
    pub model: String,
    pub layers: usize,
    pub weights: usize,
    pub density: f64,
    pub nnz: usize,
    /// Fraction of each layer's active weights pruned and regrown.
    pub death_rate: f64,
    pub pruned: usize,
    /// One layer at a time (`topk::update_layer`, 14–20 launches per layer).
    pub ms: f64,
    /// Every layer at once (`topk::update_layers`, each pass launched once; what the training step
    /// runs).
    pub batched_ms: f64,
    /// Kernel launches of one update: one layer at a time, and batched (which also copies its
    /// layer table to the device once).
    pub launches: usize,
    pub batched_launches: usize,
}

pub(super) fn section(timer: &Timer, plan: &Plan, rng: &mut Rng) -> Result<TopkRow> {
    let gpu = timer.gpu;
    let death_rate = 0.5;
    let model = plan.resnet()?;
    let ids = model.params.weight_ids();
    let shapes: Vec<Vec<usize>> = ids
        .iter()
        .map(|&i| model.params.get(i).shape.clone())
        .collect();
    let nnzs = layer_nnz(&shapes, plan.topk_density, DensityRule::Erk)?;
    let mut layers = Vec::new();
    let mut scores: Vec<Buf> = Vec::new();
    let mut ws: Option<topk::TopkWorkspace> = None;
    let (mut weights, mut nnz_total, mut pruned) = (0usize, 0usize, 0usize);
    for (shape, &nnz) in shapes.iter().zip(&nnzs) {
        let rows = shape[0];
        let cols: usize = shape[1..].iter().product();
        let size = rows * cols;
        let nnz = nnz.clamp(1, size);
        let dense: Vec<f32> = (0..size).map(|_| rng.normal()).collect();
        let w = random_layer(rows, cols, nnz, &dense, rng);
        let momentum = vec![0.0f32; nnz];
        layers.push(topk::SparseLayerBufs::upload(gpu, &w, &momentum)?);
        let score: Vec<f32> = (0..size).map(|_| rng.normal()).collect();
        scores.push(gpu.upload(&score)?);
        let g = topk::Geometry::new(rows, cols, nnz)?;
        match &mut ws {
            Some(ws) => ws.ensure(gpu, &g)?,
            None => ws = Some(topk::TopkWorkspace::new(gpu, &g)?),
        }
        weights += size;
        nnz_total += nnz;
        pruned += prune_count(death_rate, nnz);
    }
    let mut ws = ws.context("a model without masked weights")?;
    let ks: Vec<usize> = layers
        .iter()
        .map(|l| prune_count(death_rate, l.nnz))
        .collect();
    let secs = timer.time(|| {
        for ((layer, score), &k) in layers.iter_mut().zip(&scores).zip(&ks) {
            topk::update_layer(gpu, layer, &mut ws, k, score)?;
        }
        Ok(())
    })?;
    let mut bws = topk::TopkBatchWorkspace::new(gpu, &topk::BatchLayout::new(&[]))?;
    let batched_secs = timer.time(|| {
        let items: Vec<topk::BatchItem> = layers
            .iter()
            .zip(&scores)
            .zip(&ks)
            .map(|((l, s), &k)| topk::BatchItem {
                layer: l.refs(),
                score: s,
                k_prune: k,
            })
            .collect();
        topk::update_layers(gpu, &items, &mut bws)
    })?;
    // Launch counts, from the plans the two paths run.
    let mut recs = Vec::new();
    let mut launches = 0;
    for (l, &k) in layers.iter().zip(&ks) {
        let g = topk::Geometry::new(l.rows, l.cols, l.nnz)?;
        if k > 0 {
            launches += topk::plan(&g, k, topk::TopkParams::default()).len();
            recs.push((g, k, topk::TopkParams::default()));
        }
    }
    let batched_launches = topk::plan_batched(&recs, &topk::TopkParams::default(), 0, 0)
        .steps
        .len();
    println!(
        "\n== topology update on the device: ResNet-18 width {}, {} layers, {} weights, ERK \
         density {} ({} active), death rate {death_rate} ({} pruned and regrown) ==",
        plan.width,
        layers.len(),
        weights,
        plan.topk_density,
        nnz_total,
        pruned
    );
    println!(
        "  one layer at a time: {:.3} ms per update of every layer ({launches} launches)",
        secs * 1e3
    );
    println!(
        "  batched:             {:.3} ms per update of every layer ({batched_launches} launches \
         and one table copy), {:.1}× the speed",
        batched_secs * 1e3,
        secs / batched_secs.max(1e-12)
    );
    Ok(TopkRow {
        model: format!("resnet18 width {}", plan.width),
        layers: layers.len(),
        weights,
        density: plan.topk_density,
        nnz: nnz_total,
        death_rate,
        pruned,
        ms: secs * 1e3,
        batched_ms: batched_secs * 1e3,
        launches,
        batched_launches,
    })
}
