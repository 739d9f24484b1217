//! Where a run's data comes from (`--dataset`, `--ratio`, `--data-dir`), shared by `train` and
//! `eval`, and the synthetic set's size.

use crate::data::synthetic::{self, SyntheticConfig};
use crate::data::Splits;
use crate::train::TrainConfig;
use anyhow::{ensure, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct DataSource {
    #[arg(long, default_value = "cmnist", help = crate::data::DATASET_HELP)]
    pub dataset: String,
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0, help = crate::data::RATIO_HELP)]
    pub ratio: f64,
    #[arg(long, value_name = "DIR", env = "REST_DATA_DIR", default_value = "datasets", help = crate::data::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
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

/// The default size of the synthetic training split.
pub(crate) const SYNTHETIC_TRAIN: usize = 6000;

/// The synthetic training split's size a run was trained on (runs saved before the size was
/// recorded used the default).
pub(crate) fn synthetic_train_of(config: &TrainConfig) -> usize {
    config.synthetic_train.unwrap_or(SYNTHETIC_TRAIN)
}
