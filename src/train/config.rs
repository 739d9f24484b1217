//! What a run is: its configuration and the checks on it (validation, memory, what the GPU can
//! run), the progress a checkpoint saves, and the options of one call.

use crate::data::loader::Augment;
use crate::dst::SparseConfig;
use crate::metrics::GroupMetrics;
use crate::nn::ModelConfig;
use crate::optim::Plateau;
use crate::sparse::topology::{GrowRule, PruneRule};
use anyhow::{anyhow, bail, ensure, Result};
use std::path::PathBuf;

/// How bias-conflicting samples are upweighted.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Reweight {
    /// Plain empirical risk minimisation.
    Off,
    /// Upweight samples whose bias attribute differs from the label (needs bias labels).
    Labels,
    /// Just Train Twice: a short plain run marks the misclassified training samples, which are
    /// then upweighted (needs no bias labels).
    Jtt,
}

/// Where the weight λ acts.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum ReweightMode {
    /// Weighted sampling with replacement (the reference's form).
    Sampler,
    /// Per-sample weights inside the loss.
    Loss,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub dataset: String,
    /// Percentage of bias-conflicting training samples (datasets that have several).
    pub ratio: f64,
    pub model: ModelConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// None: dense training.
    pub sparse: Option<SparseConfig>,
    pub reweight: Reweight,
    pub upweight: f32,
    pub reweight_mode: ReweightMode,
    pub jtt_epochs: usize,
    pub augment: Augment,
    pub seed: u64,
    /// Samples in the synthetic training split (synthetic runs only; `rest eval` and `--resume`
    /// rebuild the same data from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_train: Option<usize>,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.model.width > 0, "--width must be at least 1");
        if let Some(n) = self.synthetic_train {
            ensure!(n > 0, "--synthetic-train must be at least 1");
        }
        ensure!(
            self.batch_size >= 2,
            "--batch-size must be at least 2 (batch norm trains on batch statistics)"
        );
        ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "--lr must be a positive number, got {}",
            self.lr
        );
        ensure!(
            (0.0..1.0).contains(&self.momentum),
            "momentum must be in [0, 1)"
        );
        ensure!(self.weight_decay >= 0.0, "--weight-decay must be ≥ 0");
        ensure!(
            self.upweight >= 0.0 && self.upweight.is_finite(),
            "--upweight (λ) must be ≥ 0, got {}",
            self.upweight
        );
        if self.reweight == Reweight::Jtt {
            ensure!(
                self.jtt_epochs > 0,
                "--jtt-epochs must be at least 1 with --reweight jtt"
            );
        }
        if let Some(s) = &self.sparse {
            s.validate()?;
        }
        Ok(())
    }

    /// The method's name in the paper's comparison, as `--method` spells it.
    pub fn method(&self) -> &'static str {
        match (self.sparse.is_some(), self.reweight != Reweight::Off) {
            (false, false) => "vanilla",
            (false, true) => "reweight",
            (true, false) => "sparse",
            (true, true) => "rest",
        }
    }
}

/// This machine's physical memory in bytes (Linux: MemTotal of /proc/meminfo; None elsewhere).
fn physical_memory_bytes() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a model and batch whose training cannot fit in this machine's memory, before anything
/// large is allocated (an allocation that fails aborts the process instead of reporting an error).
/// The estimate is a lower bound: three floats per parameter (value, gradient, momentum) and two
/// per activation (output and gradient), so a refused run could never have run here.
pub fn check_memory(model: &ModelConfig, h: usize, w: usize, batch: usize) -> Result<()> {
    let size_error = || anyhow!("--width {}: the model's size overflows", model.width);
    let fp = model.footprint(h, w)?.ok_or_else(size_error)?;
    let Some(available) = physical_memory_bytes() else {
        return Ok(());
    };
    let params = fp.params.checked_mul(12).ok_or_else(size_error)?;
    let acts = fp
        .activations_per_image
        .checked_mul(8 * batch as u128)
        .ok_or_else(size_error)?;
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    ensure!(
        params.saturating_add(acts) <= available,
        "this model and batch need at least {:.1} GiB ({:.3e} parameters: {:.1} GiB; activations \
         of a batch of {batch}: {:.1} GiB) and this machine has {:.1} GiB: lower the width or the \
         batch size",
        gib(params.saturating_add(acts)),
        fp.params as f64,
        gib(params),
        gib(acts),
        gib(available)
    );
    Ok(())
}

/// Everything that changes during training: what a checkpoint holds besides the weights.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Next epoch to run.
    pub epoch: usize,
    pub step: u64,
    pub lr: f32,
    pub plateau: Plateau,
    pub best_score: f64,
    pub best_epoch: usize,
    pub best_valid: Option<GroupMetrics>,
    pub best_test: Option<GroupMetrics>,
    pub topology_rng: [u64; 4],
    pub images_seen: u64,
    pub wall_seconds: f64,
    /// Training-sample weights from the JTT phase (None before it, or without JTT).
    pub jtt_weights: Option<Vec<f32>>,
}

/// Options of one call that are not part of the run's identity.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub out: PathBuf,
    pub quiet: bool,
    /// Stop after this many epochs in this call (to test resume); the run stays resumable.
    pub stop_after_epochs: Option<usize>,
}

/// How the command line spells a value of an option (`set`, not `Set`).
fn cli_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

/// Checks that a sparse configuration's topology update can run on the GPU: magnitude pruning
/// and gradient (RigL) regrowth, the defaults, have device kernels; the others run on the CPU.
pub fn ensure_gpu_topology(s: &SparseConfig) -> Result<()> {
    if s.fix {
        return Ok(());
    }
    if s.prune != PruneRule::Magnitude {
        bail!(
            "--prune {} has no GPU kernels (magnitude pruning with gradient regrowth, the \
             default, runs on the GPU): use --device cpu",
            cli_name(&s.prune)
        );
    }
    if s.grow != GrowRule::Gradient {
        bail!(
            "--grow {} has no GPU kernels (magnitude pruning with gradient regrowth, the \
             default, runs on the GPU): use --device cpu",
            cli_name(&s.grow)
        );
    }
    Ok(())
}
