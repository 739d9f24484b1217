//! The reweighted cross-entropy, and what a training step reports about its batch.

use super::gpu;
use super::report::StepReport;
use super::spec::{check_loss_inputs, group_count, StepStats, Targets};
use crate::autograd::{BackwardCtx, Tape, Var};
use crate::device::cpu::xent;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

/// Per-group (Σ loss, correct, samples) of a batch; groups None: one group.
fn group_sums(
    losses: &[f32],
    predictions: &[u32],
    labels: &[u32],
    groups: Option<&[u32]>,
) -> Vec<(f32, usize, usize)> {
    let mut out = vec![(0f64, 0usize, 0usize); group_count(groups)];
    for i in 0..losses.len() {
        let g = &mut out[groups.map_or(0, |g| g[i] as usize)];
        g.0 += losses[i] as f64;
        g.1 += (predictions[i] == labels[i]) as usize;
        g.2 += 1;
    }
    out.into_iter().map(|(l, c, n)| (l as f32, c, n)).collect()
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

/// The logits of `v` on the host as rows [N, K], whichever device computed them (a GPU's are
/// class-major [K, N]).
pub fn logits_rows(tape: &Tape, v: Var) -> Result<Vec<f32>> {
    let t = tape.value(v);
    let s = t.shape();
    ensure!(s.len() == 2, "logits must be a matrix, got {s:?}");
    if t.on_device().is_none() {
        return Ok(t.data().to_vec());
    }
    let (k, n) = (s[0], s[1]);
    let host = t.to_host()?;
    let kn = host.data();
    let mut rows = vec![0.0; n * k];
    for c in 0..k {
        for i in 0..n {
            rows[i * k + c] = kn[c * n + i];
        }
    }
    Ok(rows)
}

/// Reweighted cross-entropy of the logits: returns the scalar loss Σ wᵢlᵢ / Σ wᵢ (a Var of
/// shape [1]) and the batch's statistics (per-sample losses lᵢ, correct predictions, and per
/// group of `groups` their sums). On a GPU the loss, its gradient and the statistics come from
/// one fused kernel.
pub fn cross_entropy(
    tape: &mut Tape,
    logits: Var,
    labels: &[u32],
    weights: &[f32],
    groups: Option<&[u32]>,
) -> Result<(Var, StepReport)> {
    if let Some(g) = groups {
        ensure!(
            g.len() == labels.len(),
            "{} group ids for {} labels",
            g.len(),
            labels.len()
        );
    }
    if tape.device().is_some() {
        let targets = Targets {
            labels,
            weights,
            groups,
        };
        return gpu::cross_entropy(tape, logits, &targets);
    }
    let lv = tape.value(logits);
    let s = lv.shape().to_vec();
    ensure!(s.len() == 2, "logits must be [N, K], got {:?}", s);
    let (n, k) = (s[0], s[1]);
    check_loss_inputs(n, k, labels, weights)?;
    let mut losses = vec![0.0; n];
    let mut dlogits = vec![0.0; n * k];
    let loss = xent::cross_entropy(n, k, lv.data(), labels, weights, &mut losses, &mut dlogits);
    let predictions = argmax_rows(lv.data(), k);
    let groups = group_sums(&losses, &predictions, labels, groups);
    let out = Tensor::from_vec(&[1], vec![loss])?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let scale = dy.data()[0];
        let d: Vec<f32> = dlogits.iter().map(|v| v * scale).collect();
        ctx.accumulate(logits, Tensor::from_vec(&[n, k], d).expect("dlogits shape"))?;
        Ok(())
    });
    let stats = StepStats {
        loss,
        correct: groups.iter().map(|g| g.1).sum(),
        losses,
        groups,
    };
    Ok((
        tape.push("cross_entropy", out, &[logits], false, backward),
        StepReport::Host(stats),
    ))
}
