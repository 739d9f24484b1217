//! What a run reports: metrics.jsonl lines (`EpochRecord`), summary.json (`Summary`), the
//! model-selection score, the summary table, and the terminal's progress bar.

use super::config::{Reweight, TrainConfig};
use crate::checkpoint;
use crate::metrics::GroupMetrics;
use crate::nn::param::ComputePath;
use crate::nn::{Arch, ModelConfig};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;

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

/// Drops the metrics lines of epochs ≥ `epoch` (written by a run killed after its metrics line but
/// before its checkpoint), so a resumed run neither duplicates nor skips an epoch's line.
pub(super) fn keep_epochs_before(path: &Path, epoch: usize) -> Result<()> {
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

pub(super) fn arch_name(m: &ModelConfig) -> String {
    match m.arch {
        Arch::Cnn => format!("CNN (width {})", m.width),
        Arch::Resnet18 => format!("ResNet-18 (width {})", m.width),
    }
}

pub(super) fn progress_bar(
    len: u64,
    epoch: usize,
    epochs: usize,
    quiet: bool,
) -> indicatif::ProgressBar {
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
