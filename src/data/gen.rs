//! What the biased-dataset generators share: carving a validation split, assigning bias
//! attributes with an exact conflict count, rendering samples in parallel with one random
//! stream per sample (so the bytes do not depend on the thread count), and the on-disk cache.

use super::{cache, Dataset, Normalize, Splits};
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The conflict ratios of the benchmarks, in percent.
pub const RATIOS: [f64; 4] = [0.5, 1.0, 2.0, 5.0];
/// The data seed used when none is given: datasets are fixed, whatever the training seed.
pub const DEFAULT_SEED: u64 = 0;
/// Fraction of the source training set held out for validation.
pub const VALID_FRACTION: f64 = 0.1;

/// Parameters of one generated dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    /// Bias-conflicting share of the training (and validation) split, in percent.
    pub ratio_percent: f64,
    /// 1..=5.
    pub severity: u32,
    pub seed: u64,
    /// Fraction of the source training set carved out as the validation split.
    pub valid_fraction: f64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl GenConfig {
    pub fn new(ratio_percent: f64, severity: u32, seed: u64) -> Self {
        Self {
            ratio_percent,
            severity,
            seed,
            valid_fraction: VALID_FRACTION,
            progress: false,
        }
    }

    pub fn check(&self) -> Result<()> {
        check_ratio(self.ratio_percent)?;
        if !(1..=5).contains(&self.severity) {
            bail!("severity {} is outside 1..5", self.severity);
        }
        if !(0.0..1.0).contains(&self.valid_fraction) {
            bail!(
                "validation fraction {} is outside [0, 1)",
                self.valid_fraction
            );
        }
        Ok(())
    }
}

/// Checks a conflict ratio given in percent, as `rest train` does: a biased split needs some
/// bias-conflicting samples (above 0 %) and some aligned ones (below 100 %).
pub fn check_ratio(ratio_percent: f64) -> Result<()> {
    if !(ratio_percent > 0.0 && ratio_percent < 100.0) {
        bail!("--ratio is a percentage in (0, 100), got {ratio_percent}");
    }
    Ok(())
}

/// How many of the `n` samples of the training split `name` are bias-conflicting at
/// `ratio_percent`: exactly round(ratio·n). None is an error: reweighting would have nothing
/// to upweight.
pub fn conflicting_count(name: &str, ratio_percent: f64, n: usize) -> Result<usize> {
    let k = ((ratio_percent / 100.0 * n as f64).round() as usize).min(n);
    if k == 0 {
        bail!(
            "{name}: --ratio {ratio_percent} is too small: {ratio_percent}% of the {n} training \
             samples rounds to 0 bias-conflicting samples; use a larger ratio"
        );
    }
    Ok(k)
}

/// Splits `0..n` into (train, valid) index lists, both sorted. Depends only on the seed, so
/// every ratio uses the same samples for each split.
pub fn carve_valid(n: usize, valid_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    Rng::derive(seed, 0x5711_7000).shuffle(&mut idx);
    let nv = (valid_fraction * n as f64).round() as usize;
    let mut valid = idx[..nv].to_vec();
    let mut train = idx[nv..].to_vec();
    valid.sort_unstable();
    train.sort_unstable();
    (train, valid)
}

/// Bias attributes for `labels`: with `conflict = Some(r)` exactly `round(r·n)` samples (chosen
/// at random) get another class's attribute, uniform among the other classes, and the rest
/// their own; with `None` the attribute is uniform over all classes (an unbiased split).
pub fn assign_bias(
    labels: &[u8],
    num_classes: usize,
    conflict: Option<f64>,
    rng: &mut Rng,
) -> Vec<u8> {
    let n = labels.len();
    match conflict {
        None => (0..n).map(|_| rng.below(num_classes) as u8).collect(),
        Some(r) => {
            let k = ((r * n as f64).round() as usize).min(n);
            let mut flags: Vec<bool> = (0..n).map(|i| i < k).collect();
            rng.shuffle(&mut flags);
            labels
                .iter()
                .zip(&flags)
                .map(|(&l, &c)| {
                    if c && num_classes > 1 {
                        ((l as usize + 1 + rng.below(num_classes - 1)) % num_classes) as u8
                    } else {
                        l
                    }
                })
                .collect()
        }
    }
}

/// One split to render: which source samples, with which bias attributes.
pub struct SplitPlan<'a> {
    pub name: String,
    pub source: &'a Dataset,
    pub indices: Vec<usize>,
    pub bias: Vec<u8>,
    /// Distinguishes the per-sample random streams of different splits.
    pub stream: u64,
}

/// Renders a split: `render(source_image, label, bias, rng, out)` writes one output image of
/// `out_channels × H × W` bytes. Parallel over samples; the result does not depend on the
/// number of threads.
pub fn render_split<F>(
    plan: &SplitPlan,
    out_channels: usize,
    num_classes: usize,
    normalize: Normalize,
    seed: u64,
    progress: bool,
    render: F,
) -> Dataset
where
    F: Fn(&[u8], u8, u8, &mut Rng, &mut [u8]) + Sync,
{
    let src = plan.source;
    let (h, w) = (src.height, src.width);
    let img = out_channels * h * w;
    let n = plan.indices.len();
    let mut pixels = vec![0u8; n * img];
    let bar = progress_bar(n as u64, &plan.name, progress);
    pixels.par_chunks_mut(img).enumerate().for_each(|(j, out)| {
        let i = plan.indices[j];
        let mut rng = Rng::derive(seed, (plan.stream << 40) ^ (i as u64 + 1));
        render(src.image(i), src.labels[i], plan.bias[j], &mut rng, out);
        if j % 256 == 0 {
            bar.inc(256.min((n - j) as u64));
        }
    });
    bar.finish_and_clear();
    Dataset {
        name: plan.name.clone(),
        channels: out_channels,
        height: h,
        width: w,
        num_classes,
        pixels,
        labels: plan.indices.iter().map(|&i| src.labels[i]).collect(),
        bias: plan.bias.clone(),
        normalize,
    }
}

/// A progress bar on stderr (hidden when `show` is false or stderr is not a terminal).
pub fn progress_bar(len: u64, what: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Plans the three splits of a biased dataset from a source (train, test): a validation split
/// carved from the source training set, both biased with the configured ratio, and an
/// unbiased test split. The test split depends only on the seed, not on the ratio.
pub fn plan_splits<'a>(
    name: &str,
    train_src: &'a Dataset,
    test_src: &'a Dataset,
    cfg: &GenConfig,
) -> Result<[SplitPlan<'a>; 3]> {
    cfg.check()?;
    let k = train_src.num_classes;
    let (tr, va) = carve_valid(train_src.len(), cfg.valid_fraction, cfg.seed);
    if tr.is_empty() || va.is_empty() || test_src.is_empty() {
        bail!("{name}: the source is too small to make train, valid and test splits");
    }
    let pct = super::folder::pct_dir(cfg.ratio_percent);
    conflicting_count(&format!("{name}/{pct}/train"), cfg.ratio_percent, tr.len())?;
    let ratio = cfg.ratio_percent / 100.0;
    let tr_labels: Vec<u8> = tr.iter().map(|&i| train_src.labels[i]).collect();
    let va_labels: Vec<u8> = va.iter().map(|&i| train_src.labels[i]).collect();
    let tr_bias = assign_bias(
        &tr_labels,
        k,
        Some(ratio),
        &mut Rng::derive(cfg.seed, 0xb1a5_0001),
    );
    let va_bias = assign_bias(
        &va_labels,
        k,
        Some(ratio),
        &mut Rng::derive(cfg.seed, 0xb1a5_0002),
    );
    let te_bias = assign_bias(
        &test_src.labels,
        k,
        None,
        &mut Rng::derive(cfg.seed, 0xb1a5_0003),
    );
    Ok([
        SplitPlan {
            name: format!("{name}/{pct}/train"),
            source: train_src,
            indices: tr,
            bias: tr_bias,
            stream: 1,
        },
        SplitPlan {
            name: format!("{name}/{pct}/valid"),
            source: train_src,
            indices: va,
            bias: va_bias,
            stream: 2,
        },
        SplitPlan {
            name: format!("{name}/test"),
            source: test_src,
            indices: (0..test_src.len()).collect(),
            bias: te_bias,
            stream: 3,
        },
    ])
}

/// The cache directory of one generated dataset.
pub fn cache_dir(data_dir: &Path, dataset: &str, cfg: &GenConfig) -> PathBuf {
    data_dir.join(dataset).join("cache").join(format!(
        "{}-sev{}-seed{}",
        super::folder::pct_dir(cfg.ratio_percent),
        cfg.severity,
        cfg.seed
    ))
}

pub const SPLIT_NAMES: [&str; 3] = ["train", "valid", "test"];

/// Writes the three cache files.
pub fn write_cache(dir: &Path, splits: &Splits, cfg: &GenConfig) -> Result<()> {
    for (s, ds) in SPLIT_NAMES
        .iter()
        .zip([&splits.train, &splits.valid, &splits.test])
    {
        cache::write(
            &dir.join(format!("{s}.bin")),
            ds,
            cfg.seed,
            cfg.ratio_percent,
            cfg.severity,
        )?;
    }
    Ok(())
}

/// Whether all three cache files exist.
pub fn cache_exists(dir: &Path) -> bool {
    SPLIT_NAMES
        .iter()
        .all(|s| dir.join(format!("{s}.bin")).is_file())
}

/// Reads the three cache files, checking they were made with `cfg`.
pub fn read_cache(dir: &Path, cfg: &GenConfig) -> Result<Splits> {
    let mut out = Vec::new();
    for s in SPLIT_NAMES {
        let p = dir.join(format!("{s}.bin"));
        let (ds, meta) = cache::read(&p)?;
        if meta.seed != cfg.seed
            || meta.ratio_percent != cfg.ratio_percent
            || meta.severity != cfg.severity
        {
            bail!(
                "{}: cache was made with seed {} ratio {}% severity {}, expected seed {} ratio {}% severity {}",
                p.display(),
                meta.seed,
                meta.ratio_percent,
                meta.severity,
                cfg.seed,
                cfg.ratio_percent,
                cfg.severity
            );
        }
        out.push(ds);
    }
    // A cache made before zero conflicting training samples became an error.
    conflicting_count(&out[0].name, cfg.ratio_percent, out[0].len())?;
    let test = out.pop().context("test split")?;
    let valid = out.pop().context("valid split")?;
    let train = out.pop().context("train split")?;
    Ok(Splits { train, valid, test })
}
