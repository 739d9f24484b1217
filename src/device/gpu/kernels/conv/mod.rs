//! Kernels of kernels/conv.cu: dense and masked-sparse 2-D convolution (forward, input gradient,
//! weight gradient, bias gradient) over CNHW activations, with their parameter structs and typed
//! launch wrappers. Layouts and math match `device::cpu::conv` (im2col column order
//! r = ci·k·k + kh·k + kw) and `sparse::csr::SparseWeight` (CSR over output channels, CSC index
//! into the same values). The linear layer is the 1×1 convolution of x [Cin, N, 1, 1].
//!
//! About 615 lines: one file per .cu; conv.cu's dense and sparse kernels share `ConvGeom`, the
//! parameter structs and the launch configuration. Its device check is `conv_check.rs`.

use crate::device::cpu::conv::ConvGeom;
use crate::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};
use crate::sparse::csr::SparseWeight;
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("conv" =>
    conv_fwd_dense_simple_f32,
    conv_fwd_dense_f32,
    conv_bwd_data_dense_f32,
    conv_bwd_weight_dense_f32,
    conv_bwd_weight_reduce_f32,
    conv_fwd_sparse_f32,
    conv_bwd_data_sparse_f32,
    conv_bwd_weight_sparse_f32,
    conv_bwd_bias_f32,
);

/// `ConvGeom` with u32 fields, as the kernels receive it (C `ConvShape`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConvShape {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub k: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
}

/// Kernels index with 32-bit signed ints: every tensor (and the im2col matrix's row and column
/// counts) must stay below this many elements.
const MAX_ELEMS: usize = i32::MAX as usize;

impl ConvShape {
    /// The kernels' view of `g`; fails if a tensor of the convolution is too large for their
    /// 32-bit indexing.
    pub fn new(g: &ConvGeom) -> Result<Self> {
        let sizes = [
            ("input", g.cin * g.n * g.h * g.w),
            ("output", g.cout * g.n * g.oh * g.ow),
            ("weight", g.cout * g.col_rows()),
            ("im2col rows", g.col_rows()),
        ];
        for (what, n) in sizes {
            ensure!(
                n <= MAX_ELEMS,
                "convolution {g:?}: the {what} has {n} elements, more than the GPU kernels index \
                 ({MAX_ELEMS})"
            );
        }
        let u = |v: usize| v as u32; // every field is ≤ one of the sizes checked above
        Ok(ConvShape {
            n: u(g.n),
            cin: u(g.cin),
            h: u(g.h),
            w: u(g.w),
            cout: u(g.cout),
            k: u(g.k),
            stride: u(g.stride),
            pad: u(g.pad),
            oh: u(g.oh),
            ow: u(g.ow),
        })
    }

    pub fn x_len(&self) -> usize {
        self.cin as usize * self.n as usize * self.h as usize * self.w as usize
    }
    pub fn y_len(&self) -> usize {
        self.cout as usize * self.cols()
    }
    /// K = Cin·k·k, the weight matrix's column count.
    pub fn k_len(&self) -> usize {
        self.cin as usize * (self.k * self.k) as usize
    }
    pub fn w_len(&self) -> usize {
        self.cout as usize * self.k_len()
    }
    /// P = N·OH·OW, output pixels over the batch.
    pub fn cols(&self) -> usize {
        self.n as usize * self.oh as usize * self.ow as usize
    }
}

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

/// `conv_fwd_sparse_f32`. `bias` 0 = no bias.
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
    pub pad0: u32,
}

/// `conv_bwd_weight_sparse_f32`: the weight gradient at the active positions, `values` order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvSparseBwdWeightParams {
    pub x: u64,
    pub dy: u64,
    pub row_ptr: u64,
    pub col_idx: u64,
    pub dvalues: u64,
    pub s: ConvShape,
    pub nnz: u32,
    pub pad0: u32,
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

/// `w` on the device, its buffers in `SparseBufs` order (row_ptr, col_idx, values, col_ptr,
/// csc_row, csc_pos; see `SparseBufs::from_uploaded`). An empty array gets one element, so every
/// address is valid.
pub fn upload_sparse(gpu: &Gpu, w: &SparseWeight) -> Result<[Buf; 6]> {
    let u = |v: &[u32]| gpu.upload(if v.is_empty() { &[0u32][..] } else { v });
    let vals = if w.values.is_empty() {
        vec![0.0]
    } else {
        w.values.clone()
    };
    Ok([
        u(&w.row_ptr)?,
        u(&w.col_idx)?,
        gpu.upload(&vals)?,
        u(&w.col_ptr)?,
        u(&w.csc_row)?,
        u(&w.csc_pos)?,
    ])
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
    /// The buffers of `upload_sparse`, with `nnz` live entries.
    pub fn from_uploaded(bufs: &'a [Buf; 6], nnz: usize) -> Self {
        SparseBufs {
            row_ptr: &bufs[0],
            col_idx: &bufs[1],
            values: &bufs[2],
            col_ptr: &bufs[3],
            csc_row: &bufs[4],
            csc_pos: &bufs[5],
            nnz,
        }
    }

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

fn check_len(what: &str, buf: &Buf, want: usize) -> Result<()> {
    ensure!(
        buf.len_of::<f32>() == want && buf.bytes() == want * 4,
        "convolution: {what} holds {} bytes, {} expected ({want} f32)",
        buf.bytes(),
        want * 4
    );
    Ok(())
}

fn check_bias(bias: Option<&Buf>, s: &ConvShape) -> Result<u64> {
    match bias {
        Some(b) => {
            check_len("bias", b, s.cout as usize)?;
            Ok(b.addr())
        }
        None => Ok(0),
    }
}

/// Output tile of the dense implicit GEMMs (64×64, 256 threads, 4×4 per thread).
const TILE: usize = 64;
const TILE_THREADS: u32 = 256;
/// Threads and output pixels per block of the sparse forward / input-gradient kernels.
const SP_THREADS: u32 = 256;
const SP_TILE: usize = 1024;
/// Active weights per block of the sparse weight gradient.
const SW_G: usize = 8;
/// Reduction K-step of the dense tiles: split chunks are multiples of it.
const KSTEP: usize = 16;

fn grid_dim(n: usize, what: &str) -> Result<u32> {
    ensure!(
        n <= 65535,
        "convolution: {n} {what} exceed the grid's y/z limit (65535)"
    );
    Ok(n as u32)
}

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
        pad0: 0,
    };
    let cfg = LaunchCfg {
        grid: Dim3::xy(
            s.cols().div_ceil(SP_TILE) as u32,
            grid_dim(s.cout as usize, "output channels")?,
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

/// db [Cout] (overwritten) = row sums of dy [Cout, cols] (the bias gradient; cols = N·OH·OW).
pub fn conv_bwd_bias(gpu: &Gpu, cout: usize, cols: usize, dy: &Buf, db: &mut Buf) -> Result<()> {
    ensure!(
        cout > 0 && cout * cols <= MAX_ELEMS,
        "conv bias gradient: bad shape {cout}×{cols}"
    );
    check_len("dy", dy, cout * cols)?;
    check_len("db", db, cout)?;
    let p = ConvBwdBiasParams {
        dy: dy.addr(),
        db: db.addr(),
        cout: cout as u32,
        cols: cols as u32,
    };
    let cfg = LaunchCfg {
        grid: Dim3::x(cout as u32),
        block: Dim3::x(256),
        smem: 0,
    };
    gpu.launch(&conv_bwd_bias_f32, cfg, &p)
}
