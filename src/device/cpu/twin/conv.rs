//! CPU twins of kernels/conv.cu: the same names and parameter structs (scalars only; buffers as
//! slices), written as plain loops over the definition with f64 accumulators.
//!
//! Definition (as `device::cpu::conv`): col[r, j] with r = ci·k·k + kh·k + kw and
//! j = (n·OH + oh)·OW + ow reads x[ci, n, oh·s + kh − pad, ow·s + kw − pad] (0 outside);
//! y[co, j] = Σ_r W[co, r]·col[r, j] + bias[co].

use crate::device::cpu::ConvGeom;
use crate::device::gpu::kernels::conv::{
    ConvBwdBiasParams, ConvBwdDataParams, ConvBwdWeightParams, ConvFwdParams, ConvReduceParams,
    ConvShape, ConvSparseBwdDataParams, ConvSparseBwdWeightParams, ConvSparseFwdParams,
};

/// The geometry of `s` ([C, N, H, W] activations), as the CPU's convolutions take it.
fn geom(s: &ConvShape) -> ConvGeom {
    let u = |v: u32| v as usize;
    let (k, stride, pad) = (u(s.k), u(s.stride), u(s.pad));
    let g = ConvGeom::new(u(s.n), u(s.cin), u(s.h), u(s.w), u(s.cout), k, stride, pad)
        .expect("conv twin: shape");
    assert_eq!((g.oh, g.ow), (u(s.oh), u(s.ow)), "conv twin: output size");
    g
}

/// What the twins read of the im2col buffer without building it.
trait Cols {
    fn col(&self, x: &[f32], r: usize, j: usize) -> f32;
    fn col_src(&self, r: usize, j: usize) -> Option<usize>;
}

impl Cols for ConvGeom {
    fn col(&self, x: &[f32], r: usize, j: usize) -> f32 {
        self.col_src(r, j).map_or(0.0, |i| x[i])
    }

    fn col_src(&self, r: usize, j: usize) -> Option<usize> {
        let kk = self.k * self.k;
        let (ci, kh, kw) = (r / kk, (r % kk) / self.k, r % self.k);
        let (nn, oh, ow) = (
            j / (self.oh * self.ow),
            (j / self.ow) % self.oh,
            j % self.ow,
        );
        let ih = (oh * self.stride + kh) as isize - self.pad as isize;
        let iw = (ow * self.stride + kw) as isize - self.pad as isize;
        if ih < 0 || iw < 0 || ih >= self.h as isize || iw >= self.w as isize {
            return None;
        }
        Some(((ci * self.n + nn) * self.h + ih as usize) * self.w + iw as usize)
    }
}

/// out = the f64 accumulators, rounded to f32.
fn store(out: &mut [f32], acc: Vec<f64>) {
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// Σ_j dy[co, j]·col[r, j]: one weight's gradient.
fn dy_dot_col(d: &ConvGeom, x: &[f32], dy: &[f32], co: usize, r: usize) -> f64 {
    let p = d.col_cols();
    let mut acc = 0f64;
    for j in 0..p {
        acc += dy[co * p + j] as f64 * d.col(x, r, j) as f64;
    }
    acc
}

/// y[co, j] = sum(co, j) (+ bias[co]), one output at a time.
fn each_output(
    d: &ConvGeom,
    bias: Option<&[f32]>,
    y: &mut [f32],
    sum: impl Fn(usize, usize) -> f64,
) {
    for co in 0..d.cout {
        for j in 0..d.col_cols() {
            let mut acc = sum(co, j);
            if let Some(b) = bias {
                acc += b[co] as f64;
            }
            y[co * d.col_cols() + j] = acc as f32;
        }
    }
}

/// y = W · col (+ bias), one output at a time.
pub fn conv_fwd_dense_simple_f32(
    p: &ConvFwdParams,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let d = geom(&p.s);
    let rows = d.col_rows();
    assert_eq!(x.len(), d.cin * d.n * d.h * d.w, "x length");
    assert_eq!(w.len(), d.cout * rows, "w length");
    assert_eq!(y.len(), d.cout * d.col_cols(), "y length");
    each_output(&d, bias, y, |co, j| {
        let mut acc = 0f64;
        for r in 0..rows {
            acc += w[co * rows + r] as f64 * d.col(x, r, j) as f64;
        }
        acc
    });
}

/// The same result as `conv_fwd_dense_simple_f32` (the tiled kernel computes the same map).
pub fn conv_fwd_dense_f32(
    p: &ConvFwdParams,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    conv_fwd_dense_simple_f32(p, x, w, bias, y)
}

/// dx = colᵀ-adjoint of Wᵀ·dy: every (r, j) adds W[co, r]·dy[co, j] to the pixel col[r, j] reads.
pub fn conv_bwd_data_dense_f32(p: &ConvBwdDataParams, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let d = geom(&p.s);
    let rows = d.col_rows();
    assert_eq!(dy.len(), d.cout * d.col_cols(), "dy length");
    assert_eq!(w.len(), d.cout * rows, "w length");
    assert_eq!(dx.len(), d.cin * d.n * d.h * d.w, "dx length");
    let mut acc = vec![0f64; dx.len()];
    for r in 0..rows {
        for j in 0..d.col_cols() {
            if let Some(src) = d.col_src(r, j) {
                for co in 0..d.cout {
                    acc[src] += w[co * rows + r] as f64 * dy[co * d.col_cols() + j] as f64;
                }
            }
        }
    }
    store(dx, acc);
}

/// dw[co, r] = Σ_j dy[co, j]·col[r, j]. Writes dW itself (the kernel's `out` with one split;
/// with several the kernel's partials plus `conv_bwd_weight_reduce_f32` give the same).
pub fn conv_bwd_weight_dense_f32(p: &ConvBwdWeightParams, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let d = geom(&p.s);
    let rows = d.col_rows();
    assert_eq!(x.len(), d.cin * d.n * d.h * d.w, "x length");
    assert_eq!(dy.len(), d.cout * d.col_cols(), "dy length");
    assert_eq!(dw.len(), d.cout * rows, "dw length");
    for co in 0..d.cout {
        for r in 0..rows {
            dw[co * rows + r] = dy_dot_col(&d, x, dy, co, r) as f32;
        }
    }
}

/// out[i] = Σ_z partial[z·len + i].
pub fn conv_bwd_weight_reduce_f32(p: &ConvReduceParams, partial: &[f32], out: &mut [f32]) {
    let (len, splits) = (p.len as usize, p.splits as usize);
    assert!(partial.len() >= len * splits, "partial length");
    assert_eq!(out.len(), len, "out length");
    for (i, o) in out.iter_mut().enumerate() {
        *o = (0..splits)
            .map(|z| partial[z * len + i] as f64)
            .sum::<f64>() as f32;
    }
}

/// y[co, j] = Σ_{e in row co} values[e]·col[col_idx[e], j] (+ bias).
pub fn conv_fwd_sparse_f32(
    p: &ConvSparseFwdParams,
    x: &[f32],
    row_ptr: &[u32],
    col_idx: &[u32],
    values: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let d = geom(&p.s);
    assert_eq!(y.len(), d.cout * d.col_cols(), "y length");
    each_output(&d, bias, y, |co, j| {
        let mut acc = 0f64;
        for e in row_ptr[co] as usize..row_ptr[co + 1] as usize {
            acc += values[e] as f64 * d.col(x, col_idx[e] as usize, j) as f64;
        }
        acc
    });
}

/// dx: every active weight (row co, column r) adds values·dy[co, j] to the pixel col[r, j]
/// reads, walking the CSC index as the kernel does.
pub fn conv_bwd_data_sparse_f32(
    p: &ConvSparseBwdDataParams,
    dy: &[f32],
    col_ptr: &[u32],
    csc_row: &[u32],
    csc_pos: &[u32],
    values: &[f32],
    dx: &mut [f32],
) {
    let d = geom(&p.s);
    assert_eq!(dy.len(), d.cout * d.col_cols(), "dy length");
    assert_eq!(dx.len(), d.cin * d.n * d.h * d.w, "dx length");
    let mut acc = vec![0f64; dx.len()];
    for r in 0..d.col_rows() {
        for e in col_ptr[r] as usize..col_ptr[r + 1] as usize {
            let (co, v) = (csc_row[e] as usize, values[csc_pos[e] as usize] as f64);
            for j in 0..d.col_cols() {
                if let Some(src) = d.col_src(r, j) {
                    acc[src] += v * dy[co * d.col_cols() + j] as f64;
                }
            }
        }
    }
    store(dx, acc);
}

/// dvalues[e] = Σ_j dy[row(e), j]·col[col_idx[e], j].
pub fn conv_bwd_weight_sparse_f32(
    p: &ConvSparseBwdWeightParams,
    x: &[f32],
    dy: &[f32],
    row_ptr: &[u32],
    col_idx: &[u32],
    dvalues: &mut [f32],
) {
    let d = geom(&p.s);
    assert_eq!(dy.len(), d.cout * d.col_cols(), "dy length");
    for co in 0..d.cout {
        for e in row_ptr[co] as usize..row_ptr[co + 1] as usize {
            dvalues[e] = dy_dot_col(&d, x, dy, co, col_idx[e] as usize) as f32;
        }
    }
}

/// db[co] = Σ_j dy[co·cols + j].
pub fn conv_bwd_bias_f32(p: &ConvBwdBiasParams, dy: &[f32], db: &mut [f32]) {
    let (cout, cols) = (p.cout as usize, p.cols as usize);
    assert_eq!(dy.len(), cout * cols, "dy length");
    assert_eq!(db.len(), cout, "db length");
    for (co, b) in db.iter_mut().enumerate() {
        *b = dy[co * cols..][..cols]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>() as f32;
    }
}
