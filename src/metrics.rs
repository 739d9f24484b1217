//! Accuracy per group: bias-aligned, bias-conflicting, their average, and the worst
//! (label, bias attribute) group.

use crate::autograd::Tape;
use crate::data::loader::{batches, Augment, LoaderConfig};
use crate::data::Dataset;
use crate::nn::Model;
use crate::tensor::Tensor;
use anyhow::Result;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupMetrics {
    pub samples: usize,
    /// Bias-aligned and bias-conflicting samples evaluated (an accuracy over none reads 0).
    #[serde(default)]
    pub aligned_samples: usize,
    #[serde(default)]
    pub conflicting_samples: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub aligned_accuracy: f64,
    pub conflicting_accuracy: f64,
    /// Mean of the aligned and conflicting accuracies (groups with no sample are left out).
    pub unbiased_accuracy: f64,
    /// Lowest accuracy over the (label, bias attribute) groups that have samples.
    pub worst_group_accuracy: f64,
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
        let unbiased = match (a, c) {
            (Some(a), Some(c)) => (a + c) / 2.0,
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => 0.0,
        };
        GroupMetrics {
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
            unbiased_accuracy: unbiased,
            worst_group_accuracy: self
                .groups
                .values()
                .filter_map(|&g| ratio(g))
                .fold(f64::INFINITY, f64::min)
                .min(1.0),
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

/// Index of the largest logit of each row of logits [N, K].
pub fn argmax_rows(logits: &[f32], k: usize) -> Vec<u32> {
    logits
        .chunks(k)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0 as u32
        })
        .collect()
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
        let mut tape = Tape::no_grad();
        let x = tape.input(images);
        let logits = model.forward(&mut tape, x, false)?;
        Ok(tape.value(logits).data().to_vec())
    })
}

/// Group metrics and per-sample correctness of a dataset, given a function from a batch's
/// images [C, N, H, W] to its logits [N, K] (the CPU model, or the GPU model in train.rs).
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
        assert!((m.unbiased_accuracy - 0.625).abs() < 1e-12);
        assert_eq!(m.worst_group_accuracy, 0.0);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
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
