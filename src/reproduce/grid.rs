//! The paper's experiment grid: which runs, with which hyper-parameters, under which key.

use crate::cli::train::TrainLine;
use crate::train::TrainConfig;
use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// The densities of the paper's sparse runs.
pub const PAPER_DENSITIES: [f64; 14] = [
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
];

/// The four methods of the comparison, in the order tables list them.
pub const METHODS: [&str; 4] = ["vanilla", "reweight", "sparse", "rest"];

/// True for the methods that train sparse (and so take a density).
pub fn is_sparse_method(method: &str) -> bool {
    matches!(method, "sparse" | "rest")
}

/// λ for a conflict ratio, paired as the reference's README does (0.5 → 10, 1 → 30, 2 → 50, 5 → 80).
pub fn paired_upweight(ratio: f64) -> Option<f32> {
    [(0.5, 10.0), (1.0, 30.0), (2.0, 50.0), (5.0, 80.0)]
        .iter()
        .find(|(r, _)| (r - ratio).abs() < 1e-9)
        .map(|&(_, l)| l)
}

/// The reference hyper-parameters of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub model: &'static str,
    pub width: usize,
    pub lr: f64,
    pub epochs: usize,
    pub ratios: Vec<f64>,
}

pub fn preset(dataset: &str) -> Result<Preset> {
    Ok(match dataset {
        "cmnist" => Preset {
            model: "cnn",
            width: 64,
            lr: 0.01,
            epochs: 100,
            ratios: vec![0.5, 1.0, 2.0, 5.0],
        },
        "cifar10c" => Preset {
            model: "resnet18",
            width: 64,
            lr: 0.001,
            epochs: 100,
            ratios: vec![0.5, 1.0, 2.0, 5.0],
        },
        // BFFHQ has one bias-conflicting fraction (0.5 %).
        "bffhq" => Preset {
            model: "resnet18",
            width: 64,
            lr: 0.001,
            epochs: 100,
            ratios: vec![0.5],
        },
        // The built-in coloured-glyph set: for tests and trying the pipeline without data.
        "synthetic" => Preset {
            model: "cnn",
            width: 64,
            lr: 0.01,
            epochs: 4,
            ratios: vec![1.0, 5.0],
        },
        other => bail!("unknown dataset '{other}': expected cmnist, cifar10c, bffhq or synthetic"),
    })
}

/// One run of the grid: everything that decides its result. Its canonical JSON (fields in this
/// order) is hashed into the run's key, so a changed hyper-parameter is a different run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub dataset: String,
    pub method: String,
    /// Percentage of bias-conflicting training samples.
    pub ratio: f64,
    /// Global density (1 for the dense methods).
    pub density: f64,
    /// λ, the weight of bias-conflicting samples.
    pub upweight: f32,
    pub seed: u64,
    pub epochs: usize,
    pub model: String,
    pub width: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub momentum: f64,
    pub weight_decay: f64,
    pub update_every: u64,
    pub death_rate: f64,
    /// Size of the synthetic training split (synthetic dataset only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_train: Option<usize>,
}

/// 64-bit FNV-1a: small, dependency-free and stable across platforms and Rust versions.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A number as it reads in a key or a flag: shortest form that parses back to it.
pub fn num(x: f64) -> String {
    format!("{x}")
}

impl RunSpec {
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a RunSpec always serialises")
    }

    /// `<dataset>-<method>-r<ratio>-d<density>-s<seed>-<8 hex digits of the config's hash>`.
    pub fn key(&self) -> String {
        let h = fnv1a64(self.canonical_json().as_bytes());
        format!(
            "{}-{}-r{}-d{}-s{}-{:08x}",
            self.dataset,
            self.method,
            num(self.ratio),
            num(self.density),
            self.seed,
            (h >> 32) ^ (h & 0xffff_ffff)
        )
    }

    /// The `rest train` arguments of a fresh run (without the executable, `--out` and data dir).
    pub fn train_args(&self) -> Vec<String> {
        let mut opts: Vec<(&str, String)> = vec![
            ("--method", self.method.clone()),
            ("--dataset", self.dataset.clone()),
            ("--ratio", num(self.ratio)),
        ];
        if is_sparse_method(&self.method) {
            opts.push(("--density", num(self.density)));
        }
        opts.extend([
            ("--upweight", format!("{}", self.upweight)),
            ("--seed", self.seed.to_string()),
            ("--epochs", self.epochs.to_string()),
            ("--model", self.model.clone()),
            ("--width", self.width.to_string()),
            ("--lr", num(self.lr)),
            ("--batch-size", self.batch_size.to_string()),
            ("--momentum", num(self.momentum)),
            ("--weight-decay", num(self.weight_decay)),
            ("--update-every", self.update_every.to_string()),
            ("--death-rate", num(self.death_rate)),
        ]);
        if let Some(n) = self.synthetic_train {
            opts.push(("--synthetic-train", n.to_string()));
        }
        let mut a = vec!["train".to_string()];
        for (flag, value) in opts {
            // clap reads `--lr -1` as two flags: a negative value goes as `--lr=-1`, so that
            // `rest train` can say what is wrong with it.
            if value.starts_with('-') {
                a.push(format!("{flag}={value}"));
            } else {
                a.extend([flag.to_string(), value]);
            }
        }
        a
    }

    /// The configuration that `rest train` builds from `train_args`, through its own checks
    /// (`TrainArgs::config`): an error here is what every child of such a run would fail with.
    pub fn train_config(&self) -> Result<TrainConfig> {
        let line = TrainLine::try_parse_from(self.train_args()).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            anyhow!("{}", first.trim_start_matches("error: "))
        })?;
        line.args.config()
    }
}

/// What to expand: every field already resolved (defaults and `--quick` applied).
#[derive(Clone, Debug, PartialEq)]
pub struct GridConfig {
    pub dataset: String,
    pub methods: Vec<String>,
    pub ratios: Vec<f64>,
    pub densities: Vec<f64>,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    /// λ for every ratio instead of the paired one.
    pub upweight: Option<f32>,
    pub width: usize,
    pub lr: f64,
    pub model: String,
    pub batch_size: usize,
    pub update_every: u64,
    pub synthetic_train: Option<usize>,
}

impl GridConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.methods.is_empty(), "--methods is empty");
        ensure!(!self.ratios.is_empty(), "--ratios is empty");
        ensure!(!self.seeds.is_empty(), "--seeds is empty");
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        for m in &self.methods {
            ensure!(
                METHODS.contains(&m.as_str()),
                "unknown method '{m}': expected vanilla, reweight, sparse or rest"
            );
        }
        if self.methods.iter().any(|m| is_sparse_method(m)) {
            ensure!(
                !self.densities.is_empty(),
                "--densities is empty but sparse methods are asked for"
            );
        }
        for &d in &self.densities {
            ensure!(
                d > 0.0 && d < 1.0,
                "a sparse density must be in (0, 1), got {d} (dense runs are the vanilla and reweight methods)"
            );
        }
        for &r in &self.ratios {
            ensure!(
                r > 0.0 && r < 100.0,
                "a ratio is a percentage in (0, 100), got {r}"
            );
            if self.upweight.is_none() {
                ensure!(
                    paired_upweight(r).is_some(),
                    "ratio {r} % has no paired λ (0.5, 1, 2, 5 have 10, 30, 50, 80): give --upweight"
                );
            }
        }
        Ok(())
    }

    /// All runs: ratio, then method (table order), then density, then seed. An error when
    /// `rest train` would refuse a run's options (the first such run's problem).
    pub fn expand(&self) -> Result<Vec<RunSpec>> {
        self.validate()?;
        let mut methods: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| self.methods.iter().any(|x| x == m))
            .collect();
        methods.dedup();
        let mut out = Vec::new();
        for &ratio in &self.ratios {
            let upweight = self
                .upweight
                .or_else(|| paired_upweight(ratio))
                .expect("validated");
            for &method in &methods {
                let densities: Vec<f64> = if is_sparse_method(method) {
                    self.densities.clone()
                } else {
                    vec![1.0]
                };
                for &density in &densities {
                    for &seed in &self.seeds {
                        out.push(RunSpec {
                            dataset: self.dataset.clone(),
                            method: method.into(),
                            ratio,
                            density,
                            upweight,
                            seed,
                            epochs: self.epochs,
                            model: self.model.clone(),
                            width: self.width,
                            lr: self.lr,
                            batch_size: self.batch_size,
                            momentum: 0.9,
                            weight_decay: 0.0,
                            update_every: self.update_every,
                            death_rate: 0.5,
                            synthetic_train: self.synthetic_train,
                        });
                    }
                }
            }
        }
        let mut keys: Vec<String> = out.iter().map(RunSpec::key).collect();
        keys.sort();
        keys.dedup();
        ensure!(
            keys.len() == out.len(),
            "the grid lists a run twice (repeated values in a list?)"
        );
        // Before any run starts: options that `rest train` refuses would fail every run.
        for s in &out {
            s.train_config().with_context(|| {
                format!(
                    "the options of run {} are not valid for `rest train`",
                    s.key()
                )
            })?;
        }
        Ok(out)
    }
}
