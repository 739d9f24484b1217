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

use crate::device::cpu::conv::ConvGeom;
use crate::device::cpu::pool::pool_out;
use crate::device::gpu::{Buf, Gpu};
use crate::nn::models::{BnLayer, Body, ConvLayer};
use crate::nn::ops::{BN_EPS, BN_MOMENTUM};
use crate::nn::param::Values;
use crate::nn::Model;
use crate::optim::Sgd;
use crate::sparse::csr::SparseWeight;
use crate::sparse::topology::{prune_count, UpdateStats};
use crate::train::StepStats;
use anyhow::{bail, ensure, Context, Result};

/// A sparse layer's index on the device (the `SparseWeight` arrays, same meaning).
struct DevSparse {
    rows: usize,
    cols: usize,
    nnz: usize,
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
    /// Gradient buffers (training only; tensor 0 has none).
    grads: Option<Vec<Buf>>,
    /// Whether a tensor's gradient holds a value in the current backward pass.
    grad_set: Vec<bool>,
    /// Saved batch-norm (mean, invstd) per Bn op.
    saved: Vec<(Buf, Buf)>,
    argmax: Vec<Buf>,
    /// The logits tensor [K, N] (the classifier's output, class-major).
    logits: usize,
    /// Scratch for a gradient that must be added to one already set (largest tensor size).
    scratch: Option<Buf>,
    /// Labels (u32), sample weights, per-sample losses, dlogits [N, K] and the loss.
    xent: Option<XentBufs>,
}

struct XentBufs {
    labels: Buf,
    weights: Buf,
    losses: Buf,
    logits_nk: Buf,
    dlogits_nk: Buf,
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
        let Some(ds) = &self.params[param].sparse else {
            return Ok(Vec::new());
        };
        let row_ptr = self.read_u32(&ds.row_ptr, ds.rows + 1)?;
        let col_idx = self.read_u32(&ds.col_idx, ds.nnz)?;
        let mut out = Vec::with_capacity(ds.nnz);
        for r in 0..ds.rows {
            let (s, e) = (row_ptr[r] as usize, row_ptr[r + 1] as usize);
            ensure!(
                s <= e && e <= ds.nnz,
                "{}: corrupt CSR index",
                self.params[param].name
            );
            out.extend(col_idx[s..e].iter().map(|&c| (r * ds.cols) as u32 + c));
        }
        Ok(out)
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
        if train && self.arenas[0].grads.is_none() {
            let gpu = &self.gpu;
            let a = &mut self.arenas[0];
            let grads = a
                .sizes
                .iter()
                .map(|&n| gpu.zeros::<f32>(n))
                .collect::<Result<Vec<_>>>()?;
            let max = a.sizes.iter().copied().max().unwrap_or(1);
            a.scratch = Some(gpu.zeros::<f32>(max)?);
            a.grads = Some(grads);
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
            grads: None,
            saved,
            argmax,
            logits,
            scratch: None,
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
    pub fn train_step(
        &mut self,
        images: &[f32],
        dims: (usize, usize, usize),
        labels: &[u32],
        weights: &[f32],
        lr: f32,
        update: bool,
    ) -> Result<StepStats> {
        self.check_images(images, dims)?;
        let (n, k) = (dims.0, self.num_classes);
        ensure!(n > 1, "batch norm cannot train on a batch of one sample");
        ensure!(
            labels.len() == n && weights.len() == n,
            "cross-entropy: {n} images, {} labels, {} weights",
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
        self.arena(dims, true)?;
        self.forward(images, true)?;
        let (loss, losses, logits) = self.loss_and_dlogits(labels, weights)?;
        self.backward(update)?;
        self.sgd(lr)?;
        self.dense_grads_ready = update;
        let predictions = crate::metrics::argmax_rows(&logits, k);
        let correct = predictions
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count();
        Ok(StepStats {
            loss,
            losses,
            predictions,
            correct,
        })
    }

    /// Runs the forward graph of the front arena on `images`.
    fn forward(&mut self, images: &[f32], train: bool) -> Result<()> {
        let gpu = &self.gpu;
        let a = &mut self.arenas[0];
        gpu.write(&mut a.values[0], images)?;
        let a = &self.arenas[0];
        for op in &a.ops {
            match op {
                Op::Conv { layer, g, x, y, .. } => {
                    let p = &self.params[layer.w.0];
                    let bias = layer.b.map(|b| &self.params[b.0].values);
                    match &p.sparse {
                        None => {
                            k::conv_fwd_dense(gpu, g, &a.values[*x], &p.values, bias, &a.values[*y])
                        }
                        Some(s) => k::conv_fwd_sparse(
                            gpu,
                            g,
                            &a.values[*x],
                            s,
                            &p.values,
                            bias,
                            &a.values[*y],
                        ),
                    }
                    .with_context(|| format!("{} forward", p.name))?;
                }
                Op::Bn {
                    bn,
                    x,
                    y,
                    relu,
                    save,
                } => {
                    let c = self.params[bn.gamma.0].len;
                    let m = a.sizes[*x] / c;
                    let (gamma, beta) = (
                        &self.params[bn.gamma.0].values,
                        &self.params[bn.beta.0].values,
                    );
                    let st = &self.bn[bn.stats];
                    if train {
                        let (mean, invstd) = &a.saved[*save];
                        k::bn_train_fwd(
                            gpu,
                            c,
                            m,
                            &a.values[*x],
                            gamma,
                            beta,
                            &st.mean,
                            &st.var,
                            &a.values[*y],
                            mean,
                            invstd,
                            *relu,
                        )
                    } else {
                        k::bn_eval_fwd(
                            gpu,
                            c,
                            m,
                            &a.values[*x],
                            gamma,
                            beta,
                            &st.mean,
                            &st.var,
                            &a.values[*y],
                            *relu,
                        )
                    }
                    .with_context(|| format!("{} forward", self.params[bn.gamma.0].name))?;
                }
                Op::MaxPool {
                    x,
                    y,
                    planes,
                    h,
                    w,
                    argmax,
                } => {
                    k::maxpool_fwd(
                        gpu,
                        &a.values[*x],
                        &a.values[*y],
                        &a.argmax[*argmax],
                        *planes,
                        *h,
                        *w,
                        3,
                        2,
                        1,
                    )?;
                }
                Op::AddRelu { a: l, b, y } => {
                    k::add_relu(
                        gpu,
                        &a.values[*l],
                        &a.values[*b],
                        &a.values[*y],
                        a.sizes[*y],
                    )?;
                }
                Op::Gap { x, y, planes, hw } => {
                    k::gap_fwd(gpu, &a.values[*x], &a.values[*y], *planes, *hw)?;
                }
            }
        }
        Ok(())
    }

    /// The fused cross-entropy on the logits of the front arena: the loss, per-sample losses and
    /// logits [N, K] come back to the host; dlogits land in the logits tensor's gradient.
    fn loss_and_dlogits(
        &mut self,
        labels: &[u32],
        weights: &[f32],
    ) -> Result<(f32, Vec<f32>, Vec<f32>)> {
        let (n, k) = (labels.len(), self.num_classes);
        let gpu = &self.gpu;
        let a = &mut self.arenas[0];
        if a.xent.is_none() {
            a.xent = Some(XentBufs {
                labels: gpu.zeros::<u32>(n)?,
                weights: gpu.zeros::<f32>(n)?,
                losses: gpu.zeros::<f32>(n)?,
                logits_nk: gpu.zeros::<f32>(n * k)?,
                dlogits_nk: gpu.zeros::<f32>(n * k)?,
            });
        }
        let xb = a.xent.as_mut().expect("just set");
        gpu.write(&mut xb.labels, labels)?;
        gpu.write(&mut xb.weights, weights)?;
        let a = &mut self.arenas[0];
        // The classifier writes logits class-major [K, N]; the loss reads [N, K].
        let lt: Vec<f32> = gpu.read(&a.values[a.logits])?;
        let logits = transpose(&lt[..k * n], k, n);
        let xb = a.xent.as_mut().expect("just set");
        gpu.write(&mut xb.logits_nk, &logits)?;
        let loss = k::xent(
            gpu,
            n,
            k,
            &xb.logits_nk,
            &xb.labels,
            &xb.weights,
            &xb.losses,
            &xb.dlogits_nk,
        )?;
        let losses = self.read_f32(&self.arenas[0].xent.as_ref().expect("set").losses, n)?;
        let a = &mut self.arenas[0];
        let xb = a.xent.as_ref().expect("set");
        let d: Vec<f32> = gpu.read(&xb.dlogits_nk)?;
        let dt = transpose(&d[..n * k], n, k);
        let grads = a.grads.as_mut().expect("training arena");
        gpu.write(&mut grads[a.logits], &dt)?;
        let _ = grads;
        Ok((loss, losses, logits))
    }

    /// Back-propagates from the logits gradient through the front arena's graph into every
    /// parameter's gradient buffer (and, with `dense`, the sparse layers' dense gradients).
    fn backward(&mut self, dense: bool) -> Result<()> {
        // Dense gradient buffers for the sparse layers, on update steps.
        if dense {
            for p in &mut self.params {
                if let Some(s) = &mut p.sparse {
                    if s.dense_grad.is_none() {
                        s.dense_grad = Some(self.gpu.zeros::<f32>(s.rows * s.cols)?);
                    }
                }
            }
        }
        let gpu = &self.gpu;
        let a = &mut self.arenas[0];
        a.grad_set.iter_mut().for_each(|s| *s = false);
        a.grad_set[a.logits] = true;
        let a = &mut self.arenas[0];
        let ops = a.ops.clone();
        for op in ops.iter().rev() {
            let a = &mut self.arenas[0];
            match op {
                Op::Conv {
                    layer,
                    g,
                    x,
                    y,
                    first,
                } => {
                    let p = &self.params[layer.w.0];
                    let grads = a.grads.as_ref().expect("training arena");
                    let (xv, dy) = (&a.values[*x], &grads[*y]);
                    let ctx = || format!("{} backward", p.name);
                    match &p.sparse {
                        None => {
                            k::conv_bwd_weight_dense(gpu, g, xv, dy, &p.grad).with_context(ctx)?
                        }
                        Some(s) => {
                            k::conv_bwd_weight_sparse(gpu, g, xv, dy, s, &p.grad)
                                .with_context(ctx)?;
                            if dense {
                                let dg = s.dense_grad.as_ref().expect("allocated above");
                                k::conv_bwd_weight_dense(gpu, g, xv, dy, dg).with_context(ctx)?;
                            }
                        }
                    }
                    if let Some(b) = layer.b {
                        k::conv_bias_grad(gpu, g, dy, &self.params[b.0].grad).with_context(ctx)?;
                    }
                    if !first {
                        let (target, add) = grad_target(a, *x);
                        let grads = a.grads.as_ref().expect("training arena");
                        let dx = if add {
                            a.scratch.as_ref().expect("scratch")
                        } else {
                            &grads[target]
                        };
                        let dy = &grads[*y];
                        match &p.sparse {
                            None => k::conv_bwd_data_dense(gpu, g, dy, &p.values, dx),
                            Some(s) => k::conv_bwd_data_sparse(gpu, g, dy, s, &p.values, dx),
                        }
                        .with_context(ctx)?;
                        if add {
                            k::acc(gpu, &grads[target], dx, a.sizes[target])?;
                        }
                    }
                }
                Op::Bn {
                    bn,
                    x,
                    y,
                    relu,
                    save,
                } => {
                    let c = self.params[bn.gamma.0].len;
                    let m = a.sizes[*x] / c;
                    let (gamma, beta) = (&self.params[bn.gamma.0], &self.params[bn.beta.0]);
                    let (target, add) = grad_target(a, *x);
                    let grads = a.grads.as_ref().expect("training arena");
                    let dx = if add {
                        a.scratch.as_ref().expect("scratch")
                    } else {
                        &grads[target]
                    };
                    let (mean, invstd) = &a.saved[*save];
                    k::bn_bwd(
                        gpu,
                        c,
                        m,
                        &a.values[*x],
                        &gamma.values,
                        &beta.values,
                        mean,
                        invstd,
                        &grads[*y],
                        dx,
                        &gamma.grad,
                        &beta.grad,
                        *relu,
                    )
                    .with_context(|| format!("{} backward", gamma.name))?;
                    if add {
                        k::acc(gpu, &grads[target], dx, a.sizes[target])?;
                    }
                }
                Op::MaxPool {
                    x,
                    y,
                    planes,
                    h,
                    w,
                    argmax,
                } => {
                    let (target, add) = grad_target(a, *x);
                    let grads = a.grads.as_ref().expect("training arena");
                    let dx = if add {
                        a.scratch.as_ref().expect("scratch")
                    } else {
                        &grads[target]
                    };
                    k::maxpool_bwd(
                        gpu,
                        &grads[*y],
                        &a.argmax[*argmax],
                        dx,
                        *planes,
                        *h,
                        *w,
                        3,
                        2,
                        1,
                    )?;
                    if add {
                        k::acc(gpu, &grads[target], dx, a.sizes[target])?;
                    }
                }
                Op::AddRelu { a: l, b, y } => {
                    // d(a + b) = dy where the output is positive; both inputs receive it.
                    for t in [*l, *b] {
                        let (target, add) = grad_target(a, t);
                        let grads = a.grads.as_ref().expect("training arena");
                        let dx = if add {
                            a.scratch.as_ref().expect("scratch")
                        } else {
                            &grads[target]
                        };
                        k::relu_bwd(gpu, &a.values[*y], &grads[*y], dx, a.sizes[*y])?;
                        if add {
                            k::acc(gpu, &grads[target], dx, a.sizes[target])?;
                        }
                    }
                }
                Op::Gap { x, y, planes, hw } => {
                    let (target, add) = grad_target(a, *x);
                    let grads = a.grads.as_ref().expect("training arena");
                    let dx = if add {
                        a.scratch.as_ref().expect("scratch")
                    } else {
                        &grads[target]
                    };
                    k::gap_bwd(gpu, &grads[*y], dx, *planes, *hw)?;
                    if add {
                        k::acc(gpu, &grads[target], dx, a.sizes[target])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// SGD with momentum and weight decay over every parameter's trainable numbers.
    fn sgd(&self, lr: f32) -> Result<()> {
        for p in &self.params {
            k::sgd(
                &self.gpu,
                &p.values,
                &p.grad,
                &p.momentum,
                p.len,
                lr,
                self.momentum,
                self.weight_decay,
            )
            .with_context(|| format!("{} SGD step", p.name))?;
        }
        Ok(())
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
        let mut sum = UpdateStats::default();
        for p in &mut self.params {
            let Some(s) = &mut p.sparse else { continue };
            let kk = prune_count(death_rate, s.nnz);
            if kk == 0 {
                continue;
            }
            k::prune_regrow(&self.gpu, s, &p.values, &p.momentum, kk)
                .with_context(|| format!("{} topology update", p.name))?;
            sum.pruned += kk;
            sum.grown += kk;
        }
        self.dense_grads_ready = false;
        Ok(sum)
    }
}

/// Where the gradient for tensor `t` goes: its own buffer (first writer in this backward pass)
/// or the scratch buffer, to be added to it afterwards. Returns (t, add).
fn grad_target(a: &mut Arena, t: usize) -> (usize, bool) {
    let add = a.grad_set[t];
    a.grad_set[t] = true;
    (t, add)
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
        row_ptr: gpu.upload(&sw.row_ptr)?,
        col_idx: gpu.upload(&sw.col_idx)?,
        col_ptr: gpu.upload(&sw.col_ptr)?,
        csc_row: gpu.upload(&sw.csc_row)?,
        csc_pos: gpu.upload(&sw.csc_pos)?,
        dense_grad: None,
    })
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

/// Adapters from the model's needs to the kernel families' launch wrappers.
mod k {
    use super::DevSparse;
    use crate::device::cpu::conv::ConvGeom;
    use crate::device::gpu::{Buf, Gpu};
    use anyhow::{bail, Result};

    const MISSING: &str = "kernel not merged yet";

    pub fn conv_fwd_dense(
        _gpu: &Gpu,
        _g: &ConvGeom,
        _x: &Buf,
        _w: &Buf,
        _bias: Option<&Buf>,
        _y: &Buf,
    ) -> Result<()> {
        bail!("conv_fwd_dense: {MISSING}")
    }
    pub fn conv_fwd_sparse(
        _gpu: &Gpu,
        _g: &ConvGeom,
        _x: &Buf,
        _s: &DevSparse,
        _v: &Buf,
        _bias: Option<&Buf>,
        _y: &Buf,
    ) -> Result<()> {
        bail!("conv_fwd_sparse: {MISSING}")
    }
    pub fn conv_bwd_data_dense(
        _gpu: &Gpu,
        _g: &ConvGeom,
        _dy: &Buf,
        _w: &Buf,
        _dx: &Buf,
    ) -> Result<()> {
        bail!("conv_bwd_data_dense: {MISSING}")
    }
    pub fn conv_bwd_data_sparse(
        _gpu: &Gpu,
        _g: &ConvGeom,
        _dy: &Buf,
        _s: &DevSparse,
        _v: &Buf,
        _dx: &Buf,
    ) -> Result<()> {
        bail!("conv_bwd_data_sparse: {MISSING}")
    }
    pub fn conv_bwd_weight_dense(
        _gpu: &Gpu,
        _g: &ConvGeom,
        _x: &Buf,
        _dy: &Buf,
        _dw: &Buf,
    ) -> Result<()> {
        bail!("conv_bwd_weight_dense: {MISSING}")
    }
    pub fn conv_bwd_weight_sparse(
        _gpu: &Gpu,
        _g: &ConvGeom,
        _x: &Buf,
        _dy: &Buf,
        _s: &DevSparse,
        _gv: &Buf,
    ) -> Result<()> {
        bail!("conv_bwd_weight_sparse: {MISSING}")
    }
    pub fn conv_bias_grad(_gpu: &Gpu, _g: &ConvGeom, _dy: &Buf, _db: &Buf) -> Result<()> {
        bail!("conv_bias_grad: {MISSING}")
    }
    #[allow(clippy::too_many_arguments)]
    pub fn bn_train_fwd(
        _gpu: &Gpu,
        _c: usize,
        _m: usize,
        _x: &Buf,
        _gamma: &Buf,
        _beta: &Buf,
        _rmean: &Buf,
        _rvar: &Buf,
        _y: &Buf,
        _mean: &Buf,
        _invstd: &Buf,
        _relu: bool,
    ) -> Result<()> {
        let _ = (super::BN_EPS, super::BN_MOMENTUM);
        bail!("bn_train_fwd: {MISSING}")
    }
    #[allow(clippy::too_many_arguments)]
    pub fn bn_eval_fwd(
        _gpu: &Gpu,
        _c: usize,
        _m: usize,
        _x: &Buf,
        _gamma: &Buf,
        _beta: &Buf,
        _rmean: &Buf,
        _rvar: &Buf,
        _y: &Buf,
        _relu: bool,
    ) -> Result<()> {
        bail!("bn_eval_fwd: {MISSING}")
    }
    #[allow(clippy::too_many_arguments)]
    pub fn bn_bwd(
        _gpu: &Gpu,
        _c: usize,
        _m: usize,
        _x: &Buf,
        _gamma: &Buf,
        _beta: &Buf,
        _mean: &Buf,
        _invstd: &Buf,
        _dy: &Buf,
        _dx: &Buf,
        _dgamma: &Buf,
        _dbeta: &Buf,
        _relu: bool,
    ) -> Result<()> {
        bail!("bn_bwd: {MISSING}")
    }
    #[allow(clippy::too_many_arguments)]
    pub fn xent(
        _gpu: &Gpu,
        _n: usize,
        _k: usize,
        _logits: &Buf,
        _labels: &Buf,
        _weights: &Buf,
        _losses: &Buf,
        _dlogits: &Buf,
    ) -> Result<f32> {
        bail!("xent: {MISSING}")
    }
    pub fn prune_regrow(
        _gpu: &Gpu,
        _s: &mut DevSparse,
        _values: &Buf,
        _momentum: &Buf,
        _k: usize,
    ) -> Result<()> {
        bail!("prune_regrow: {MISSING}")
    }

    #[allow(clippy::too_many_arguments)]
    pub fn maxpool_fwd(
        _gpu: &Gpu,
        _x: &Buf,
        _y: &Buf,
        _argmax: &Buf,
        _planes: usize,
        _h: usize,
        _w: usize,
        _k: usize,
        _s: usize,
        _p: usize,
    ) -> Result<()> {
        bail!("maxpool_fwd: {MISSING}")
    }
    #[allow(clippy::too_many_arguments)]
    pub fn maxpool_bwd(
        _gpu: &Gpu,
        _dy: &Buf,
        _argmax: &Buf,
        _dx: &Buf,
        _planes: usize,
        _h: usize,
        _w: usize,
        _k: usize,
        _s: usize,
        _p: usize,
    ) -> Result<()> {
        bail!("maxpool_bwd: {MISSING}")
    }
    pub fn gap_fwd(_gpu: &Gpu, _x: &Buf, _y: &Buf, _planes: usize, _hw: usize) -> Result<()> {
        bail!("gap_fwd: {MISSING}")
    }
    pub fn gap_bwd(_gpu: &Gpu, _dy: &Buf, _dx: &Buf, _planes: usize, _hw: usize) -> Result<()> {
        bail!("gap_bwd: {MISSING}")
    }
    pub fn add_relu(_gpu: &Gpu, _a: &Buf, _b: &Buf, _y: &Buf, _n: usize) -> Result<()> {
        bail!("add_relu: {MISSING}")
    }
    pub fn relu_bwd(_gpu: &Gpu, _y: &Buf, _dy: &Buf, _dx: &Buf, _n: usize) -> Result<()> {
        bail!("relu_bwd: {MISSING}")
    }
    pub fn acc(_gpu: &Gpu, _y: &Buf, _b: &Buf, _n: usize) -> Result<()> {
        bail!("acc: {MISSING}")
    }
    #[allow(clippy::too_many_arguments)]
    pub fn sgd(
        _gpu: &Gpu,
        _w: &Buf,
        _g: &Buf,
        _m: &Buf,
        _n: usize,
        _lr: f32,
        _mu: f32,
        _wd: f32,
    ) -> Result<()> {
        bail!("sgd: {MISSING}")
    }
}
