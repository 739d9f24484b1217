//! The training engine on the CUDA backend: a model whose parameters, optimiser state, batch-norm
//! statistics and activations live in device buffers, and a whole training step — forward,
//! fused reweighted cross-entropy, backward, SGD, and on update steps the dense gradients and the
//! topology update — run through the kernels of `device::gpu::kernels`, on a GPU (`Gpu::Cuda`) or
//! on the emulator (`Gpu::Emu`).
//!
//! It runs the architecture of `nn::Model` (the same layer graph, read from the host model) with
//! the math of the CPU engine (`nn::ops`, `optim::Sgd`, `sparse::topology::update_layer`), so a
//! step here matches `train::cpu_step` up to summation order (tests/gpu_step.rs).
//!
//! Layout on the device:
//! - per parameter: its trainable numbers (`Param::data()`: the dense values, or a sparse layer's
//!   active values in CSR order), their gradient and their SGD momentum, all the same length; a
//!   sparse layer also keeps its CSR (`row_ptr`, `col_idx`) and CSC (`col_ptr`, `csc_row`,
//!   `csc_pos`) index and a dense [rows·cols] gradient buffer filled on update steps;
//! - per batch-norm layer: running mean and variance;
//! - per batch shape: an arena of activation buffers (and, once a step is trained at that shape,
//!   their gradient buffers), allocated once and reused; the last two shapes seen are kept (the
//!   training batch and the last, smaller batch of an epoch, or evaluation batches).
//!
//! Sparse layers always run the sparse kernels here (CSR forward, CSC backward-data,
//! active-only backward-weight): `ComputePath` is a CPU choice, kept in the host model only.
//!
//! Over 600 lines on purpose: this is the GPU's second, hand-written model graph (forward,
//! backward, SGD, topology update), which issue 16 removes by running the tape on the GPU;
//! splitting it first would only spread code that is meant to go.

use crate::device::cpu::conv::ConvGeom;
use crate::device::cpu::pool::pool_out;
use crate::device::gpu::kernels::conv::{self, SparseBufs};
use crate::device::gpu::kernels::optim::{self, SgdTable};
use crate::device::gpu::kernels::topk::{self, BatchLayout, TopkBatchWorkspace};
use crate::device::gpu::kernels::xent;
use crate::device::gpu::kernels::{elementwise, pool};
use crate::device::gpu::{Buf, Gpu};
use crate::nn::models::{BnLayer, Body, ConvLayer};
use crate::nn::ops::{BN_EPS, BN_MOMENTUM};
use crate::nn::param::Values;
use crate::nn::Model;
use crate::optim::Sgd;
use crate::sparse::csr::SparseWeight;
use crate::sparse::topology::{prune_count, UpdateStats};
use crate::train::step::StepStats;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

/// A sparse layer's index on the device (the `SparseWeight` arrays, same meaning).
struct DevSparse {
    rows: usize,
    cols: usize,
    nnz: usize,
    /// u32 [nnz]: flat positions r·cols + c, ascending (the topology kernels keep them).
    positions: Buf,
    row_ptr: Buf,
    col_idx: Buf,
    col_ptr: Buf,
    csc_row: Buf,
    csc_pos: Buf,
    /// The dense weight gradient [rows·cols] of the last update step (allocated on first use).
    dense_grad: Option<Buf>,
}

/// One parameter on the device.
struct DevParam {
    name: String,
    /// The weight as a matrix: (output units, inputs per unit); (len, 1) for other kinds.
    rows: usize,
    cols: usize,
    /// Trainable numbers: `len` floats (numel, or nnz for a sparse layer).
    values: Buf,
    grad: Buf,
    momentum: Buf,
    len: usize,
    sparse: Option<DevSparse>,
}

struct DevBn {
    mean: Buf,
    var: Buf,
}

/// One operation of the forward graph. Tensors are indices into the arena; tensor 0 is the input.
#[derive(Clone, Debug)]
enum Op {
    Conv {
        layer: ConvLayer,
        g: ConvGeom,
        x: usize,
        y: usize,
        /// The input is the image: no input gradient.
        first: bool,
    },
    Bn {
        bn: BnLayer,
        x: usize,
        y: usize,
        relu: bool,
        /// Index of this op's saved (mean, invstd) in the arena.
        save: usize,
    },
    MaxPool {
        x: usize,
        y: usize,
        planes: usize,
        h: usize,
        w: usize,
        /// Index of this op's argmax buffer in the arena.
        argmax: usize,
    },
    AddRelu {
        a: usize,
        b: usize,
        y: usize,
    },
    /// Global average pool [C, N, H, W] → [C, N].
    Gap {
        x: usize,
        y: usize,
        planes: usize,
        hw: usize,
    },
}

/// Activations of one batch shape.
struct Arena {
    /// (n, h, w) of the input images.
    key: (usize, usize, usize),
    ops: Vec<Op>,
    /// Element count of every tensor.
    sizes: Vec<usize>,
    values: Vec<Buf>,
    /// Gradient buffers, one per tensor (training only; empty until the first training step at
    /// this shape; tensor 0, the images, gets a placeholder).
    grads: Vec<Buf>,
    /// Whether a tensor's gradient holds a value in the current backward pass.
    grad_set: Vec<bool>,
    /// Scratch for a gradient that must be added to one already set, per tensor size (the
    /// kernels check exact buffer sizes).
    scratch: HashMap<usize, Buf>,
    /// Saved batch-norm (mean, invstd) per Bn op.
    saved: Vec<(Buf, Buf)>,
    argmax: Vec<Buf>,
    /// The logits tensor [K, N] (the classifier's output, class-major).
    logits: usize,
    /// Buffers of the loss (training only).
    xent: Option<XentBufs>,
}

/// Labels and group ids (u32), sample weights, per-sample losses, the loss kernel's per-block
/// partials and its statistics row (`kernels::xent`).
struct XentBufs {
    labels: Buf,
    groups: Buf,
    weights: Buf,
    losses: Buf,
    partials: Buf,
    stats: Buf,
}

/// The model on the device. Built from a host model with [`GpuModel::upload`]; the host copy is
/// refreshed with [`GpuModel::download`].
pub struct GpuModel {
    gpu: Gpu,
    body: Body,
    fc: (crate::nn::param::ParamId, crate::nn::param::ParamId),
    in_channels: usize,
    num_classes: usize,
    params: Vec<DevParam>,
    bn: Vec<DevBn>,
    momentum: f32,
    weight_decay: f32,
    /// Most recently used first; at most two.
    arenas: Vec<Arena>,
    /// The dense gradients of the sparse layers are from the last step (an update step).
    dense_grads_ready: bool,
    /// Scratch of the batched topology update (every sparse layer's slice; grows as needed).
    topk_ws: Option<TopkBatchWorkspace>,
    /// Every parameter's (values, grad, momentum, len) for the one-launch SGD step. Built at
    /// upload: those buffers are never reallocated (the topology update rewrites a sparse
    /// layer's values and momentum in place, and its nnz is constant), so the addresses hold.
    sgd_table: SgdTable,
}

impl GpuModel {
    /// Copies `model` (weights, sparse structure, BN statistics) and `opt` (momentum, its
    /// hyper-parameters; the learning rate comes with every step) to `gpu`.
    pub fn upload(gpu: Gpu, model: &Model, opt: &Sgd) -> Result<Self> {
        ensure!(
            opt.buffers.len() == model.params.params.len(),
            "optimiser state has {} buffers for {} parameters",
            opt.buffers.len(),
            model.params.params.len()
        );
        let mut params = Vec::with_capacity(model.params.params.len());
        for (p, m) in model.params.params.iter().zip(&opt.buffers) {
            ensure!(
                m.len() == p.len(),
                "{}: momentum has {} values for {}",
                p.name,
                m.len(),
                p.len()
            );
            let sparse = match &p.values {
                Values::Dense(_) => None,
                Values::Sparse(sw, _) => Some(upload_sparse(&gpu, sw)?),
            };
            let (rows, cols) = p.matrix_dims();
            params.push(DevParam {
                name: p.name.clone(),
                rows,
                cols,
                values: gpu.upload(p.data())?,
                grad: gpu.zeros::<f32>(p.len())?,
                momentum: gpu.upload(m)?,
                len: p.len(),
                sparse,
            });
        }
        let bn = model
            .bn
            .iter()
            .map(|s| {
                Ok(DevBn {
                    mean: gpu.upload(&s.mean)?,
                    var: gpu.upload(&s.var)?,
                })
            })
            .collect::<Result<_>>()?;
        let tensors: Vec<_> = params
            .iter()
            .map(|p: &DevParam| (&p.values, &p.grad, &p.momentum, p.len))
            .collect();
        let sgd_table = SgdTable::new(&gpu, &tensors).context("SGD table")?;
        Ok(Self {
            gpu,
            body: model.body.clone(),
            fc: model.fc,
            in_channels: model.config.in_channels,
            num_classes: model.config.num_classes,
            params,
            bn,
            momentum: opt.momentum,
            weight_decay: opt.weight_decay,
            arenas: Vec::new(),
            dense_grads_ready: false,
            topk_ws: None,
            sgd_table,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Writes the device state back into the host model and optimiser: every parameter's values
    /// (a sparse layer's structure included; its compute path is kept), momentum and the
    /// batch-norm running statistics. `model` must be the model this one was uploaded from (or
    /// one of the same architecture).
    pub fn download(&self, model: &mut Model, opt: &mut Sgd) -> Result<()> {
        ensure!(
            model.params.params.len() == self.params.len() && model.bn.len() == self.bn.len(),
            "download into a model of another architecture"
        );
        for (i, dp) in self.params.iter().enumerate() {
            let p = &mut model.params.params[i];
            ensure!(
                p.name == dp.name,
                "download: parameter {i} is {}, not {}",
                p.name,
                dp.name
            );
            let values: Vec<f32> = self.read_f32(&dp.values, dp.len)?;
            match (&mut p.values, &dp.sparse) {
                (Values::Dense(v), None) => *v = values,
                (Values::Sparse(sw, _), Some(ds)) => {
                    let row_ptr = self.read_u32(&ds.row_ptr, ds.rows + 1)?;
                    let col_idx = self.read_u32(&ds.col_idx, ds.nnz)?;
                    let mut positions = Vec::with_capacity(ds.nnz);
                    for r in 0..ds.rows {
                        let (s, e) = (row_ptr[r] as usize, row_ptr[r + 1] as usize);
                        ensure!(
                            s <= e && e <= ds.nnz,
                            "{}: the device CSR index is corrupt (row {r})",
                            dp.name
                        );
                        positions.extend(col_idx[s..e].iter().map(|&c| (r * ds.cols) as u32 + c));
                    }
                    *sw = SparseWeight::from_positions(ds.rows, ds.cols, &positions, values);
                }
                _ => bail!("{}: dense on one side, sparse on the other", dp.name),
            }
            opt.buffers[i] = self.read_f32(&dp.momentum, dp.len)?;
        }
        for (s, d) in model.bn.iter_mut().zip(&self.bn) {
            s.mean = self.read_f32(&d.mean, s.mean.len())?;
            s.var = self.read_f32(&d.var, s.var.len())?;
        }
        opt.momentum = self.momentum;
        opt.weight_decay = self.weight_decay;
        Ok(())
    }

    /// Flat positions r·cols + c of sparse parameter `param`'s active weights, ascending (empty
    /// for a dense parameter).
    pub fn positions(&self, param: usize) -> Result<Vec<u32>> {
        match &self.params[param].sparse {
            Some(ds) => self.read_u32(&ds.positions, ds.nnz),
            None => Ok(Vec::new()),
        }
    }

    fn read_f32(&self, b: &Buf, n: usize) -> Result<Vec<f32>> {
        let mut v: Vec<f32> = self.gpu.read(b)?;
        ensure!(
            v.len() >= n,
            "device buffer holds {} values, expected {n}",
            v.len()
        );
        v.truncate(n);
        Ok(v)
    }

    fn read_u32(&self, b: &Buf, n: usize) -> Result<Vec<u32>> {
        let mut v: Vec<u32> = self.gpu.read(b)?;
        ensure!(
            v.len() >= n,
            "device buffer holds {} indices, expected {n}",
            v.len()
        );
        v.truncate(n);
        Ok(v)
    }

    /// Builds (or finds) the arena for images of `dims` = (n, h, w) and moves it to the front.
    fn arena(&mut self, dims: (usize, usize, usize), train: bool) -> Result<()> {
        if let Some(i) = self.arenas.iter().position(|a| a.key == dims) {
            let a = self.arenas.remove(i);
            self.arenas.insert(0, a);
        } else {
            let a = self.build_arena(dims)?;
            self.arenas.insert(0, a);
            self.arenas.truncate(2);
        }
        if train && self.arenas[0].grads.is_empty() {
            let gpu = &self.gpu;
            let a = &mut self.arenas[0];
            let n = a.key.0;
            a.grads = a
                .sizes
                .iter()
                .enumerate()
                .map(|(t, &s)| gpu.zeros::<f32>(if t == 0 { 1 } else { s }))
                .collect::<Result<Vec<_>>>()?;
            // A tensor read by several ops receives several gradients: all but the first go
            // through scratch of its size.
            let mut readers = vec![0usize; a.sizes.len()];
            for op in &a.ops {
                for t in op.inputs() {
                    readers[t] += 1;
                }
            }
            for (t, &r) in readers.iter().enumerate() {
                if r > 1 && !a.scratch.contains_key(&a.sizes[t]) {
                    a.scratch.insert(a.sizes[t], gpu.zeros::<f32>(a.sizes[t])?);
                }
            }
            a.xent = Some(XentBufs {
                labels: gpu.zeros::<u32>(n)?,
                groups: gpu.zeros::<u32>(n)?,
                weights: gpu.zeros::<f32>(n)?,
                losses: gpu.zeros::<f32>(n)?,
                partials: gpu.zeros::<f32>(xent::partials_len(n))?,
                stats: gpu.zeros::<f32>(xent::XENT_STATS)?,
            });
        }
        Ok(())
    }

    /// The forward graph for images (n, h, w), with every activation buffer allocated.
    fn build_arena(&self, (n, h, w): (usize, usize, usize)) -> Result<Arena> {
        let mut b = GraphBuilder {
            model: self,
            ops: Vec::new(),
            shapes: vec![[self.in_channels, n, h, w]],
            saves: Vec::new(),
            argmax: Vec::new(),
        };
        let mut t = 0;
        match &self.body {
            Body::Cnn(layers) => {
                for (i, (c, bn)) in layers.iter().enumerate() {
                    t = b.conv_bn(t, c, bn, true, i == 0)?;
                }
            }
            Body::ResNet { stem, blocks } => {
                t = b.conv_bn(t, &stem.0, &stem.1, true, true)?;
                t = b.maxpool(t, 3, 2, 1)?;
                for blk in blocks {
                    let y = b.conv_bn(t, &blk.c1, &blk.b1, true, false)?;
                    let y = b.conv_bn(y, &blk.c2, &blk.b2, false, false)?;
                    let s = match &blk.shortcut {
                        Some((c, bn)) => b.conv_bn(t, c, bn, false, false)?,
                        None => t,
                    };
                    let out = b.tensor(b.shapes[y]);
                    b.ops.push(Op::AddRelu { a: y, b: s, y: out });
                    t = out;
                }
            }
        }
        // Global average pool, then the classifier as a 1×1 convolution of [F, N, 1, 1].
        let [c, n_, hh, ww] = b.shapes[t];
        let feats = b.tensor([c, n_, 1, 1]);
        b.ops.push(Op::Gap {
            x: t,
            y: feats,
            planes: c * n_,
            hw: hh * ww,
        });
        let fc = ConvLayer {
            w: self.fc.0,
            b: Some(self.fc.1),
            k: 1,
            stride: 1,
            pad: 0,
        };
        let logits = b.conv(feats, &fc, false)?;
        let gpu = &self.gpu;
        let sizes: Vec<usize> = b.shapes.iter().map(|s| s.iter().product()).collect();
        let values = sizes
            .iter()
            .map(|&s| gpu.zeros::<f32>(s))
            .collect::<Result<Vec<_>>>()?;
        let saved = b
            .saves
            .iter()
            .map(|&c| Ok((gpu.zeros::<f32>(c)?, gpu.zeros::<f32>(c)?)))
            .collect::<Result<Vec<_>>>()?;
        let argmax = b
            .argmax
            .iter()
            .map(|&s| gpu.zeros::<u32>(s))
            .collect::<Result<Vec<_>>>()?;
        let ops = b.ops;
        Ok(Arena {
            key: (n, h, w),
            ops,
            grad_set: vec![false; sizes.len()],
            sizes,
            values,
            grads: Vec::new(),
            scratch: HashMap::new(),
            saved,
            argmax,
            logits,
            xent: None,
        })
    }

    /// Logits [N, K] (row-major) of images x [C, N, H, W] (`dims` = (n, h, w)), batch norm in
    /// evaluation mode (running statistics; nothing is updated).
    pub fn logits(&mut self, images: &[f32], dims: (usize, usize, usize)) -> Result<Vec<f32>> {
        self.check_images(images, dims)?;
        self.arena(dims, false)?;
        self.forward(images, false)?;
        let a = &self.arenas[0];
        // The classifier's output is class-major [K, N].
        let lt = self.read_f32(&a.values[a.logits], self.num_classes * dims.0)?;
        Ok(transpose(&lt, self.num_classes, dims.0))
    }

    fn check_images(&self, images: &[f32], (n, h, w): (usize, usize, usize)) -> Result<()> {
        ensure!(n > 0 && h > 0 && w > 0, "empty image batch {n}x{h}x{w}");
        ensure!(
            images.len() == self.in_channels * n * h * w,
            "images: {} values for [C={}, N={n}, H={h}, W={w}]",
            images.len(),
            self.in_channels
        );
        Ok(())
    }

    /// One training step on a batch: images x [C, N, H, W] (`dims` = (n, h, w)), labels and
    /// per-sample loss weights (≥ 0, positive sum). Forward with batch statistics (running
    /// statistics updated), the reweighted cross-entropy Σwᵢlᵢ/Σwᵢ, backward, SGD at `lr`. With
    /// `update` the dense weight gradients of the sparse layers are computed too, for the
    /// [`topology_update`](Self::topology_update) that must follow.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        images: &[f32],
        dims: (usize, usize, usize),
        labels: &[u32],
        weights: &[f32],
        groups: Option<&[u32]>,
        lr: f32,
        update: bool,
    ) -> Result<StepStats> {
        self.check_images(images, dims)?;
        let (n, k) = (dims.0, self.num_classes);
        ensure!(n > 1, "batch norm cannot train on a batch of one sample");
        crate::nn::ops::check_loss_inputs(n, k, labels, weights)?;
        if let Some(g) = groups {
            ensure!(
                g.len() == n && g.iter().all(|&g| (g as usize) < xent::XENT_MAX_GROUPS),
                "cross-entropy: {} group ids for {n} samples (each < {})",
                g.len(),
                xent::XENT_MAX_GROUPS
            );
        }
        self.arena(dims, true)?;
        self.forward(images, true)?;
        let (losses, stats) = self.loss_and_dlogits(labels, weights, groups)?;
        self.backward(update)?;
        self.sgd(lr)?;
        self.dense_grads_ready = update;
        let groups: Vec<(f32, usize, usize)> = stats
            .groups
            .iter()
            .map(|&(l, c, s)| (l, c.round() as usize, s.round() as usize))
            .collect();
        Ok(StepStats {
            loss: stats.loss,
            losses,
            correct: groups.iter().map(|g| g.1).sum(),
            groups,
        })
    }

    /// Runs the forward graph of the front arena on `images`.
    fn forward(&mut self, images: &[f32], train: bool) -> Result<()> {
        let Self {
            gpu,
            params,
            bn,
            arenas,
            ..
        } = self;
        let Arena {
            ops,
            sizes,
            values,
            saved,
            argmax,
            ..
        } = &mut arenas[0];
        gpu.write(&mut values[0], images)?;
        for op in ops.iter() {
            match op {
                Op::Conv { layer, g, x, y, .. } => {
                    let p = &params[layer.w.0];
                    let bias = layer.b.map(|b| &params[b.0].values);
                    let (xv, yv) = split(values, *x, *y);
                    match &p.sparse {
                        None => conv::conv_fwd_dense(gpu, g, xv, &p.values, bias, yv),
                        Some(s) => conv::conv_fwd_sparse(gpu, g, xv, &s.bufs(&p.values), bias, yv),
                    }
                    .with_context(|| format!("{} forward", p.name))?;
                }
                Op::Bn {
                    bn: l,
                    x,
                    y,
                    relu,
                    save,
                } => {
                    let (gamma, beta) = (&params[l.gamma.0], &params[l.beta.0]);
                    let (c, m) = (gamma.len, sizes[*x] / gamma.len);
                    let st = &mut bn[l.stats];
                    let (xv, yv) = split(values, *x, *y);
                    if train {
                        let (mean, invstd) = &mut saved[*save];
                        k::bn_train_fwd(
                            gpu,
                            c,
                            m,
                            xv,
                            &gamma.values,
                            &beta.values,
                            &mut st.mean,
                            &mut st.var,
                            yv,
                            mean,
                            invstd,
                            *relu,
                        )
                    } else {
                        k::bn_eval_fwd(
                            gpu,
                            c,
                            m,
                            xv,
                            &gamma.values,
                            &beta.values,
                            &st.mean,
                            &st.var,
                            yv,
                            *relu,
                        )
                    }
                    .with_context(|| format!("{} forward", gamma.name))?;
                }
                Op::MaxPool {
                    x,
                    y,
                    planes,
                    h,
                    w,
                    argmax: am,
                } => {
                    let (xv, yv) = split(values, *x, *y);
                    k::maxpool_fwd(gpu, xv, yv, &mut argmax[*am], *planes, *h, *w)?;
                }
                Op::AddRelu { a, b, y } => {
                    let n = sizes[*y];
                    let (av, bv, yv) = split3(values, *a, *b, *y);
                    elementwise::add_relu(gpu, av, bv, yv, n)?;
                }
                Op::Gap { x, y, planes, hw } => {
                    let (xv, yv) = split(values, *x, *y);
                    pool::avg_fwd(gpu, xv, yv, *planes, *hw)?;
                }
            }
        }
        Ok(())
    }

    /// The fused cross-entropy on the class-major logits [K, N] of the front arena: dlogits
    /// land in the logits tensor's gradient; the per-sample losses and the statistics row
    /// (weighted loss, per-group loss sums, correct predictions, samples) come back to the host.
    fn loss_and_dlogits(
        &mut self,
        labels: &[u32],
        weights: &[f32],
        groups: Option<&[u32]>,
    ) -> Result<(Vec<f32>, xent::XentStats)> {
        let n = labels.len();
        let (k, num_groups) = (
            self.num_classes,
            groups.map_or(1, |g| g.iter().max().map_or(1, |&m| m as usize + 1)),
        );
        let Self { gpu, arenas, .. } = self;
        let a = &mut arenas[0];
        let xb = a.xent.as_mut().expect("training arena");
        gpu.write(&mut xb.labels, labels)?;
        gpu.write(&mut xb.weights, weights)?;
        if let Some(g) = groups {
            gpu.write(&mut xb.groups, g)?;
        }
        // Σw in f64 as the CPU loss does.
        let inv_wsum = (1.0 / weights.iter().map(|&w| w as f64).sum::<f64>()) as f32;
        let bufs = xent::XentBufs {
            logits: &a.values[a.logits],
            labels: &xb.labels,
            weights: &xb.weights,
            groups: groups.map(|_| &xb.groups),
            losses: &xb.losses,
            dlogits: &a.grads[a.logits],
            partials: &xb.partials,
            stats: &xb.stats,
        };
        xent::fused(gpu, &bufs, n, k, num_groups, inv_wsum)?;
        let losses: Vec<f32> = gpu.read(&xb.losses)?;
        let stats: Vec<f32> = gpu.read(&xb.stats)?;
        Ok((losses, xent::XentStats::decode(&stats, num_groups)))
    }

    /// Back-propagates from the logits gradient through the front arena's graph into every
    /// parameter's gradient buffer (and, with `dense`, the sparse layers' dense gradients).
    fn backward(&mut self, dense: bool) -> Result<()> {
        let Self {
            gpu,
            params,
            arenas,
            ..
        } = self;
        if dense {
            for p in params.iter_mut() {
                if let Some(s) = &mut p.sparse {
                    if s.dense_grad.is_none() {
                        s.dense_grad = Some(gpu.zeros::<f32>(s.rows * s.cols)?);
                    }
                }
            }
        }
        let Arena {
            ops,
            sizes,
            values,
            grads,
            grad_set,
            scratch,
            saved,
            argmax,
            logits,
            ..
        } = &mut arenas[0];
        grad_set.iter_mut().for_each(|s| *s = false);
        grad_set[*logits] = true;
        for op in ops.iter().rev() {
            match op {
                Op::Conv {
                    layer,
                    g,
                    x,
                    y,
                    first,
                } => {
                    let DevParam {
                        name,
                        values: w,
                        grad,
                        sparse,
                        ..
                    } = &mut params[layer.w.0];
                    let ctx = || format!("{name} backward");
                    let (xv, dy) = (&values[*x], &grads[*y]);
                    // Dense weight gradients in one split (no workspace: deterministic, and the
                    // weight gradient is a small part of a step on the shapes trained here).
                    match sparse {
                        None => conv::conv_bwd_weight_dense(gpu, g, xv, dy, grad, None)
                            .with_context(ctx)?,
                        Some(s) => {
                            let (bufs, dg) = s.bufs_and_dense_grad(w);
                            conv::conv_bwd_weight_sparse(gpu, g, xv, dy, &bufs, grad)
                                .with_context(ctx)?;
                            if dense {
                                let dg = dg.expect("allocated above");
                                conv::conv_bwd_weight_dense(gpu, g, xv, dy, dg, None)
                                    .with_context(ctx)?;
                            }
                        }
                    }
                    if !*first {
                        let add = take_grad(grad_set, *x);
                        let (dy, dx) = grad_io(grads, scratch, add, sizes[*x], *y, *x);
                        match sparse {
                            None => conv::conv_bwd_data_dense(gpu, g, dy, w, dx),
                            Some(s) => conv::conv_bwd_data_sparse(gpu, g, dy, &s.bufs(w), dx),
                        }
                        .with_context(ctx)?;
                        finish_grad(gpu, grads, scratch, add, sizes[*x], *x)?;
                    }
                    if let Some(b) = layer.b {
                        let p = &mut params[b.0];
                        k::conv_bias_grad(gpu, g, &grads[*y], &mut p.grad)
                            .with_context(|| format!("{} backward", p.name))?;
                    }
                }
                Op::Bn {
                    bn: l,
                    x,
                    y,
                    relu,
                    save,
                } => {
                    let (gamma, beta) = split2_mut(params, l.gamma.0, l.beta.0);
                    let (c, m) = (gamma.len, sizes[*x] / gamma.len);
                    let add = take_grad(grad_set, *x);
                    let (dy, dx) = grad_io(grads, scratch, add, sizes[*x], *y, *x);
                    let (mean, invstd) = &saved[*save];
                    k::bn_bwd(
                        gpu,
                        c,
                        m,
                        &values[*x],
                        &gamma.values,
                        &beta.values,
                        mean,
                        invstd,
                        dy,
                        dx,
                        &mut gamma.grad,
                        &mut beta.grad,
                        *relu,
                    )
                    .with_context(|| format!("{} backward", gamma.name))?;
                    finish_grad(gpu, grads, scratch, add, sizes[*x], *x)?;
                }
                Op::MaxPool {
                    x,
                    y,
                    planes,
                    h,
                    w,
                    argmax: am,
                } => {
                    let add = take_grad(grad_set, *x);
                    let (dy, dx) = grad_io(grads, scratch, add, sizes[*x], *y, *x);
                    k::maxpool_bwd(gpu, dy, &argmax[*am], dx, *planes, *h, *w)?;
                    finish_grad(gpu, grads, scratch, add, sizes[*x], *x)?;
                }
                Op::AddRelu { a, b, y } => {
                    // d(a + b) = dy where the output is positive; both inputs receive it.
                    for t in [*a, *b] {
                        let add = take_grad(grad_set, t);
                        let (dy, dx) = grad_io(grads, scratch, add, sizes[t], *y, t);
                        elementwise::relu_bwd(gpu, &values[*y], dy, dx, sizes[*y])?;
                        finish_grad(gpu, grads, scratch, add, sizes[t], t)?;
                    }
                }
                Op::Gap { x, y, planes, hw } => {
                    let add = take_grad(grad_set, *x);
                    let (dy, dx) = grad_io(grads, scratch, add, sizes[*x], *y, *x);
                    pool::avg_bwd(gpu, dy, dx, *planes, *hw)?;
                    finish_grad(gpu, grads, scratch, add, sizes[*x], *x)?;
                }
            }
        }
        Ok(())
    }

    /// SGD with momentum and weight decay over every parameter's trainable numbers, one launch
    /// for all of them.
    fn sgd(&mut self, lr: f32) -> Result<()> {
        optim::sgd_multi(
            &self.gpu,
            &self.sgd_table,
            lr,
            self.momentum,
            self.weight_decay,
        )
        .context("SGD step")
    }

    /// The topology update of every sparse layer after an update step (`train_step` with
    /// `update`): prune the k = ⌈rate·nnz⌉ active weights of smallest magnitude, regrow the k
    /// inactive positions of largest dense-gradient magnitude at 0, momentum remapped (survivors
    /// keep theirs, regrown weights start at 0), CSR and CSC rebuilt — `update_layer` with
    /// magnitude pruning and gradient regrowth.
    pub fn topology_update(&mut self, death_rate: f64) -> Result<UpdateStats> {
        ensure!(
            self.dense_grads_ready,
            "topology update without the dense gradients of an update step (train_step with \
             update = true must come first)"
        );
        // Every sparse layer in one batched update (each pass launched once for all layers).
        let mut sum = UpdateStats::default();
        let mut items = Vec::new();
        for p in &self.params {
            let Some(s) = &p.sparse else { continue };
            let kk = prune_count(death_rate, s.nnz);
            items.push(
                k::batch_item(s, &p.values, &p.momentum, kk)
                    .with_context(|| format!("{} topology update", p.name))?,
            );
            sum.pruned += kk;
            sum.grown += kk;
        }
        let gpu = &self.gpu;
        let ws = match &mut self.topk_ws {
            Some(ws) => ws,
            slot @ None => slot.insert(TopkBatchWorkspace::new(gpu, &BatchLayout::new(&[]))?),
        };
        topk::update_layers(gpu, &items, ws).context("topology update")?;
        self.dense_grads_ready = false;
        Ok(sum)
    }
}

/// Marks tensor `t`'s gradient as set in this backward pass; returns whether it already was
/// (then the new gradient goes through scratch and is added).
fn take_grad(set: &mut [bool], t: usize) -> bool {
    std::mem::replace(&mut set[t], true)
}

/// (dy = gradient of tensor `y`, the buffer that receives tensor `t`'s gradient): `t`'s own
/// gradient buffer, or with `add` the scratch buffer of its size.
fn grad_io<'g>(
    grads: &'g mut [Buf],
    scratch: &'g mut HashMap<usize, Buf>,
    add: bool,
    size: usize,
    y: usize,
    t: usize,
) -> (&'g Buf, &'g mut Buf) {
    if add {
        let s = scratch
            .get_mut(&size)
            .expect("scratch is allocated for every tensor read twice");
        (&grads[y], s)
    } else {
        split(grads, y, t)
    }
}

/// Adds the scratch gradient into tensor `t`'s gradient when `add`.
fn finish_grad(
    gpu: &Gpu,
    grads: &mut [Buf],
    scratch: &HashMap<usize, Buf>,
    add: bool,
    size: usize,
    t: usize,
) -> Result<()> {
    if add {
        elementwise::acc(gpu, &grads[t], &scratch[&size], size)?;
    }
    Ok(())
}

/// (&v[i], &mut v[j]) for i ≠ j.
fn split<T>(v: &mut [T], i: usize, j: usize) -> (&T, &mut T) {
    assert_ne!(i, j, "an op's input and output are the same tensor");
    if i < j {
        let (lo, hi) = v.split_at_mut(j);
        (&lo[i], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(i);
        (&hi[0], &mut lo[j])
    }
}

/// (&v[a], &v[b], &mut v[y]) for y different from a and b.
fn split3<T>(v: &mut [T], a: usize, b: usize, y: usize) -> (&T, &T, &mut T) {
    assert!(
        y != a && y != b,
        "an op's input and output are the same tensor"
    );
    let (lo, hi) = v.split_at_mut(y);
    let (yv, rest) = hi.split_first_mut().expect("y in range");
    let get = |i: usize| -> &T {
        if i < y {
            &lo[i]
        } else {
            &rest[i - y - 1]
        }
    };
    // SAFETY-free: both are shared borrows of elements other than y.
    let (av, bv) = (get(a), get(b));
    (av, bv, yv)
}

/// (&mut v[i], &mut v[j]) for i ≠ j.
fn split2_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j, "two distinct parameters expected");
    if i < j {
        let (lo, hi) = v.split_at_mut(j);
        (&mut lo[i], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(i);
        (&mut hi[0], &mut lo[j])
    }
}

/// [a, b] → [b, a].
fn transpose(x: &[f32], a: usize, b: usize) -> Vec<f32> {
    let mut out = vec![0.0; a * b];
    for i in 0..a {
        for j in 0..b {
            out[j * a + i] = x[i * b + j];
        }
    }
    out
}

fn upload_sparse(gpu: &Gpu, sw: &SparseWeight) -> Result<DevSparse> {
    Ok(DevSparse {
        rows: sw.rows,
        cols: sw.cols,
        nnz: sw.nnz(),
        positions: gpu.upload(&sw.positions())?,
        row_ptr: gpu.upload(&sw.row_ptr)?,
        col_idx: gpu.upload(&sw.col_idx)?,
        col_ptr: gpu.upload(&sw.col_ptr)?,
        csc_row: gpu.upload(&sw.csc_row)?,
        csc_pos: gpu.upload(&sw.csc_pos)?,
        dense_grad: None,
    })
}

impl DevSparse {
    /// The layer as the conv kernels take it, with its values.
    fn bufs<'a>(&'a self, values: &'a Buf) -> SparseBufs<'a> {
        SparseBufs {
            row_ptr: &self.row_ptr,
            col_idx: &self.col_idx,
            values,
            col_ptr: &self.col_ptr,
            csc_row: &self.csc_row,
            csc_pos: &self.csc_pos,
            nnz: self.nnz,
        }
    }

    /// `bufs` and the dense gradient buffer (if allocated), borrowed together.
    fn bufs_and_dense_grad<'a>(
        &'a mut self,
        values: &'a Buf,
    ) -> (SparseBufs<'a>, Option<&'a mut Buf>) {
        let bufs = SparseBufs {
            row_ptr: &self.row_ptr,
            col_idx: &self.col_idx,
            values,
            col_ptr: &self.col_ptr,
            csc_row: &self.csc_row,
            csc_pos: &self.csc_pos,
            nnz: self.nnz,
        };
        (bufs, self.dense_grad.as_mut())
    }
}

impl Op {
    /// The tensors the op reads (whose gradients its backward produces).
    fn inputs(&self) -> Vec<usize> {
        match self {
            Op::Conv { x, first, .. } => {
                if *first {
                    vec![]
                } else {
                    vec![*x]
                }
            }
            Op::Bn { x, .. } | Op::MaxPool { x, .. } | Op::Gap { x, .. } => vec![*x],
            Op::AddRelu { a, b, .. } => vec![*a, *b],
        }
    }
}

/// Builds the forward graph of one batch shape.
struct GraphBuilder<'m> {
    model: &'m GpuModel,
    ops: Vec<Op>,
    /// [C, N, H, W] of every tensor.
    shapes: Vec<[usize; 4]>,
    /// Channel count of every Bn op's saved statistics.
    saves: Vec<usize>,
    /// Size of every max-pool's argmax.
    argmax: Vec<usize>,
}

impl GraphBuilder<'_> {
    fn tensor(&mut self, shape: [usize; 4]) -> usize {
        self.shapes.push(shape);
        self.shapes.len() - 1
    }

    fn conv(&mut self, x: usize, c: &ConvLayer, first: bool) -> Result<usize> {
        let [cin, n, h, w] = self.shapes[x];
        let p = &self.model.params[c.w.0];
        let (cout, cols) = (p.rows, p.cols);
        ensure!(
            cols == cin * c.k * c.k,
            "{}: weight does not fit an input with {cin} channels",
            p.name
        );
        let g = ConvGeom::new(n, cin, h, w, cout, c.k, c.stride, c.pad)
            .map_err(|e| e.context(p.name.clone()))?;
        let y = self.tensor([cout, n, g.oh, g.ow]);
        self.ops.push(Op::Conv {
            layer: c.clone(),
            g,
            x,
            y,
            first,
        });
        Ok(y)
    }

    fn conv_bn(
        &mut self,
        x: usize,
        c: &ConvLayer,
        bn: &BnLayer,
        relu: bool,
        first: bool,
    ) -> Result<usize> {
        let z = self.conv(x, c, first)?;
        let shape = self.shapes[z];
        ensure!(
            shape[1] * shape[2] * shape[3] > 1,
            "batch norm needs more than one value per channel (got a batch of shape {shape:?})"
        );
        let y = self.tensor(shape);
        self.saves.push(shape[0]);
        self.ops.push(Op::Bn {
            bn: bn.clone(),
            x: z,
            y,
            relu,
            save: self.saves.len() - 1,
        });
        Ok(y)
    }

    fn maxpool(&mut self, x: usize, k: usize, stride: usize, pad: usize) -> Result<usize> {
        let [c, n, h, w] = self.shapes[x];
        ensure!(
            h + 2 * pad >= k && w + 2 * pad >= k,
            "max-pool {k}x{k} does not fit a {h}x{w} input"
        );
        let (oh, ow) = (pool_out(h, k, stride, pad), pool_out(w, k, stride, pad));
        let y = self.tensor([c, n, oh, ow]);
        self.argmax.push(c * n * oh * ow);
        self.ops.push(Op::MaxPool {
            x,
            y,
            planes: c * n,
            h,
            w,
            argmax: self.argmax.len() - 1,
        });
        Ok(y)
    }
}

/// Adapters where the model's needs differ from the kernel families' launch wrappers (the
/// stem's fixed max-pool, batch-norm buffer bundles, eval BN+ReLU, the topk batch items).
mod k {
    use super::{DevSparse, BN_EPS, BN_MOMENTUM};
    use crate::device::cpu::conv::ConvGeom;
    use crate::device::gpu::kernels::conv;
    use crate::device::gpu::kernels::topk;
    use crate::device::gpu::kernels::{elementwise, norm, pool};
    use crate::device::gpu::{Buf, Gpu};
    use anyhow::{bail, Result};

    pub fn conv_bias_grad(gpu: &Gpu, g: &ConvGeom, dy: &Buf, db: &mut Buf) -> Result<()> {
        conv::conv_bwd_bias(gpu, g.cout, g.col_cols(), dy, db)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bn_train_fwd(
        gpu: &Gpu,
        c: usize,
        m: usize,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        rmean: &mut Buf,
        rvar: &mut Buf,
        y: &mut Buf,
        mean: &mut Buf,
        invstd: &mut Buf,
        relu: bool,
    ) -> Result<()> {
        let b = norm::BnTrainFwd {
            x,
            gamma,
            beta,
            running_mean: rmean,
            running_var: rvar,
            y,
            save_mean: mean,
            save_invstd: invstd,
        };
        norm::train_fwd(gpu, &b, c, m, BN_EPS, BN_MOMENTUM, relu)
    }

    /// Evaluation-mode batch norm, then the ReLU in place when `relu` (as the CPU's evaluation
    /// path runs the two ops).
    #[allow(clippy::too_many_arguments)]
    pub fn bn_eval_fwd(
        gpu: &Gpu,
        c: usize,
        m: usize,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        rmean: &Buf,
        rvar: &Buf,
        y: &mut Buf,
        relu: bool,
    ) -> Result<()> {
        norm::eval_fwd(gpu, x, gamma, beta, rmean, rvar, y, c, m, BN_EPS)?;
        if relu {
            elementwise::relu_fwd(gpu, y, y, c * m)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bn_bwd(
        gpu: &Gpu,
        c: usize,
        m: usize,
        x: &Buf,
        gamma: &Buf,
        beta: &Buf,
        mean: &Buf,
        invstd: &Buf,
        dy: &Buf,
        dx: &mut Buf,
        dgamma: &mut Buf,
        dbeta: &mut Buf,
        relu: bool,
    ) -> Result<()> {
        let b = norm::BnBwd {
            x,
            gamma,
            beta,
            save_mean: mean,
            save_invstd: invstd,
            dy,
            dx,
            dgamma,
            dbeta,
        };
        norm::bwd(gpu, &b, c, m, relu)
    }

    /// One layer of `topk::update_layers` (magnitude prune, gradient regrow, CSR/CSC rebuild,
    /// momentum remapped) whose buffers live in `DevSparse` and `DevParam`; the kernels rewrite
    /// them in place.
    pub fn batch_item<'a>(
        s: &'a DevSparse,
        values: &'a Buf,
        momentum: &'a Buf,
        k: usize,
    ) -> Result<topk::BatchItem<'a>> {
        let Some(score) = &s.dense_grad else {
            bail!("no dense gradient for the topology update");
        };
        let layer = topk::SparseLayerRefs {
            rows: s.rows,
            cols: s.cols,
            nnz: s.nnz,
            positions: &s.positions,
            values,
            momentum,
            row_ptr: &s.row_ptr,
            col_idx: &s.col_idx,
            col_ptr: &s.col_ptr,
            csc_row: &s.csc_row,
            csc_pos: &s.csc_pos,
        };
        Ok(topk::BatchItem {
            layer,
            score,
            k_prune: k,
        })
    }

    /// The ResNet stem's 3×3/2 max-pool, padding 1.
    pub fn maxpool_fwd(
        gpu: &Gpu,
        x: &Buf,
        y: &mut Buf,
        argmax: &mut Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        pool::max_fwd(gpu, x, y, argmax, planes, h, w, 3, 2, 1).map(|_| ())
    }

    pub fn maxpool_bwd(
        gpu: &Gpu,
        dy: &Buf,
        argmax: &Buf,
        dx: &mut Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        pool::max_bwd(gpu, dy, argmax, dx, planes, h, w, 3, 2, 1)
    }
}
