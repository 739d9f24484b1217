//! Accuracy per group, as the debiasing literature (LfF, DisEnt, REST) reports it: accuracy over
//! the whole split, over its bias-aligned and bias-conflicting samples, the worst of those two
//! groups (the reference's worst-group accuracy, used for model selection when reweighting), and,
//! where every (label, bias attribute) group holds enough samples to mean something, the lowest of
//! those groups. On an unbiased test split (Colored MNIST, Corrupted CIFAR-10) the whole-split
//! accuracy is the "unbiased accuracy" of the literature.

use crate::data::loader::{batches, Augment, LoaderConfig};
use crate::data::Dataset;
pub use crate::nn::ops::argmax_rows;
use crate::nn::Model;
use crate::tensor::Tensor;
use anyhow::Result;
use std::collections::BTreeMap;

/// The metric definitions a record was written with. 1 (records without the field, before
/// 2026-12): "unbiased" was the mean of the aligned and conflicting accuracies and "worst group"
/// the lowest (label, bias attribute) group, and runs selected their best epoch on that worst
/// group when reweighting. 2: the definitions of this module. Version-1 records are read with
/// the two-group worst recomputed from their aligned and conflicting accuracies (exact) and no
/// label × bias worst group (its sample counts were not recorded).
pub const METRICS_VERSION: u32 = 2;

/// A (label, bias attribute) group needs this many samples before the label × bias worst group
/// is reported: below it one or two samples decide a group's accuracy.
pub const MIN_GROUP_SAMPLES: usize = 20;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "GroupMetricsRecord")]
pub struct GroupMetrics {
    /// See [`METRICS_VERSION`].
    pub metrics_version: u32,
    pub samples: usize,
    /// Bias-aligned and bias-conflicting samples evaluated (an accuracy over none reads 0).
    pub aligned_samples: usize,
    pub conflicting_samples: usize,
    pub loss: f64,
    /// Over the whole split: the unbiased accuracy on an unbiased split.
    pub accuracy: f64,
    pub aligned_accuracy: f64,
    pub conflicting_accuracy: f64,
    /// The lower of the aligned and conflicting accuracies (groups with no sample left out), as
    /// the reference's worst group.
    pub worst_group_accuracy: f64,
    /// The lowest accuracy over the (label, bias attribute) groups, when every group present
    /// has at least [`MIN_GROUP_SAMPLES`] samples; None otherwise. Never used for selection.
    pub label_bias_worst_accuracy: Option<f64>,
    /// Mean of the aligned and conflicting accuracies ("unbiased" in version-1 records).
    pub group_balanced_accuracy: f64,
}

/// [`GroupMetrics`] as stored, in either version.
#[derive(serde::Deserialize)]
struct GroupMetricsRecord {
    #[serde(default = "first_version")]
    metrics_version: u32,
    samples: usize,
    #[serde(default)]
    aligned_samples: usize,
    #[serde(default)]
    conflicting_samples: usize,
    loss: f64,
    accuracy: f64,
    aligned_accuracy: f64,
    conflicting_accuracy: f64,
    worst_group_accuracy: f64,
    #[serde(default)]
    label_bias_worst_accuracy: Option<f64>,
    #[serde(alias = "unbiased_accuracy")]
    group_balanced_accuracy: f64,
}

fn first_version() -> u32 {
    1
}

impl From<GroupMetricsRecord> for GroupMetrics {
    fn from(r: GroupMetricsRecord) -> Self {
        let mut m = GroupMetrics {
            metrics_version: r.metrics_version,
            samples: r.samples,
            aligned_samples: r.aligned_samples,
            conflicting_samples: r.conflicting_samples,
            loss: r.loss,
            accuracy: r.accuracy,
            aligned_accuracy: r.aligned_accuracy,
            conflicting_accuracy: r.conflicting_accuracy,
            worst_group_accuracy: r.worst_group_accuracy,
            label_bias_worst_accuracy: r.label_bias_worst_accuracy,
            group_balanced_accuracy: r.group_balanced_accuracy,
        };
        if r.metrics_version < 2 {
            // Records older than the group counts have both at 0: take both accuracies then.
            let counted = m.aligned_samples + m.conflicting_samples == m.samples;
            let a = (m.aligned_samples > 0 || !counted).then_some(m.aligned_accuracy);
            let c = (m.conflicting_samples > 0 || !counted).then_some(m.conflicting_accuracy);
            m.worst_group_accuracy = two_group_worst(a, c);
            m.label_bias_worst_accuracy = None;
        }
        m
    }
}

fn two_group_worst(a: Option<f64>, c: Option<f64>) -> f64 {
    match (a, c) {
        (Some(a), Some(c)) => a.min(c),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => 0.0,
    }
}

/// Accumulates predictions into the group metrics.
#[derive(Default)]
pub struct GroupCounter {
    loss_sum: f64,
    total: (usize, usize),
    aligned: (usize, usize),
    conflicting: (usize, usize),
    groups: BTreeMap<(u32, u32), (usize, usize)>,
}

fn ratio((hit, n): (usize, usize)) -> Option<f64> {
    (n > 0).then(|| hit as f64 / n as f64)
}

impl GroupCounter {
    pub fn add(&mut self, label: u32, bias: u32, correct: bool, loss: f32) {
        let c = correct as usize;
        self.loss_sum += loss as f64;
        self.total.0 += c;
        self.total.1 += 1;
        let g = if label == bias {
            &mut self.aligned
        } else {
            &mut self.conflicting
        };
        g.0 += c;
        g.1 += 1;
        let e = self.groups.entry((label, bias)).or_default();
        e.0 += c;
        e.1 += 1;
    }

    pub fn finish(&self) -> GroupMetrics {
        let a = ratio(self.aligned);
        let c = ratio(self.conflicting);
        let balanced = match (a, c) {
            (Some(a), Some(c)) => (a + c) / 2.0,
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => 0.0,
        };
        let enough =
            !self.groups.is_empty() && self.groups.values().all(|&(_, n)| n >= MIN_GROUP_SAMPLES);
        GroupMetrics {
            metrics_version: METRICS_VERSION,
            samples: self.total.1,
            aligned_samples: self.aligned.1,
            conflicting_samples: self.conflicting.1,
            loss: if self.total.1 > 0 {
                self.loss_sum / self.total.1 as f64
            } else {
                0.0
            },
            accuracy: ratio(self.total).unwrap_or(0.0),
            aligned_accuracy: a.unwrap_or(0.0),
            conflicting_accuracy: c.unwrap_or(0.0),
            worst_group_accuracy: two_group_worst(a, c),
            label_bias_worst_accuracy: enough.then(|| {
                self.groups
                    .values()
                    .filter_map(|&g| ratio(g))
                    .fold(1.0, f64::min)
            }),
            group_balanced_accuracy: balanced,
        }
    }
}

impl GroupMetrics {
    /// The aligned and conflicting accuracies as percentages with two decimals, "n/a" for a
    /// group without samples (a folder dataset's split may have no conflicting sample).
    pub fn group_percentages(&self) -> (String, String) {
        // Records written before the group counts existed have both at 0: show their numbers.
        let counted = self.aligned_samples + self.conflicting_samples == self.samples;
        let pct = |acc: f64, n: usize| {
            if n > 0 || !counted {
                format!("{:.2}", 100.0 * acc)
            } else {
                "n/a".to_string()
            }
        };
        (
            pct(self.aligned_accuracy, self.aligned_samples),
            pct(self.conflicting_accuracy, self.conflicting_samples),
        )
    }
}

impl GroupMetrics {
    /// The two-group worst and the label × bias worst group as percentages, "n/a" for the
    /// latter where its groups are too small (or the record predates it).
    pub fn worst_percentages(&self) -> (String, String) {
        (
            format!("{:.2}", 100.0 * self.worst_group_accuracy),
            self.label_bias_worst_accuracy
                .map_or("n/a".into(), |x| format!("{:.2}", 100.0 * x)),
        )
    }
}

/// Evaluates the model (batch norm in evaluation mode) on a whole dataset. Also returns each
/// sample's correctness, in dataset order (used by JTT to find the error set).
pub fn evaluate(
    model: &mut Model,
    ds: &Dataset,
    batch_size: usize,
) -> Result<(GroupMetrics, Vec<bool>)> {
    evaluate_with(ds, batch_size, |images| {
        let _awake = crate::device::cpu::KeepAwake::new();
        model.logits(images)
    })
}

/// Group metrics and per-sample correctness of a dataset, given a function from a batch's
/// images [C, N, H, W] to its logits [N, K].
/// Per-sample losses use unit weights.
pub fn evaluate_with(
    ds: &Dataset,
    batch_size: usize,
    mut logits_of: impl FnMut(Tensor) -> Result<Vec<f32>>,
) -> Result<(GroupMetrics, Vec<bool>)> {
    let cfg = LoaderConfig {
        batch_size,
        shuffle: false,
        drop_last: false,
        augment: Augment::None,
        sample_weights: None,
        seed: 0,
    };
    let mut counter = GroupCounter::default();
    let mut correct = vec![false; ds.len()];
    for batch in batches(ds, &cfg, 0) {
        let n = batch.len();
        let logits = logits_of(batch.images)?;
        let k = logits.len() / n.max(1);
        let ones = vec![1.0; n];
        let mut losses = vec![0.0; n];
        let mut dlogits = vec![0.0; n * k];
        crate::device::cpu::xent::cross_entropy(
            n,
            k,
            &logits,
            &batch.labels,
            &ones,
            &mut losses,
            &mut dlogits,
        );
        let pred = argmax_rows(&logits, k);
        for (j, &i) in batch.indices.iter().enumerate() {
            let ok = pred[j] == batch.labels[j];
            correct[i] = ok;
            counter.add(batch.labels[j], ds.bias[i] as u32, ok, losses[j]);
        }
    }
    Ok((counter.finish(), correct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_from_known_predictions() {
        let mut c = GroupCounter::default();
        // aligned: 3 of 4 right; conflicting: 1 of 2 right, one group (1, 0) at 0 %.
        for ok in [true, true, true, false] {
            c.add(0, 0, ok, 1.0);
        }
        c.add(0, 1, true, 1.0);
        c.add(1, 0, false, 1.0);
        let m = c.finish();
        assert_eq!(m.samples, 6);
        assert!((m.aligned_accuracy - 0.75).abs() < 1e-12);
        assert!((m.conflicting_accuracy - 0.5).abs() < 1e-12);
        assert!((m.group_balanced_accuracy - 0.625).abs() < 1e-12);
        // The reference's worst group: the lower of aligned and conflicting.
        assert!((m.worst_group_accuracy - 0.5).abs() < 1e-12);
        // Groups of one or two samples: no label × bias worst group.
        assert_eq!(m.label_bias_worst_accuracy, None);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.metrics_version, METRICS_VERSION);
    }

    #[test]
    fn field_definitions_on_an_unbiased_split() {
        // Ten classes, bias uniform: each (label, bias) group 25 samples, so 10 % aligned.
        // The model is right on every aligned sample, on 60 % of the conflicting ones, and on
        // only 5 of group (3, 7)'s 25.
        let mut c = GroupCounter::default();
        for label in 0..10u32 {
            for bias in 0..10u32 {
                for i in 0..25 {
                    let ok = if label == bias {
                        true
                    } else if (label, bias) == (3, 7) {
                        i < 5
                    } else {
                        i < 15
                    };
                    c.add(label, bias, ok, 0.0);
                }
            }
        }
        let m = c.finish();
        let conflicting_hits = 89.0 * 15.0 + 5.0;
        let want_conflicting = conflicting_hits / (90.0 * 25.0);
        assert_eq!(m.samples, 2500);
        assert_eq!((m.aligned_samples, m.conflicting_samples), (250, 2250));
        // Unbiased accuracy = accuracy over the whole split, not the mean of the two groups.
        assert!((m.accuracy - (250.0 + conflicting_hits) / 2500.0).abs() < 1e-12);
        assert!((m.conflicting_accuracy - want_conflicting).abs() < 1e-12);
        assert!((m.group_balanced_accuracy - (1.0 + want_conflicting) / 2.0).abs() < 1e-12);
        assert!((m.worst_group_accuracy - want_conflicting).abs() < 1e-12);
        // Every group has 25 ≥ 20 samples: the label × bias worst group is (3, 7) at 20 %.
        assert_eq!(m.label_bias_worst_accuracy, Some(0.2));
        // One sample short of the threshold in one group: not reported.
        let mut c2 = GroupCounter::default();
        for label in 0..2u32 {
            for bias in 0..2u32 {
                let n = if (label, bias) == (1, 0) {
                    MIN_GROUP_SAMPLES - 1
                } else {
                    30
                };
                for _ in 0..n {
                    c2.add(label, bias, true, 0.0);
                }
            }
        }
        assert_eq!(c2.finish().label_bias_worst_accuracy, None);
    }

    #[test]
    fn version_one_records_are_read_with_two_group_worst() {
        let old = r#"{"samples":10,"aligned_samples":6,"conflicting_samples":4,"loss":0.5,
            "accuracy":0.7,"aligned_accuracy":0.8333333333333334,"conflicting_accuracy":0.5,
            "unbiased_accuracy":0.6666666666666667,"worst_group_accuracy":0.0}"#;
        let m: GroupMetrics = serde_json::from_str(old).unwrap();
        assert_eq!(m.metrics_version, 1);
        assert_eq!(m.worst_group_accuracy, 0.5);
        assert_eq!(m.label_bias_worst_accuracy, None);
        assert!((m.group_balanced_accuracy - 0.6666666666666667).abs() < 1e-15);
        // Version 2 round-trips unchanged.
        let mut c = GroupCounter::default();
        c.add(0, 0, true, 0.1);
        c.add(0, 1, false, 0.2);
        let m2 = c.finish();
        let back: GroupMetrics =
            serde_json::from_str(&serde_json::to_string(&m2).unwrap()).unwrap();
        assert_eq!(back, m2);
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax_rows(&[0.0, 2.0, 2.0, 5.0, -1.0, 0.0], 3), vec![1, 0]);
    }

    #[test]
    fn a_group_without_samples_reads_not_available() {
        let mut c = GroupCounter::default();
        c.add(1, 1, true, 0.5);
        c.add(2, 2, false, 0.5);
        let m = c.finish();
        assert_eq!(m.group_percentages(), ("50.00".into(), "n/a".into()));
        // A record from before the counts existed shows its numbers.
        let old = GroupMetrics {
            aligned_samples: 0,
            conflicting_samples: 0,
            ..m
        };
        assert_eq!(old.group_percentages(), ("50.00".into(), "0.00".into()));
    }
}
