//! A layer's buffers on the device for the topology update: the layer itself
//! ([`SparseLayerBufs`], or borrowed as [`SparseLayerRefs`]), its read-back form ([`HostLayer`]),
//! the checks an update makes of it, and its addresses in a parameter record.

use super::{Geometry, TopkParams};
use crate::device::gpu::{Buf, Gpu};
use crate::sparse::csr::SparseWeight;
use anyhow::{ensure, Result};
use bytemuck::Zeroable;

/// One sparse layer W[rows, cols] on the device (see kernels/topk.cu): positions (r·cols + c,
/// ascending), values and momentum (one per active weight, in position order), CSR
/// (row_ptr, col_idx) and CSC (col_ptr, csc_row, csc_pos) exactly as `SparseWeight` holds them.
pub struct SparseLayerBufs {
    pub rows: usize,
    pub cols: usize,
    pub nnz: usize,
    pub positions: Buf,
    pub values: Buf,
    pub momentum: Buf,
    pub row_ptr: Buf,
    pub col_idx: Buf,
    pub col_ptr: Buf,
    pub csc_row: Buf,
    pub csc_pos: Buf,
}

/// The same layer borrowed: for callers that keep the buffers elsewhere (the GPU model). The
/// kernels change the buffers' contents through their addresses, never the buffers themselves.
#[derive(Clone, Copy)]
pub struct SparseLayerRefs<'a> {
    pub rows: usize,
    pub cols: usize,
    pub nnz: usize,
    pub positions: &'a Buf,
    pub values: &'a Buf,
    pub momentum: &'a Buf,
    pub row_ptr: &'a Buf,
    pub col_idx: &'a Buf,
    pub col_ptr: &'a Buf,
    pub csc_row: &'a Buf,
    pub csc_pos: &'a Buf,
}

impl SparseLayerRefs<'_> {
    /// The layer's geometry for an update pruning `k_prune` weights by `score`, after checking
    /// the buffers, `k_prune` ≤ nnz and the score's length.
    pub(super) fn update_geometry(&self, k_prune: usize, score: &Buf) -> Result<Geometry> {
        self.check()?;
        let g = Geometry::new(self.rows, self.cols, self.nnz)?;
        ensure!(
            k_prune <= g.nnz,
            "topk: cannot prune {k_prune} of {} weights",
            g.nnz
        );
        ensure!(
            score.len_of::<f32>() >= g.size,
            "topk: the score holds {} values, the {}×{} layer needs {}",
            score.len_of::<f32>(),
            g.rows,
            g.cols,
            g.size
        );
        Ok(g)
    }

    /// Errors if a buffer is smaller than the shape needs.
    pub fn check(&self) -> Result<()> {
        let (nnz, rows, cols) = (self.nnz, self.rows, self.cols);
        for (name, b, n) in [
            ("positions", &self.positions, nnz),
            ("values", &self.values, nnz),
            ("momentum", &self.momentum, nnz),
            ("row_ptr", &self.row_ptr, rows + 1),
            ("col_idx", &self.col_idx, nnz),
            ("col_ptr", &self.col_ptr, cols + 1),
            ("csc_row", &self.csc_row, nnz),
            ("csc_pos", &self.csc_pos, nnz),
        ] {
            ensure!(
                b.len_of::<u32>() >= n,
                "topk: {name} holds {} values, the {rows}×{cols} layer with {nnz} weights needs {n}",
                b.len_of::<u32>()
            );
        }
        Ok(())
    }
}

/// A layer read back from the device (tests, checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct HostLayer {
    pub positions: Vec<u32>,
    pub weight: SparseWeight,
    pub momentum: Vec<f32>,
}

impl SparseLayerBufs {
    /// Uploads `w` and its per-entry momentum.
    pub fn upload(gpu: &Gpu, w: &SparseWeight, momentum: &[f32]) -> Result<Self> {
        ensure!(
            momentum.len() == w.nnz(),
            "topk: {} momentum values for {} weights",
            momentum.len(),
            w.nnz()
        );
        Geometry::new(w.rows, w.cols, w.nnz())?;
        Ok(SparseLayerBufs {
            rows: w.rows,
            cols: w.cols,
            nnz: w.nnz(),
            positions: gpu.upload(&w.positions())?,
            values: gpu.upload(&w.values)?,
            momentum: gpu.upload(momentum)?,
            row_ptr: gpu.upload(&w.row_ptr)?,
            col_idx: gpu.upload(&w.col_idx)?,
            col_ptr: gpu.upload(&w.col_ptr)?,
            csc_row: gpu.upload(&w.csc_row)?,
            csc_pos: gpu.upload(&w.csc_pos)?,
        })
    }

    /// Reads the whole layer back, as the device holds it (no rebuilding on the host).
    pub fn download(&self, gpu: &Gpu) -> Result<HostLayer> {
        let take_u32 = |b: &Buf, n: usize| -> Result<Vec<u32>> {
            let mut v = gpu.read::<u32>(b)?;
            v.truncate(n);
            Ok(v)
        };
        let take_f32 = |b: &Buf, n: usize| -> Result<Vec<f32>> {
            let mut v = gpu.read::<f32>(b)?;
            v.truncate(n);
            Ok(v)
        };
        Ok(HostLayer {
            positions: take_u32(&self.positions, self.nnz)?,
            weight: SparseWeight {
                rows: self.rows,
                cols: self.cols,
                row_ptr: take_u32(&self.row_ptr, self.rows + 1)?,
                col_idx: take_u32(&self.col_idx, self.nnz)?,
                values: take_f32(&self.values, self.nnz)?,
                col_ptr: take_u32(&self.col_ptr, self.cols + 1)?,
                csc_row: take_u32(&self.csc_row, self.nnz)?,
                csc_pos: take_u32(&self.csc_pos, self.nnz)?,
                plans: Default::default(),
            },
            momentum: take_f32(&self.momentum, self.nnz)?,
        })
    }

    /// The layer as borrowed buffers.
    pub fn refs(&self) -> SparseLayerRefs<'_> {
        SparseLayerRefs {
            rows: self.rows,
            cols: self.cols,
            nnz: self.nnz,
            positions: &self.positions,
            values: &self.values,
            momentum: &self.momentum,
            row_ptr: &self.row_ptr,
            col_idx: &self.col_idx,
            col_ptr: &self.col_ptr,
            csc_row: &self.csc_row,
            csc_pos: &self.csc_pos,
        }
    }

    /// Every buffer is large enough for the layer's shape and nnz.
    pub fn check(&self) -> Result<()> {
        self.refs().check()
    }
}

/// The addresses of `layer` and `score` (workspace, shape and pass fields 0).
pub fn layer_addresses(layer: &SparseLayerRefs, score: &Buf) -> TopkParams {
    TopkParams {
        positions: layer.positions.addr(),
        values: layer.values.addr(),
        momentum: layer.momentum.addr(),
        row_ptr: layer.row_ptr.addr(),
        col_idx: layer.col_idx.addr(),
        col_ptr: layer.col_ptr.addr(),
        csc_row: layer.csc_row.addr(),
        csc_pos: layer.csc_pos.addr(),
        score: score.addr(),
        ..TopkParams::zeroed()
    }
}
