//! Differentiable operations on the tape. Each op checks its shapes (a bad shape is an error,
//! not a panic), then runs on the tape's device: the CPU kernels of `device::cpu` and the sparse
//! kernels of `sparse::conv` here and in `conv`, `norm`, `loss`; the CUDA kernels (on a GPU or
//! the emulator) in `gpu`. Forward and backward of every layer exist once, here: a model is
//! written against these ops and runs on any device.
//!
//! Layouts differ by device (see `tensor.rs`): on the CPU, images are batch-innermost
//! [C, H, W, N] (`to_batch_innermost` turns a loader batch [C, N, H, W] around) and logits
//! [N, K]; on a GPU, images stay [C, N, H, W] and logits are class-major [K, N]. `logits_rows`
//! gives [N, K] on the host from either.
//!
//! The CPU fuses neighbouring ops through tape hints (batch norm + ReLU with the sparse
//! convolution after it, a first sparse convolution with its batch norm): see `conv`.

mod conv;
mod gpu;
mod loss;
mod norm;
mod report;
mod spec;

pub use conv::conv2d;
pub use loss::{argmax_rows, cross_entropy, logits_rows};
pub use norm::batchnorm;
pub use report::{DeviceReport, StepReport};
pub use spec::{check_loss_inputs, BnParams, BnStats, StepStats, BN_EPS, BN_MOMENTUM};

use crate::autograd::{BackwardCtx, Tape, Var};
use crate::device::cpu::buffers::overwritten;
use crate::device::cpu::transpose::{swap01, transpose_inner};
use crate::device::cpu::{elementwise, pool};
use crate::nn::param::{ParamId, ParamStore};
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

pub fn relu(tape: &mut Tape, x: Var) -> Result<Var> {
    if tape.device().is_some() {
        return gpu::relu(tape, x);
    }
    let xv = tape.value_rc(x);
    let y = overwritten(xv.numel(), |y| elementwise::relu_forward(xv.data(), y));
    let out = Tensor::from_vec(xv.shape(), y).expect("relu shape");
    // x > 0 exactly where the output is positive, so the input serves as the mask.
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dx = overwritten(dy.numel(), |dx| {
            elementwise::relu_backward(xv.data(), dy.data(), dx)
        });
        ctx.accumulate(x, Tensor::from_vec(xv.shape(), dx).expect("dx shape"))?;
        Ok(())
    });
    Ok(tape.push("relu", out, &[x], false, backward))
}

/// relu(a + b), a residual block's end, in one pass each way: the forward writes max(a + b, 0),
/// the backward masks dy by the output once and hands the result to both inputs. The same
/// numbers as `relu(add(a, b))` with one launch (and one pass over memory) fewer each way.
pub fn add_relu(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    let (av, bv) = (tape.value_rc(a), tape.value_rc(b));
    ensure!(
        av.shape() == bv.shape(),
        "residual add: shapes {:?} and {:?} differ",
        av.shape(),
        bv.shape()
    );
    if let Some(dev) = tape.device() {
        let dev = std::sync::Arc::clone(dev);
        let out = gpu::add_relu(&dev, &av, &bv)?;
        let mask = out.clone();
        let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
            let dx = gpu::relu_grad(&dev, &mask, dy)?;
            ctx.accumulate(a, dx.clone())?;
            ctx.accumulate(b, dx)?;
            Ok(())
        });
        return Ok(tape.push("add+relu", out, &[a, b], false, backward));
    }
    let y = overwritten(av.numel(), |y| {
        elementwise::add_relu_forward(av.data(), bv.data(), y)
    });
    let out = Tensor::from_vec(av.shape(), y)?;
    let mask = out.clone();
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dx = overwritten(dy.numel(), |dx| {
            elementwise::relu_backward(mask.data(), dy.data(), dx)
        });
        let dx = Tensor::from_vec(mask.shape(), dx)?;
        ctx.accumulate(a, dx.clone())?;
        ctx.accumulate(b, dx)?;
        Ok(())
    });
    Ok(tape.push("add+relu", out, &[a, b], false, backward))
}

/// Max-pooling of x [C, H, W, N] ([C, N, H, W] on a GPU) with a k×k window.
pub fn maxpool(tape: &mut Tape, x: Var, k: usize, stride: usize, pad: usize) -> Result<Var> {
    if tape.device().is_some() {
        return gpu::maxpool(tape, x, k, stride, pad);
    }
    let xv = tape.value_rc(x);
    let s = xv.shape().to_vec();
    ensure!(
        s.len() == 4,
        "max-pool input must be [C, H, W, N], got {:?}",
        s
    );
    ensure!(
        stride > 0 && k > 0 && 2 * pad < k + 1 && s[1] + 2 * pad >= k && s[2] + 2 * pad >= k,
        "max-pool {k}x{k}/{stride} pad {pad} does not fit input {:?}",
        s
    );
    let (c, h, w, n) = (s[0], s[1], s[2], s[3]);
    let (oh, ow) = (
        pool::pool_out(h, k, stride, pad),
        pool::pool_out(w, k, stride, pad),
    );
    let mut argmax = vec![0u32; c * oh * ow * n];
    let y = overwritten(argmax.len(), |y| {
        pool::maxpool_forward_chwn(c, h, w, n, k, stride, pad, xv.data(), y, &mut argmax)
    });
    let out = Tensor::from_vec(&[c, oh, ow, n], y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dx = overwritten(c * h * w * n, |dx| {
            pool::maxpool_backward_chwn(n, h * w, dy.data(), &argmax, dx)
        });
        ctx.accumulate(x, Tensor::from_vec(&s, dx).expect("dx shape"))?;
        Ok(())
    });
    Ok(tape.push("maxpool", out, &[x], false, backward))
}

/// Global average pooling: x [C, H, W, N] ([C, N, H, W] on a GPU) → features [C, N].
pub fn global_avgpool(tape: &mut Tape, x: Var) -> Result<Var> {
    if tape.device().is_some() {
        return gpu::global_avgpool(tape, x);
    }
    let xv = tape.value_rc(x);
    let s = xv.shape().to_vec();
    ensure!(
        s.len() == 4,
        "global pooling input must be [C, H, W, N], got {:?}",
        s
    );
    let (c, hw, n) = (s[0], s[1] * s[2], s[3]);
    let mut y = vec![0.0; c * n];
    pool::global_avgpool_forward_chwn(c, n, hw, xv.data(), &mut y);
    let out = Tensor::from_vec(&[c, n], y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dx = overwritten(c * n * hw, |dx| {
            pool::global_avgpool_backward_chwn(c, n, hw, dy.data(), dx)
        });
        ctx.accumulate(x, Tensor::from_vec(&s, dx).expect("dx shape"))?;
        Ok(())
    });
    Ok(tape.push("global_avgpool", out, &[x], false, backward))
}

/// Images [C, N, H, W] (the loader's layout) → the layout of the device's ops: [C, H, W, N] on
/// the CPU; on a GPU, whose kernels take the loader's layout, `x` itself.
pub fn to_batch_innermost(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = tape.value(x);
    let s = xv.shape().to_vec();
    ensure!(s.len() == 4, "images must be [C, N, H, W], got {:?}", s);
    if tape.device().is_some() {
        return Ok(x);
    }
    let (c, n, hw) = (s[0], s[1], s[2] * s[3]);
    let y = overwritten(xv.numel(), |y| transpose_inner(xv.data(), c, n, hw, y));
    let out = Tensor::from_vec(&[c, s[2], s[3], n], y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dx = overwritten(dy.numel(), |dx| transpose_inner(dy.data(), c, hw, n, dx));
        ctx.accumulate(x, Tensor::from_vec(&s, dx).expect("dx shape"))?;
        Ok(())
    });
    Ok(tape.push("to_batch_innermost", out, &[x], false, backward))
}

/// Linear layer on features x [F, N] with weight [K, F] (dense or sparse) → logits [N, K] (on a
/// GPU class-major [K, N], what its loss kernel reads). Computed as a 1×1 convolution, then (on
/// the CPU) transposed.
pub fn linear(
    tape: &mut Tape,
    store: &ParamStore,
    x: Var,
    w: ParamId,
    b: Option<ParamId>,
) -> Result<Var> {
    let s = tape.value(x).shape().to_vec();
    ensure!(s.len() == 2, "linear input must be [F, N], got {:?}", s);
    let x4 = reshape(tape, x, &[s[0], 1, 1, s[1]])?;
    let y = conv2d(tape, store, x4, w, b, 1, 0)?;
    let k = tape.value(y).shape()[0];
    let y2 = reshape(tape, y, &[k, s[1]])?;
    if tape.device().is_some() {
        return Ok(y2);
    }
    transpose01(tape, y2)
}

/// Same values, another shape.
pub fn reshape(tape: &mut Tape, x: Var, shape: &[usize]) -> Result<Var> {
    let xv = tape.value(x);
    let old = xv.shape().to_vec();
    let out = xv.clone().reshape(shape)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        ctx.accumulate(x, dy.clone().reshape(&old).expect("reshape back"))?;
        Ok(())
    });
    Ok(tape.push("reshape", out, &[x], false, backward))
}

/// [A, B] → [B, A] (on the CPU).
pub fn transpose01(tape: &mut Tape, x: Var) -> Result<Var> {
    ensure!(
        tape.device().is_none(),
        "transpose01 has no GPU kernel (the GPU's ops keep their own layout)"
    );
    let xv = tape.value(x);
    let (a, b) = (xv.shape()[0], xv.shape()[1]);
    let mut y = vec![0.0; a * b];
    swap01(xv.data(), a, b, 1, &mut y);
    let out = Tensor::from_vec(&[b, a], y).expect("transpose shape");
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let mut dx = vec![0.0; a * b];
        swap01(dy.data(), b, a, 1, &mut dx);
        ctx.accumulate(x, Tensor::from_vec(&[a, b], dx).expect("dx shape"))?;
        Ok(())
    });
    Ok(tape.push("transpose", out, &[x], false, backward))
}
