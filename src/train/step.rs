//! One training step, on whichever device the model's parameters live (`ParamStore::device`):
//! forward on the tape, reweighted cross-entropy, backward, the SGD step.

use crate::autograd::Tape;
use crate::nn::param::Grads;
use crate::nn::{ops, Model};
use crate::optim::Sgd;
use crate::tensor::Tensor;
use anyhow::Result;

pub use crate::nn::ops::{StepReport, StepStats};

/// One training step: forward (batch norm in training mode, running statistics updated),
/// reweighted cross-entropy, backward, and the SGD step on `model`. With `dense_grads`
/// (topology-update steps) the dense weight gradients of the sparse layers are computed too: on
/// the CPU they are returned in the `Grads` for `SparseState::update`; on a device they stay
/// there for its topology update.
pub fn train_step(
    model: &mut Model,
    opt: &mut Sgd,
    images: Tensor,
    labels: &[u32],
    weights: &[f32],
    groups: Option<&[u32]>,
    dense_grads: bool,
) -> Result<(StepReport, Grads)> {
    let _awake = crate::device::cpu::KeepAwake::new();
    let device = model.params.device.as_ref().map(|d| d.device().clone());
    let mut tape = Tape::new().on(device);
    let x = tape.upload(images)?;
    let logits = model.forward(&mut tape, x, true)?;
    let (loss, stats) = ops::cross_entropy(&mut tape, logits, labels, weights, groups)?;
    let mut grads = Grads::for_step(&model.params, dense_grads);
    if let Some(d) = &mut model.params.device {
        d.begin_backward(dense_grads)?;
    }
    tape.backward(loss, Tensor::full(&[1], 1.0), &model.params, &mut grads)?;
    drop(tape);
    opt.step(&mut model.params, &grads)?;
    Ok((stats, grads))
}
