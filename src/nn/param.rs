//! Parameters: values (dense, or only the active weights of a sparse layer), their gradients.

use crate::nn::on_device::DeviceParams;
use crate::sparse::csr::SparseWeight;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ParamKind {
    /// A conv or linear weight: the kind that sparse training masks.
    Weight,
    Bias,
    BnGamma,
    BnBeta,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamId(pub usize);

/// How a sparse layer is computed (the engine picks per layer by measured speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ComputePath {
    /// Kernels over the active weights only.
    Sparse,
    /// Materialise the masked dense weight and use the dense GEMM.
    DenseMasked,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Dense(Vec<f32>),
    /// Active weights of the matrix [shape[0], numel / shape[0]] and how to compute with them.
    Sparse(SparseWeight, ComputePath),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub values: Values,
}

impl Param {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The weight as a matrix: (rows = output units, cols = inputs per unit).
    pub fn matrix_dims(&self) -> (usize, usize) {
        (self.shape[0], self.numel() / self.shape[0])
    }
    /// The trainable numbers: all values, or the active weights of a sparse layer.
    pub fn data(&self) -> &[f32] {
        match &self.values {
            Values::Dense(v) => v,
            Values::Sparse(s, _) => &s.values,
        }
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        match &mut self.values {
            Values::Dense(v) => v,
            Values::Sparse(s, _) => &mut s.values,
        }
    }
    /// Number of trainable numbers (nnz for a sparse layer).
    pub fn len(&self) -> usize {
        self.data().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn sparse(&self) -> Option<&SparseWeight> {
        match &self.values {
            Values::Sparse(s, _) => Some(s),
            Values::Dense(_) => None,
        }
    }
    /// The dense tensor (zeros at inactive positions).
    pub fn to_dense(&self) -> Vec<f32> {
        match &self.values {
            Values::Dense(v) => v.clone(),
            Values::Sparse(s, _) => {
                let mut out = vec![0.0; self.numel()];
                s.to_dense(&mut out);
                out
            }
        }
    }
}

/// Every parameter of a model, in a fixed order, and, while the model trains on a GPU, their
/// device copies (`nn::on_device`; the host values are then stale until downloaded).
#[derive(Debug, Default)]
pub struct ParamStore {
    pub params: Vec<Param>,
    pub device: Option<Box<DeviceParams>>,
}

impl Clone for ParamStore {
    /// A host copy: the device copy stays with the original (download it first to clone a model
    /// that trains on a device).
    fn clone(&self) -> Self {
        Self {
            params: self.params.clone(),
            device: None,
        }
    }
}

impl PartialEq for ParamStore {
    /// Compares the host values.
    fn eq(&self, other: &Self) -> bool {
        self.params == other.params
    }
}

impl ParamStore {
    pub fn add(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        kind: ParamKind,
        values: Vec<f32>,
    ) -> ParamId {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        self.params.push(Param {
            name: name.into(),
            shape: shape.to_vec(),
            kind,
            values: Values::Dense(values),
        });
        ParamId(self.params.len() - 1)
    }
    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }
    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }
    /// Ids of the weights sparse training masks (every conv and linear weight).
    pub fn weight_ids(&self) -> Vec<ParamId> {
        (0..self.params.len())
            .filter(|&i| self.params[i].kind == ParamKind::Weight)
            .map(ParamId)
            .collect()
    }
    /// Total trainable numbers stored (dense count for dense params, nnz for sparse ones).
    pub fn stored_len(&self) -> usize {
        self.params.iter().map(Param::len).sum()
    }
}

/// Gradients of one step, shaped like the store's trainable numbers. For sparse layers, when
/// `dense_for_sparse` is set (topology-update steps), the full dense weight gradient is also
/// computed into `dense[i]`, as RigL's regrowth needs.
#[derive(Clone, Debug)]
pub struct Grads {
    pub g: Vec<Vec<f32>>,
    pub dense: Vec<Option<Vec<f32>>>,
    pub dense_for_sparse: bool,
}

impl Grads {
    /// The host gradients of one step; for a store on a device, where the gradients live in
    /// device buffers, empty ones that only carry `dense_for_sparse`.
    pub fn for_step(store: &ParamStore, dense_for_sparse: bool) -> Self {
        if store.device.is_none() {
            return Self::zeros(store, dense_for_sparse);
        }
        Self {
            g: store.params.iter().map(|_| Vec::new()).collect(),
            dense: store.params.iter().map(|_| None).collect(),
            dense_for_sparse,
        }
    }

    pub fn zeros(store: &ParamStore, dense_for_sparse: bool) -> Self {
        Self {
            g: store.params.iter().map(|p| vec![0.0; p.len()]).collect(),
            dense: store.params.iter().map(|_| None).collect(),
            dense_for_sparse,
        }
    }
    /// Adds `delta` to parameter `id`'s gradient.
    pub fn add(&mut self, id: ParamId, delta: &[f32]) {
        for (a, d) in self.g[id.0].iter_mut().zip(delta) {
            *a += *d;
        }
    }
}
