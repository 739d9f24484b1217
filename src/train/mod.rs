//! The trainer: epochs of reweighted (optionally sparse) training, evaluation per group,
//! best-validation model selection, metrics as JSON lines, checkpoints and resume.
//!
//! `config` (what a run is, and its checks), `step` (one training step), `epoch` (the epoch loop,
//! `Trainer::train` in named phases), `report` (metrics lines, summary, selection); this file
//! sets a run up (`Trainer::new`, `resume`) and hands checkpoints a plain `RunState`.

pub mod config;
mod epoch;
pub mod report;
pub mod step;
mod totals;

pub use config::{
    check_memory, ensure_gpu_topology, Progress, Reweight, ReweightMode, RunOptions, TrainConfig,
};
pub use report::{render_summary, selection_score, EpochRecord, Summary};
pub use step::{train_step, StepReport, StepStats};
pub use totals::{StepTotals, Totals};

use crate::checkpoint::{self, Checkpoint, InputSpec, RunState};
use crate::data::{Dataset, Splits};
use crate::device::Device;
use crate::dst::{self, PathChoice, SparseState};
use crate::metrics::{evaluate, GroupMetrics};
use crate::nn::{Arch, Model, ModelConfig};
use crate::optim::{Plateau, Sgd};
use crate::rng::Rng;
use anyhow::{ensure, Result};
use std::path::Path;

/// The training set-up that `train` runs.
pub struct Trainer<'a> {
    pub config: TrainConfig,
    pub splits: &'a Splits,
    pub model: Model,
    pub opt: Sgd,
    pub sparse: Option<SparseState>,
    pub progress: Progress,
    /// The backend the training steps run on (`Device::Cpu` unless set, e.g. by `on_device`).
    /// On a GPU the model's trainable state moves there at the first step; `model` and `opt`
    /// hold the host copies, brought up to date at the end of every epoch (`sync_host`).
    pub device: Device,
}

fn model_for(config: &TrainConfig, splits: &Splits) -> Result<ModelConfig> {
    let t = &splits.train;
    let mut m = config.model.clone();
    m.in_channels = t.channels;
    m.num_classes = t.num_classes;
    if m.arch == Arch::Resnet18 {
        ensure!(
            t.height >= 8 && t.width >= 8,
            "ResNet-18 needs images of at least 8x8, got {}x{}",
            t.height,
            t.width
        );
    }
    Ok(m)
}

/// Per-sample training weights for label reweighting (λ for bias-conflicting samples).
fn label_weights(ds: &Dataset, lambda: f32) -> Vec<f32> {
    (0..ds.len())
        .map(|i| if ds.is_aligned(i) { 1.0 } else { lambda })
        .collect()
}

impl<'a> Trainer<'a> {
    /// A fresh run on the CPU.
    pub fn new(config: TrainConfig, splits: &'a Splits) -> Result<Self> {
        Self::new_on(config, splits, Device::Cpu)
    }

    /// A fresh run whose steps run on `device`.
    pub fn new_on(config: TrainConfig, splits: &'a Splits, device: Device) -> Result<Self> {
        config.validate()?;
        for ds in [&splits.train, &splits.valid, &splits.test] {
            ds.validate()?;
            ensure!(!ds.is_empty(), "{} has no samples", ds.name);
        }
        let mcfg = model_for(&config, splits)?;
        let t = &splits.train;
        check_memory(&mcfg, t.height, t.width, config.batch_size.min(t.len()))?;
        let mut model = Model::new(&mcfg, config.seed)?;
        let sparse = match &config.sparse {
            Some(s) if s.density < 1.0 => {
                let state = dst::sparsify(&mut model, s, config.seed)?;
                // Sparse kernels or dense-masked GEMM per layer, whichever is faster here at this
                // batch size; a resumed run keeps the paths its checkpoint recorded. On a GPU
                // backend sparse layers always run the sparse kernels, so nothing is timed.
                let t = &splits.train;
                let choice = if device == Device::Cpu {
                    s.compute
                } else {
                    PathChoice::Sparse
                };
                dst::choose_paths(
                    &mut model,
                    choice,
                    config.batch_size.min(t.len()),
                    t.height,
                    t.width,
                )?;
                Some(state)
            }
            _ => None,
        };
        let opt = Sgd::new(
            &model.params,
            config.lr,
            config.momentum,
            config.weight_decay,
        );
        let progress = Progress {
            epoch: 0,
            step: 0,
            lr: config.lr,
            plateau: Plateau::default(),
            best_score: f64::NEG_INFINITY,
            best_epoch: 0,
            best_valid: None,
            best_test: None,
            topology_rng: Rng::derive(config.seed, 0x7090).state(),
            images_seen: 0,
            wall_seconds: 0.0,
            jtt_weights: None,
        };
        Ok(Self {
            config,
            splits,
            model,
            opt,
            sparse,
            progress,
            device,
        })
    }

    /// Runs the training steps on `device` (`Cpu`, `Emu` or `Cuda`).
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Moves the model's trainable state to the training device, if it is a GPU and the state is
    /// not there yet.
    fn place_on_device(&mut self) -> Result<()> {
        if self.model.params.device.is_some() {
            return Ok(());
        }
        if let Some(dev) = self.device.open()? {
            if let Some(s) = &self.sparse {
                ensure_gpu_topology(&s.config)?;
            }
            self.model.to_device(&dev, &self.opt.buffers)?;
        }
        Ok(())
    }

    /// Brings the host copies of the model and the optimiser up to date with the device's.
    fn sync_host(&mut self) -> Result<()> {
        self.model.download(&mut self.opt.buffers)
    }

    /// Evaluates on `ds` on the training device.
    fn evaluate_here(&mut self, ds: &Dataset) -> Result<(GroupMetrics, Vec<bool>)> {
        self.place_on_device()?;
        evaluate(&mut self.model, ds, 512)
    }

    /// Continues the run saved in `dir` (its config is taken from the checkpoint).
    pub fn resume(dir: &Path, splits: &'a Splits) -> Result<Self> {
        let ck = Checkpoint::load(&dir.join(checkpoint::LAST))?;
        let mut t = Self::new(ck.config.clone(), splits)?;
        t.restore(&ck)?;
        Ok(t)
    }

    fn steps_per_epoch(&self) -> u64 {
        (self.splits.train.len().div_ceil(self.config.batch_size)) as u64
    }

    fn sample_weights(&self) -> Option<Vec<f32>> {
        match self.config.reweight {
            Reweight::Off => None,
            Reweight::Labels => Some(label_weights(&self.splits.train, self.config.upweight)),
            Reweight::Jtt => self.progress.jtt_weights.clone(),
        }
    }

    /// The run's state as a checkpoint (the trainer hands the checkpoint a plain `RunState`).
    pub fn checkpoint(&self) -> Checkpoint {
        let train = &self.splits.train;
        Checkpoint::capture(RunState {
            config: &self.config,
            progress: &self.progress,
            model: &self.model,
            momentum: &self.opt.buffers,
            fired: self.sparse.as_ref().map(|s| s.fired.as_slice()),
            input: InputSpec {
                channels: train.channels,
                height: train.height,
                width: train.width,
                mean: train.normalize.mean.clone(),
                std: train.normalize.std.clone(),
            },
        })
    }

    /// Restores model, optimiser, sparse statistics and progress from `ck`.
    fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        ck.restore_run(
            &mut self.model,
            &mut self.opt.buffers,
            self.sparse.as_mut().map(|s| s.fired.as_mut_slice()),
        )?;
        self.opt.lr = ck.progress.lr;
        self.progress = ck.progress.clone();
        Ok(())
    }
}
