//! The sizes of one `rest bench gpu` run (`Plan`: full or `--quick`) and the timer every section
//! uses.

use crate::device::gpu::Gpu;
use crate::nn::{Arch, Model, ModelConfig};
use crate::rng::Rng;
use anyhow::Result;
use std::time::Instant;

/// Sizes of one bench run.
pub(super) struct Plan {
    /// ResNet-18 width, input size and batch of the per-layer convolutions and the topology
    /// update.
    pub(super) width: usize,
    pub(super) size: usize,
    pub(super) batch: usize,
    pub(super) densities: Vec<f64>,
    /// (N, K) of the cross-entropy.
    pub(super) xent: Vec<(usize, usize)>,
    pub(super) topk_density: f64,
    /// (arch, width, batch, image size) of the training steps, and their densities.
    pub(super) steps: Vec<(Arch, usize, usize, usize)>,
    pub(super) step_densities: Vec<f64>,
    pub(super) reps: usize,
}

impl Plan {
    /// ResNet-18 at the plan's width (RGB input, 10 classes), whose layers the conv and topk
    /// sections measure.
    pub(super) fn resnet(&self) -> Result<Model> {
        let cfg = ModelConfig {
            arch: Arch::Resnet18,
            width: self.width,
            in_channels: 3,
            num_classes: 10,
        };
        Model::new(&cfg, 1)
    }

    pub(super) fn new(quick: bool, reps: Option<usize>) -> Self {
        if quick {
            Plan {
                width: 4,
                size: 16,
                batch: 2,
                densities: vec![1.0, 0.1],
                xent: vec![(1000, 10)],
                topk_density: 0.05,
                steps: vec![(Arch::Cnn, 4, 4, 12), (Arch::Resnet18, 4, 2, 16)],
                step_densities: vec![1.0, 0.05],
                reps: reps.unwrap_or(1),
            }
        } else {
            Plan {
                width: 64,
                size: 32,
                batch: 64,
                densities: vec![1.0, 0.5, 0.2, 0.1, 0.05, 0.01, 0.005, 0.001],
                xent: vec![(65536, 10), (1 << 20, 10)],
                topk_density: 0.05,
                steps: vec![(Arch::Cnn, 64, 256, 28), (Arch::Resnet18, 64, 64, 32)],
                step_densities: vec![1.0, 0.05, 0.01],
                reps: reps.unwrap_or(5),
            }
        }
    }
}

/// Times `f` on `gpu`: seconds per call (median sample).
pub(super) struct Timer<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) reps: usize,
}

impl Timer<'_> {
    pub(super) fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?; // warm-up: NVRTC compiles on first use, caches fill
        self.gpu.sync()?;
        let t = Instant::now();
        f()?;
        self.gpu.sync()?;
        let one = t.elapsed().as_secs_f64();
        // Calls per sample: ~2 ms of work on a GPU so launch latency is amortised; one on the
        // emulator (it runs synchronously anyway).
        let inner = if self.gpu.is_emu() {
            1
        } else {
            ((2e-3 / one.max(1e-7)).ceil() as usize).clamp(1, 200)
        };
        let mut samples = Vec::with_capacity(self.reps);
        for _ in 0..self.reps.max(1) {
            self.gpu.sync()?;
            let t = Instant::now();
            for _ in 0..inner {
                f()?;
            }
            self.gpu.sync()?;
            samples.push(t.elapsed().as_secs_f64() / inner as f64);
        }
        Ok(median(&mut samples))
    }
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(super) fn uniform(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
}
