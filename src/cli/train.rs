//! `rest train`: its options (`TrainArgs`, and `TrainLine` to read a train command line on its
//! own), the run's configuration from them, and the command itself (new run or `--resume`).

use super::device::choose_device;
use super::source::{load_splits, synthetic_train_of, DataSource, SYNTHETIC_TRAIN};
use crate::checkpoint::Checkpoint;
use crate::data::loader::Augment;
use crate::device::Device;
use crate::dst::{PathChoice, SparseConfig};
use crate::nn::{Arch, ModelConfig};
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

/// `rest train`: a new run, or `--resume` of a saved one.
pub fn run(args: &TrainArgs) -> Result<()> {
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
