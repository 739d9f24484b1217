//! Kernels of kernels/topk.cu: one topology update of one sparse layer on the device (magnitude
//! prune, gradient/momentum regrow, rebuild of positions, values, momentum, CSR and CSC), with no
//! copy of weights to the host and nothing read back.
//!
//! A layer lives on the device as [`SparseLayerBufs`]; the update needs a [`TopkWorkspace`]
//! (reusable across layers: it grows to the largest shape it has served). [`update_layer`]
//! launches the sequence [`plan`] returns; the CPU twins (`device::cpu::twin::topk`) run the same
//! plan on host slices. The layer's buffers keep their addresses across updates.
//!
//! [`update_layers`] is the batched form (what the training step runs, `nn::on_device`): every pass launched once for all
//! layers (17 launches for ResNet-18's 21 layers instead of 357), the layers described by a table
//! of `TopkParams` records copied to the device once per update, each layer's scratch a slice of
//! one [`TopkBatchWorkspace`] ([`BatchLayout`]). The batched kernels run the per-layer kernels'
//! code (shared device functions), so the two paths give the same bits; [`update_layer`] stays
//! as the simple version.
//!
//! This file holds what every part shares: the kernel list, the constants, the parameter struct
//! and a layer's [`Geometry`]. The layer's buffers are in `layer.rs`, the launch geometry both
//! plans use in `launch.rs`, the per-layer update in `per_layer.rs`, the batched one in
//! `batched.rs`.

mod batched;
mod launch;
mod layer;
mod per_layer;

pub use batched::{
    batch_addresses, batch_digit, plan_batched, update_layers, BatchItem, BatchLayout, BatchPlan,
    BatchSlice, BatchStep, TopkBatchParams, TopkBatchWorkspace, KINDS, KIND_CLEAR, KIND_COLS,
    KIND_PRUNE, KIND_SCATTER, KIND_TILES,
};
pub use layer::{layer_addresses, HostLayer, SparseLayerBufs, SparseLayerRefs};
pub use per_layer::{addresses, plan, update_layer, update_layer_refs, Step, TopkWorkspace};

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("topk" =>
    topk_clear_u32,
    topk_hist_f32,
    topk_prune_f32,
    topk_grow_f32,
    topk_colscan_u32,
    topk_scan_u32,
    topk_compact_f32,
    topk_csc_scatter_u32,
    topk_clear_batched_u32,
    topk_hist_batched_f32,
    topk_prune_batched_f32,
    topk_grow_batched_f32,
    topk_colscan_batched_u32,
    topk_scan_batched_u32,
    topk_compact_batched_f32,
    topk_csc_scatter_batched_u32,
);

/// Threads per block of every kernel but `topk_scan_u32`.
pub const THREADS: u32 = 256;
/// Threads of the one block of `topk_scan_u32`.
pub const SCAN_THREADS: u32 = 1024;
/// Positions per tile of `topk_grow_f32` / `topk_compact_f32` (256 threads × 8).
pub const TILE: usize = 2048;
/// Bins of a radix-select histogram (digits of up to 11 bits).
pub const BINS: usize = 2048;
/// Offset of the histogram in a slot.
pub const HIST: usize = 8;
/// u32 words of one radix-select slot: 8 of state, then the histogram.
pub const SLOT: usize = HIST + BINS;
/// Widest digit of a radix-select pass.
pub const DIGIT_BITS: u32 = 11;
/// `mark` value of a regrown position.
pub const GROWN: u32 = u32::MAX;
/// Upper bound on the blocks of one histogram pass (each block loops over its share).
pub const MAX_HIST_BLOCKS: usize = 264;
/// Candidates per thread a histogram pass is sized for (before the `MAX_HIST_BLOCKS` cap).
pub const HIST_ITEMS: usize = 16;
/// Rows per CSC counting cell (more when a layer has over 65535 cells in a column).
pub const ROWS_PER_CHUNK: usize = 16;

/// The one parameter struct of every topk kernel (mirrors `TopkParams` in kernels/topk.cu).
/// Addresses of the layer, the score and the workspace; shapes; and the fields of one pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TopkParams {
    pub positions: u64,
    pub values: u64,
    pub momentum: u64,
    pub row_ptr: u64,
    pub col_idx: u64,
    pub col_ptr: u64,
    pub csc_row: u64,
    pub csc_pos: u64,
    pub score: u64,
    pub mark: u64,
    pub old_values: u64,
    pub old_momentum: u64,
    pub state: u64,
    pub tile_cnt: u64,
    pub csc_cnt: u64,
    pub rows: u32,
    pub cols: u32,
    pub nnz: u32,
    pub size: u32,
    /// Number pruned (= number regrown).
    pub k: u32,
    /// `topk_hist_f32`: 0 prune, 1 grow.
    pub slot: u32,
    /// `topk_hist_f32`: 0 the digit is in the magnitude key, 1 in the index.
    pub word: u32,
    /// `topk_hist_f32`: bit offset of the digit.
    pub shift: u32,
    /// `topk_hist_f32`: width of the digit (1..=11).
    pub digit_bits: u32,
    pub ntiles: u32,
    pub rows_per_chunk: u32,
    pub nchunks: u32,
}

/// Index sizes derived from a layer's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub rows: usize,
    pub cols: usize,
    pub nnz: usize,
    pub size: usize,
    pub ntiles: usize,
    pub rows_per_chunk: usize,
    pub nchunks: usize,
}

impl Geometry {
    /// Errors if the layer does not fit the kernels' u32 indices.
    pub fn new(rows: usize, cols: usize, nnz: usize) -> Result<Self> {
        let size = rows
            .checked_mul(cols)
            .filter(|&s| s < u32::MAX as usize - TILE)
            .ok_or_else(|| anyhow::anyhow!("topk: a {rows}×{cols} layer exceeds the u32 index"))?;
        ensure!(
            nnz <= size,
            "topk: {nnz} active weights in a {rows}×{cols} layer"
        );
        let rows_per_chunk = ROWS_PER_CHUNK.max(rows.div_ceil(65535));
        Ok(Geometry {
            rows,
            cols,
            nnz,
            size,
            ntiles: size.div_ceil(TILE),
            rows_per_chunk,
            nchunks: rows.div_ceil(rows_per_chunk),
        })
    }

    /// Counting cells of the CSC rebuild (chunks × columns).
    pub fn ncells(&self) -> usize {
        self.nchunks * self.cols
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_has_no_padding() {
        assert_eq!(std::mem::size_of::<TopkParams>(), 15 * 8 + 12 * 4);
        assert_eq!(std::mem::size_of::<TopkBatchParams>(), 2 * 8 + 4 * 4);
    }
}
