//! The masked-sparse convolution's launch wrappers over a `SparseWeight` on the device
//! ([`SparseBufs`]): forward, input gradient (over the CSC index), and the weight gradient at
//! the active positions.

use super::{
    check_bias, check_len, conv_bwd_data_sparse_f32, conv_bwd_weight_reduce_f32,
    conv_bwd_weight_sparse_f32, conv_fwd_sparse_f32, grid_dim, ConvReduceParams, ConvShape,
    ConvSparseBwdDataParams, ConvSparseBwdWeightParams, ConvSparseFwdParams,
};
use crate::device::cpu::conv::ConvGeom;
use crate::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};
use anyhow::{bail, ensure, Result};

/// Threads and output pixels per block of the sparse forward / input-gradient kernels.
const SP_THREADS: u32 = 256;
const SP_TILE: usize = 1024;
/// Output channels per block of the sparse forward, and the floats of its staged input window
/// (kernels/conv.cu `SPF_G`, `SPF_SMEM`).
pub const SPF_G: usize = 8;
const SPF_SMEM: usize = 8192;
/// Input channels per block of the sparse input gradient, and its largest kernel size
/// (kernels/conv.cu `SPB_G`, `SPB_MAXK`).
pub const SPB_G: usize = 8;
const SPB_MAXK: usize = 7;

/// The sparse forward's tile: (output rows, images). Whole images when one image's output fits
/// the block's pixels and its padded input the staged window (as many images as fit both);
/// else a band of output rows of one image.
pub fn sparse_fwd_tile(s: &ConvShape) -> Result<(usize, usize)> {
    let (k, st, pd) = (s.k as usize, s.stride as usize, s.pad as usize);
    pick_tile(
        s.n as usize,
        (s.oh as usize, s.ow as usize),
        |rows| (rows - 1) * st + k,
        s.w as usize + 2 * pd,
    )
}

/// The sparse input gradient's tile of dx: (input rows, images), its staged dY window
/// rows + k − 1 rows of W + k − 1 virtual columns.
pub fn sparse_bwd_data_tile(s: &ConvShape) -> Result<(usize, usize)> {
    let k = s.k as usize;
    pick_tile(
        s.n as usize,
        (s.h as usize, s.w as usize),
        |rows| rows + k - 1,
        s.w as usize + k - 1,
    )
}

/// A tile of ≤ `SP_TILE` pixels of a (rows × cols) plane over `n` images whose staged window
/// (`window_rows(rows)` rows of `pitch` floats per image) fits `SPF_SMEM`: as many whole images
/// as fit, else a band of rows of one image. Returns (rows, images).
fn pick_tile(
    n: usize,
    (rows, cols): (usize, usize),
    window_rows: impl Fn(usize) -> usize,
    pitch: usize,
) -> Result<(usize, usize)> {
    let (img_px, img_floats) = (rows * cols, window_rows(rows) * pitch);
    if img_px <= SP_TILE && img_floats <= SPF_SMEM {
        let images = (SP_TILE / img_px).min(SPF_SMEM / img_floats).min(n);
        return Ok((rows, images.max(1)));
    }
    let by_px = SP_TILE / cols;
    let band = (1..=by_px.min(rows))
        .rev()
        .find(|&r| window_rows(r) * pitch <= SPF_SMEM);
    match band {
        Some(r) => Ok((r, 1)),
        None => bail!(
            "sparse convolution: a row of {cols} pixels, or the staged window of one row \
             ({} rows of {pitch} floats), is too large for the kernel's tile ({SP_TILE} \
             pixels, {SPF_SMEM} staged floats)",
            window_rows(1)
        ),
    }
}

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
    let (rows, images) = sparse_fwd_tile(&s)?;
    let p = ConvSparseFwdParams {
        x: x.addr(),
        row_ptr: w.row_ptr.addr(),
        col_idx: w.col_idx.addr(),
        values: w.values.addr(),
        bias: check_bias(bias, &s)?,
        y: y.addr(),
        s,
        nnz: w.nnz as u32,
        rows: rows as u32,
        images: images as u32,
        pad0: 0,
    };
    let cfg = LaunchCfg {
        grid: tile_grid(&s, s.oh, (rows, images), s.cout, SPF_G, "output")?,
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
    ensure!(
        s.k as usize <= SPB_MAXK,
        "sparse convolution input gradient: a {}×{} kernel is larger than the kernel supports \
         ({SPB_MAXK}×{SPB_MAXK})",
        s.k,
        s.k
    );
    let (rows, images) = sparse_bwd_data_tile(&s)?;
    let p = ConvSparseBwdDataParams {
        dy: dy.addr(),
        col_ptr: w.col_ptr.addr(),
        csc_row: w.csc_row.addr(),
        csc_pos: w.csc_pos.addr(),
        values: w.values.addr(),
        dx: dx.addr(),
        s,
        nnz: w.nnz as u32,
        rows: rows as u32,
        images: images as u32,
        pad0: 0,
    };
    let cfg = LaunchCfg {
        grid: tile_grid(&s, s.h, (rows, images), s.cin, SPB_G, "input")?,
        block: Dim3::x(SP_THREADS),
        smem: 0,
    };
    gpu.launch(&conv_bwd_data_sparse_f32, cfg, &p)
}

/// Tiles of a plane of `plane_rows` rows over the batch, `rows` a band and `images` a tile.
fn tile_count(s: &ConvShape, plane_rows: u32, (rows, images): (usize, usize)) -> usize {
    (s.n as usize).div_ceil(images) * (plane_rows as usize).div_ceil(rows)
}

/// The grid of a tiled sparse kernel: (tiles, groups of `per_group` of the `channels`).
fn tile_grid(
    s: &ConvShape,
    plane_rows: u32,
    tile: (usize, usize),
    channels: u32,
    per_group: usize,
    what: &str,
) -> Result<Dim3> {
    let tiles = tile_count(s, plane_rows, tile);
    ensure!(
        tiles <= i32::MAX as usize,
        "sparse convolution: {tiles} tiles exceed the grid"
    );
    let groups = (channels as usize).div_ceil(per_group);
    Ok(Dim3::xy(
        tiles as u32,
        grid_dim(groups, &format!("{what} channel groups"))?,
    ))
}

/// The splits of the sparse weight gradient's reduction over tiles: enough blocks to fill a
/// large GPU (~256 with the channel groups), at most one per tile.
pub fn conv_bwd_weight_sparse_splits(g: &ConvGeom) -> Result<usize> {
    let s = ConvShape::new(g)?;
    let tiles = tile_count(&s, s.oh, sparse_fwd_tile(&s)?);
    let groups = g.cout.div_ceil(SPF_G);
    Ok(256usize.div_ceil(groups).min(tiles).clamp(1, 64))
}

/// Floats of workspace `conv_bwd_weight_sparse` wants for `splits` splits of `nnz` weights (0
/// for one split).
pub fn conv_bwd_weight_sparse_workspace(nnz: usize, splits: usize) -> usize {
    if splits <= 1 {
        0
    } else {
        splits * nnz
    }
}

/// dvalues [nnz] (overwritten, `values` order) = the weight gradient at the active positions of
/// `w`: dY row · im2col(x) row for each active (row, column). With a workspace of at least
/// `conv_bwd_weight_sparse_workspace(nnz, splits)` floats for the splits
/// `conv_bwd_weight_sparse_splits` suggests, the tiles are split over blocks and the splits
/// summed in order by a second pass; without one, one split.
pub fn conv_bwd_weight_sparse(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Buf,
    dy: &Buf,
    w: &SparseBufs,
    dvalues: &mut Buf,
    work: Option<&mut Buf>,
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
    let tile = sparse_fwd_tile(&s)?;
    let want = conv_bwd_weight_sparse_splits(g)?;
    let need = conv_bwd_weight_sparse_workspace(w.nnz, want);
    let (splits, out) = match work {
        Some(wk) if want > 1 && wk.len_of::<f32>() >= need && need <= u32::MAX as usize => {
            (want, wk)
        }
        _ => (1, dvalues as &mut Buf),
    };
    let p = ConvSparseBwdWeightParams {
        x: x.addr(),
        dy: dy.addr(),
        row_ptr: w.row_ptr.addr(),
        col_idx: w.col_idx.addr(),
        out: out.addr(),
        s,
        nnz: w.nnz as u32,
        rows: tile.0 as u32,
        images: tile.1 as u32,
        splits: splits as u32,
    };
    let cfg = LaunchCfg {
        grid: Dim3::xy(
            splits as u32,
            grid_dim((s.cout as usize).div_ceil(SPF_G), "output channel groups")?,
        ),
        block: Dim3::x(SP_THREADS),
        smem: 0,
    };
    gpu.launch(&conv_bwd_weight_sparse_f32, cfg, &p)?;
    if splits > 1 {
        let r = ConvReduceParams {
            partial: p.out,
            out: dvalues.addr(),
            len: w.nnz as u32,
            splits: splits as u32,
        };
        gpu.launch(
            &conv_bwd_weight_reduce_f32,
            LaunchCfg::linear(w.nnz, 256),
            &r,
        )?;
    }
    Ok(())
}
