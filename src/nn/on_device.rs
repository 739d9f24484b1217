//! A model's trainable state on a GPU (or the emulator): per parameter its values, gradient and
//! SGD momentum; per sparse layer its CSR/CSC index and, on topology-update steps, its dense
//! gradient; per batch-norm layer its running statistics. The tape's ops read and write these
//! buffers when they run on a device (`nn::ops::gpu`); the optimiser step and the topology update
//! are one batched launch family each.
//!
//! While a model is on a device, its host `ParamStore` values, `BnStats` and the optimiser's
//! momentum are stale: [`DeviceParams::download`] brings them up to date (the trainer does at the
//! end of every epoch, before checkpoints and reports).
//!
//! A parameter's gradient is written, not added, by the one op that uses it: each parameter is
//! used once per forward in these models. `begin_backward` clears the written marks, a second
//! write in a step is an error, and the SGD step refuses a parameter without a gradient.

use crate::device::gpu::alloc::GpuDevice;
use crate::device::gpu::kernels::optim::{self, SgdTable};
use crate::device::gpu::kernels::topk::{self, BatchLayout, TopkBatchWorkspace};
use crate::device::gpu::sparse_weight::DeviceSparseWeight;
use crate::device::gpu::{Buf, Gpu};
use crate::sparse::csr::SparseWeight;
use crate::sparse::topology::{prune_count, UpdateStats};
use anyhow::{bail, ensure, Context, Result};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// A parameter as its device copy is made: its trainable numbers (all values, or a sparse
/// layer's active ones), their momentum, and the sparse index.
pub struct HostParam<'a> {
    pub name: &'a str,
    /// The weight as a matrix: (output units, inputs per unit).
    pub rows: usize,
    pub cols: usize,
    pub values: &'a [f32],
    pub momentum: &'a [f32],
    pub sparse: Option<&'a SparseWeight>,
}

/// A parameter's state read back from the device.
pub struct ParamState {
    pub name: String,
    pub values: Vec<f32>,
    pub momentum: Vec<f32>,
    /// A sparse layer's active positions r·cols + c, ascending.
    pub positions: Option<Vec<u32>>,
}

/// Everything `DeviceParams::download` reads back.
pub struct Downloaded {
    pub params: Vec<ParamState>,
    /// Per batch norm, its running (mean, variance).
    pub bn: Vec<(Vec<f32>, Vec<f32>)>,
}

/// One parameter on the device.
pub struct DeviceParam {
    pub name: String,
    /// The weight as a matrix: (output units, inputs per unit); (len, 1) for other kinds.
    pub rows: usize,
    pub cols: usize,
    /// Trainable numbers: `len` floats (numel, or nnz for a sparse layer).
    pub values: Buf,
    momentum: Buf,
    pub len: usize,
    pub sparse: Option<DeviceSparseWeight>,
}

/// A parameter's gradient buffers.
pub struct DeviceGrad {
    /// `len` floats, like the values.
    pub grad: Buf,
    /// A sparse layer's dense gradient [rows·cols], on topology-update steps (allocated then).
    pub dense: Option<Buf>,
    written: bool,
}

impl DeviceGrad {
    /// Marks the gradient written in this step; an error if it already was.
    pub fn claim(&mut self, name: &str) -> Result<()> {
        ensure!(
            !self.written,
            "{name}: a second gradient in one step (a parameter used twice per forward is not \
             supported on a GPU)"
        );
        self.written = true;
        Ok(())
    }
}

/// Running statistics of one batch-norm layer on the device.
pub struct DeviceBnStats {
    pub mean: Buf,
    pub var: Buf,
}

/// A model's parameters, gradients, momentum and batch-norm statistics on a device.
pub struct DeviceParams {
    device: Arc<GpuDevice>,
    pub params: Vec<DeviceParam>,
    /// Written by the backward closures through a shared `&ParamStore`.
    pub grads: RefCell<Vec<DeviceGrad>>,
    /// Written by training-mode batch norm through a shared `&ParamStore`.
    pub bn: RefCell<Vec<DeviceBnStats>>,
    /// Whether this backward also fills the sparse layers' dense gradients.
    dense_grads: Cell<bool>,
    /// The dense gradients of the sparse layers are from the last step (an update step).
    dense_grads_ready: bool,
    /// Every parameter's (values, grad, momentum, len) for the one-launch SGD step; the buffers
    /// are never reallocated (the topology update rewrites in place; nnz is constant).
    sgd_table: SgdTable,
    topk_ws: Option<TopkBatchWorkspace>,
}

impl std::fmt::Debug for DeviceParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceParams({} parameters)", self.params.len())
    }
}

impl DeviceParams {
    /// Copies every parameter (with its momentum) and the batch-norm statistics `bn` (mean,
    /// variance) to `device`.
    pub fn upload(
        device: &Arc<GpuDevice>,
        host: &[HostParam],
        bn: &[(&[f32], &[f32])],
    ) -> Result<Self> {
        let gpu = device.gpu();
        let mut params = Vec::with_capacity(host.len());
        let mut grads = Vec::with_capacity(host.len());
        for p in host {
            let len = p.values.len();
            ensure!(
                p.momentum.len() == len,
                "{}: momentum has {} values for {len}",
                p.name,
                p.momentum.len(),
            );
            let sparse = p
                .sparse
                .map(|sw| DeviceSparseWeight::upload(gpu, sw))
                .transpose()?;
            params.push(DeviceParam {
                name: p.name.to_string(),
                rows: p.rows,
                cols: p.cols,
                values: gpu.upload(p.values)?,
                momentum: gpu.upload(p.momentum)?,
                len,
                sparse,
            });
            grads.push(DeviceGrad {
                grad: gpu.zeros::<f32>(len)?,
                dense: None,
                written: false,
            });
        }
        let bn = bn
            .iter()
            .map(|(mean, var)| {
                Ok(DeviceBnStats {
                    mean: gpu.upload(mean)?,
                    var: gpu.upload(var)?,
                })
            })
            .collect::<Result<_>>()?;
        let tensors: Vec<_> = params
            .iter()
            .zip(&grads)
            .map(|(p, g)| (&p.values, &g.grad, &p.momentum, p.len))
            .collect();
        let sgd_table = SgdTable::new(gpu, &tensors).context("SGD table")?;
        Ok(Self {
            device: Arc::clone(device),
            params,
            grads: RefCell::new(grads),
            bn: RefCell::new(bn),
            dense_grads: Cell::new(false),
            dense_grads_ready: false,
            sgd_table,
            topk_ws: None,
        })
    }

    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.device
    }

    pub fn gpu(&self) -> &Gpu {
        self.device.gpu()
    }

    /// Whether the backward running now fills the sparse layers' dense gradients.
    pub fn dense_grads(&self) -> bool {
        self.dense_grads.get()
    }

    /// Starts a backward pass: no gradient written yet; with `dense`, the sparse layers' dense
    /// gradients are filled too (for the topology update that follows).
    pub fn begin_backward(&mut self, dense: bool) -> Result<()> {
        let gpu = self.device.gpu();
        for (p, g) in self.params.iter().zip(self.grads.get_mut()) {
            g.written = false;
            if let (true, Some(s), None) = (dense, &p.sparse, &g.dense) {
                g.dense = Some(gpu.zeros::<f32>(s.rows * s.cols)?);
            }
        }
        self.dense_grads.set(dense);
        self.dense_grads_ready = false;
        Ok(())
    }

    /// SGD with momentum and weight decay over every parameter, one launch for all of them.
    pub fn sgd(&mut self, lr: f32, momentum: f32, weight_decay: f32) -> Result<()> {
        if let Some((p, _)) = self
            .params
            .iter()
            .zip(self.grads.get_mut().iter())
            .find(|(_, g)| !g.written)
        {
            bail!("{}: no gradient in this step", p.name);
        }
        optim::sgd_multi(self.gpu(), &self.sgd_table, lr, momentum, weight_decay)
            .context("SGD step")?;
        self.dense_grads_ready = self.dense_grads.get();
        Ok(())
    }

    /// The topology update of every sparse layer after an update step (a step whose backward
    /// began with `dense`): prune the k = ⌈rate·nnz⌉ active weights of smallest magnitude,
    /// regrow the k inactive positions of largest dense-gradient magnitude at 0, momentum
    /// remapped (survivors keep theirs, regrown weights start at 0), CSR and CSC rebuilt —
    /// `sparse::topology::update_layer` with magnitude pruning and gradient regrowth.
    pub fn topology_update(&mut self, death_rate: f64) -> Result<UpdateStats> {
        ensure!(
            self.dense_grads_ready,
            "topology update without the dense gradients of an update step (a training step \
             with dense gradients must come first)"
        );
        let mut sum = UpdateStats::default();
        let grads = self.grads.get_mut();
        let mut items = Vec::new();
        for (p, g) in self.params.iter().zip(grads.iter()) {
            let Some(s) = &p.sparse else { continue };
            let Some(score) = &g.dense else {
                bail!("{}: no dense gradient for the topology update", p.name);
            };
            let k = prune_count(death_rate, s.nnz);
            items.push(topk::BatchItem {
                layer: s.topk_layer(&p.values, &p.momentum),
                score,
                k_prune: k,
            });
            sum.pruned += k;
            sum.grown += k;
        }
        let gpu = self.device.gpu();
        let ws = match &mut self.topk_ws {
            Some(ws) => ws,
            slot @ None => slot.insert(TopkBatchWorkspace::new(gpu, &BatchLayout::new(&[]))?),
        };
        topk::update_layers(gpu, &items, ws).context("topology update")?;
        self.dense_grads_ready = false;
        Ok(sum)
    }

    /// Flat positions r·cols + c of sparse parameter `param`'s active weights, ascending (empty
    /// for a dense parameter).
    pub fn positions(&self, param: usize) -> Result<Vec<u32>> {
        match &self.params[param].sparse {
            Some(s) => read(self.gpu(), s.positions(), s.nnz),
            None => Ok(Vec::new()),
        }
    }

    /// The device state, copied back: per parameter its values, momentum and (sparse layers)
    /// active positions; per batch norm its running (mean, variance).
    pub fn download(&self) -> Result<Downloaded> {
        let gpu = self.gpu();
        let mut params = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let positions = match &p.sparse {
                None => None,
                Some(s) => {
                    let positions: Vec<u32> = read(gpu, s.positions(), s.nnz)?;
                    ensure!(
                        positions.windows(2).all(|w| w[0] < w[1])
                            && positions
                                .last()
                                .is_none_or(|&l| (l as usize) < s.rows * s.cols),
                        "{}: the device's sparse index is corrupt",
                        p.name
                    );
                    Some(positions)
                }
            };
            params.push(ParamState {
                name: p.name.clone(),
                values: read(gpu, &p.values, p.len)?,
                momentum: read(gpu, &p.momentum, p.len)?,
                positions,
            });
        }
        let bn = self
            .bn
            .borrow()
            .iter()
            .map(|d| Ok((gpu.read(&d.mean)?, gpu.read(&d.var)?)))
            .collect::<Result<_>>()?;
        Ok(Downloaded { params, bn })
    }
}

/// The first `n` values of `b`.
fn read<T: bytemuck::Pod>(gpu: &Gpu, b: &Buf, n: usize) -> Result<Vec<T>> {
    let mut v: Vec<T> = gpu.read(b)?;
    ensure!(
        v.len() >= n,
        "device buffer holds {} values, expected {n}",
        v.len()
    );
    v.truncate(n);
    Ok(v)
}
