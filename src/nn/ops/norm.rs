//! Batch normalisation (and batch norm + ReLU in one pass) on the CPU, training and evaluation.

use super::conv::{BnBackward, FirstConv, ReluBnLink};
use super::gpu;
use super::spec::{bn_input, BnParams, BnStats, BN_EPS, BN_MOMENTUM};
use crate::autograd::{BackwardCtx, Tape, Var};
use crate::device::cpu::buffers::overwritten;
use crate::device::cpu::norm;
use crate::nn::param::ParamStore;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
use std::cell::RefCell;
use std::rc::Rc;

/// Batch normalisation of x [C, …] (image activations, or features [C, N]) per channel, then
/// ReLU when `p.relu` (`relu(batchnorm(x))` as one op: one pass over the activations forward and,
/// in training, at most two backward, the ReLU mask recomputed from x). In training mode it
/// normalises with the batch statistics and updates `stats`; in evaluation mode it uses `stats`
/// and cannot be differentiated.
pub fn batchnorm(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &mut BnStats,
    x: Var,
    p: BnParams,
    train: bool,
) -> Result<Var> {
    if tape.device().is_some() {
        return gpu::batchnorm(tape, store, stats, x, p, train);
    }
    if train {
        return batchnorm_train(tape, store, stats, x, p);
    }
    batchnorm_eval(tape, store, stats, x, p)
}

/// Evaluation-mode batch norm (ReLU fused when `relu`): not differentiable.
fn batchnorm_eval(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &BnStats,
    x: Var,
    p: BnParams,
) -> Result<Var> {
    let BnParams { gamma, beta, relu } = p;
    ensure!(
        !tape.is_recording(),
        "batch norm in evaluation mode cannot be differentiated: use a no_grad tape"
    );
    let (xv, c, m) = bn_input(tape, store, x, gamma)?;
    let (gv, bv) = (store.get(gamma).data(), store.get(beta).data());
    let y = overwritten(xv.numel(), |y| {
        let fwd = norm::BnIn::new(c, m, xv.data(), gv, bv);
        norm::batchnorm_eval_forward_with(relu, fwd, &stats.mean, &stats.var, BN_EPS, y)
    });
    Ok(tape.input(Tensor::from_vec(xv.shape(), y)?))
}

/// Training-mode batch norm, followed by ReLU in the same passes when `fused_relu`.
fn batchnorm_train(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &mut BnStats,
    x: Var,
    p: BnParams,
) -> Result<Var> {
    let BnParams {
        gamma,
        beta,
        relu: fused_relu,
    } = p;
    let (xv, c, m) = bn_input(tape, store, x, gamma)?;
    ensure!(
        m > 1,
        "batch norm needs more than one value per channel in training (got a batch of shape {:?})",
        xv.shape()
    );
    let (gv, bv) = (store.get(gamma).data(), store.get(beta).data());
    let mut mean = vec![0.0; c];
    let mut invstd = vec![0.0; c];
    let forward = if fused_relu {
        norm::batchnorm_relu_train_forward
    } else {
        norm::batchnorm_train_forward
    };
    let y = overwritten(xv.numel(), |y| {
        let o = norm::TrainFwdOut {
            running_mean: &mut stats.mean,
            running_var: &mut stats.var,
            y,
            save_mean: &mut mean,
            save_invstd: &mut invstd,
        };
        forward(
            norm::BnIn::new(c, m, xv.data(), gv, bv),
            BN_EPS,
            BN_MOMENTUM,
            o,
        )
    });
    let out = Tensor::from_vec(xv.shape(), y)?;
    // Only a batch norm + ReLU offers its sums to the convolution after it.
    let link = fused_relu.then(|| {
        Rc::new(ReluBnLink {
            beta,
            sums: RefCell::new(None),
        })
    });
    let first_conv = tape.hint::<FirstConv>(x);
    let hint = link.clone();
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let gv = ctx.params.get(gamma).data();
        let bv = ctx.params.get(beta).data();
        let mean = &mean;
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        // The sums hold only if dy is exactly what the convolution that took them computed.
        let given = link
            .as_ref()
            .and_then(|l| l.sums.take())
            .filter(|_| ctx.contributions(ctx.current()) == 1);
        if let Some(conv) = &first_conv {
            let bn = BnBackward {
                relu: fused_relu,
                given: given.as_deref(),
                c,
                m,
                y: xv.data(),
                gamma: gv,
                beta: bv,
                mean,
                invstd: &invstd,
                dy: dy.data(),
            };
            if let Some((dg, db)) = conv.backward_through(ctx, x, &bn) {
                ctx.grads.add(gamma, &dg);
                ctx.grads.add(beta, &db);
                return Ok(());
            }
        }
        let dx = overwritten(xv.numel(), |dx| {
            let g = norm::BnGradIn {
                fwd: norm::BnIn::new(c, m, xv.data(), gv, bv),
                save_mean: mean,
                save_invstd: &invstd,
                dy: dy.data(),
            };
            let o = norm::BwdOut {
                dx,
                dgamma: &mut dg,
                dbeta: &mut db,
            };
            norm::batchnorm_backward_with(fused_relu, given.as_deref(), g, o)
        });
        ctx.grads.add(gamma, &dg);
        ctx.grads.add(beta, &db);
        ctx.accumulate(x, Tensor::from_vec(xv.shape(), dx).expect("dx shape"))?;
        Ok(())
    });
    let name = if fused_relu {
        "batchnorm+relu"
    } else {
        "batchnorm"
    };
    let v = tape.push(name, out, &[x], true, backward);
    if let Some(h) = hint {
        tape.set_hint(v, h);
    }
    Ok(v)
}
