//! The dense convolution's launch wrappers: forward (tiled implicit GEMM and the simple
//! reference kernel), input gradient, and the weight gradient with its split reduction.

use super::{
    check_bias, check_len, conv_bwd_data_dense_f32, conv_bwd_weight_dense_f32,
    conv_bwd_weight_reduce_f32, conv_fwd_dense_f32, conv_fwd_dense_simple_f32, grid_dim,
    ConvBwdDataParams, ConvBwdWeightParams, ConvFwdParams, ConvReduceParams, ConvShape, MAX_ELEMS,
};
use crate::device::cpu::conv::ConvGeom;
use crate::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};
use anyhow::{ensure, Result};

/// Output tile of the dense implicit GEMMs (64×64, 256 threads, 4×4 per thread).
const TILE: usize = 64;
const TILE_THREADS: u32 = 256;
/// Reduction K-step of the dense tiles: split chunks are multiples of it.
const KSTEP: usize = 16;

fn tile_cfg(rows: usize, cols: usize, splits: usize) -> Result<LaunchCfg> {
    Ok(LaunchCfg {
        grid: Dim3::xyz(
            cols.div_ceil(TILE) as u32,
            grid_dim(rows.div_ceil(TILE), "row tiles")?,
            grid_dim(splits, "splits")?,
        ),
        block: Dim3::x(TILE_THREADS),
        smem: 0,
    })
}

/// y = conv(x, w) + bias, the tiled implicit GEMM. x [Cin, N, H, W], w [Cout, Cin·k·k],
/// bias [Cout], y [Cout, N, OH, OW] (overwritten).
pub fn conv_fwd_dense(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Buf,
    w: &Buf,
    bias: Option<&Buf>,
    y: &mut Buf,
) -> Result<()> {
    let p = fwd_params(g, x, w, bias, y)?;
    let cfg = tile_cfg(p.s.cout as usize, p.s.cols(), 1)?;
    gpu.launch(&conv_fwd_dense_f32, cfg, &p)
}

/// As `conv_fwd_dense`, one thread per output element (the simple reference kernel).
pub fn conv_fwd_dense_simple(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Buf,
    w: &Buf,
    bias: Option<&Buf>,
    y: &mut Buf,
) -> Result<()> {
    let p = fwd_params(g, x, w, bias, y)?;
    gpu.launch(
        &conv_fwd_dense_simple_f32,
        LaunchCfg::linear(p.s.y_len(), 256),
        &p,
    )
}

fn fwd_params(
    g: &ConvGeom,
    x: &Buf,
    w: &Buf,
    bias: Option<&Buf>,
    y: &Buf,
) -> Result<ConvFwdParams> {
    let s = ConvShape::new(g)?;
    check_len("x", x, s.x_len())?;
    check_len("weight", w, s.w_len())?;
    check_len("y", y, s.y_len())?;
    Ok(ConvFwdParams {
        x: x.addr(),
        w: w.addr(),
        bias: check_bias(bias, &s)?,
        y: y.addr(),
        s,
    })
}

/// dx = the input gradient of the convolution: dy [Cout, N, OH, OW], w [Cout, Cin·k·k],
/// dx [Cin, N, H, W] (overwritten).
pub fn conv_bwd_data_dense(gpu: &Gpu, g: &ConvGeom, dy: &Buf, w: &Buf, dx: &mut Buf) -> Result<()> {
    let s = ConvShape::new(g)?;
    check_len("dy", dy, s.y_len())?;
    check_len("weight", w, s.w_len())?;
    check_len("dx", dx, s.x_len())?;
    let p = ConvBwdDataParams {
        dy: dy.addr(),
        w: w.addr(),
        dx: dx.addr(),
        s,
    };
    let cfg = tile_cfg(s.cin as usize, s.x_len() / s.cin as usize, 1)?;
    gpu.launch(&conv_bwd_data_dense_f32, cfg, &p)
}

/// The split of the dense weight gradient's reduction (over N·OH·OW) that
/// `conv_bwd_weight_dense` uses: enough blocks to fill a large GPU (~256), each split at least
/// 512 columns long, at most 64 splits. 1 means no split (and no workspace).
pub fn conv_bwd_weight_dense_splits(g: &ConvGeom) -> usize {
    let tiles = g.cout.div_ceil(TILE) * g.col_rows().div_ceil(TILE);
    let by_fill = 256usize.div_ceil(tiles);
    let by_len = g.col_cols() / 512;
    by_fill.min(by_len).clamp(1, 64)
}

/// Floats of workspace `conv_bwd_weight_dense` wants for `splits` splits (0 for one split).
pub fn conv_bwd_weight_dense_workspace(g: &ConvGeom, splits: usize) -> usize {
    if splits <= 1 {
        0
    } else {
        splits * g.cout * g.col_rows()
    }
}

/// dw [Cout, Cin·k·k] (overwritten) = dy [Cout, N·OH·OW] · im2col(x)ᵀ, x [Cin, N, H, W].
/// With a workspace of at least `conv_bwd_weight_dense_workspace(g, splits)` floats for the
/// splits `conv_bwd_weight_dense_splits` suggests, the reduction is split over blocks and summed
/// by a second, deterministic pass; without one (or a smaller one), one split.
pub fn conv_bwd_weight_dense(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Buf,
    dy: &Buf,
    dw: &mut Buf,
    work: Option<&mut Buf>,
) -> Result<()> {
    let want = conv_bwd_weight_dense_splits(g);
    let splits = match &work {
        Some(wk) if wk.len_of::<f32>() >= conv_bwd_weight_dense_workspace(g, want) => want,
        _ => 1,
    };
    conv_bwd_weight_dense_split(gpu, g, x, dy, dw, splits, work)
}

/// `conv_bwd_weight_dense` with an explicit number of splits (≥ 1; more than one needs `work`
/// of `conv_bwd_weight_dense_workspace(g, splits)` floats). The splits actually used may be
/// fewer: each is a whole number of 16-column K-steps, and none is empty.
pub fn conv_bwd_weight_dense_split(
    gpu: &Gpu,
    g: &ConvGeom,
    x: &Buf,
    dy: &Buf,
    dw: &mut Buf,
    splits: usize,
    work: Option<&mut Buf>,
) -> Result<()> {
    let s = ConvShape::new(g)?;
    check_len("x", x, s.x_len())?;
    check_len("dy", dy, s.y_len())?;
    check_len("dw", dw, s.w_len())?;
    ensure!(splits >= 1, "conv weight gradient: 0 splits");
    let cols = s.cols();
    let chunk = cols.div_ceil(splits).div_ceil(KSTEP) * KSTEP;
    let splits = cols.div_ceil(chunk);
    let cfg = tile_cfg(s.cout as usize, s.k_len(), splits)?;
    let mut p = ConvBwdWeightParams {
        x: x.addr(),
        dy: dy.addr(),
        out: dw.addr(),
        s,
        splits: splits as u32,
        chunk: chunk as u32,
    };
    if splits == 1 {
        return gpu.launch(&conv_bwd_weight_dense_f32, cfg, &p);
    }
    let len = s.w_len();
    let need = splits * len;
    let work = work.ok_or_else(|| {
        anyhow::anyhow!("conv weight gradient: {splits} splits need a workspace of {need} f32")
    })?;
    ensure!(
        work.len_of::<f32>() >= need && need <= MAX_ELEMS,
        "conv weight gradient: {splits} splits need a workspace of {need} f32, it holds {}",
        work.len_of::<f32>()
    );
    p.out = work.addr();
    gpu.launch(&conv_bwd_weight_dense_f32, cfg, &p)?;
    let r = ConvReduceParams {
        partial: work.addr(),
        out: dw.addr(),
        len: len as u32,
        splits: splits as u32,
    };
    gpu.launch(&conv_bwd_weight_reduce_f32, LaunchCfg::linear(len, 256), &r)
}
