//! The command-line surface: argument structs (clap) and what each subcommand does.

use crate::checkpoint::Checkpoint;
use crate::data::loader::Augment;
use crate::data::synthetic::{self, SyntheticConfig};
use crate::data::Splits;
use crate::device::{self, Device, DeviceRequest};
use crate::dst::{PathChoice, SparseConfig};
use crate::metrics::{evaluate, GroupMetrics};
use crate::nn::{Arch, Model, ModelConfig};
use crate::sparse::density::DensityRule;
use crate::sparse::schedule::DecaySchedule;
use crate::sparse::topology::{GrowRule, PruneRule};
use crate::train::{render_summary, Reweight, ReweightMode, RunOptions, TrainConfig, Trainer};
use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;

/// The four methods of the paper's comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// REST: sparse training with bias-conflicting samples upweighted.
    Rest,
    /// Sparse training (RigL-style) without reweighting.
    Sparse,
    /// Dense training with reweighting.
    Reweight,
    /// Dense training, plain empirical risk.
    Vanilla,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DataSource {
    #[arg(long, default_value = "cmnist", help = crate::data::DATASET_HELP)]
    pub dataset: String,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0, help = crate::data::RATIO_HELP)]
    pub ratio: f64,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = crate::data::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// What to train: REST (default), sparse without reweighting, dense with reweighting, or dense.
    #[arg(long, value_enum, default_value_t = Method::Rest)]
    pub method: Method,
    #[command(flatten)]
    pub source: DataSource,
    /// Model; default: cnn for synthetic and cmnist, resnet18 otherwise.
    #[arg(long, value_enum)]
    pub model: Option<Arch>,
    /// Channels of the first stage.
    #[arg(long, allow_negative_numbers = true, default_value_t = 64)]
    pub width: usize,
    /// Training epochs (the paper uses 100: see --paper).
    #[arg(long, allow_negative_numbers = true, default_value_t = 4)]
    pub epochs: usize,
    /// The reference's full schedule: 100 epochs.
    #[arg(long, conflicts_with = "epochs")]
    pub paper: bool,
    #[arg(long, allow_negative_numbers = true, default_value_t = 256)]
    pub batch_size: usize,
    /// Learning rate; default: 0.01 for the CNN, 0.001 for ResNet-18 (the reference's).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Global density of the masked weights for sparse methods (1 = dense); default 0.05.
    #[arg(long, allow_negative_numbers = true)]
    pub density: Option<f64>,
    /// How the global density is spread over layers.
    #[arg(long, value_enum, default_value_t = DensityRule::Erk)]
    pub density_rule: DensityRule,
    /// Steps between topology updates (ΔT).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1000)]
    pub update_every: u64,
    /// Fraction of active weights pruned and regrown at the first update.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.5)]
    pub death_rate: f64,
    /// Death rate at the end of training.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.005)]
    pub death_rate_end: f64,
    #[arg(long, value_enum, default_value_t = DecaySchedule::Cosine)]
    pub decay: DecaySchedule,
    #[arg(long, value_enum, default_value_t = PruneRule::Magnitude)]
    pub prune: PruneRule,
    #[arg(long, value_enum, default_value_t = GrowRule::Gradient)]
    pub grow: GrowRule,
    /// Stop topology updates after this fraction of training (1 = never).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub stop_fraction: f64,
    /// Static sparse training: keep the initial mask.
    #[arg(long)]
    pub fix: bool,
    /// Sparse layers on sparse kernels, on the dense GEMM over the masked weight, or per layer
    /// whichever is faster here (auto: timed once per machine and layer shape, stored in the
    /// cache folder — $REST_CACHE_DIR, else $XDG_CACHE_HOME/rest or ~/.cache/rest — and reused,
    /// so runs repeat; calibrate: time again and store). The choice is printed and saved with
    /// the run.
    #[arg(long, value_enum, default_value_t = PathChoice::Auto)]
    pub sparse_compute: PathChoice,
    /// Override the method's reweighting: off, labels (bias labels), jtt (no bias labels).
    #[arg(long, value_enum)]
    pub reweight: Option<Reweight>,
    /// λ: the weight of bias-conflicting samples (the reference pairs 10, 30, 50, 80 with 0.5, 1, 2, 5 %).
    #[arg(long, allow_negative_numbers = true, default_value_t = 80.0)]
    pub upweight: f32,
    /// Apply λ by weighted sampling (the reference's way) or inside the loss.
    #[arg(long, value_enum, default_value_t = ReweightMode::Sampler)]
    pub reweight_mode: ReweightMode,
    /// Epochs of JTT's first, plain phase.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1)]
    pub jtt_epochs: usize,
    /// auto | cpu | cuda[:N] | emu (env REST_DEVICE).
    #[arg(long, env = "REST_DEVICE", default_value = "auto")]
    pub device: String,
    #[arg(long, allow_negative_numbers = true, default_value_t = 41)]
    pub seed: u64,
    /// Output directory [default: runs/<dataset>-<method>-r<ratio>-d<density>-s<seed>, or when
    /// that exists the next free one numbered -2, -3, …]. A folder that holds a run is refused:
    /// continue it with --resume.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in DIR with its saved configuration (only --device, --data-dir and
    /// --quiet go with it; --synthetic-train too, for runs saved before the split size was kept).
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "method", "dataset", "ratio", "model", "width", "epochs", "paper", "batch_size", "lr",
        "momentum", "weight_decay", "density", "density_rule", "update_every", "death_rate",
        "death_rate_end", "decay", "prune", "grow", "stop_fraction", "fix", "sparse_compute",
        "reweight", "upweight", "reweight_mode", "jtt_epochs", "seed", "out",
    ])]
    pub resume: Option<PathBuf>,
    /// Samples in the synthetic training split.
    #[arg(long, allow_negative_numbers = true, default_value_t = SYNTHETIC_TRAIN)]
    pub synthetic_train: usize,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

/// The largest synthetic training split generated (its pixels, in bytes).
const MAX_SYNTHETIC_BYTES: usize = 4 << 30;

/// Loads the three splits of a dataset.
pub fn load_splits(source: &DataSource, seed: u64, synthetic_train: usize) -> Result<Splits> {
    crate::data::gen::check_ratio(source.ratio)?;
    if source.dataset == "synthetic" {
        // Generated in memory: refuse a size that cannot be held rather than abort on it.
        let image = 3 * synthetic::SIZE * synthetic::SIZE;
        ensure!(
            synthetic_train
                .checked_mul(image)
                .is_some_and(|b| b <= MAX_SYNTHETIC_BYTES),
            "--synthetic-train {synthetic_train} is too large: at most {} samples ({} GiB)",
            MAX_SYNTHETIC_BYTES / image,
            MAX_SYNTHETIC_BYTES >> 30
        );
        let cfg = SyntheticConfig {
            train: synthetic_train,
            conflict_ratio: source.ratio / 100.0,
            seed,
            ..SyntheticConfig::default()
        };
        return synthetic::generate(&cfg);
    }
    crate::data::open(&source.dataset, source.ratio, &source.data_dir)
}

fn default_arch(dataset: &str) -> Arch {
    match dataset {
        "synthetic" | "cmnist" => Arch::Cnn,
        _ => Arch::Resnet18,
    }
}

impl TrainArgs {
    /// The run's configuration, with the method's and dataset's defaults filled in.
    pub fn config(&self) -> Result<TrainConfig> {
        let sparse_method = matches!(self.method, Method::Rest | Method::Sparse);
        let density = match (sparse_method, self.density) {
            (true, d) => d.unwrap_or(0.05),
            (false, None) => 1.0,
            (false, Some(1.0)) => 1.0,
            (false, Some(d)) => bail!(
                "--method {:?} trains dense; --density {d} needs --method rest or sparse",
                self.method
            ),
        };
        let reweight = self.reweight.unwrap_or(match self.method {
            Method::Rest | Method::Reweight => Reweight::Labels,
            Method::Sparse | Method::Vanilla => Reweight::Off,
        });
        let arch = self
            .model
            .unwrap_or_else(|| default_arch(&self.source.dataset));
        let sparse = (density < 1.0).then_some(SparseConfig {
            density,
            rule: self.density_rule,
            update_every: self.update_every,
            death_rate: self.death_rate,
            death_rate_end: self.death_rate_end,
            decay: self.decay,
            prune: self.prune,
            grow: self.grow,
            stop_fraction: self.stop_fraction,
            fix: self.fix,
            compute: self.sparse_compute,
        });
        if !(density > 0.0 && density <= 1.0) {
            bail!("--density must be in (0, 1], got {density}");
        }
        let config = TrainConfig {
            dataset: self.source.dataset.clone(),
            ratio: self.source.ratio,
            model: ModelConfig {
                arch,
                width: self.width,
                in_channels: 3,
                num_classes: 10,
            },
            epochs: if self.paper { 100 } else { self.epochs },
            batch_size: self.batch_size,
            lr: self
                .lr
                .unwrap_or(if arch == Arch::Cnn { 0.01 } else { 0.001 }),
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            sparse,
            reweight,
            upweight: self.upweight,
            reweight_mode: self.reweight_mode,
            jtt_epochs: self.jtt_epochs,
            augment: if self.source.dataset == "cifar10c" {
                Augment::CropFlip { pad: 4 }
            } else {
                Augment::None
            },
            seed: self.seed,
            synthetic_train: (self.source.dataset == "synthetic").then_some(self.synthetic_train),
        };
        config.validate()?;
        Ok(config)
    }

    /// The options given that this run does not use (each differs from its default), so that
    /// they are named rather than silently ignored.
    pub fn ignored_options(&self, config: &TrainConfig) -> Vec<&'static str> {
        let d = TrainLine::defaults();
        let mut candidates = Vec::new();
        // Dense training has no topology, and a static mask (--fix) never updates it.
        if config.sparse.as_ref().is_none_or(|s| s.fix) {
            candidates.extend([
                ("--update-every", self.update_every != d.update_every),
                ("--death-rate", self.death_rate != d.death_rate),
                ("--death-rate-end", self.death_rate_end != d.death_rate_end),
                ("--decay", self.decay != d.decay),
                ("--prune", self.prune != d.prune),
                ("--grow", self.grow != d.grow),
                ("--stop-fraction", self.stop_fraction != d.stop_fraction),
            ]);
        }
        if config.sparse.is_none() {
            candidates.extend([
                ("--density-rule", self.density_rule != d.density_rule),
                ("--fix", self.fix != d.fix),
                ("--sparse-compute", self.sparse_compute != d.sparse_compute),
            ]);
        }
        if config.reweight == Reweight::Off {
            candidates.extend([
                ("--upweight", self.upweight != d.upweight),
                ("--reweight-mode", self.reweight_mode != d.reweight_mode),
            ]);
        }
        candidates.extend([
            (
                "--jtt-epochs",
                config.reweight != Reweight::Jtt && self.jtt_epochs != d.jtt_epochs,
            ),
            (
                "--synthetic-train",
                config.synthetic_train.is_none() && self.synthetic_train != d.synthetic_train,
            ),
        ]);
        candidates
            .into_iter()
            .filter(|&(_, given)| given)
            .map(|(name, _)| name)
            .collect()
    }
}

/// `rest train`'s options on their own, to read a train command line as `rest train` would (its
/// defaults; the arguments `rest reproduce` gives a run).
#[derive(clap::Parser)]
pub struct TrainLine {
    #[command(flatten)]
    pub args: TrainArgs,
}

impl TrainLine {
    /// The options of an empty command line: every default, in one place.
    fn defaults() -> TrainArgs {
        use clap::Parser;
        Self::try_parse_from(["train"])
            .expect("rest train's defaults parse")
            .args
    }
}

/// The default size of the synthetic training split.
const SYNTHETIC_TRAIN: usize = 6000;

/// The synthetic training split's size a run was trained on (runs saved before the size was
/// recorded used the default).
fn synthetic_train_of(config: &TrainConfig) -> usize {
    config.synthetic_train.unwrap_or(SYNTHETIC_TRAIN)
}

fn choose_device(spec: &str, quiet: bool) -> Result<Device> {
    let req: DeviceRequest = spec.parse()?;
    let (dev, why) = device::resolve(req)?;
    if !quiet {
        eprintln!("device: {dev} ({why})");
    }
    Ok(dev)
}

pub fn train(args: &TrainArgs) -> Result<()> {
    let dev = choose_device(&args.device, args.quiet)?;
    let default_out = |c: &TrainConfig| {
        let d = c.sparse.as_ref().map_or(1.0, |s| s.density);
        PathBuf::from(format!(
            "runs/{}-{}-r{}-d{}-s{}",
            c.dataset.replace([':', '/'], "_"),
            c.method(),
            c.ratio,
            d,
            c.seed
        ))
    };
    let summary = if let Some(dir) = &args.resume {
        if !dir.join(crate::checkpoint::LAST).is_file() && dir.join("config.json").is_file() {
            bail!(
                "{} holds no checkpoint: the run stopped before its first checkpoint was written \
                 (or, with --reweight jtt, in its first phase); start it again with its original \
                 command",
                dir.display()
            );
        }
        if let Some(s) = finished_summary(dir) {
            if !args.quiet {
                eprintln!("{} has finished: its summary follows", dir.display());
            }
            println!(
                "test accuracy at the best validation epoch ({}):\n{}",
                s.best_epoch + 1,
                render_summary(&s)
            );
            return Ok(());
        }
        let ck = Checkpoint::load(&dir.join(crate::checkpoint::LAST))
            .with_context(|| format!("cannot resume from {}", dir.display()))?;
        let source = DataSource {
            dataset: ck.config.dataset.clone(),
            ratio: ck.config.ratio,
            data_dir: args.source.data_dir.clone(),
        };
        let synthetic_train = match ck.config.synthetic_train {
            Some(saved) => {
                ensure!(
                    args.synthetic_train == SYNTHETIC_TRAIN || args.synthetic_train == saved,
                    "{} was trained with --synthetic-train {saved}; it continues on the same data",
                    dir.display()
                );
                saved
            }
            None => args.synthetic_train,
        };
        let splits = load_splits(&source, ck.config.seed, synthetic_train)?;
        let mut t = Trainer::resume(dir, &splits)?.on_device(dev);
        if !args.quiet {
            if t.progress.epoch < t.config.epochs {
                eprintln!(
                    "resuming {} at epoch {} of {}",
                    dir.display(),
                    t.progress.epoch + 1,
                    t.config.epochs
                );
            } else {
                eprintln!(
                    "{} has finished its {} epoch{} but has no summary yet: writing it",
                    dir.display(),
                    t.config.epochs,
                    if t.config.epochs == 1 { "" } else { "s" }
                );
            }
        }
        t.train(&RunOptions {
            out: dir.clone(),
            quiet: args.quiet,
            stop_after_epochs: None,
        })?
    } else {
        let config = args.config()?;
        let mut ignored = args.ignored_options(&config);
        if let (Some(s), true) = (&config.sparse, dev != Device::Cpu) {
            // Refused before the output folder is made, rather than at the first step.
            crate::train::ensure_gpu_topology(s)?;
            if s.compute != PathChoice::Auto {
                ignored.push("--sparse-compute (the GPU runs sparse layers on sparse kernels)");
            }
        }
        if !ignored.is_empty() && !args.quiet {
            eprintln!(
                "warning: {} {} no effect on a {} run",
                ignored.join(", "),
                if ignored.len() == 1 { "has" } else { "have" },
                config.method()
            );
        }
        let splits = load_splits(&args.source, config.seed, synthetic_train_of(&config))?;
        let train = &splits.train;
        if config.reweight == Reweight::Labels && !args.quiet && train.num_conflicting() == 0 {
            eprintln!(
                "warning: the {} training samples hold no bias-conflicting one: --reweight labels \
                 has nothing to upweight (raise --ratio or the number of samples)",
                train.len()
            );
        }
        if let Some(out) = &args.out {
            // Refused before the model is built and its paths timed; the default folder is
            // claimed once the model fits.
            crate::run_folder::claim(Some(out), out, crate::checkpoint::LAST)?;
        }
        let default = default_out(&config);
        let mut t = Trainer::new_on(config, &splits, dev)?;
        let (out, numbered) =
            crate::run_folder::claim(args.out.as_deref(), &default, crate::checkpoint::LAST)?;
        if numbered {
            eprintln!(
                "{} already exists: this run goes to {}",
                default.display(),
                out.display()
            );
        }
        t.train(&RunOptions {
            out: out.clone(),
            quiet: args.quiet,
            stop_after_epochs: None,
        })?
    };
    if let Some(s) = summary {
        println!(
            "test accuracy at the best validation epoch ({}):\n{}",
            s.best_epoch + 1,
            render_summary(&s)
        );
    }
    Ok(())
}

/// The summary of the run in `dir` if it has finished (summary.json is written only after the
/// last epoch): resuming it then only prints the summary and writes nothing.
fn finished_summary(dir: &std::path::Path) -> Option<crate::train::Summary> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint written by `rest train` (best.safetensors or last.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset to evaluate on [default: the one the model was trained on]. Dataset: synthetic |
    /// cmnist | cifar10c | bffhq | folder:DIR (the debiasing folder layout).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Percentage of bias-conflicting training samples [default: the run's].
    #[arg(long, allow_negative_numbers = true)]
    pub ratio: Option<f64>,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = crate::data::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// auto | cpu | cuda[:N] | emu (env REST_DEVICE).
    #[arg(long, env = "REST_DEVICE", default_value = "auto")]
    pub device: String,
}

fn metrics_row(split: &str, m: &GroupMetrics) -> String {
    let (aligned, conflicting) = m.group_percentages();
    let (worst, label_bias) = m.worst_percentages();
    format!(
        "| {split} | {} | {:.2} | {aligned} | {conflicting} | {worst} | {label_bias} |\n",
        m.samples,
        100.0 * m.accuracy,
    )
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let dev = choose_device(&args.device, false)?;
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let ck = Checkpoint::load(&args.checkpoint)?;
    let source = DataSource {
        dataset: args
            .dataset
            .clone()
            .unwrap_or_else(|| ck.config.dataset.clone()),
        ratio: args.ratio.unwrap_or(ck.config.ratio),
        data_dir: args.data_dir.clone(),
    };
    let splits = load_splits(&source, ck.config.seed, synthetic_train_of(&ck.config))?;
    let mut mc = ck.config.model.clone();
    mc.in_channels = splits.test.channels;
    mc.num_classes = splits.test.num_classes;
    let mut model = Model::new(&mc, ck.config.seed)?;
    ck.restore_model(&mut model).with_context(|| {
        format!(
            "{} does not fit a model for {}",
            args.checkpoint.display(),
            source.dataset
        )
    })?;
    println!(
        "{} ({}, trained {}, density {:.4})",
        args.checkpoint.display(),
        ck.config.method(),
        crate::text::plural(ck.progress.epoch, "epoch"),
        crate::dst::global_density(&model)
    );
    let mut table = String::from("| split | samples | accuracy | aligned | conflicting | worst group | label × bias worst |\n|---|---|---|---|---|---|---|\n");
    // On a GPU device the model runs there (the optimiser state is not needed: zeros).
    let mut gm = match dev {
        Device::Cpu => None,
        Device::Emu => Some(crate::device::gpu::Gpu::emu()),
        Device::Cuda(i) => Some(crate::device::gpu::Gpu::cuda(i)?),
    }
    .map(|gpu| {
        let opt = crate::optim::Sgd::new(&model.params, 1.0, 0.0, 0.0);
        crate::device::gpu::model::GpuModel::upload(gpu, &model, &opt)
    })
    .transpose()?;
    for (name, ds) in [("valid", &splits.valid), ("test", &splits.test)] {
        let spin = crate::progress::spinner(&format!("evaluating on {name} ({} images)", ds.len()));
        let m = match &mut gm {
            Some(gm) => crate::train::evaluate_gpu(gm, ds, args.batch_size)?.0,
            None => evaluate(&mut model, ds, args.batch_size)?.0,
        };
        spin.finish_and_clear();
        table += &metrics_row(name, &m);
    }
    print!("{table}");
    if crate::data::registry::test_split_is_unbiased(&source.dataset) {
        println!(
            "(the {} test split is unbiased: its accuracy is the unbiased accuracy)",
            source.dataset
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// auto | cpu | cuda[:N] | emu.
    #[arg(long, env = "REST_DEVICE", default_value = "auto")]
    pub device: String,
    /// Run every CUDA kernel against its CPU twin on random inputs on the device (cuda or emu)
    /// and print a pass/fail table; fails when any kernel does.
    #[arg(long)]
    pub check: bool,
    /// Seed of the check's random inputs.
    #[arg(long, default_value_t = 1, requires = "check")]
    pub check_seed: u64,
    /// Compile every kernel file with NVRTC into DIR (cubins and PTX, with a manifest) for a
    /// machine without NVRTC, which runs them with REST_KERNEL_DIR=DIR. Needs no GPU.
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    pub export_kernels: Option<std::path::PathBuf>,
    /// Architectures for --export-kernels, comma-separated: sm_XY writes a cubin and the PTX of
    /// compute_XY beside it; compute_XY writes PTX only.
    #[arg(long, value_name = "LIST", default_value = device::gpu::info::DEFAULT_EXPORT_ARCHS, requires = "export_kernels")]
    pub arch: String,
}

/// The CUDA backend a device request names, for commands that need one (`--check`, the GPU
/// bench): `emu`, `cuda[:N]` (an error saying why when it is unusable), or for `auto` GPU 0 when
/// it is usable, else the emulator — with the reason in words. `cpu` is refused.
pub fn gpu_for(spec: &str, what: &str) -> Result<(device::gpu::Gpu, String)> {
    use device::gpu::Gpu;
    use device::Device;
    Ok(match spec.parse::<DeviceRequest>()? {
        DeviceRequest::Exact(Device::Cpu) => bail!(
            "{what} runs the CUDA kernels: it needs --device cuda[:N] (a GPU) or emu (the \
             emulator), not cpu"
        ),
        DeviceRequest::Exact(Device::Emu) => (Gpu::emu(), "requested with --device emu".into()),
        DeviceRequest::Exact(Device::Cuda(i)) => {
            let gpu = Gpu::cuda(i)
                .with_context(|| format!("--device cuda:{i}: the GPU is not usable"))?;
            (gpu, format!("requested with --device cuda:{i}"))
        }
        DeviceRequest::Auto => match Gpu::cuda(0) {
            Ok(gpu) => (gpu, "auto: GPU 0 is usable".into()),
            Err(e) => (
                Gpu::emu(),
                format!("auto: no usable GPU ({e:#}), so the emulator"),
            ),
        },
    })
}

pub fn device(args: &DeviceArgs) -> Result<()> {
    if let Some(dir) = &args.export_kernels {
        return device::gpu::info::export_kernels(dir, &args.arch);
    }
    device::gpu::info::print_environment();
    println!("CPU threads: {}", rayon::current_num_threads());
    if !args.check {
        let (dev, why) = device::resolve(args.device.parse()?)?;
        println!("backend: {dev} ({why})");
        if let Device::Cuda(i) = dev {
            device::gpu::info::print_gpu(i)?;
        }
        return Ok(());
    }
    let (gpu, why) = gpu_for(&args.device, "--check")?;
    println!("check on: {} ({why})", gpu.describe());
    if let device::gpu::Gpu::Cuda(c) = &gpu {
        for (k, v) in c.report() {
            println!("{k}: {v}");
        }
    }
    if gpu.is_emu() {
        println!(
            "(the emulator runs the kernels' own code on the CPU; on a GPU the same check \
                  also covers the compiler and the hardware)"
        );
    }
    let t = std::time::Instant::now();
    let rows = device::gpu::check::run(&gpu, args.check_seed)?;
    print!("{}", device::gpu::check::render(&rows));
    let failed = rows.iter().filter(|r| !r.pass).count();
    let kernels: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.kernel).collect();
    println!(
        "{} checks of {} kernels in {:.1} s: {}",
        rows.len(),
        kernels.len(),
        t.elapsed().as_secs_f64(),
        if failed == 0 {
            "all pass".to_string()
        } else {
            format!("{failed} FAIL")
        }
    );
    ensure!(
        failed == 0,
        "{failed} of {} kernel checks failed on {}",
        rows.len(),
        gpu.describe()
    );
    Ok(())
}
