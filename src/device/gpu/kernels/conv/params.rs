//! The parameter structs of conv.cu's kernels, one per kernel family (mirrored in
//! kernels/conv.cu).

use super::ConvShape;
use bytemuck::{Pod, Zeroable};

/// `conv_fwd_dense_f32`, `conv_fwd_dense_simple_f32`. `bias` 0 = no bias.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvFwdParams {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub y: u64,
    pub s: ConvShape,
}

/// `conv_bwd_data_dense_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvBwdDataParams {
    pub dy: u64,
    pub w: u64,
    pub dx: u64,
    pub s: ConvShape,
}

/// `conv_bwd_weight_dense_f32`: `out` is dW with one split, else the partials
/// [splits, Cout, K]; split z reduces columns [z·chunk, (z+1)·chunk) of dY.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvBwdWeightParams {
    pub x: u64,
    pub dy: u64,
    pub out: u64,
    pub s: ConvShape,
    pub splits: u32,
    pub chunk: u32,
}

/// `conv_bwd_weight_reduce_f32`: out[i] = Σ_z partial[z·len + i].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvReduceParams {
    pub partial: u64,
    pub out: u64,
    pub len: u32,
    pub splits: u32,
}

/// `conv_fwd_sparse_f32`. `bias` 0 = no bias. A block's tile is `images` whole images, or a band
/// of `rows` output rows of one image (`rows` = OH when whole images): `sparse_fwd_tile`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvSparseFwdParams {
    pub x: u64,
    pub row_ptr: u64,
    pub col_idx: u64,
    pub values: u64,
    pub bias: u64,
    pub y: u64,
    pub s: ConvShape,
    pub nnz: u32,
    pub rows: u32,
    pub images: u32,
    pub pad0: u32,
}

/// `conv_bwd_data_sparse_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvSparseBwdDataParams {
    pub dy: u64,
    pub col_ptr: u64,
    pub csc_row: u64,
    pub csc_pos: u64,
    pub values: u64,
    pub dx: u64,
    pub s: ConvShape,
    pub nnz: u32,
    /// The tile of dx: `rows` input rows of one image, or `images` whole images (rows = H).
    pub rows: u32,
    pub images: u32,
    pub pad0: u32,
}

/// `conv_bwd_weight_sparse_f32`: the weight gradient at the active positions, `values` order.
/// `out` is dvalues with one split, else the partials [splits, nnz]; the tile as the forward's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvSparseBwdWeightParams {
    pub x: u64,
    pub dy: u64,
    pub row_ptr: u64,
    pub col_idx: u64,
    pub out: u64,
    pub s: ConvShape,
    pub nnz: u32,
    pub rows: u32,
    pub images: u32,
    pub splits: u32,
}

/// `conv_bwd_bias_f32`: db[co] = Σ_j dy[co·cols + j].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvBwdBiasParams {
    pub dy: u64,
    pub db: u64,
    pub cout: u32,
    pub cols: u32,
}
