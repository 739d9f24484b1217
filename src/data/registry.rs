//! Opening a dataset by name: what the trainer calls.

use super::gen::{self, GenConfig};
use super::{cifar, cmnist, corrupt, fetch, folder, idx, import, Normalize, Splits};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Options of [`open_with`] and [`make`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Data seed of generated datasets (default 0: every run sees the same dataset).
    pub seed: u64,
    /// Severity of generated datasets (default: 4 for both, as LfF).
    pub severity: Option<u32>,
    /// Source of `cifar10c` (default `DATA_DIR/cifar-10-batches-bin`); of `cmnist`, a directory
    /// of MNIST IDX files (default `DATA_DIR/mnist`, fetched when missing).
    pub source: Option<PathBuf>,
    /// Progress bars on stderr while generating.
    pub progress: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            seed: gen::DEFAULT_SEED,
            severity: None,
            source: None,
            progress: true,
        }
    }
}

/// Whether a dataset's test split is unbiased (bias attribute uniform, independent of the label),
/// so that its whole-split test accuracy is the literature's "unbiased accuracy". BFFHQ's test
/// split is not (its headline is the bias-conflicting accuracy), nor need a folder dataset's be.
pub fn test_split_is_unbiased(dataset: &str) -> bool {
    matches!(dataset, "cmnist" | "cifar10c" | "synthetic")
}

/// Opens the train/valid/test splits of a dataset at a conflict ratio (in percent: 0.5, 1, 2, 5):
///
/// * `cmnist`: Colored MNIST from the cache under `data_dir/cmnist/cache/`; when the cache is
///   missing it is built (and MNIST fetched into `data_dir/mnist` first if needed);
/// * `cifar10c`: Corrupted CIFAR-10 (Type 0), cached likewise, built from the CIFAR-10 binary
///   files in `data_dir/cifar-10-batches-bin`;
/// * `bffhq`: the folder layout under `data_dir/bffhq`;
/// * `folder:DIR`: the folder layout at `DIR`.
pub fn open(dataset: &str, ratio_percent: f64, data_dir: &Path) -> Result<Splits> {
    open_with(dataset, ratio_percent, data_dir, &OpenOptions::default())
}

/// [`open`] with explicit options.
pub fn open_with(
    dataset: &str,
    ratio_percent: f64,
    data_dir: &Path,
    opts: &OpenOptions,
) -> Result<Splits> {
    match dataset {
        "cmnist" | "cifar10c" => {
            let cfg = config(dataset, ratio_percent, opts);
            check(dataset, &cfg)?;
            fetch::check_data_dir(data_dir)?;
            let dir = cache_dir(data_dir, dataset, &cfg);
            if gen::cache_exists(&dir) {
                match gen::read_cache(&dir, &cfg) {
                    Ok(splits) => return Ok(splits),
                    // The cache is derived data: build it again rather than ask for a deletion.
                    Err(e) => eprintln!(
                        "warning: the {dataset} cache in {} cannot be used ({e:#}); building it again",
                        dir.display()
                    ),
                }
            } else {
                eprintln!(
                    "{dataset} {ratio_percent}%: no cache in {}, building it",
                    dir.display()
                );
            }
            Ok(make(dataset, ratio_percent, data_dir, opts)?.0)
        }
        "bffhq" => {
            fetch::check_data_dir(data_dir)?;
            if ratio_percent == import::BFFHQ_RATIO {
                if let Some(imported) = import::read_bffhq_cache(data_dir) {
                    return imported;
                }
            }
            let root = data_dir.join("bffhq");
            folder::read_folder(&root, ratio_percent, Some(2), Some(Normalize::imagenet()))
                .with_context(|| {
                    format!(
                        "bffhq: expected the BFFHQ folder layout (0.5pct/align, 0.5pct/conflict, \
                         valid, test) under {}, or an import (`rest data import bffhq DIR`){}",
                        root.display(),
                        if ratio_percent == 0.5 {
                            ""
                        } else {
                            "; BFFHQ comes at 0.5 % only: use --ratio 0.5"
                        }
                    )
                })
        }
        "synthetic" => bail!(
            "dataset \"synthetic\" is generated in memory when training (`rest train --dataset \
             synthetic`), not stored in the data directory, so it cannot be opened here; \
             choose cmnist, cifar10c, bffhq or folder:DIR"
        ),
        other => match other.strip_prefix("folder:") {
            Some(dir) if !dir.is_empty() => {
                folder::read_folder(Path::new(dir), ratio_percent, None, None)
            }
            _ => bail!(
                "unknown dataset {other:?}; known: cmnist, cifar10c, bffhq, folder:DIR, synthetic"
            ),
        },
    }
}

/// Checks a generated dataset's configuration (Corrupted CIFAR-10 has severities 1..4 only).
fn check(dataset: &str, cfg: &GenConfig) -> Result<()> {
    cfg.check()?;
    if dataset == "cifar10c" {
        corrupt::check_severity(cfg.severity)?;
    }
    Ok(())
}

/// Where a generated dataset is cached. Corrupted CIFAR-10 made with LfF's recipe lives in
/// `cifar10c/lff/cache/`, so caches of the earlier, approximate recipe are never read as this one.
fn cache_dir(data_dir: &Path, dataset: &str, cfg: &GenConfig) -> PathBuf {
    if dataset == "cifar10c" {
        gen::cache_dir(&data_dir.join("cifar10c"), "lff", cfg)
    } else {
        gen::cache_dir(data_dir, dataset, cfg)
    }
}

fn config(dataset: &str, ratio_percent: f64, opts: &OpenOptions) -> GenConfig {
    let default_sev = if dataset == "cmnist" {
        cmnist::DEFAULT_SEVERITY
    } else {
        corrupt::DEFAULT_SEVERITY
    };
    let mut cfg = GenConfig::new(
        ratio_percent,
        opts.severity.unwrap_or(default_sev),
        opts.seed,
    );
    cfg.progress = opts.progress;
    cfg
}

/// Generates `cmnist` or `cifar10c` at one ratio and writes its cache; returns the splits and
/// the cache directory.
pub fn make(
    dataset: &str,
    ratio_percent: f64,
    data_dir: &Path,
    opts: &OpenOptions,
) -> Result<(Splits, PathBuf)> {
    check(dataset, &config(dataset, ratio_percent, opts))?;
    let (train, test) = load_source(dataset, data_dir, opts)?;
    make_from(dataset, &train, &test, ratio_percent, data_dir, opts)
}

/// [`make`] from an already loaded source (train, test).
pub fn make_from(
    dataset: &str,
    train: &super::Dataset,
    test: &super::Dataset,
    ratio_percent: f64,
    data_dir: &Path,
    opts: &OpenOptions,
) -> Result<(Splits, PathBuf)> {
    let cfg = config(dataset, ratio_percent, opts);
    check(dataset, &cfg)?;
    let (train, test) = (train.clone(), test.clone());
    let splits = match dataset {
        "cmnist" => cmnist::generate(&train, &test, &cfg)?,
        "cifar10c" => {
            let frost = corrupt::FrostPhotos::load(&corrupt::frost_dir(data_dir))?;
            corrupt::generate(&train, &test, &cfg, &frost)?
        }
        _ => bail!("`make` knows cmnist and cifar10c, not {dataset:?}"),
    };
    let dir = cache_dir(data_dir, dataset, &cfg);
    gen::write_cache(&dir, &splits, &cfg)?;
    Ok((splits, dir))
}

/// The source (train, test) of a generated dataset.
pub fn load_source(
    dataset: &str,
    data_dir: &Path,
    opts: &OpenOptions,
) -> Result<(super::Dataset, super::Dataset)> {
    fetch::check_data_dir(data_dir)?;
    match dataset {
        "cmnist" => match &opts.source {
            Some(dir) => idx::load_mnist(dir),
            None => {
                if !fetch::mnist_present(data_dir) {
                    eprintln!(
                        "MNIST is missing from {}; fetching it",
                        data_dir.join("mnist").display()
                    );
                    fetch::fetch_mnist(data_dir, None)?;
                }
                idx::load_mnist(&data_dir.join("mnist"))
            }
        },
        "cifar10c" => {
            let dir = opts
                .source
                .clone()
                .unwrap_or_else(|| data_dir.join("cifar-10-batches-bin"));
            // Any RGB or grey source works; MNIST IDX files are accepted too (promoted to RGB).
            if !dir.join("data_batch_1.bin").is_file()
                && idx::find_mnist_file(&dir, idx::MNIST_FILES[0]).is_some()
            {
                return idx::load_mnist(&dir);
            }
            cifar::load_cifar10(&dir)
        }
        _ => bail!("no generator source for {dataset:?}"),
    }
}
