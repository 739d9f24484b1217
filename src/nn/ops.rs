//! Differentiable operations on the tape, over the CPU kernels of `device::cpu` and the sparse
//! kernels of `sparse::csr`. Shapes are checked here, so a bad shape is an error, not a panic.
//!
//! Image activations are batch-innermost, [C, H, W, N] (see `tensor.rs`); `to_batch_innermost`
//! turns a loader batch [C, N, H, W] into that layout.
//!
//! About 690 lines: every differentiable op with its backward closure, and the fusions between
//! them (tape hints). One op per file is the natural cut once the GPU runs through the tape, which
//! adds a device dispatch to each op (issue 16).

use crate::autograd::{Tape, Var};
use crate::device::cpu::buffers::{overwritten, pooled, Pooled};
use crate::device::cpu::conv::Layout;
use crate::device::cpu::transpose::{swap01, transpose_inner};
use crate::device::cpu::{conv, elementwise, norm, pool, xent, ConvGeom};
use crate::nn::param::{ComputePath, ParamId, ParamStore, Values};
use crate::sparse::conv::DirectGeom;
use crate::sparse::csr;
use crate::tensor::Tensor;
use anyhow::{bail, ensure, Result};
use std::cell::RefCell;
use std::rc::Rc;

/// Running statistics of one batch-norm layer.
#[derive(Clone, Debug, PartialEq)]
pub struct BnStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

impl BnStats {
    pub fn new(c: usize) -> Self {
        Self {
            mean: vec![0.0; c],
            var: vec![1.0; c],
        }
    }
}

pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

fn row_sums(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols).map(|r| r.iter().sum()).collect()
}

/// Convolution of x [Cin, H, W, N] with weight `w` ([Cout, Cin, k, k], or [Cout, Cin] for k = 1)
/// and an optional bias; output [Cout, OH, OW, N]. Sparse weights are computed over their active
/// entries (the direct convolution of `sparse::conv`) or dense-masked, as the parameter's
/// `ComputePath` says.
pub fn conv2d(
    tape: &mut Tape,
    store: &ParamStore,
    x: Var,
    w: ParamId,
    b: Option<ParamId>,
    stride: usize,
    pad: usize,
) -> Result<Var> {
    let xv = tape.value_rc(x);
    let p = store.get(w);
    let s = xv.shape();
    ensure!(
        s.len() == 4,
        "{}: input must be [C, H, W, N], got {:?}",
        p.name,
        s
    );
    let k = if p.shape.len() == 4 { p.shape[2] } else { 1 };
    let (cout, cols) = p.matrix_dims();
    ensure!(
        cols == s[0] * k * k,
        "{}: weight {:?} does not fit an input with {} channels",
        p.name,
        p.shape,
        s[0]
    );
    let g = ConvGeom::new(s[3], s[0], s[1], s[2], cout, k, stride, pad)
        .map_err(|e| e.context(p.name.clone()))?
        .with_layout(Layout::Chwn);
    let n = g.col_cols();
    let bias = b.map(|id| store.get(id).data());
    // A dense-masked weight is materialised once per step, here, and kept for backward.
    let masked = match &p.values {
        Values::Sparse(sw, ComputePath::Sparse) => {
            return conv2d_direct(tape, sw, x, w, b, bias, &g);
        }
        Values::Sparse(_, ComputePath::DenseMasked) => Some(p.to_dense()),
        Values::Dense(_) => None,
    };
    // im2col and the GEMM overwrite their outputs (conv2d_forward's y included: it is set to
    // the bias, or the GEMM does not read it).
    let col_len = g.col_rows() * n;
    let mut col = Pooled::default();
    let y = overwritten(cout * n, |y| {
        let wv = masked.as_deref().unwrap_or_else(|| p.data());
        col = pooled(col_len, |col| {
            conv::conv2d_forward(&g, xv.data(), wv, bias, col, y)
        })
    });
    let out = Tensor::from_vec(&[cout, g.oh, g.ow, g.n], y)?;
    let name = if masked.is_some() {
        "conv2d masked"
    } else {
        "conv2d"
    };
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let dy = dy.data();
        let p = ctx.params.get(w);
        let wants_x = ctx.wants(x);
        let dx_len = g.cin * g.n * g.h * g.w;
        let col_len = g.col_rows() * n;
        let mut dx = Vec::new();
        // conv2d_backward overwrites dw and dx and writes dcol (scratch) before reading it. A
        // dense-masked weight takes the dense path with its materialised copy (the GEMM
        // orientations of `conv2d_backward` included) and keeps the gradient's active entries.
        let wv = masked.as_deref().unwrap_or_else(|| p.data());
        let dw = overwritten(wv.len(), |dw| {
            if wants_x {
                dx = overwritten(dx_len, |dx| {
                    pooled(col_len, |dcol| {
                        conv::conv2d_backward(&g, &col, wv, dy, Some(dw), None, dcol, Some(dx))
                    });
                })
            } else {
                conv::conv2d_backward(&g, &col, wv, dy, Some(dw), None, &mut [], None)
            }
        });
        match &p.values {
            Values::Sparse(sw, _) => {
                let mut gv = vec![0.0; sw.nnz()];
                sw.gather_from_dense(&dw, &mut gv);
                ctx.grads.add(w, &gv);
                if ctx.grads.dense_for_sparse {
                    ctx.grads.dense[w.0] = Some(dw);
                }
            }
            Values::Dense(_) => ctx.grads.add(w, &dw),
        }
        if let Some(bid) = b {
            ctx.grads.add(bid, &row_sums(dy, n));
        }
        if wants_x {
            ctx.accumulate(
                x,
                Tensor::from_vec(&[g.cin, g.h, g.w, g.n], dx).expect("dx shape"),
            );
        }
    });
    Ok(tape.push(name, out, &[x], true, backward))
}

/// The sparse path of `conv2d` as a direct convolution (`sparse::conv`): backward reads x
/// itself, no im2col buffer is kept.
fn conv2d_direct(
    tape: &mut Tape,
    sw: &csr::SparseWeight,
    x: Var,
    w: ParamId,
    b: Option<ParamId>,
    bias: Option<&[f32]>,
    g: &ConvGeom,
) -> Result<Var> {
    let xv = tape.value_rc(x);
    let link = tape.hint::<ReluBnLink>(x);
    let d = DirectGeom::new(g);
    let y = d.forward(sw, xv.data(), bias);
    let first = (!tape.requires_grad(x) && b.is_none()).then(|| FirstConv {
        w,
        x: Rc::clone(&xv),
        g: d.g,
    });
    let out = Tensor::from_vec(&[g.cout, g.oh, g.ow, g.n], y)?;
    let g = *g;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let dy = dy.data();
        let p = ctx.params.get(w);
        let Values::Sparse(sw, _) = &p.values else {
            unreachable!("conv2d_direct: {} is no longer sparse", p.name)
        };
        let n = g.col_cols();
        let wants_x = ctx.wants(x);
        let (gv, dx) = if ctx.grads.dense_for_sparse {
            // Topology-update step: the dense weight gradient needs the im2col buffer.
            let col = overwritten(g.col_rows() * n, |col| conv::im2col(&g, xv.data(), col));
            let dw = overwritten(g.cout * g.col_rows(), |dw| {
                conv::conv2d_weight_grad(&g, &col, dy, dw)
            });
            let mut gv = vec![0.0; sw.nnz()];
            sw.gather_from_dense(&dw, &mut gv);
            ctx.grads.dense[w.0] = Some(dw);
            (gv, wants_x.then(|| d.input_grad(sw, dy)))
        } else if wants_x {
            let fused = link.as_ref().and_then(|l| {
                let beta = ctx.params.get(l.beta).data();
                let r = d.backward_with_relu_sums(sw, dy, xv.data(), beta)?;
                Some((l, r))
            });
            match fused {
                Some((l, (gv, dx, sums))) => {
                    l.sums.replace(Some(sums));
                    (gv, Some(dx))
                }
                None => {
                    let (gv, dx) = d.backward(sw, dy, xv.data());
                    (gv, Some(dx))
                }
            }
        } else {
            (d.weight_grad(sw, dy, xv.data()), None)
        };
        ctx.grads.add(w, &gv);
        if let Some(bid) = b {
            ctx.grads.add(bid, &row_sums(dy, n));
        }
        if let Some(dx) = dx {
            ctx.accumulate(
                x,
                Tensor::from_vec(&[g.cin, g.h, g.w, g.n], dx).expect("dx shape"),
            );
        }
    });
    let v = tape.push("conv2d sparse", out, &[x], true, backward);
    if let Some(f) = first {
        tape.set_hint(v, Rc::new(f));
    }
    Ok(v)
}

/// What a training batch norm + ReLU tells the sparse convolution that consumes its output: its
/// shift β, and a place for the two sums of its backward, which that convolution's backward
/// takes while it computes the gradient (`DirectGeom::backward_with_relu_sums`); the batch norm
/// then reads its input and gradient once, not twice.
struct ReluBnLink {
    beta: ParamId,
    sums: RefCell<Option<Vec<(f64, f64)>>>,
}

/// What a sparse convolution whose input needs no gradient (a first layer) and that has no bias
/// tells the batch norm after it: its backward is the weight gradient alone, which that batch
/// norm's backward can compute itself through its own coefficients
/// (`DirectGeom::weight_grad_through_bn`), so the batch norm's dx is never stored.
struct FirstConv {
    w: ParamId,
    x: Rc<Tensor>,
    g: ConvGeom,
}

/// A batch norm's backward, as `FirstConv::backward_through` needs it.
struct BnBackward<'a> {
    relu: bool,
    given: Option<&'a [(f64, f64)]>,
    c: usize,
    m: usize,
    /// The batch norm's input (the convolution's output).
    y: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    mean: &'a [f32],
    invstd: &'a [f32],
    /// The gradient of the batch norm's output.
    dy: &'a [f32],
}

impl FirstConv {
    /// Adds the convolution's weight gradient through the batch norm `bn` whose input `y` is
    /// this convolution's output, and returns (dgamma, dbeta). None, with nothing added, unless
    /// the batch norm is y's only consumer, the weight is on the sparse path, this is not a
    /// topology-update step (which needs the dense gradient) and the weight gradient walks
    /// output pixels; the convolution's own backward then runs as usual.
    fn backward_through(
        &self,
        ctx: &mut crate::autograd::BackwardCtx,
        y: Var,
        bn: &BnBackward,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        if ctx.grads.dense_for_sparse || ctx.uses(y) != 1 {
            return None;
        }
        let Values::Sparse(sw, ComputePath::Sparse) = &ctx.params.get(self.w).values else {
            return None;
        };
        let d = DirectGeom::new(&self.g);
        if !d.walks_output_pixels() {
            return None;
        }
        let (mut dg, mut db) = (vec![0.0; bn.c], vec![0.0; bn.c]);
        let coefs = norm::batchnorm_backward_coefs(
            bn.relu, bn.given, bn.c, bn.m, bn.y, bn.gamma, bn.beta, bn.mean, bn.invstd, bn.dy,
            &mut dg, &mut db,
        );
        let gv = d.weight_grad_through_bn(sw, bn.dy, &coefs, self.x.data())?;
        ctx.grads.add(self.w, &gv);
        Some((dg, db))
    }
}

/// Batch normalisation of x [C, …] (image activations [C, H, W, N], or features [C, N]): per
/// channel over its contiguous row. In training mode it normalises with the
/// batch statistics and updates `stats`; in evaluation mode it uses `stats` and cannot be
/// differentiated.
pub fn batchnorm(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &mut BnStats,
    x: Var,
    gamma: ParamId,
    beta: ParamId,
    train: bool,
) -> Result<Var> {
    if train {
        return batchnorm_train(tape, store, stats, x, gamma, beta, false);
    }
    batchnorm_eval(tape, store, stats, x, gamma, beta, false)
}

/// Evaluation-mode batch norm (ReLU fused when `relu`): not differentiable.
fn batchnorm_eval(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &BnStats,
    x: Var,
    gamma: ParamId,
    beta: ParamId,
    relu: bool,
) -> Result<Var> {
    ensure!(
        !tape.is_recording(),
        "batch norm in evaluation mode cannot be differentiated: use a no_grad tape"
    );
    let (xv, c, m) = bn_input(tape, store, x, gamma)?;
    let (gv, bv) = (store.get(gamma).data(), store.get(beta).data());
    let y = overwritten(xv.numel(), |y| {
        norm::batchnorm_eval_forward_with(
            relu,
            c,
            m,
            xv.data(),
            gv,
            bv,
            &stats.mean,
            &stats.var,
            BN_EPS,
            y,
        )
    });
    Ok(tape.input(Tensor::from_vec(xv.shape(), y)?))
}

/// `relu(batchnorm(x))` as one op: one pass over the activations forward (in both modes) and,
/// in training, at most two backward (the ReLU mask is recomputed from x), instead of a
/// batch-norm output, a ReLU output and a masked gradient each written and read again.
pub fn batchnorm_relu(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &mut BnStats,
    x: Var,
    gamma: ParamId,
    beta: ParamId,
    train: bool,
) -> Result<Var> {
    if train {
        return batchnorm_train(tape, store, stats, x, gamma, beta, true);
    }
    batchnorm_eval(tape, store, stats, x, gamma, beta, true)
}

/// The input of a batch norm with its channel count c and values per channel m, checked
/// against the layer.
fn bn_input(
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

/// Training-mode batch norm, followed by ReLU in the same passes when `fused_relu`.
fn batchnorm_train(
    tape: &mut Tape,
    store: &ParamStore,
    stats: &mut BnStats,
    x: Var,
    gamma: ParamId,
    beta: ParamId,
    fused_relu: bool,
) -> Result<Var> {
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
        forward(
            c,
            m,
            xv.data(),
            gv,
            bv,
            BN_EPS,
            BN_MOMENTUM,
            &mut stats.mean,
            &mut stats.var,
            y,
            &mut mean,
            &mut invstd,
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
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
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
                return;
            }
        }
        let dx = overwritten(xv.numel(), |dx| {
            norm::batchnorm_backward_with(
                fused_relu,
                given.as_deref(),
                c,
                m,
                xv.data(),
                gv,
                bv,
                mean,
                &invstd,
                dy.data(),
                dx,
                &mut dg,
                &mut db,
            )
        });
        ctx.grads.add(gamma, &dg);
        ctx.grads.add(beta, &db);
        ctx.accumulate(x, Tensor::from_vec(xv.shape(), dx).expect("dx shape"));
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

pub fn relu(tape: &mut Tape, x: Var) -> Var {
    let xv = tape.value_rc(x);
    let y = overwritten(xv.numel(), |y| elementwise::relu_forward(xv.data(), y));
    let out = Tensor::from_vec(xv.shape(), y).expect("relu shape");
    // x > 0 exactly where the output is positive, so the input serves as the mask.
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let dx = overwritten(dy.numel(), |dx| {
            elementwise::relu_backward(xv.data(), dy.data(), dx)
        });
        ctx.accumulate(x, Tensor::from_vec(xv.shape(), dx).expect("dx shape"));
    });
    tape.push("relu", out, &[x], false, backward)
}

pub fn add(tape: &mut Tape, a: Var, b: Var) -> Result<Var> {
    let (av, bv) = (tape.value_rc(a), tape.value_rc(b));
    ensure!(
        av.shape() == bv.shape(),
        "residual add: shapes {:?} and {:?} differ",
        av.shape(),
        bv.shape()
    );
    let y = overwritten(av.numel(), |y| {
        elementwise::add_forward(av.data(), bv.data(), y)
    });
    let out = Tensor::from_vec(av.shape(), y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        ctx.accumulate(a, dy.clone());
        ctx.accumulate(b, dy.clone());
    });
    Ok(tape.push("add", out, &[a, b], false, backward))
}

/// Max-pooling of x [C, H, W, N] with a k×k window.
pub fn maxpool(tape: &mut Tape, x: Var, k: usize, stride: usize, pad: usize) -> Result<Var> {
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
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let dx = overwritten(c * h * w * n, |dx| {
            pool::maxpool_backward_chwn(n, h * w, dy.data(), &argmax, dx)
        });
        ctx.accumulate(x, Tensor::from_vec(&s, dx).expect("dx shape"));
    });
    Ok(tape.push("maxpool", out, &[x], false, backward))
}

/// Global average pooling: x [C, H, W, N] → features [C, N].
pub fn global_avgpool(tape: &mut Tape, x: Var) -> Result<Var> {
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
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let dx = overwritten(c * n * hw, |dx| {
            pool::global_avgpool_backward_chwn(c, n, hw, dy.data(), dx)
        });
        ctx.accumulate(x, Tensor::from_vec(&s, dx).expect("dx shape"));
    });
    Ok(tape.push("global_avgpool", out, &[x], false, backward))
}

/// Images [C, N, H, W] (the loader's layout) → [C, H, W, N], the layout of every op above.
pub fn to_batch_innermost(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = tape.value(x);
    let s = xv.shape().to_vec();
    ensure!(s.len() == 4, "images must be [C, N, H, W], got {:?}", s);
    let (c, n, hw) = (s[0], s[1], s[2] * s[3]);
    let y = overwritten(xv.numel(), |y| transpose_inner(xv.data(), c, n, hw, y));
    let out = Tensor::from_vec(&[c, s[2], s[3], n], y)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let dx = overwritten(dy.numel(), |dx| transpose_inner(dy.data(), c, hw, n, dx));
        ctx.accumulate(x, Tensor::from_vec(&s, dx).expect("dx shape"));
    });
    Ok(tape.push("to_batch_innermost", out, &[x], false, backward))
}

/// Linear layer on features x [F, N] with weight [K, F] (dense or sparse) → logits [N, K].
/// Computed as a 1×1 convolution, then transposed.
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
    Ok(transpose01(tape, y2))
}

/// Same values, another shape.
pub fn reshape(tape: &mut Tape, x: Var, shape: &[usize]) -> Result<Var> {
    let xv = tape.value(x);
    let old = xv.shape().to_vec();
    let out = xv.clone().reshape(shape)?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        ctx.accumulate(x, dy.clone().reshape(&old).expect("reshape back"));
    });
    Ok(tape.push("reshape", out, &[x], false, backward))
}

/// [A, B] → [B, A].
pub fn transpose01(tape: &mut Tape, x: Var) -> Var {
    let xv = tape.value(x);
    let (a, b) = (xv.shape()[0], xv.shape()[1]);
    let mut y = vec![0.0; a * b];
    swap01(xv.data(), a, b, 1, &mut y);
    let out = Tensor::from_vec(&[b, a], y).expect("transpose shape");
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let mut dx = vec![0.0; a * b];
        swap01(dy.data(), b, a, 1, &mut dx);
        ctx.accumulate(x, Tensor::from_vec(&[a, b], dx).expect("dx shape"));
    });
    tape.push("transpose", out, &[x], false, backward)
}

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

/// Reweighted cross-entropy of logits [N, K]: returns the scalar loss Σ wᵢlᵢ / Σ wᵢ (a Var of
/// shape [1]) and the per-sample losses lᵢ.
pub fn cross_entropy(
    tape: &mut Tape,
    logits: Var,
    labels: &[u32],
    weights: &[f32],
) -> Result<(Var, Vec<f32>)> {
    let lv = tape.value(logits);
    let s = lv.shape().to_vec();
    ensure!(s.len() == 2, "logits must be [N, K], got {:?}", s);
    let (n, k) = (s[0], s[1]);
    check_loss_inputs(n, k, labels, weights)?;
    let mut losses = vec![0.0; n];
    let mut dlogits = vec![0.0; n * k];
    let loss = xent::cross_entropy(n, k, lv.data(), labels, weights, &mut losses, &mut dlogits);
    let out = Tensor::from_vec(&[1], vec![loss])?;
    let backward = Box::new(move |dy: &Tensor, ctx: &mut crate::autograd::BackwardCtx| {
        let scale = dy.data()[0];
        let d: Vec<f32> = dlogits.iter().map(|v| v * scale).collect();
        ctx.accumulate(logits, Tensor::from_vec(&[n, k], d).expect("dlogits shape"));
    });
    Ok((
        tape.push("cross_entropy", out, &[logits], false, backward),
        losses,
    ))
}
