//! The convolution on the CPU: dense (im2col + GEMM, or a dense-masked sparse weight) and sparse
//! (the direct convolution of `sparse::conv`), with the tape hints that fuse a sparse
//! convolution's backward with the batch norm next to it.

use super::gpu;
use crate::autograd::{BackwardCtx, Tape, Var};
use crate::device::cpu::buffers::{overwritten, pooled, Pooled};
use crate::device::cpu::conv::Layout;
use crate::device::cpu::{conv, norm, ConvGeom};
use crate::nn::param::{ComputePath, ParamId, ParamStore, Values};
use crate::sparse::conv::DirectGeom;
use crate::sparse::csr;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
use std::cell::RefCell;
use std::rc::Rc;

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
    let g = conv_geom(tape, store, x, w, stride, pad)?;
    if tape.device().is_some() {
        return gpu::conv2d(tape, store, x, w, b, g);
    }
    let xv = tape.value_rc(x);
    let p = store.get(w);
    let cout = g.cout;
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
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
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
            )?;
        }
        Ok(())
    });
    Ok(tape.push(name, out, &[x], true, backward))
}

/// The geometry of convolving x with weight `w` ([Cout, Cin, k, k], or [Cout, Cin] for k = 1),
/// checked: x is [C, H, W, N] on the CPU (batch innermost), [C, N, H, W] on a GPU.
fn conv_geom(
    tape: &Tape,
    store: &ParamStore,
    x: Var,
    w: ParamId,
    stride: usize,
    pad: usize,
) -> Result<ConvGeom> {
    let p = store.get(w);
    let s = tape.value(x).shape();
    let on_gpu = tape.device().is_some();
    let layout = if on_gpu {
        "[C, N, H, W]"
    } else {
        "[C, H, W, N]"
    };
    ensure!(
        s.len() == 4,
        "{}: input must be {layout}, got {s:?}",
        p.name
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
    let g = if on_gpu {
        ConvGeom::new(s[1], s[0], s[2], s[3], cout, k, stride, pad)
    } else {
        ConvGeom::new(s[3], s[0], s[1], s[2], cout, k, stride, pad)
            .map(|g| g.with_layout(Layout::Chwn))
    };
    g.map_err(|e| e.context(p.name.clone()))
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
    let backward = Box::new(move |dy: &Tensor, ctx: &mut BackwardCtx| {
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
            )?;
        }
        Ok(())
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
pub(super) struct ReluBnLink {
    pub(super) beta: ParamId,
    pub(super) sums: RefCell<Option<Vec<(f64, f64)>>>,
}

/// What a sparse convolution whose input needs no gradient (a first layer) and that has no bias
/// tells the batch norm after it: its backward is the weight gradient alone, which that batch
/// norm's backward can compute itself through its own coefficients
/// (`DirectGeom::weight_grad_through_bn`), so the batch norm's dx is never stored.
pub(super) struct FirstConv {
    pub(super) w: ParamId,
    pub(super) x: Rc<Tensor>,
    pub(super) g: ConvGeom,
}

/// A batch norm's backward, as `FirstConv::backward_through` needs it.
pub(super) struct BnBackward<'a> {
    pub(super) relu: bool,
    pub(super) given: Option<&'a [(f64, f64)]>,
    pub(super) c: usize,
    pub(super) m: usize,
    /// The batch norm's input (the convolution's output).
    pub(super) y: &'a [f32],
    pub(super) gamma: &'a [f32],
    pub(super) beta: &'a [f32],
    pub(super) mean: &'a [f32],
    pub(super) invstd: &'a [f32],
    /// The gradient of the batch norm's output.
    pub(super) dy: &'a [f32],
}

impl FirstConv {
    /// Adds the convolution's weight gradient through the batch norm `bn` whose input `y` is
    /// this convolution's output, and returns (dgamma, dbeta). None, with nothing added, unless
    /// the batch norm is y's only consumer, the weight is on the sparse path, this is not a
    /// topology-update step (which needs the dense gradient) and the weight gradient walks
    /// output pixels; the convolution's own backward then runs as usual.
    pub(super) fn backward_through(
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
        let g = norm::BnGradIn {
            fwd: norm::BnIn::new(bn.c, bn.m, bn.y, bn.gamma, bn.beta),
            save_mean: bn.mean,
            save_invstd: bn.invstd,
            dy: bn.dy,
        };
        let coefs = norm::batchnorm_backward_coefs(bn.relu, bn.given, g, &mut dg, &mut db);
        let gv = d.weight_grad_through_bn(sw, bn.dy, &coefs, self.x.data())?;
        ctx.grads.add(self.w, &gv);
        Some((dg, db))
    }
}

fn row_sums(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols).map(|r| r.iter().sum()).collect()
}
