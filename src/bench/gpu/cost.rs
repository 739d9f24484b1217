//! `rest bench gpu --cost`: training steps estimated, not timed. Each step runs on the dry
//! emulator (`Gpu::emu_dry`: the whole backend, nothing executed, no memory behind buffers),
//! which records every launch with its kernel's stated cost, every copy, memset and
//! synchronisation; `device::gpu::cost::GpuSpec::estimate` prices the record on a named GPU.

use crate::device::gpu::alloc::GpuDevice;
use crate::device::gpu::cost::{Estimate, GpuSpec, GPUS};
use crate::device::gpu::Gpu;
use crate::dst::{self, SparseConfig};
use crate::nn::{Arch, Model, ModelConfig};
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::train_step;
use anyhow::{bail, Result};

#[derive(Clone, Debug, serde::Serialize)]
pub struct CostRow {
    pub model: String,
    pub image: usize,
    pub batch: usize,
    pub density: f64,
    pub gpu: String,
    /// images/s over the dense step's, same model, image and batch.
    pub vs_dense: f64,
    pub images_per_s: f64,
    pub estimate: Estimate,
}

/// The GPU named by `--gpu-model`.
pub fn spec(name: &str) -> Result<GpuSpec> {
    match GPUS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, s)) => Ok(*s),
        None => bail!(
            "--gpu-model {name:?}: the cost model knows {}",
            GPUS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// (arch, width, image) of the costed models, and the batches and densities of each.
const MODELS: &[(Arch, usize, usize)] = &[
    (Arch::Cnn, 64, 28),
    (Arch::Resnet18, 64, 32),
    (Arch::Resnet18, 64, 128),
];
const QUICK_MODELS: &[(Arch, usize, usize)] = &[(Arch::Cnn, 8, 28), (Arch::Resnet18, 8, 32)];

pub(super) fn section(
    gpu_spec: &GpuSpec,
    quick: bool,
    per_kernel: bool,
    seed: u64,
) -> Result<Vec<CostRow>> {
    println!(
        "\n== training step, estimated on {} by the cost model (not measured) ==",
        gpu_spec.name
    );
    println!(
        "{:<8} {:>5} {:>5} {:>7} | {:>8} {:>6} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "model",
        "image",
        "batch",
        "density",
        "launches",
        "memset",
        "up",
        "down",
        "MB",
        "GFLOP",
        "GPU ms",
        "step ms",
        "images/s",
        "vs dense"
    );
    let (models, batches, densities): (&[_], &[usize], &[f64]) = if quick {
        (QUICK_MODELS, &[4], &[1.0, 0.05])
    } else {
        (MODELS, &[64, 256], &[1.0, 0.05, 0.01])
    };
    let mut rows = Vec::new();
    for &(arch, width, image) in models {
        for &batch in batches {
            let mut dense_ips = None;
            for &density in densities {
                let est = record_step(
                    Gpu::emu_dry(),
                    StepSpec {
                        arch,
                        width,
                        image,
                        batch,
                        density,
                        seed,
                    },
                )?;
                let est = gpu_spec.estimate(&est);
                let ips = batch as f64 / est.total_s;
                let vs_dense = ips / *dense_ips.get_or_insert(ips);
                let model = format!("{arch:?}").to_lowercase();
                println!(
                    "{:<8} {:>5} {:>5} {:>7} | {:>8} {:>6} {:>5} {:>5} {:>9.1} {:>9.2} {:>9.3} \
                     {:>9.3} {:>9.0} {:>8.2}",
                    model,
                    image,
                    batch,
                    density,
                    est.launches,
                    est.memsets,
                    est.to_device,
                    est.to_host,
                    est.bytes as f64 / 1e6,
                    est.flops as f64 / 1e9,
                    est.gpu_s * 1e3,
                    est.total_s * 1e3,
                    ips,
                    vs_dense
                );
                if per_kernel {
                    print_kernels(&est);
                }
                rows.push(CostRow {
                    model,
                    image,
                    batch,
                    density,
                    gpu: gpu_spec.name.to_string(),
                    vs_dense,
                    images_per_s: ips,
                    estimate: est,
                });
            }
        }
    }
    println!(
        "(estimates: a roofline per launch from each kernel's stated bytes and FLOPs, the figures \
         and assumptions in src/device/gpu/cost.rs; GPU ms = kernels and memsets; step ms adds \
         what the host makes the GPU wait for)"
    );
    Ok(rows)
}

/// A training step to cost: the model (3 input channels, 10 classes), its input and density.
#[derive(Clone, Copy, Debug)]
pub struct StepSpec {
    pub arch: Arch,
    pub width: usize,
    pub image: usize,
    pub batch: usize,
    pub density: f64,
    pub seed: u64,
}

/// The record of one steady-state training step (after a warm-up step that fills the caching
/// allocator) of the model on `gpu` (the dry emulator for `--cost`).
pub fn record_step(gpu: Gpu, spec: StepSpec) -> Result<Vec<crate::device::gpu::Event>> {
    let dev = steady_step(gpu, spec, |g| {
        g.record();
        Ok(())
    })?;
    Ok(dev.gpu().take_record())
}

/// One steady-state training step on the emulator with every launch's global-memory bytes
/// counted (`Gpu::measure`): each launch's stated cost beside what it touched.
pub fn measure_step(gpu: Gpu, spec: StepSpec) -> Result<Vec<crate::device::gpu::cost::Measured>> {
    let dev = steady_step(gpu, spec, Gpu::measure)?;
    Ok(dev.gpu().take_measured())
}

/// A model on `gpu`, a warm-up step, then `start` (record or measure) and one more step.
fn steady_step(
    gpu: Gpu,
    spec: StepSpec,
    start: impl FnOnce(&Gpu) -> Result<()>,
) -> Result<std::sync::Arc<GpuDevice>> {
    let StepSpec {
        arch,
        width,
        image,
        batch,
        density,
        seed,
    } = spec;
    let in_channels = 3;
    let cfg = ModelConfig {
        arch,
        width,
        in_channels,
        num_classes: 10,
    };
    let mut model = Model::new(&cfg, seed)?;
    if density < 1.0 {
        dst::sparsify(&mut model, &SparseConfig::reference(density), seed)?;
    }
    let mut opt = Sgd::new(&model.params, 0.01, 0.9, 0.0);
    let dev = GpuDevice::new(gpu);
    model.to_device(&dev, &opt.buffers)?;
    let mut rng = Rng::new(seed);
    let images = Tensor::from_vec(
        &[in_channels, batch, image, image],
        (0..in_channels * batch * image * image)
            .map(|_| rng.normal())
            .collect(),
    )?;
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(10) as u32).collect();
    let weights: Vec<f32> = (0..batch)
        .map(|i| if i % 20 == 0 { 80.0 } else { 1.0 })
        .collect();
    let groups: Vec<u32> = (0..batch).map(|i| (i % 20 == 0) as u32).collect();
    let mut step = |model: &mut Model| {
        train_step(
            model,
            &mut opt,
            images.clone(),
            &labels,
            &weights,
            Some(&groups),
            false,
        )
    };
    step(&mut model)?;
    start(dev.gpu())?;
    step(&mut model)?;
    Ok(dev)
}

fn print_kernels(e: &Estimate) {
    for k in &e.kernels {
        println!(
            "    {:<32} {:>5} launches {:>9.3} ms {:>9.1} MB {:>9.2} GFLOP  {:>5.1} %",
            k.kernel,
            k.launches,
            k.gpu_s * 1e3,
            k.bytes as f64 / 1e6,
            k.flops as f64 / 1e9,
            100.0 * k.gpu_s / e.gpu_s.max(1e-12)
        );
    }
}
