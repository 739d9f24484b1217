//! One training step on the CPU engine, and what a step reports (`StepStats`, also what the
//! GPU model's step returns).

use crate::autograd::Tape;
use crate::metrics::argmax_rows;
use crate::nn::param::Grads;
use crate::nn::{ops, Model};
use crate::optim::Sgd;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

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
