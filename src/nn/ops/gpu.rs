//! The ops on a GPU (or the emulator): the same forward and backward as the CPU's, through the
//! launch wrappers of `device::gpu::kernels`. Activations are [C, N, H, W] here, features
//! [F, N], logits class-major [K, N]; every output is a fresh buffer from the device's caching
//! allocator (`device::gpu::alloc`), and parameter gradients go into the device copies of the
//! parameters (`nn::on_device`).

use super::report::{DeviceReport, StepReport};
use super::spec::{
    bn_input, check_loss_inputs, group_count, BnParams, BnStats, Targets, BN_EPS, BN_MOMENTUM,
};
use crate::autograd::{BackwardCtx, Tape, Var};
use crate::device::cpu::pool::pool_out;
use crate::device::cpu::ConvGeom;
use crate::device::gpu::alloc::{DeviceBuf, GpuDevice};
use crate::device::gpu::kernels::{conv, elementwise, norm, pool, xent};
use crate::device::gpu::Buf;
use crate::nn::on_device::DeviceParams;
use crate::nn::param::{ParamId, ParamStore};
use crate::tensor::Tensor;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::sync::Arc;

/// The device buffer of a tensor the tape holds on the device.
fn buf(t: &Tensor) -> Result<&Buf> {
    t.on_device()
        .map(DeviceBuf::buf)
        .ok_or_else(|| anyhow!("a host tensor reached a GPU op (upload it with Tape::upload)"))
}

/// The tape's device.
fn device(tape: &Tape) -> Arc<GpuDevice> {
    Arc::clone(tape.device().expect("a GPU op runs on a device tape"))
}

/// The tape's device and the parameters' copies there.
fn engine<'s>(tape: &Tape, store: &'s ParamStore) -> Result<(Arc<GpuDevice>, &'s DeviceParams)> {
    Ok((device(tape), on_device(store)?))
}

/// The parameters' device copies.
fn on_device(store: &ParamStore) -> Result<&DeviceParams> {
    store.device.as_deref().ok_or_else(|| {
        anyhow!("the model's parameters are on the host: move them to the device first")
    })
}

/// dw = the dense weight gradient, its long reduction (N·OH·OW) split over enough blocks to fill
/// a GPU (`conv_bwd_weight_dense_splits`; one split would leave most SMs idle on the early
/// layers) and summed in a fixed order by a second pass: deterministic. The partials live in a
/// workspace from the device's cache.
fn dense_weight_grad(
    dev: &Arc<GpuDevice>,
    g: &ConvGeom,
    x: &Buf,
    dy: &Buf,
    dw: &mut Buf,
) -> Result<()> {
    let splits = conv::conv_bwd_weight_dense_splits(g);
    let floats = conv::conv_bwd_weight_dense_workspace(g, splits);
    let mut work = (floats > 0)
        .then(|| DeviceBuf::uninit(dev, floats))
        .transpose()?;
    conv::conv_bwd_weight_dense(
        dev.gpu(),
        g,
        x,
        dy,
        dw,
        work.as_mut().map(DeviceBuf::buf_mut),
    )
}

/// The sparse weight gradient at the active positions, its reduction over the batch's tiles split
/// to fill a GPU (`conv_bwd_weight_sparse_splits`) and summed in order; partials in a workspace
/// from the device's cache.
fn sparse_weight_grad(
    dev: &Arc<GpuDevice>,
    g: &ConvGeom,
    x: &Buf,
    dy: &Buf,
    w: &conv::SparseBufs,
    dvalues: &mut Buf,
) -> Result<()> {
    let splits = conv::conv_bwd_weight_sparse_splits(g)?;
    let floats = conv::conv_bwd_weight_sparse_workspace(w.nnz, splits);
    let mut work = (floats > 0)
        .then(|| DeviceBuf::uninit(dev, floats))
        .transpose()?;
    conv::conv_bwd_weight_sparse(
        dev.gpu(),
        g,
        x,
        dy,
        w,
        dvalues,
        work.as_mut().map(DeviceBuf::buf_mut),
    )
}

/// Convolution of x [Cin, N, H, W] with a dense or sparse weight and an optional bias; `g` is
/// checked by the caller.
pub(super) fn conv2d(
    tape: &mut Tape,
    store: &ParamStore,
    x: Var,
    w: ParamId,
    b: Option<ParamId>,
    g: ConvGeom,
) -> Result<Var> {
    let (dev, dp) = engine(tape, store)?;
    let xv = tape.value_rc(x);
    let p = &dp.params[w.0];
    let name = &store.get(w).name;
    let mut y = DeviceBuf::uninit(&dev, g.cout * g.n * g.oh * g.ow)?;
    let bias = b.map(|b| &dp.params[b.0].values);
    let xb = buf(&xv)?;
    match &p.sparse {
        None => conv::conv_fwd_dense(dev.gpu(), &g, xb, &p.values, bias, y.buf_mut()),
        Some(sw) => {
            conv::conv_fwd_sparse(dev.gpu(), &g, xb, &sw.bufs(&p.values), bias, y.buf_mut())
        }
    }
    .with_context(|| format!("{name} forward"))?;
    let out = Tensor::from_device(&[g.cout, g.n, g.oh, g.ow], y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dp = on_device(ctx.params)?;
        let gpu = dp.gpu();
        let p = &dp.params[w.0];
        let name = || format!("{} backward", p.name);
        let (xb, dyb) = (buf(&xv)?, buf(dy)?);
        {
            let mut grads = dp.grads.borrow_mut();
            let gw = &mut grads[w.0];
            gw.claim(&p.name)?;
            match &p.sparse {
                None => dense_weight_grad(&dev, &g, xb, dyb, &mut gw.grad),
                Some(sw) => {
                    sparse_weight_grad(&dev, &g, xb, dyb, &sw.bufs(&p.values), &mut gw.grad)
                        .with_context(name)?;
                    match (dp.dense_grads(), &mut gw.dense) {
                        (true, Some(dense)) => dense_weight_grad(&dev, &g, xb, dyb, dense),
                        (true, None) => bail!("{}: no dense gradient buffer", p.name),
                        (false, _) => Ok(()),
                    }
                }
            }
            .with_context(name)?;
            if let Some(bid) = b {
                let gb = &mut grads[bid.0];
                gb.claim(&dp.params[bid.0].name)?;
                conv::conv_bwd_bias(gpu, g.cout, g.col_cols(), dyb, &mut gb.grad)
                    .with_context(name)?;
            }
        }
        if ctx.wants(x) {
            let mut dx = DeviceBuf::uninit(dp.device(), g.cin * g.n * g.h * g.w)?;
            match &p.sparse {
                None => conv::conv_bwd_data_dense(gpu, &g, dyb, &p.values, dx.buf_mut()),
                Some(sw) => {
                    conv::conv_bwd_data_sparse(gpu, &g, dyb, &sw.bufs(&p.values), dx.buf_mut())
                }
            }
            .with_context(name)?;
            ctx.accumulate(x, Tensor::from_device(&[g.cin, g.n, g.h, g.w], dx)?)?;
        }
        Ok(())
    });
    Ok(tape.push("conv2d", out, &[x], true, backward))
}

/// Batch norm of x [C, …] per channel (ReLU fused when `p.relu`): training mode with batch
/// statistics (running statistics updated on the device), or evaluation mode with the running
/// statistics (not differentiable).
pub(super) fn batchnorm(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &BnStats,
    x: Var,
    p: BnParams,
    train: bool,
) -> Result<Var> {
    let BnParams { gamma, beta, relu } = p;
    let (dev, dp) = engine(tape, store)?;
    let (xv, c, m) = bn_input(tape, store, x, gamma)?;
    let name = &store.get(gamma).name;
    let y = DeviceBuf::uninit(&dev, xv.numel())?;
    let (g, bt) = (&dp.params[gamma.0].values, &dp.params[beta.0].values);
    let running = dp.bn.borrow();
    let rs = running
        .get(stats.slot)
        .ok_or_else(|| anyhow!("{name}: no running statistics on the device"))?;
    let gpu = dev.gpu();
    if !train {
        ensure!(
            !tape.is_recording(),
            "batch norm in evaluation mode cannot be differentiated: use a no_grad tape"
        );
        norm::eval_fwd(
            gpu,
            buf(&xv)?,
            g,
            bt,
            &rs.mean,
            &rs.var,
            y.buf(),
            c,
            m,
            BN_EPS,
        )
        .with_context(|| format!("{name} forward"))?;
        if relu {
            elementwise::relu_fwd(gpu, y.buf(), y.buf(), c * m)?;
        }
        drop(running);
        let out = Tensor::from_device(xv.shape(), y)?;
        return Ok(tape.input(out));
    }
    ensure!(
        m > 1,
        "batch norm needs more than one value per channel in training (got a batch of shape {:?})",
        xv.shape()
    );
    let (mean, invstd) = (DeviceBuf::uninit(&dev, c)?, DeviceBuf::uninit(&dev, c)?);
    let fwd = norm::BnTrainFwd {
        x: buf(&xv)?,
        gamma: g,
        beta: bt,
        running_mean: &rs.mean,
        running_var: &rs.var,
        y: y.buf(),
        save_mean: mean.buf(),
        save_invstd: invstd.buf(),
    };
    norm::train_fwd(gpu, &fwd, c, m, BN_EPS, BN_MOMENTUM, relu)
        .with_context(|| format!("{name} forward"))?;
    drop(running);
    let out = Tensor::from_device(xv.shape(), y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dp = on_device(ctx.params)?;
        let (pg, pb) = (&dp.params[gamma.0], &dp.params[beta.0]);
        let dx = DeviceBuf::uninit(dp.device(), xv.numel())?;
        {
            let mut grads = dp.grads.borrow_mut();
            grads[gamma.0].claim(&pg.name)?;
            grads[beta.0].claim(&pb.name)?;
            let b = norm::BnBwd {
                x: buf(&xv)?,
                gamma: &pg.values,
                beta: &pb.values,
                save_mean: mean.buf(),
                save_invstd: invstd.buf(),
                dy: buf(dy)?,
                dx: dx.buf(),
                dgamma: &grads[gamma.0].grad,
                dbeta: &grads[beta.0].grad,
            };
            norm::bwd(dp.gpu(), &b, c, m, relu).with_context(|| format!("{} backward", pg.name))?;
        }
        ctx.accumulate(x, Tensor::from_device(xv.shape(), dx)?)?;
        Ok(())
    });
    let name = if relu { "batchnorm+relu" } else { "batchnorm" };
    Ok(tape.push(name, out, &[x], true, backward))
}

pub(super) fn relu(tape: &mut Tape, x: Var) -> Result<Var> {
    let dev = device(tape);
    let xv = tape.value_rc(x);
    let n = xv.numel();
    let y = DeviceBuf::uninit(&dev, n)?;
    elementwise::relu_fwd(dev.gpu(), buf(&xv)?, y.buf(), n)?;
    let out = Tensor::from_device(xv.shape(), y)?;
    // The output is positive exactly where the input is: it serves as the mask.
    let mask = out.clone();
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        ctx.accumulate(x, relu_grad(&dev, &mask, dy)?)?;
        Ok(())
    });
    Ok(tape.push("relu", out, &[x], false, backward))
}

/// max(a + b, 0), the forward of `ops::add_relu`.
pub(super) fn add_relu(dev: &Arc<GpuDevice>, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = a.numel();
    let y = DeviceBuf::uninit(dev, n)?;
    elementwise::add_relu(dev.gpu(), buf(a)?, buf(b)?, y.buf(), n)?;
    Tensor::from_device(a.shape(), y)
}

/// dy masked by y > 0 (a ReLU's input gradient, from its output).
pub(super) fn relu_grad(dev: &Arc<GpuDevice>, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let n = y.numel();
    let dx = DeviceBuf::uninit(dev, n)?;
    elementwise::relu_bwd(dev.gpu(), buf(y)?, buf(dy)?, dx.buf(), n)?;
    Tensor::from_device(y.shape(), dx)
}

/// Max-pooling of x [C, N, H, W].
pub(super) fn maxpool(tape: &mut Tape, x: Var, k: usize, stride: usize, pad: usize) -> Result<Var> {
    let dev = device(tape);
    let xv = tape.value_rc(x);
    let s = xv.shape().to_vec();
    ensure!(
        s.len() == 4,
        "max-pool input must be [C, N, H, W], got {s:?}"
    );
    let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
    ensure!(
        stride > 0 && k > 0 && h + 2 * pad >= k && w + 2 * pad >= k,
        "max-pool {k}x{k}/{stride} pad {pad} does not fit input {s:?}"
    );
    let (oh, ow) = (pool_out(h, k, stride, pad), pool_out(w, k, stride, pad));
    let y = DeviceBuf::uninit(&dev, planes * oh * ow)?;
    // u32 indices, in a buffer of as many 4-byte words.
    let argmax = DeviceBuf::uninit(&dev, planes * oh * ow)?;
    pool::max_fwd(
        dev.gpu(),
        buf(&xv)?,
        y.buf(),
        argmax.buf(),
        planes,
        h,
        w,
        k,
        stride,
        pad,
    )?;
    let out = Tensor::from_device(&[s[0], s[1], oh, ow], y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dx = DeviceBuf::uninit(&dev, planes * h * w)?;
        pool::max_bwd(
            dev.gpu(),
            buf(dy)?,
            argmax.buf(),
            dx.buf(),
            planes,
            h,
            w,
            k,
            stride,
            pad,
        )?;
        ctx.accumulate(x, Tensor::from_device(&s, dx)?)?;
        Ok(())
    });
    Ok(tape.push("maxpool", out, &[x], false, backward))
}

/// Global average pooling: x [C, N, H, W] → features [C, N].
pub(super) fn global_avgpool(tape: &mut Tape, x: Var) -> Result<Var> {
    let dev = device(tape);
    let xv = tape.value_rc(x);
    let s = xv.shape().to_vec();
    ensure!(
        s.len() == 4,
        "global pooling input must be [C, N, H, W], got {s:?}"
    );
    let (planes, hw) = (s[0] * s[1], s[2] * s[3]);
    let y = DeviceBuf::uninit(&dev, planes)?;
    pool::avg_fwd(dev.gpu(), buf(&xv)?, y.buf(), planes, hw)?;
    let out = Tensor::from_device(&[s[0], s[1]], y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        let dx = DeviceBuf::uninit(&dev, planes * hw)?;
        pool::avg_bwd(dev.gpu(), buf(dy)?, dx.buf(), planes, hw)?;
        ctx.accumulate(x, Tensor::from_device(&s, dx)?)?;
        Ok(())
    });
    Ok(tape.push("global_avgpool", out, &[x], false, backward))
}

/// The fused reweighted cross-entropy of class-major logits [K, N]: loss, per-sample losses,
/// the gradient of the logits and the per-group statistics in one kernel; the losses and the
/// statistics row are read back.
pub(super) fn cross_entropy(
    tape: &mut Tape,
    logits: Var,
    t: &Targets,
) -> Result<(Var, StepReport)> {
    let (labels, weights, groups) = (t.labels, t.weights, t.groups);
    let dev = device(tape);
    let lv = tape.value_rc(logits);
    let s = lv.shape().to_vec();
    ensure!(s.len() == 2, "logits must be [K, N] on a GPU, got {s:?}");
    let (k, n) = (s[0], s[1]);
    check_loss_inputs(n, k, labels, weights)?;
    let num_groups = group_count(groups);
    ensure!(
        num_groups <= xent::XENT_MAX_GROUPS,
        "cross-entropy: {num_groups} groups (at most {} on a GPU)",
        xent::XENT_MAX_GROUPS
    );
    let gpu = dev.gpu();
    let upload_u32 = |v: &[u32]| -> Result<DeviceBuf> {
        let mut d = DeviceBuf::uninit(&dev, v.len())?;
        gpu.write(d.buf_mut(), v)?;
        Ok(d)
    };
    let labels_d = upload_u32(labels)?;
    let groups_d = groups.map(upload_u32).transpose()?;
    let weights_d = DeviceBuf::upload(&dev, weights)?;
    let losses = DeviceBuf::uninit(&dev, n)?;
    let dlogits = DeviceBuf::uninit(&dev, k * n)?;
    let partials = DeviceBuf::uninit(&dev, xent::partials_len(n))?;
    let stats = DeviceBuf::uninit(&dev, xent::XENT_STATS)?;
    // Σw in f64 as the CPU loss does.
    let inv_wsum = (1.0 / weights.iter().map(|&w| w as f64).sum::<f64>()) as f32;
    let bufs = xent::XentBufs {
        logits: buf(&lv)?,
        labels: labels_d.buf(),
        weights: weights_d.buf(),
        groups: groups_d.as_ref().map(DeviceBuf::buf),
        losses: losses.buf(),
        dlogits: dlogits.buf(),
        partials: partials.buf(),
        stats: stats.buf(),
    };
    xent::fused(gpu, &bufs, n, k, num_groups, inv_wsum)?;
    // The loss value is stats[0]: the statistics buffer seen as one value. Nothing is read
    // back here, so the host never waits for the step.
    let mut stats = stats;
    stats.view_first(1);
    let out = Tensor::from_device(&[1], stats)?;
    let report = DeviceReport::new(out.clone(), Tensor::from_device(&[n], losses)?, num_groups);
    let dlogits = Tensor::from_device(&[k, n], dlogits)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
        // The seed of a loss is a host scalar; 1 (a training step) passes dlogits as they are.
        let scale = dy.data()[0];
        let g = if scale == 1.0 {
            dlogits
        } else {
            let d = DeviceBuf::uninit(&dev, k * n)?;
            elementwise::scale(dev.gpu(), buf(&dlogits)?, d.buf(), scale, k * n)?;
            Tensor::from_device(&[k, n], d)?
        };
        ctx.accumulate(logits, g)?;
        Ok(())
    });
    Ok((
        tape.push("cross_entropy", out, &[logits], false, backward),
        StepReport::Device(report),
    ))
}
