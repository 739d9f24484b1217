//! 2-D convolution over [C, N, H, W] activations: im2col + GEMM, forward and backward.

use anyhow::Result;

/// Geometry of one convolution (square kernel, same stride and padding on both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
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
    pub fn new(n: usize, cin: usize, h: usize, w: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Result<Self> {
        let _ = (n, cin, h, w, cout, k, stride, pad);
        todo!("ops helper")
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

/// col[cin·k·k, n·oh·ow] from x[cin, n, h, w]; zero where the window hangs over the padding.
pub fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let _ = (g, x, col);
    todo!("ops helper")
}

/// dx[cin, n, h, w] = the adjoint of im2col applied to dcol (overwrites dx).
pub fn col2im(g: &ConvGeom, dcol: &[f32], dx: &mut [f32]) {
    let _ = (g, dcol, dx);
    todo!("ops helper")
}

/// y[cout, n, oh, ow] = conv(x, w) + bias. `w` is [cout, cin, k, k]; `col` is scratch of
/// col_rows·col_cols floats (kept by the caller so backward can reuse it if it wishes).
pub fn conv2d_forward(g: &ConvGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, col: &mut [f32], y: &mut [f32]) {
    let _ = (g, x, w, bias, col, y);
    todo!("ops helper")
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
    let _ = (g, col, w, dy, dw, db, dcol, dx);
    todo!("ops helper")
}
