//! The trainer: epochs of reweighted (optionally sparse) training, evaluation per group,
//! best-validation model selection, metrics as JSON lines, checkpoints and resume.

use crate::autograd::Tape;
use crate::checkpoint::{self, Checkpoint};
use crate::data::loader::{batches, Augment, LoaderConfig};
use crate::data::{Dataset, Splits};
use crate::device::gpu::model::GpuModel;
use crate::device::gpu::Gpu;
use crate::device::Device;
use crate::dst::{self, PathChoice, SparseConfig, SparseState};
use crate::flops::FlopsReport;
use crate::metrics::{argmax_rows, evaluate, GroupMetrics};
use crate::nn::param::{ComputePath, Grads};
use crate::nn::{ops, Arch, Model, ModelConfig};
use crate::optim::{Plateau, Sgd};
use crate::rng::Rng;
use crate::sparse::schedule::death_rate;
use crate::sparse::topology::{GrowRule, PruneRule, UpdateStats};
use crate::tensor::Tensor;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// One line of metrics.jsonl.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: u64,
    pub lr: f32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Training accuracy on the bias-aligned and the bias-conflicting samples seen this epoch
    /// (as sampled; None when none were seen): whether upweighting reaches the minority.
    #[serde(default)]
    pub train_aligned_accuracy: Option<f64>,
    #[serde(default)]
    pub train_conflicting_accuracy: Option<f64>,
    pub images_per_second: f64,
    pub density: f64,
    pub fired_fraction: Option<f64>,
    pub valid: GroupMetrics,
    /// Test metrics, evaluated when validation improved.
    pub test: Option<GroupMetrics>,
    pub best: bool,
}

/// The outcome of a run (summary.json).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub method: String,
    pub config: TrainConfig,
    pub best_epoch: usize,
    pub valid: GroupMetrics,
    pub test: GroupMetrics,
    pub density: f64,
    pub inference_flops_per_image: f64,
    pub dense_inference_flops_per_image: f64,
    pub train_flops_per_image: f64,
    pub dense_train_flops_per_image: f64,
    /// Training FLOPs of the whole run (per-image training cost × images seen).
    pub train_flops_total: f64,
    pub wall_seconds: f64,
    /// How each sparse layer was computed (`--sparse-compute auto` picks by timing, and the two
    /// paths round differently, so this tells whether two runs' numbers can agree bit for bit).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compute_paths: BTreeMap<String, ComputePath>,
    /// The device the run trained on last (`cpu`, `emu`, `cuda:0`), since they round apart.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
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

/// The training set-up that `train` runs.
pub struct Trainer<'a> {
    pub config: TrainConfig,
    pub splits: &'a Splits,
    pub model: Model,
    pub opt: Sgd,
    pub sparse: Option<SparseState>,
    pub progress: Progress,
    /// The backend the training steps run on (`Device::Cpu` unless set, e.g. by `on_device`).
    pub device: Device,
    /// The model on the GPU (or emulator) while `device` is one; `model` and `opt` are the host
    /// copies, brought up to date at the end of every epoch.
    gpu: Option<GpuModel>,
}

/// What one training step reports.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// The reweighted loss Σ wᵢlᵢ / Σ wᵢ of the batch.
    pub loss: f32,
    /// Per-sample (unweighted) losses lᵢ.
    pub losses: Vec<f32>,
    /// Samples whose prediction (first maximum of the logits) equals the label.
    pub correct: usize,
    /// Per group of the step's `groups` (one group when none were given): (Σ lᵢ, correct
    /// predictions, samples).
    pub groups: Vec<(f32, usize, usize)>,
}

/// Per-group (Σ loss, correct, samples) of a batch; groups None: one group.
fn group_sums(
    losses: &[f32],
    predictions: &[u32],
    labels: &[u32],
    groups: Option<&[u32]>,
) -> Vec<(f32, usize, usize)> {
    let count = groups.map_or(1, |g| g.iter().max().map_or(1, |&m| m as usize + 1));
    let mut out = vec![(0f64, 0usize, 0usize); count];
    for i in 0..losses.len() {
        let g = &mut out[groups.map_or(0, |g| g[i] as usize)];
        g.0 += losses[i] as f64;
        g.1 += (predictions[i] == labels[i]) as usize;
        g.2 += 1;
    }
    out.into_iter().map(|(l, c, n)| (l as f32, c, n)).collect()
}

/// One training step on the CPU: forward (batch norm in training mode, running statistics
/// updated), reweighted cross-entropy, backward, and the SGD step on `model`. With `dense_grads`
/// (topology-update steps) the dense weight gradients of the sparse layers are computed too and
/// returned in the `Grads` for `SparseState::update`.
pub fn cpu_step(
    model: &mut Model,
    opt: &mut Sgd,
    images: Tensor,
    labels: &[u32],
    weights: &[f32],
    groups: Option<&[u32]>,
    dense_grads: bool,
) -> Result<(StepStats, Grads)> {
    if let Some(g) = groups {
        ensure!(
            g.len() == labels.len(),
            "{} group ids for {} labels",
            g.len(),
            labels.len()
        );
    }
    let _awake = crate::device::cpu::KeepAwake::new();
    let mut tape = Tape::new();
    let x = tape.input(images);
    let logits = model.forward(&mut tape, x, true)?;
    let (loss, losses) = ops::cross_entropy(&mut tape, logits, labels, weights)?;
    let k = tape.value(logits).shape()[1];
    let predictions = argmax_rows(tape.value(logits).data(), k);
    let loss_value = tape.value(loss).data()[0];
    let mut grads = Grads::zeros(&model.params, dense_grads);
    tape.backward(loss, Tensor::full(&[1], 1.0), &model.params, &mut grads);
    drop(tape);
    opt.step(&mut model.params, &grads);
    let groups = group_sums(&losses, &predictions, labels, groups);
    Ok((
        StepStats {
            loss: loss_value,
            losses,
            correct: groups.iter().map(|g| g.1).sum(),
            groups,
        },
        grads,
    ))
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

/// Group metrics of a dataset evaluated on the GPU model (batch norm in evaluation mode), as
/// `metrics::evaluate` does on the host: per-sample losses from the logits with unit weights.
pub fn evaluate_gpu(
    gm: &mut GpuModel,
    ds: &Dataset,
    batch_size: usize,
) -> Result<(GroupMetrics, Vec<bool>)> {
    crate::metrics::evaluate_with(ds, batch_size, |images| {
        let s = images.shape().to_vec();
        gm.logits(images.data(), (s[1], s[2], s[3]))
    })
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
            gpu: None,
        })
    }

    /// Runs the training steps on `device` (`Cpu`, `Emu` or `Cuda`).
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = device;
        self.gpu = None;
        self
    }

    /// The GPU model, uploaded from the host model on first use.
    fn gpu_model(&mut self) -> Result<Option<&mut GpuModel>> {
        if self.gpu.is_none() {
            let gpu = match self.device {
                Device::Cpu => return Ok(None),
                Device::Emu => Gpu::emu(),
                Device::Cuda(i) => Gpu::cuda(i)?,
            };
            if let Some(s) = &self.sparse {
                ensure_gpu_topology(&s.config)?;
            }
            self.gpu = Some(GpuModel::upload(gpu, &self.model, &self.opt)?);
        }
        Ok(self.gpu.as_mut())
    }

    /// Evaluates on `ds` on the training device.
    fn evaluate_here(&mut self, ds: &Dataset) -> Result<(GroupMetrics, Vec<bool>)> {
        match self.gpu_model()? {
            Some(gm) => evaluate_gpu(gm, ds, 512),
            None => evaluate(&mut self.model, ds, 512),
        }
    }

    /// Continues the run saved in `dir` (its config is taken from the checkpoint).
    pub fn resume(dir: &Path, splits: &'a Splits) -> Result<Self> {
        let ck = Checkpoint::load(&dir.join(checkpoint::LAST))?;
        let mut t = Self::new(ck.config.clone(), splits)?;
        ck.restore(&mut t)?;
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

    /// JTT's first phase: a plain run of `jtt_epochs` epochs; its training errors get λ.
    fn jtt_phase(&mut self, opts: &RunOptions) -> Result<Vec<f32>> {
        let mut cfg = self.config.clone();
        cfg.reweight = Reweight::Off;
        cfg.epochs = self.config.jtt_epochs;
        let mut first = Trainer::new_on(cfg, self.splits, self.device)?;
        let sub = RunOptions {
            out: opts.out.join("jtt-phase1"),
            quiet: opts.quiet,
            stop_after_epochs: None,
        };
        first.train(&sub)?;
        let (_, correct) = first.evaluate_here(&self.splits.train)?;
        let errors = correct.iter().filter(|c| !**c).count();
        if !opts.quiet {
            eprintln!(
                "jtt: {} of {} training samples misclassified after {}; upweighting them by {}",
                errors,
                correct.len(),
                crate::reproduce::aggregate::plural(self.config.jtt_epochs, "epoch"),
                self.config.upweight
            );
        }
        Ok(correct
            .iter()
            .map(|&c| if c { 1.0 } else { self.config.upweight })
            .collect())
    }

    /// Trains to the configured number of epochs (or `stop_after_epochs` more), writing
    /// metrics.jsonl, checkpoints and, at the end, summary.json under `opts.out`.
    pub fn train(&mut self, opts: &RunOptions) -> Result<Option<Summary>> {
        ensure!(
            !opts.out.exists() || opts.out.is_dir(),
            "the output folder {} is a file",
            opts.out.display()
        );
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("cannot create output directory {}", opts.out.display()))?;
        let _lock = crate::run_lock::RunLock::acquire(&opts.out)?;
        checkpoint::write_atomic(
            &opts.out.join("config.json"),
            serde_json::to_string_pretty(&self.config)?.as_bytes(),
        )?;
        if self.config.reweight == Reweight::Jtt && self.progress.jtt_weights.is_none() {
            self.progress.jtt_weights = Some(self.jtt_phase(opts)?);
        }
        let (h, w) = (self.splits.train.height, self.splits.train.width);
        let update_every = self
            .sparse
            .as_ref()
            .filter(|s| !s.config.fix)
            .map(|s| s.config.update_every);
        if !opts.quiet && self.progress.epoch == 0 {
            eprintln!(
                "method {}: {} on {}, {} parameters stored",
                self.config.method(),
                arch_name(&self.model.config),
                self.config.dataset,
                self.model.params.stored_len()
            );
            if self.sparse.is_some() {
                let how = match (self.device, self.config.sparse.as_ref().map(|s| s.compute)) {
                    (Device::Cpu, Some(PathChoice::Auto | PathChoice::Calibrate)) => {
                        "compute path from this machine's calibration, timed once and stored: \
                         --sparse-compute calibrate times it again"
                    }
                    (Device::Cpu, _) => "compute path as --sparse-compute asks",
                    _ => "the GPU runs them on its sparse kernels",
                };
                eprintln!("masked layers ({how}):");
                eprint!("{}", dst::describe(&self.model));
            }
        }
        let weighted_loss = self.config.reweight_mode == ReweightMode::Loss;
        let sample_weights = self.sample_weights();
        let loader = LoaderConfig {
            batch_size: self.config.batch_size,
            shuffle: true,
            drop_last: false,
            augment: self.config.augment,
            sample_weights: if weighted_loss {
                None
            } else {
                sample_weights.clone()
            },
            seed: self.config.seed,
        };
        let total_steps = self.steps_per_epoch() * self.config.epochs as u64;
        let mut rng = Rng::from_state(self.progress.topology_rng);
        let stop_at = opts
            .stop_after_epochs
            .map(|n| self.progress.epoch + n)
            .unwrap_or(usize::MAX);
        let metrics_path = opts.out.join("metrics.jsonl");
        keep_epochs_before(&metrics_path, self.progress.epoch)?;
        let mut metrics_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.out.join("metrics.jsonl"))
            .with_context(|| format!("cannot open {}", opts.out.join("metrics.jsonl").display()))?;
        while self.progress.epoch < self.config.epochs && self.progress.epoch < stop_at {
            let epoch = self.progress.epoch;
            let t0 = Instant::now();
            let bar = progress_bar(
                self.steps_per_epoch(),
                epoch,
                self.config.epochs,
                opts.quiet,
            );
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            // (correct, seen) of the aligned (group 0) and conflicting (group 1) samples.
            let mut by_group = [(0usize, 0usize); 2];
            for batch in batches(&self.splits.train, &loader, epoch as u64) {
                let n = batch.len();
                if n < 2 {
                    continue; // batch norm cannot train on one sample
                }
                let train = &self.splits.train;
                let groups: Vec<u32> = batch
                    .indices
                    .iter()
                    .zip(&batch.labels)
                    .map(|(&i, &label)| (train.bias[i] as u32 != label) as u32)
                    .collect();
                let weights: Vec<f32> = match (&sample_weights, weighted_loss) {
                    (Some(w), true) => batch.indices.iter().map(|&i| w[i]).collect(),
                    _ => vec![1.0; n],
                };
                let update = self
                    .sparse
                    .as_ref()
                    .is_some_and(|s| s.is_update_step(self.progress.step, total_steps));
                let step = self.progress.step;
                let (stats, update_report) = if self.device == Device::Cpu {
                    let (stats, grads) = cpu_step(
                        &mut self.model,
                        &mut self.opt,
                        batch.images,
                        &batch.labels,
                        &weights,
                        Some(&groups),
                        update,
                    )?;
                    let report = if update {
                        let s = self
                            .sparse
                            .as_mut()
                            .expect("update step without sparse state");
                        Some(s.update(
                            &mut self.model,
                            &mut self.opt,
                            &grads,
                            step,
                            total_steps,
                            &mut rng,
                        )?)
                    } else {
                        None
                    };
                    (stats, report)
                } else {
                    let lr = self.opt.lr;
                    let shape = batch.images.shape().to_vec();
                    let gm = self.gpu_model()?.expect("a GPU device has a GPU model");
                    let stats = gm.train_step(
                        batch.images.data(),
                        (shape[1], shape[2], shape[3]),
                        &batch.labels,
                        &weights,
                        Some(&groups),
                        lr,
                        update,
                    )?;
                    let report = if update {
                        Some(self.gpu_topology_update(step, total_steps)?)
                    } else {
                        None
                    };
                    (stats, report)
                };
                correct += stats.correct;
                for (acc, &(_, c, k)) in by_group.iter_mut().zip(&stats.groups) {
                    acc.0 += c;
                    acc.1 += k;
                }
                loss_sum += stats.losses.iter().map(|&l| l as f64).sum::<f64>();
                seen += n;
                if let Some((ustats, rate)) = update_report {
                    if !opts.quiet {
                        bar.suspend(|| eprintln!("step {}: topology update, death rate {:.4}, {} weights pruned and regrown", step, rate, ustats.pruned));
                    }
                }
                self.progress.step += 1;
                self.progress.images_seen += n as u64;
                let loss_v = loss_sum / seen as f64;
                if !loss_v.is_finite() {
                    bail!("training diverged at epoch {epoch}, step {} (loss {loss_v}); try a lower --lr", self.progress.step);
                }
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} {:.0} img/s",
                    loss_v,
                    correct as f64 / seen as f64,
                    seen as f64 / t0.elapsed().as_secs_f64()
                ));
                bar.inc(1);
            }
            bar.finish_and_clear();
            let train_secs = t0.elapsed().as_secs_f64();
            // On a GPU device the host model is refreshed once per epoch, here: evaluation runs
            // on the GPU model, while checkpoints, density, in-time statistics and the FLOPs
            // report read the host copy (weights, momentum, BN statistics, sparse structure).
            if let Some(gm) = &self.gpu {
                gm.download(&mut self.model, &mut self.opt)?;
            }
            let (valid, _) = self.evaluate_here(&self.splits.valid)?;
            // A finite training loss can still come with overflowing logits on held-out data;
            // such a run's accuracies mean nothing, and its summary could not hold the loss.
            ensure!(
                valid.loss.is_finite(),
                "training diverged at epoch {epoch}: the validation loss is {}; try a lower --lr",
                valid.loss
            );
            // Selection as the reference: the validation worst group (the lower of aligned and
            // conflicting) when reweighting, overall validation accuracy otherwise. Ties go to
            // the higher overall accuracy; the 1e-6 weight keeps that a tie-break only.
            let score = selection_score(self.config.reweight, &valid);
            let best = score > self.progress.best_score;
            let test = if best {
                Some(self.evaluate_here(&self.splits.test)?.0)
            } else {
                None
            };
            if let Some(t) = test.as_ref().filter(|t| !t.loss.is_finite()) {
                bail!(
                    "training diverged at epoch {epoch}: the test loss is {}; try a lower --lr",
                    t.loss
                );
            }
            if best {
                self.progress.best_score = score;
                self.progress.best_epoch = epoch;
                self.progress.best_valid = Some(valid.clone());
                self.progress.best_test = test.clone();
            }
            let factor = self.progress.plateau.observe(valid.loss);
            if factor != 1.0 {
                self.progress.lr *= factor;
                self.opt.lr = self.progress.lr;
                // (the GPU model takes the learning rate with every step)
                if !opts.quiet {
                    eprintln!(
                        "validation loss has not improved for {} epochs: learning rate now {:e}",
                        self.progress.plateau.patience + 1,
                        self.progress.lr
                    );
                }
            }
            let record = EpochRecord {
                epoch,
                step: self.progress.step,
                lr: self.progress.lr,
                train_loss: loss_sum / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                train_aligned_accuracy: (by_group[0].1 > 0)
                    .then(|| by_group[0].0 as f64 / by_group[0].1 as f64),
                train_conflicting_accuracy: (by_group[1].1 > 0)
                    .then(|| by_group[1].0 as f64 / by_group[1].1 as f64),
                images_per_second: seen as f64 / train_secs,
                density: dst::global_density(&self.model),
                fired_fraction: self.sparse.as_ref().map(|s| s.fired_fraction(&self.model)),
                valid,
                test,
                best,
            };
            writeln!(metrics_file, "{}", serde_json::to_string(&record)?)?;
            if !opts.quiet {
                eprintln!(
                    "epoch {:>3}/{}: loss {:.4} train acc {:.3} | valid acc {:.3} aligned {:.3} conflicting {:.3} worst group {:.3}{} | {:.0} img/s",
                    epoch + 1,
                    self.config.epochs,
                    record.train_loss,
                    record.train_accuracy,
                    record.valid.accuracy,
                    record.valid.aligned_accuracy,
                    record.valid.conflicting_accuracy,
                    record.valid.worst_group_accuracy,
                    if best { " (best)" } else { "" },
                    record.images_per_second
                );
            }
            self.progress.epoch += 1;
            self.progress.wall_seconds += t0.elapsed().as_secs_f64();
            self.progress.topology_rng = rng.state();
            // best before last: a run stopped between the two repeats this epoch on resume and
            // writes the same best again, while the other order could leave a stale best file
            // behind a last one that already names this epoch as the best.
            if best {
                Checkpoint::capture(self).save(&opts.out.join(checkpoint::BEST))?;
            }
            Checkpoint::capture(self).save(&opts.out.join(checkpoint::LAST))?;
        }
        if self.progress.epoch < self.config.epochs {
            return Ok(None);
        }
        let flops = FlopsReport::new(&self.model, h, w, update_every);
        let summary = Summary {
            method: self.config.method().into(),
            config: self.config.clone(),
            best_epoch: self.progress.best_epoch,
            valid: self.progress.best_valid.clone().unwrap_or_default(),
            test: self.progress.best_test.clone().unwrap_or_default(),
            density: dst::global_density(&self.model),
            inference_flops_per_image: flops.sparse_inference,
            dense_inference_flops_per_image: flops.dense_inference,
            train_flops_per_image: flops.sparse_train,
            dense_train_flops_per_image: flops.dense_train,
            train_flops_total: flops.sparse_train * self.progress.images_seen as f64,
            wall_seconds: self.progress.wall_seconds,
            compute_paths: dst::compute_paths(&self.model),
            device: self.device.to_string(),
        };
        checkpoint::write_atomic(
            &opts.out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        if !opts.quiet {
            eprint!("{}", flops.render());
        }
        Ok(Some(summary))
    }
}

impl Trainer<'_> {
    /// The topology update of a GPU step: prune and regrow on the device with this step's dense
    /// gradients (`SparseState::update`'s rule and death rate), then the new positions come back
    /// to the host (small) so the in-time statistics stay exact.
    fn gpu_topology_update(&mut self, step: u64, total: u64) -> Result<(UpdateStats, f64)> {
        let s = self
            .sparse
            .as_ref()
            .expect("update step without sparse state");
        let c = &s.config;
        let rate = death_rate(c.death_rate, c.death_rate_end, step, total, c.decay);
        let gm = self.gpu.as_mut().expect("GPU step without a GPU model");
        let stats = gm.topology_update(rate)?;
        let ids = self.model.params.weight_ids();
        let s = self.sparse.as_mut().expect("checked above");
        for (li, id) in ids.into_iter().enumerate() {
            if let Some(f) = &mut s.fired[li] {
                f.record_positions(&gm.positions(id.0)?);
            }
        }
        Ok((stats, rate))
    }
}

/// Drops the metrics lines of epochs ≥ `epoch` (written by a run killed after its metrics line but
/// before its checkpoint), so a resumed run neither duplicates nor skips an epoch's line.
fn keep_epochs_before(path: &Path, epoch: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<EpochRecord>(l).is_ok_and(|r| r.epoch < epoch))
        .collect();
    if kept.len() != text.lines().count() {
        let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
        checkpoint::write_atomic(path, body.as_bytes())?;
    }
    Ok(())
}

fn arch_name(m: &ModelConfig) -> String {
    match m.arch {
        Arch::Cnn => format!("CNN (width {})", m.width),
        Arch::Resnet18 => format!("ResNet-18 (width {})", m.width),
    }
}

fn progress_bar(len: u64, epoch: usize, epochs: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

/// The validation score that picks the best epoch: the reference's rule (see the call).
pub fn selection_score(reweight: Reweight, valid: &GroupMetrics) -> f64 {
    match reweight {
        Reweight::Off => valid.accuracy,
        _ => valid.worst_group_accuracy + 1e-6 * valid.accuracy,
    }
}

/// A markdown table of a summary's per-group test accuracies, with the field's metrics
/// (`unbiased` is the whole test split's accuracy where that split is unbiased).
pub fn render_summary(s: &Summary) -> String {
    let t = &s.test;
    let (aligned, conflicting) = t.group_percentages();
    let unbiased = if crate::data::registry::test_split_is_unbiased(&s.config.dataset) {
        format!("{:.2}", 100.0 * t.accuracy)
    } else {
        "n/a".into()
    };
    let (worst, label_bias) = t.worst_percentages();
    format!(
        "| method | density | unbiased | aligned | conflicting | worst group | label × bias worst | inference MFLOPs/img | train FLOPs |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         | {} | {:.4} | {unbiased} | {aligned} | {conflicting} | {worst} | {label_bias} | {:.3} | {:.3e} |\n",
        s.method,
        s.density,
        s.inference_flops_per_image / 1e6,
        s.train_flops_total
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::GroupCounter;

    /// Validation metrics of an epoch: `aligned` and `conflicting` right out of 100 each, and
    /// one tiny (label, bias) group of two samples that is right `tiny` times.
    fn valid(aligned: usize, conflicting: usize, tiny: usize) -> GroupMetrics {
        let mut c = GroupCounter::default();
        for i in 0..100 {
            c.add(0, 0, i < aligned, 0.0);
            c.add(0, 1, i < conflicting, 0.0);
        }
        for i in 0..2 {
            c.add(5, 7, i < tiny, 0.0);
        }
        c.finish()
    }

    /// Index of the epoch the trainer keeps: the first with the highest score.
    fn selected(reweight: Reweight, epochs: &[GroupMetrics]) -> usize {
        let mut best = (f64::NEG_INFINITY, 0);
        for (i, v) in epochs.iter().enumerate() {
            let s = selection_score(reweight, v);
            if s > best.0 {
                best = (s, i);
            }
        }
        best.1
    }

    #[test]
    fn selection_uses_the_two_group_worst_when_reweighting() {
        let epochs = [
            valid(100, 55, 0), // best overall accuracy (155 of 202)
            valid(90, 60, 0),  // best worst group (conflicting 60 of 102)
            valid(80, 57, 2),  // the only epoch whose tiny group is right (59 of 102)
        ];
        assert_eq!(selected(Reweight::Off, &epochs), 0);
        assert_eq!(selected(Reweight::Labels, &epochs), 1);
        // The tiny group never decides: with it at 0 % in every epoch, the label × bias worst
        // group would read 0 throughout and select on a constant.
        assert!(epochs.iter().all(|e| e.label_bias_worst_accuracy.is_none()));
        // Ties on the worst group go to the higher overall accuracy.
        let tied = [valid(80, 60, 0), valid(95, 60, 0)];
        assert_eq!(selected(Reweight::Labels, &tied), 1);
    }
}
