//! What an op's CPU and GPU forms share: the arguments they take, the results they report, and
//! the checks both make, so a bad input gets the same error on every device.

use crate::autograd::{Tape, Var};
use crate::nn::param::{ParamId, ParamStore};
use crate::tensor::Tensor;
use anyhow::{bail, ensure, Result};
use std::rc::Rc;

/// The checks every cross-entropy (CPU or GPU) makes on a batch: one label and one weight per
/// sample, labels below `k`, weights finite, ≥ 0 and not all zero.
pub fn check_loss_inputs(n: usize, k: usize, labels: &[u32], weights: &[f32]) -> Result<()> {
    ensure!(
        labels.len() == n && weights.len() == n,
        "cross-entropy: {n} samples, {} labels, {} weights",
        labels.len(),
        weights.len()
    );
    if let Some(l) = labels.iter().find(|&&l| l as usize >= k) {
        bail!("cross-entropy: label {l} out of range for {k} classes");
    }
    ensure!(
        weights.iter().all(|w| *w >= 0.0 && w.is_finite()) && weights.iter().sum::<f32>() > 0.0,
        "cross-entropy: sample weights must be finite, ≥ 0 and not all zero"
    );
    Ok(())
}

/// What a training step reports about its batch (the loss op computes it on either device).
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

/// What a loss is computed against: per sample its label, its weight and (optionally) its group.
pub(super) struct Targets<'a> {
    pub labels: &'a [u32],
    pub weights: &'a [f32],
    pub groups: Option<&'a [u32]>,
}

/// How many groups the ids name (one when there are none).
pub(super) fn group_count(groups: Option<&[u32]>) -> usize {
    groups.map_or(1, |g| g.iter().max().map_or(1, |&m| m as usize + 1))
}

/// A batch-norm layer as its op sees it: scale γ and shift β, and whether a ReLU follows in the
/// same passes.
#[derive(Clone, Copy, Debug)]
pub struct BnParams {
    pub gamma: ParamId,
    pub beta: ParamId,
    pub relu: bool,
}

/// The input of a batch norm with its channel count c and values per channel m, checked
/// against the layer.
pub(super) fn bn_input(
    tape: &Tape,
    store: &ParamStore,
    x: Var,
    gamma: ParamId,
) -> Result<(Rc<Tensor>, usize, usize)> {
    let xv = tape.value_rc(x);
    let c = xv.shape()[0];
    let p = store.get(gamma);
    ensure!(
        p.len() == c,
        "{}: {} channels, input has {}",
        p.name,
        p.len(),
        c
    );
    let m = xv.numel() / c;
    Ok((xv, c, m))
}

/// Running statistics of one batch-norm layer.
#[derive(Clone, Debug, PartialEq)]
pub struct BnStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    /// This layer's place among the model's batch norms: where its statistics are on a device
    /// (`DeviceParams::bn`).
    pub slot: usize,
}

impl BnStats {
    pub fn new(c: usize, slot: usize) -> Self {
        Self {
            mean: vec![0.0; c],
            var: vec![1.0; c],
            slot,
        }
    }
}

pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;
