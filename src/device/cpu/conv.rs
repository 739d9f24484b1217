//! 2-D convolution by im2col + GEMM, forward and backward, over activations in either layout
//! (`Layout`): [C, N, H, W] (the GPU's, and the CPU twins') or batch-innermost [C, H, W, N] (the
//! CPU engine's).

use anyhow::{ensure, Result};
use rayon::prelude::*;

use super::gemm::matmul;
use super::norm::sum_f64;

/// Below this many floats in the im2col buffer, im2col / col2im / bias work stays serial.
const PAR_MIN: usize = 1 << 15;

/// How a convolution's activations are laid out; the im2col buffer's columns follow the same
/// order, so `W · col` is the output in that layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// [C, N, H, W]: the CUDA kernels' layout (and their CPU twins').
    #[default]
    Cnhw,
    /// [C, H, W, N], the batch innermost: the CPU engine's layout. Every tap of a convolution
    /// then reads whole contiguous rows of N values (no per-image edges), which is what lets the
    /// direct sparse convolution (`sparse::conv`) run at vector speed.
    Chwn,
}

/// Geometry of one convolution (square kernel, same stride and padding on both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub layout: Layout,
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Fails with a message naming the problem for an impossible shape (zero sizes, stride 0,
    /// a kernel larger than the padded input).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        ensure!(n > 0, "convolution: batch size is 0");
        ensure!(cin > 0, "convolution: input channels is 0");
        ensure!(cout > 0, "convolution: output channels is 0");
        ensure!(h > 0 && w > 0, "convolution: empty input plane {h}x{w}");
        ensure!(k > 0, "convolution: kernel size is 0");
        ensure!(stride > 0, "convolution: stride is 0");
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        ensure!(k <= ph && k <= pw, "convolution: kernel {k}x{k} is larger than the padded input {ph}x{pw} ({h}x{w} with padding {pad})");
        let oh = (ph - k) / stride + 1;
        let ow = (pw - k) / stride + 1;
        Ok(Self {
            layout: Layout::Cnhw,
            n,
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            oh,
            ow,
        })
    }
    /// The same geometry over activations in `layout`.
    pub fn with_layout(self, layout: Layout) -> Self {
        Self { layout, ..self }
    }
    /// Rows of the im2col buffer: cin·k·k.
    pub fn col_rows(&self) -> usize {
        self.cin * self.k * self.k
    }
    /// Columns of the im2col buffer: n·oh·ow.
    pub fn col_cols(&self) -> usize {
        self.n * self.oh * self.ow
    }
}

/// col[cin·k·k, n·oh·ow] from x (columns in the order of `g.layout`); zero where the window
/// hangs over the padding.
pub fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    if g.layout == Layout::Chwn {
        return im2col_chwn(g, x, col);
    }
    let cols = g.col_cols();
    let rows = g.col_rows();
    assert_eq!(x.len(), g.cin * g.n * g.h * g.w, "im2col: x length");
    assert_eq!(col.len(), rows * cols, "im2col: col length");
    let fill_row = |r: usize, row: &mut [f32]| {
        let (ci, kh, kw) = (r / (g.k * g.k), (r / g.k) % g.k, r % g.k);
        let (lo, hi) = valid_range(g.ow, g.w, g.stride, kw, g.pad);
        let d = kw as isize - g.pad as isize;
        // Output rows oh in [rlo, rhi) read an input row; the others, and the columns outside
        // [lo, hi), read padding.
        let (rlo, rhi) = valid_range(g.oh, g.h, g.stride, kh, g.pad);
        let padded = lo > 0 || hi < g.ow || rlo > 0 || rhi < g.oh;
        for (nn, img) in row.chunks_exact_mut(g.oh * g.ow).enumerate() {
            if lo >= hi || rlo >= rhi {
                img.fill(0.0);
                continue;
            }
            let plane = &x[(ci * g.n + nn) * g.h * g.w..][..g.h * g.w];
            // One zero-fill of the image's block where this tap reads padding (the CMNIST
            // CNN's first conv has 14-wide rows: a memset call per row piece cost more than
            // the copy), then the valid part over it.
            if padded {
                img.fill(0.0);
            }
            for oh in rlo..rhi {
                let seg = &mut img[oh * g.ow..][..g.ow];
                let ih = oh * g.stride + kh - g.pad;
                let src = &plane[ih * g.w..][..g.w];
                // First input column read: lo·stride + d ≥ 0 by construction of `lo`.
                let start = (lo as isize * g.stride as isize + d) as usize;
                if g.stride == 1 {
                    seg[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                } else {
                    // Every stride-th input from `start`; chunks_exact lets the compiler
                    // vectorise (step_by does not). The last output's chunk may run past the
                    // row, so it is copied on its own.
                    let (body, last) = seg[lo..hi].split_at_mut(hi - lo - 1);
                    let run = &src[start..start + body.len() * g.stride];
                    if g.stride == 2 {
                        // A constant stride vectorises (a de-interleave); the runtime one
                        // compiled to a scalar loop with a multiply per element.
                        for (o, c) in body.iter_mut().zip(run.chunks_exact(2)) {
                            *o = c[0];
                        }
                    } else {
                        for (o, c) in body.iter_mut().zip(run.chunks_exact(g.stride)) {
                            *o = c[0];
                        }
                    }
                    last[0] = src[start + body.len() * g.stride];
                }
            }
        }
    };
    super::for_each_chunk(col, cols, rows * cols >= PAR_MIN, fill_row);
}

/// The output positions o in [lo, hi) (with lo ≤ hi ≤ out) whose input coordinate
/// o·stride + kof − pad lands inside [0, size); the rest read padding.
fn valid_range(out: usize, size: usize, stride: usize, kof: usize, pad: usize) -> (usize, usize) {
    let d = kof as isize - pad as isize;
    let (s, size) = (stride as isize, size as isize);
    let lo = if d >= 0 { 0 } else { (-d + s - 1) / s };
    let hi = if size - d <= 0 {
        0
    } else {
        (size - d + s - 1) / s
    };
    let hi = (hi as usize).min(out);
    let lo = (lo as usize).min(hi);
    (lo, hi)
}

/// dx = the adjoint of im2col applied to dcol (overwrites dx).
pub fn col2im(g: &ConvGeom, dcol: &[f32], dx: &mut [f32]) {
    if g.layout == Layout::Chwn {
        return col2im_chwn(g, dcol, dx);
    }
    let cols = g.col_cols();
    let kk = g.k * g.k;
    assert_eq!(dx.len(), g.cin * g.n * g.h * g.w, "col2im: dx length");
    assert_eq!(dcol.len(), g.col_rows() * cols, "col2im: dcol length");
    // One input channel's dx[n, h, w] gathers exactly the k·k rows of that channel, so
    // channels are independent and no two threads ever write the same dx element.
    let channel = |ci: usize, dxc: &mut [f32]| {
        dxc.fill(0.0);
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = &dcol[(ci * kk + kh * g.k + kw) * cols..][..cols];
                let (lo, hi) = valid_range(g.ow, g.w, g.stride, kw, g.pad);
                if lo >= hi {
                    continue;
                }
                let start =
                    (lo as isize * g.stride as isize + kw as isize - g.pad as isize) as usize;
                for (img, plane) in row
                    .chunks_exact(g.oh * g.ow)
                    .zip(dxc.chunks_exact_mut(g.h * g.w))
                {
                    for (oh, seg) in img.chunks_exact(g.ow).enumerate() {
                        let ih = (oh * g.stride + kh) as isize - g.pad as isize;
                        if ih < 0 || ih >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[ih as usize * g.w..][..g.w];
                        let src = &seg[lo..hi];
                        if g.stride == 1 {
                            for (o, v) in dst[start..start + src.len()].iter_mut().zip(src) {
                                *o += *v;
                            }
                        } else {
                            // As in im2col: chunks_exact vectorises, the last one alone.
                            let (body, last) = src.split_at(src.len() - 1);
                            let run = &mut dst[start..start + body.len() * g.stride];
                            for (c, v) in run.chunks_exact_mut(g.stride).zip(body) {
                                c[0] += *v;
                            }
                            dst[start + body.len() * g.stride] += last[0];
                        }
                    }
                }
            }
        }
    };
    let plane = g.n * g.h * g.w;
    super::for_each_chunk(dx, plane, g.col_rows() * cols >= PAR_MIN, channel);
}

/// `im2col` for x [cin, h, w, n]: col[(ci, kh, kw), (oh, ow, n)] = x[ci, ih, iw, :], one copy
/// of n floats per output pixel and tap.
fn im2col_chwn(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let (n, cols) = (g.n, g.col_cols());
    assert_eq!(x.len(), g.cin * g.h * g.w * n, "im2col: x length");
    assert_eq!(col.len(), g.col_rows() * cols, "im2col: col length");
    let fill_row = |r: usize, row: &mut [f32]| {
        let (ci, kh, kw) = (r / (g.k * g.k), (r / g.k) % g.k, r % g.k);
        let (rlo, rhi) = valid_range(g.oh, g.h, g.stride, kh, g.pad);
        let (lo, hi) = valid_range(g.ow, g.w, g.stride, kw, g.pad);
        let plane = &x[ci * g.h * g.w * n..][..g.h * g.w * n];
        for (oh, orow) in row.chunks_exact_mut(g.ow * n).enumerate() {
            if oh < rlo || oh >= rhi || lo >= hi {
                orow.fill(0.0);
                continue;
            }
            let ih = oh * g.stride + kh - g.pad;
            orow[..lo * n].fill(0.0);
            orow[hi * n..].fill(0.0);
            for ow in lo..hi {
                let iw = ow * g.stride + kw - g.pad;
                orow[ow * n..][..n].copy_from_slice(&plane[(ih * g.w + iw) * n..][..n]);
            }
        }
    };
    super::for_each_chunk(col, cols, col.len() >= PAR_MIN, fill_row);
}

/// `col2im` for dx [cin, h, w, n]: each channel sums its k·k rows (channels are independent).
fn col2im_chwn(g: &ConvGeom, dcol: &[f32], dx: &mut [f32]) {
    let (n, cols, kk) = (g.n, g.col_cols(), g.k * g.k);
    assert_eq!(dx.len(), g.cin * g.h * g.w * n, "col2im: dx length");
    assert_eq!(dcol.len(), g.col_rows() * cols, "col2im: dcol length");
    let channel = |ci: usize, dxc: &mut [f32]| {
        dxc.fill(0.0);
        for kh in 0..g.k {
            let (rlo, rhi) = valid_range(g.oh, g.h, g.stride, kh, g.pad);
            for kw in 0..g.k {
                let (lo, hi) = valid_range(g.ow, g.w, g.stride, kw, g.pad);
                let row = &dcol[(ci * kk + kh * g.k + kw) * cols..][..cols];
                for oh in rlo..rhi {
                    let ih = oh * g.stride + kh - g.pad;
                    for ow in lo..hi {
                        let iw = ow * g.stride + kw - g.pad;
                        let src = &row[(oh * g.ow + ow) * n..][..n];
                        for (d, &v) in dxc[(ih * g.w + iw) * n..][..n].iter_mut().zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    };
    let plane = g.h * g.w * n;
    super::for_each_chunk(dx, plane, dcol.len() >= PAR_MIN, channel);
}

/// dst[c, r] = src[r, c] for src of `r_n` rows and `c_n` columns, in square tiles so that
/// both the strided reads and the writes stay in cache (a plain column walk over a
/// 2304×256 matrix misses on nearly every read); parallel over tile rows of dst when large.
pub fn transpose(src: &[f32], r_n: usize, c_n: usize, dst: &mut [f32]) {
    const T: usize = 32;
    assert_eq!(src.len(), r_n * c_n, "transpose: src length");
    assert_eq!(dst.len(), r_n * c_n, "transpose: dst length");
    if r_n == 0 || c_n == 0 {
        return;
    }
    // One band: dst rows c0..c0+band.len()/r_n (source columns), all source rows.
    let band = |c0: usize, band: &mut [f32]| {
        let cw = band.len() / r_n;
        for r0 in (0..r_n).step_by(T) {
            let rh = T.min(r_n - r0);
            for c in 0..cw {
                let out = &mut band[c * r_n + r0..][..rh];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = src[(r0 + i) * c_n + c0 + c];
                }
            }
        }
    };
    if src.len() >= PAR_MIN {
        dst.par_chunks_mut(T * r_n)
            .enumerate()
            .for_each(|(b, d)| band(b * T, d));
    } else {
        dst.chunks_mut(T * r_n)
            .enumerate()
            .for_each(|(b, d)| band(b * T, d));
    }
}

/// y[cout, n·oh·ow] (in `g.layout`) = conv(x, w) + bias. `w` is [cout, cin, k, k]; `col` is scratch of
/// col_rows·col_cols floats (kept by the caller so backward can reuse it if it wishes).
pub fn conv2d_forward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    col: &mut [f32],
    y: &mut [f32],
) {
    let (rows, cols) = (g.col_rows(), g.col_cols());
    assert_eq!(w.len(), g.cout * rows, "conv2d_forward: w length");
    assert_eq!(y.len(), g.cout * cols, "conv2d_forward: y length");
    im2col(g, x, col);
    // With a bias, y starts as the broadcast bias and the GEMM accumulates onto it.
    if let Some(b) = bias {
        assert_eq!(b.len(), g.cout, "conv2d_forward: bias length");
        if y.len() >= PAR_MIN {
            y.par_chunks_mut(cols)
                .zip(b.par_iter())
                .for_each(|(row, &v)| row.fill(v));
        } else {
            y.chunks_mut(cols).zip(b).for_each(|(row, &v)| row.fill(v));
        }
    }
    matmul(g.cout, rows, cols, w, false, col, false, y, bias.is_some());
}

/// dw [cout, cin·k·k] (overwritten) = dY[cout, cols] · col[rows, cols]ᵀ: the weight gradient
/// of `conv2d_backward`, also the dense gradient a sparse layer needs on topology-update steps.
pub fn conv2d_weight_grad(g: &ConvGeom, col: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (rows, cols) = (g.col_rows(), g.col_cols());
    assert_eq!(col.len(), rows * cols, "conv2d_weight_grad: col length");
    assert_eq!(dy.len(), g.cout * cols, "conv2d_weight_grad: dy length");
    assert_eq!(dw.len(), g.cout * rows, "conv2d_weight_grad: dw length");
    // With a long reduction (cols) and enough rows the GEMM kernel runs this 1.3–3.5x faster
    // in the transposed orientation dWᵀ[rows, cout] = col · dYᵀ, so compute that and transpose
    // the result. With short reductions (ResNet's 4×4..1×1 maps) or few rows the transpose
    // costs more than it saves (measured: direct 2x faster at cols = 64, equal at 256; trick
    // 1.3–3.5x faster at cols ≥ 1024 with rows ≥ 147, 1.4–1.7x slower with rows ≤ 64).
    if cols >= 512 && rows >= 128 {
        let mut dwt = vec![0f32; rows * g.cout];
        matmul(rows, cols, g.cout, col, false, dy, true, &mut dwt, false);
        transpose(&dwt, rows, g.cout, dw);
    } else {
        matmul(g.cout, cols, rows, dy, false, col, true, dw, false);
    }
}

/// Gradients of `conv2d_forward`. `col` holds im2col(x) as forward left it. Overwrites `dw`,
/// `db` and `dx` (each computed only when given). `dcol` is scratch of the col's size.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    g: &ConvGeom,
    col: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dcol: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let (rows, cols) = (g.col_rows(), g.col_cols());
    assert_eq!(col.len(), rows * cols, "conv2d_backward: col length");
    assert_eq!(w.len(), g.cout * rows, "conv2d_backward: w length");
    assert_eq!(dy.len(), g.cout * cols, "conv2d_backward: dy length");
    if let Some(dw) = dw {
        conv2d_weight_grad(g, col, dy, dw);
    }
    if let Some(db) = db {
        assert_eq!(db.len(), g.cout, "conv2d_backward: db length");
        if dy.len() >= PAR_MIN {
            db.par_iter_mut()
                .zip(dy.par_chunks(cols))
                .for_each(|(b, row)| *b = sum_f64(row) as f32);
        } else {
            db.iter_mut()
                .zip(dy.chunks(cols))
                .for_each(|(b, row)| *b = sum_f64(row) as f32);
        }
    }
    if let Some(dx) = dx {
        // dcol[rows, cols] = W[cout, rows]ᵀ · dY[cout, cols], then scattered back onto dx.
        matmul(rows, g.cout, cols, w, true, dy, false, dcol, false);
        col2im(g, dcol, dx);
    }
}
