//! The masked-sparse convolution's launch wrappers over a `SparseWeight` on the device
//! ([`SparseBufs`]): forward, input gradient (over the CSC index), and the weight gradient at
//! the active positions.

use super::{
    check_bias, check_len, conv_bwd_data_sparse_f32, conv_bwd_weight_sparse_f32,
    conv_fwd_sparse_f32, grid_dim, ConvShape, ConvSparseBwdDataParams, ConvSparseBwdWeightParams,
    ConvSparseFwdParams,
};
use crate::device::cpu::conv::ConvGeom;
use crate::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};
use anyhow::{ensure, Result};

/// Threads and output pixels per block of the sparse forward / input-gradient kernels.
const SP_THREADS: u32 = 256;
const SP_TILE: usize = 1024;
/// Output channels per block of the sparse forward, and the floats of its staged input window
/// (kernels/conv.cu `SPF_G`, `SPF_SMEM`).
pub const SPF_G: usize = 8;
const SPF_SMEM: usize = 8192;

/// The sparse forward's tile: (output rows, images). Whole images when one image's output fits
/// the block's pixels and its padded input the staged window (as many images as fit both);
/// else a band of output rows of one image.
pub fn sparse_fwd_tile(s: &ConvShape) -> Result<(usize, usize)> {
    let (n, w, oh, ow) = (s.n as usize, s.w as usize, s.oh as usize, s.ow as usize);
    let (k, st, pd) = (s.k as usize, s.stride as usize, s.pad as usize);
    let wp = w + 2 * pd;
    let in_rows = |rows: usize| (rows - 1) * st + k;
    let (img_px, img_floats) = (oh * ow, in_rows(oh) * wp);
    if img_px <= SP_TILE && img_floats <= SPF_SMEM {
        let images = (SP_TILE / img_px).min(SPF_SMEM / img_floats).min(n);
        return Ok((oh, images.max(1)));
    }
    let by_px = SP_TILE / ow;
    let by_smem = (SPF_SMEM / wp).saturating_sub(k) / st + 1;
    let rows = by_px.min(by_smem).min(oh);
    ensure!(
        rows >= 1 && k * wp <= SPF_SMEM,
        "sparse convolution: an output row of {ow} pixels or a padded input row of {wp} floats is \
         too large for the kernel's tile ({SP_TILE} pixels, {SPF_SMEM} staged floats)"
    );
    Ok((rows, 1))
}
/// Active weights per block of the sparse weight gradient.
const SW_G: usize = 8;

/// A sparse weight on the device: `SparseWeight`'s index arrays (u32) and values (f32).
/// Index buffers may be longer than needed (capacity); `nnz` says how many entries are live.
#[derive(Clone, Copy, Debug)]
pub struct SparseBufs<'a> {
    pub row_ptr: &'a Buf,
    pub col_idx: &'a Buf,
    pub values: &'a Buf,
    pub col_ptr: &'a Buf,
    pub csc_row: &'a Buf,
    pub csc_pos: &'a Buf,
    pub nnz: usize,
}

impl<'a> SparseBufs<'a> {
    fn check(&self, s: &ConvShape) -> Result<()> {
        let (rows, cols, nnz) = (s.cout as usize, s.k_len(), self.nnz);
        ensure!(
            nnz <= rows * cols,
            "sparse conv weight: {nnz} active entries in a {rows}×{cols} matrix"
        );
        for (what, buf, need) in [
            ("row_ptr", self.row_ptr, rows + 1),
            ("col_idx", self.col_idx, nnz),
            ("col_ptr", self.col_ptr, cols + 1),
            ("csc_row", self.csc_row, nnz),
            ("csc_pos", self.csc_pos, nnz),
        ] {
            ensure!(
                buf.len_of::<u32>() >= need,
                "sparse conv weight: {what} holds {} entries, {need} needed",
                buf.len_of::<u32>()
            );
        }
        ensure!(
            self.values.len_of::<f32>() >= nnz,
            "sparse conv weight: values holds {} entries, {nnz} needed",
            self.values.len_of::<f32>()
        );
        Ok(())
    }
}

/// y [Cout, N, OH, OW] (overwritten) = the convolution of x with the active weights of `w`
/// (+ bias).
pub fn conv_fwd_sparse(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Buf,
    w: &SparseBufs,
    bias: Option<&Buf>,
    y: &mut Buf,
) -> Result<()> {
    let s = ConvShape::new(g)?;
    w.check(&s)?;
    check_len("x", x, s.x_len())?;
    check_len("y", y, s.y_len())?;
    let p = ConvSparseFwdParams {
        x: x.addr(),
        row_ptr: w.row_ptr.addr(),
        col_idx: w.col_idx.addr(),
        values: w.values.addr(),
        bias: check_bias(bias, &s)?,
        y: y.addr(),
        s,
        nnz: w.nnz as u32,
        rows: 0,
        images: 0,
        pad0: 0,
    };
    let (rows, images) = sparse_fwd_tile(&s)?;
    let tiles = (s.n as usize).div_ceil(images) * (s.oh as usize).div_ceil(rows);
    ensure!(
        tiles <= i32::MAX as usize,
        "sparse convolution: {tiles} tiles exceed the grid"
    );
    let p = ConvSparseFwdParams {
        rows: rows as u32,
        images: images as u32,
        ..p
    };
    let cfg = LaunchCfg {
        grid: Dim3::xy(
            tiles as u32,
            grid_dim((s.cout as usize).div_ceil(SPF_G), "output channel groups")?,
        ),
        block: Dim3::x(SP_THREADS),
        smem: 0,
    };
    gpu.launch(&conv_fwd_sparse_f32, cfg, &p)
}

/// dx [Cin, N, H, W] (overwritten) = the input gradient through the active weights of `w`
/// (gathered over the CSC index), dy [Cout, N, OH, OW].
pub fn conv_bwd_data_sparse(
    gpu: &Gpu,
    g: &ConvGeom,
    dy: &Buf,
    w: &SparseBufs,
    dx: &mut Buf,
) -> Result<()> {
    let s = ConvShape::new(g)?;
    w.check(&s)?;
    check_len("dy", dy, s.y_len())?;
    check_len("dx", dx, s.x_len())?;
    let p = ConvSparseBwdDataParams {
        dy: dy.addr(),
        col_ptr: w.col_ptr.addr(),
        csc_row: w.csc_row.addr(),
        csc_pos: w.csc_pos.addr(),
        values: w.values.addr(),
        dx: dx.addr(),
        s,
        nnz: w.nnz as u32,
        pad0: 0,
    };
    let cfg = LaunchCfg {
        grid: Dim3::xy(
            (s.x_len() / s.cin as usize).div_ceil(SP_TILE) as u32,
            grid_dim(s.cin as usize, "input channels")?,
        ),
        block: Dim3::x(SP_THREADS),
        smem: 0,
    };
    gpu.launch(&conv_bwd_data_sparse_f32, cfg, &p)
}

/// dvalues [nnz] (overwritten, `values` order) = the weight gradient at the active positions of
/// `w`: dY row · im2col(x) row for each active (row, column).
pub fn conv_bwd_weight_sparse(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Buf,
    dy: &Buf,
    w: &SparseBufs,
    dvalues: &mut Buf,
) -> Result<()> {
    let s = ConvShape::new(g)?;
    w.check(&s)?;
    check_len("x", x, s.x_len())?;
    check_len("dy", dy, s.y_len())?;
    ensure!(
        dvalues.len_of::<f32>() >= w.nnz,
        "sparse conv weight gradient: dvalues holds {} entries, {} needed",
        dvalues.len_of::<f32>(),
        w.nnz
    );
    if w.nnz == 0 {
        return Ok(());
    }
    let p = ConvSparseBwdWeightParams {
        x: x.addr(),
        dy: dy.addr(),
        row_ptr: w.row_ptr.addr(),
        col_idx: w.col_idx.addr(),
        dvalues: dvalues.addr(),
        s,
        nnz: w.nnz as u32,
        pad0: 0,
    };
    // Threads stride over the reduction: no more than it has (rounded to whole warps).
    let threads = s.cols().div_ceil(32).clamp(1, 8) as u32 * 32;
    let cfg = LaunchCfg {
        grid: Dim3::x(w.nnz.div_ceil(SW_G) as u32),
        block: Dim3::x(threads),
        smem: 0,
    };
    gpu.launch(&conv_bwd_weight_sparse_f32, cfg, &p)
}
