//! A sparse layer's index on the device: the one owner of the `SparseWeight` arrays there. The
//! kernel families take borrowed views of it with the values (and momentum) beside: the
//! convolutions `SparseBufs`, the topology update `SparseLayerRefs`.

use super::kernels::conv::SparseBufs;
use super::kernels::topk::SparseLayerRefs;
use super::{Buf, Gpu};
use crate::sparse::csr::SparseWeight;
use anyhow::Result;

/// A sparse layer's index on the device (the `SparseWeight` arrays, same meaning).
pub struct DeviceSparseWeight {
    pub rows: usize,
    pub cols: usize,
    pub nnz: usize,
    /// u32 [nnz]: flat positions r·cols + c, ascending (the topology kernels keep them).
    positions: Buf,
    row_ptr: Buf,
    col_idx: Buf,
    col_ptr: Buf,
    csc_row: Buf,
    csc_pos: Buf,
}

impl DeviceSparseWeight {
    /// Copies `sw`'s index to `gpu` (its values go with the parameter, which owns them).
    pub fn upload(gpu: &Gpu, sw: &SparseWeight) -> Result<Self> {
        Ok(Self {
            rows: sw.rows,
            cols: sw.cols,
            nnz: sw.nnz(),
            positions: gpu.upload(&sw.positions())?,
            row_ptr: gpu.upload(&sw.row_ptr)?,
            col_idx: gpu.upload(&sw.col_idx)?,
            col_ptr: gpu.upload(&sw.col_ptr)?,
            csc_row: gpu.upload(&sw.csc_row)?,
            csc_pos: gpu.upload(&sw.csc_pos)?,
        })
    }

    /// `sw`'s index and a buffer of its values (at least one float, so never an empty buffer),
    /// for the checks and benchmarks that convolve with a layer outside a model.
    pub fn upload_with_values(gpu: &Gpu, sw: &SparseWeight) -> Result<(Self, Buf)> {
        let values = if sw.values.is_empty() {
            gpu.upload(&[0.0f32])?
        } else {
            gpu.upload(&sw.values)?
        };
        Ok((Self::upload(gpu, sw)?, values))
    }

    /// The active positions r·cols + c (u32, ascending).
    pub fn positions(&self) -> &Buf {
        &self.positions
    }

    /// The layer as the topology-update kernels take it, with its values and momentum (which
    /// they rewrite in place, with the index).
    pub fn topk_layer<'a>(&'a self, values: &'a Buf, momentum: &'a Buf) -> SparseLayerRefs<'a> {
        SparseLayerRefs {
            rows: self.rows,
            cols: self.cols,
            nnz: self.nnz,
            positions: &self.positions,
            values,
            momentum,
            row_ptr: &self.row_ptr,
            col_idx: &self.col_idx,
            col_ptr: &self.col_ptr,
            csc_row: &self.csc_row,
            csc_pos: &self.csc_pos,
        }
    }

    /// The layer as the convolution kernels take it, with its values.
    pub fn bufs<'a>(&'a self, values: &'a Buf) -> SparseBufs<'a> {
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
}
