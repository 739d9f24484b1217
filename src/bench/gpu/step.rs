//! `rest bench gpu`, step section: training-step images/s of both models, the tape running on the device.

use super::timing::{median, Plan};
use crate::cli::device::gpu_for;
use crate::device::gpu::alloc::GpuDevice;
use crate::device::gpu::{Gpu, TrafficCounts};
use crate::dst::{self, SparseConfig};
use crate::nn::{Model, ModelConfig};
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::train_step;
use anyhow::{ensure, Result};
use std::time::Instant;

#[derive(Clone, Debug, serde::Serialize)]
pub struct StepRow {
    pub model: String,
    pub width: usize,
    pub batch: usize,
    pub image: usize,
    pub density: f64,
    pub ms: f64,
    pub images_per_s: f64,
    /// images/s over the dense model's, same model and batch.
    pub vs_dense: f64,
    /// Kernel launches of one (non-update) training step (`Gpu::launches`; the same on every
    /// backend). At low density a step on a GPU is bound by them, a few µs each.
    pub launches: u64,
    /// Everything one step asked of the device beside its kernels: copies each way (a copy to
    /// the host synchronises), memsets, synchronisations (one: the bench's own, to time it).
    pub traffic: TrafficCounts,
}

/// Training steps on the tape, the model on the device (each model on its own `Gpu` of the same
/// device; compiled kernel files are shared across them).
pub(super) fn section(gpu: &Gpu, spec: &str, plan: &Plan, seed: u64) -> Result<Vec<StepRow>> {
    println!(
        "\n== training step on the device (forward, reweighted cross-entropy, backward, SGD) =="
    );
    println!(
        "{:<9} {:>5} {:>5} {:>5} {:>7} | {:>9} {:>10} {:>8} {:>8} {:>6} {:>6} {:>6}",
        "model",
        "width",
        "batch",
        "image",
        "density",
        "ms",
        "images/s",
        "vs dense",
        "launches",
        "to dev",
        "to host",
        "memset"
    );
    let mut rows = Vec::new();
    for &(arch, width, batch, image) in &plan.steps {
        let mut dense_ips = None;
        for &density in &plan.step_densities {
            let cfg = ModelConfig {
                arch,
                width,
                in_channels: 3,
                num_classes: 10,
            };
            let mut model = Model::new(&cfg, seed)?;
            if density < 1.0 {
                dst::sparsify(&mut model, &SparseConfig::reference(density), seed)?;
            }
            let mut opt = Sgd::new(&model.params, 0.01, 0.9, 0.0);
            let dev = GpuDevice::new(if gpu.is_emu() {
                Gpu::emu()
            } else {
                gpu_for(spec, "rest bench gpu")?.0
            });
            model.to_device(&dev, &opt.buffers)?;
            let mut rng = Rng::new(seed);
            let images: Vec<f32> = (0..3 * batch * image * image)
                .map(|_| rng.normal())
                .collect();
            let labels: Vec<u32> = (0..batch).map(|_| rng.below(10) as u32).collect();
            let weights: Vec<f32> = (0..batch)
                .map(|i| if i % 20 == 0 { 80.0 } else { 1.0 })
                .collect();
            let groups: Vec<u32> = (0..batch).map(|i| (i % 20 == 0) as u32).collect();
            let traffic0 = dev.gpu().traffic();
            // A step reads nothing back (its statistics stay on the device): the timer waits
            // for the device after each one.
            let mut step = || -> Result<()> {
                let x = Tensor::from_vec(&[3, batch, image, image], images.clone())?;
                train_step(
                    &mut model,
                    &mut opt,
                    x,
                    &labels,
                    &weights,
                    Some(&groups),
                    false,
                )?;
                dev.gpu().sync()
            };
            let secs = time_steps(plan.reps, &mut step)?;
            // Every step is alike (no topology update): the warm-up and the timed ones.
            let steps = plan.reps.max(1) as u64 + 1;
            let all = dev.gpu().traffic() - traffic0;
            let traffic = TrafficCounts {
                launches: all.launches / steps,
                to_device: all.to_device / steps,
                to_host: all.to_host / steps,
                syncs: all.syncs / steps,
                fills: all.fills / steps,
            };
            let launches = traffic.launches;
            let ips = batch as f64 / secs;
            let base = *dense_ips.get_or_insert(ips);
            println!(
                "{:<9} {:>5} {:>5} {:>5} {:>7} | {:>9.3} {:>10.1} {:>8.2} {:>8} {:>6} {:>6} {:>6}",
                format!("{arch:?}").to_lowercase(),
                width,
                batch,
                image,
                density,
                secs * 1e3,
                ips,
                ips / base,
                launches,
                traffic.to_device,
                traffic.to_host,
                traffic.fills
            );
            rows.push(StepRow {
                model: format!("{arch:?}").to_lowercase(),
                width,
                batch,
                image,
                density,
                ms: secs * 1e3,
                images_per_s: ips,
                vs_dense: ips / base,
                launches,
                traffic,
            });
        }
    }
    ensure!(!rows.is_empty(), "no training step measured");
    Ok(rows)
}

/// Seconds per call of a synchronising `step`: one warm-up (allocates the activation arena), then
/// the median of `reps` calls.
fn time_steps(reps: usize, step: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        step()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut samples))
}
