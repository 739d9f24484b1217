//! Parity of kernels/conv.cu with its CPU twins (device::cpu::twin::conv) on the emulator, and of
//! the twins with the CPU engine (device::cpu::conv, sparse::csr).
//!
//! Every output buffer is poisoned (0xFF bytes = NaN) before each launch, so an element a kernel
//! fails to write shows up as NaN.
//!
//! Tolerance: |gpu − twin| ≤ 1e-4·|twin| + 1e-5·L, where L is the reduction length of that output
//! (Cin·k·k for forward, Cout·k·k for the input gradient, N·OH·OW for weight and bias gradients).
//! Inputs are uniform in [−1, 1); the twins accumulate in f64, the kernels in f32 in tile, split
//! and shuffle-tree order (with fused multiply-adds on a GPU), whose error grows with L.

use rest::device::cpu::conv as cpu_conv;
use rest::device::cpu::twin::conv as twin;
use rest::device::cpu::ConvGeom;
use rest::device::gpu::kernels::conv::*;
use rest::device::gpu::{Buf, Gpu};
use rest::sparse::csr::SparseWeight;
use rest::sparse::reference;

/// A small deterministic generator (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    /// Uniform in [−1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

/// (n, cin, h, w, cout, k, stride, pad)
type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);

/// Ragged shapes (sizes not multiples of the 64-wide tiles or 16-deep K-steps).
const SHAPES: &[(&str, Shape)] = &[
    ("k3 s1 p1 11x13", (2, 3, 11, 13, 5, 3, 1, 1)),
    ("k4 s2 p1 (CMNIST CNN)", (2, 4, 15, 13, 6, 4, 2, 1)),
    ("k7 s2 p3 (stem)", (1, 3, 19, 17, 8, 7, 2, 3)),
    ("k1 s2 p0 (shortcut)", (2, 6, 9, 7, 70, 1, 2, 0)),
    ("linear 37->10", (5, 37, 1, 1, 10, 1, 1, 0)),
    ("k3 s1 p1, two row tiles", (2, 9, 8, 10, 67, 3, 1, 1)),
];

fn geom(s: Shape) -> ConvGeom {
    ConvGeom::new(s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7).expect("valid shape")
}

fn check(what: &str, got: &[f32], want: &[f32], red: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.abs() + 1e-5 * red as f32;
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: kernel {g}, twin {w} (tolerance {tol})"
        );
    }
}

/// A zero buffer of `n` f32, poisoned.
fn out_buf(gpu: &Gpu, n: usize) -> Buf {
    let mut b = gpu.zeros::<f32>(n).unwrap();
    gpu.fill_bytes(&mut b, 0xFF).unwrap();
    b
}

fn params_fwd(g: &ConvGeom) -> ConvFwdParams {
    ConvFwdParams {
        s: ConvShape::new(g).unwrap(),
        ..Default::default()
    }
}

#[test]
fn param_struct_layouts() {
    use std::mem::size_of;
    // The C mirrors in kernels/conv.cu: 8-byte pointers first, then u32 scalars, no implicit
    // padding (Pod would refuse it).
    assert_eq!(size_of::<ConvShape>(), 40);
    assert_eq!(size_of::<ConvFwdParams>(), 72);
    assert_eq!(size_of::<ConvBwdDataParams>(), 64);
    assert_eq!(size_of::<ConvBwdWeightParams>(), 72);
    assert_eq!(size_of::<ConvReduceParams>(), 24);
    assert_eq!(size_of::<ConvSparseFwdParams>(), 104);
    assert_eq!(size_of::<ConvSparseBwdDataParams>(), 104);
    assert_eq!(size_of::<ConvSparseBwdWeightParams>(), 96);
    assert_eq!(size_of::<ConvBwdBiasParams>(), 24);
    let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    assert_eq!(names.len(), 9, "{names:?}");
}

#[test]
fn dense_forward_both_kernels_match_twin() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(1);
    for (i, &(name, s)) in SHAPES.iter().enumerate() {
        let g = geom(s);
        let x = rng.vec(g.cin * g.n * g.h * g.w);
        let w = rng.vec(g.cout * g.col_rows());
        let b = rng.vec(g.cout);
        let (xb, wb, bb) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&w).unwrap(),
            gpu.upload(&b).unwrap(),
        );
        let p = params_fwd(&g);
        // Alternate with and without bias.
        let bias = (i % 2 == 0).then_some(&b[..]);
        let mut want = vec![0f32; g.cout * g.col_cols()];
        twin::conv_fwd_dense_f32(&p, &x, &w, bias, &mut want);
        let bias_buf = bias.map(|_| &bb);
        for simple in [false, true] {
            let mut y = out_buf(&gpu, want.len());
            if simple {
                conv_fwd_dense_simple(&gpu, &g, &xb, &wb, bias_buf, &mut y).unwrap();
            } else {
                conv_fwd_dense(&gpu, &g, &xb, &wb, bias_buf, &mut y).unwrap();
            }
            let what = format!("fwd dense (simple {simple}) {name}");
            check(&what, &gpu.read::<f32>(&y).unwrap(), &want, g.col_rows());
        }
    }
}

#[test]
fn dense_backward_data_matches_twin() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(2);
    for &(name, s) in SHAPES {
        let g = geom(s);
        let dy = rng.vec(g.cout * g.col_cols());
        let w = rng.vec(g.cout * g.col_rows());
        let p = ConvBwdDataParams {
            s: ConvShape::new(&g).unwrap(),
            ..Default::default()
        };
        let mut want = vec![0f32; g.cin * g.n * g.h * g.w];
        twin::conv_bwd_data_dense_f32(&p, &dy, &w, &mut want);
        let mut dx = out_buf(&gpu, want.len());
        let (dyb, wb) = (gpu.upload(&dy).unwrap(), gpu.upload(&w).unwrap());
        conv_bwd_data_dense(&gpu, &g, &dyb, &wb, &mut dx).unwrap();
        let red = g.cout * g.k * g.k;
        check(
            &format!("bwd data dense {name}"),
            &gpu.read::<f32>(&dx).unwrap(),
            &want,
            red,
        );
    }
}

#[test]
fn dense_backward_weight_matches_twin_with_and_without_splits() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(3);
    for &(name, s) in SHAPES {
        let g = geom(s);
        let x = rng.vec(g.cin * g.n * g.h * g.w);
        let dy = rng.vec(g.cout * g.col_cols());
        let p = ConvBwdWeightParams {
            s: ConvShape::new(&g).unwrap(),
            ..Default::default()
        };
        let mut want = vec![0f32; g.cout * g.col_rows()];
        twin::conv_bwd_weight_dense_f32(&p, &x, &dy, &mut want);
        let (xb, dyb) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
        for splits in [1usize, 3] {
            let mut dw = out_buf(&gpu, want.len());
            let mut work = out_buf(&gpu, conv_bwd_weight_dense_workspace(&g, splits).max(1));
            conv_bwd_weight_dense_split(&gpu, &g, &xb, &dyb, &mut dw, splits, Some(&mut work))
                .unwrap();
            check(
                &format!("bwd weight dense {name}, {splits} splits"),
                &gpu.read::<f32>(&dw).unwrap(),
                &want,
                g.col_cols(),
            );
        }
        // The automatic choice, with its workspace.
        let auto = conv_bwd_weight_dense_splits(&g);
        let mut work = out_buf(&gpu, conv_bwd_weight_dense_workspace(&g, auto).max(1));
        let mut dw = out_buf(&gpu, want.len());
        conv_bwd_weight_dense(&gpu, &g, &xb, &dyb, &mut dw, Some(&mut work)).unwrap();
        check(
            &format!("bwd weight dense {name}, auto"),
            &gpu.read::<f32>(&dw).unwrap(),
            &want,
            g.col_cols(),
        );
    }
}

#[test]
fn dense_backward_weight_long_reduction_auto_splits() {
    // N·OH·OW = 2·24·24 = 1152 ≥ 1024: the automatic choice splits (by_len = 2).
    let gpu = Gpu::emu();
    let mut rng = Lcg(4);
    let g = geom((2, 2, 24, 24, 3, 3, 1, 1));
    let splits = conv_bwd_weight_dense_splits(&g);
    assert!(splits > 1, "expected a split, got {splits}");
    let x = rng.vec(g.cin * g.n * g.h * g.w);
    let dy = rng.vec(g.cout * g.col_cols());
    let p = ConvBwdWeightParams {
        s: ConvShape::new(&g).unwrap(),
        ..Default::default()
    };
    let mut want = vec![0f32; g.cout * g.col_rows()];
    twin::conv_bwd_weight_dense_f32(&p, &x, &dy, &mut want);
    let (xb, dyb) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
    let mut dw = out_buf(&gpu, want.len());
    let mut work = out_buf(&gpu, conv_bwd_weight_dense_workspace(&g, splits));
    conv_bwd_weight_dense(&gpu, &g, &xb, &dyb, &mut dw, Some(&mut work)).unwrap();
    check(
        "bwd weight dense, auto split",
        &gpu.read::<f32>(&dw).unwrap(),
        &want,
        g.col_cols(),
    );
    // Without a workspace: one split, same result.
    let mut dw = out_buf(&gpu, want.len());
    conv_bwd_weight_dense(&gpu, &g, &xb, &dyb, &mut dw, None).unwrap();
    check(
        "bwd weight dense, no workspace",
        &gpu.read::<f32>(&dw).unwrap(),
        &want,
        g.col_cols(),
    );
}

#[test]
fn weight_reduce_matches_twin() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(5);
    let (len, splits) = (300usize, 5usize);
    let partial = rng.vec(len * splits);
    let p = ConvReduceParams {
        len: len as u32,
        splits: splits as u32,
        ..Default::default()
    };
    let mut want = vec![0f32; len];
    twin::conv_bwd_weight_reduce_f32(&p, &partial, &mut want);
    let pb = gpu.upload(&partial).unwrap();
    let out = out_buf(&gpu, len);
    let kp = ConvReduceParams {
        partial: pb.addr(),
        out: out.addr(),
        ..p
    };
    gpu.launch(
        &conv_bwd_weight_reduce_f32,
        rest::device::gpu::LaunchCfg::linear(len, 256),
        &kp,
    )
    .unwrap();
    check("reduce", &gpu.read::<f32>(&out).unwrap(), &want, splits);
}

#[test]
fn bias_gradient_matches_twin() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(6);
    for &(cout, cols) in &[(5usize, 286usize), (10, 5), (3, 1000)] {
        let dy = rng.vec(cout * cols);
        let p = ConvBwdBiasParams {
            cout: cout as u32,
            cols: cols as u32,
            ..Default::default()
        };
        let mut want = vec![0f32; cout];
        twin::conv_bwd_bias_f32(&p, &dy, &mut want);
        let dyb = gpu.upload(&dy).unwrap();
        let mut db = out_buf(&gpu, cout);
        conv_bwd_bias(&gpu, cout, cols, &dyb, &mut db).unwrap();
        check(
            &format!("bias {cout}x{cols}"),
            &gpu.read::<f32>(&db).unwrap(),
            &want,
            cols,
        );
    }
}

/// A random sparse weight at about `density`, with row 1 and column 0 always empty (when they
/// exist) and, at low density, most rows and columns empty too.
fn sparse_weight(rng: &mut Lcg, rows: usize, cols: usize, density: f64) -> SparseWeight {
    let dense = rng.vec(rows * cols);
    let mut mask: Vec<bool> = (0..rows * cols).map(|_| rng.unit() < density).collect();
    for r in 0..rows {
        for c in 0..cols {
            if (r == 1 && rows > 2) || (c == 0 && cols > 2) {
                mask[r * cols + c] = false;
            }
        }
    }
    let w = SparseWeight::from_dense_mask(rows, cols, &dense, &mask);
    w.validate().unwrap();
    w
}

struct DevSparse {
    row_ptr: Buf,
    col_idx: Buf,
    values: Buf,
    col_ptr: Buf,
    csc_row: Buf,
    csc_pos: Buf,
    nnz: usize,
}

impl DevSparse {
    fn new(gpu: &Gpu, w: &SparseWeight) -> Self {
        // Empty arrays still get a (1-element) buffer so addresses stay valid.
        let u = |v: &[u32]| {
            gpu.upload(if v.is_empty() { &[0u32][..] } else { v })
                .unwrap()
        };
        DevSparse {
            row_ptr: u(&w.row_ptr),
            col_idx: u(&w.col_idx),
            values: gpu
                .upload(if w.values.is_empty() {
                    &[0f32][..]
                } else {
                    &w.values
                })
                .unwrap(),
            col_ptr: u(&w.col_ptr),
            csc_row: u(&w.csc_row),
            csc_pos: u(&w.csc_pos),
            nnz: w.nnz(),
        }
    }
    fn bufs(&self) -> SparseBufs<'_> {
        SparseBufs {
            row_ptr: &self.row_ptr,
            col_idx: &self.col_idx,
            values: &self.values,
            col_ptr: &self.col_ptr,
            csc_row: &self.csc_row,
            csc_pos: &self.csc_pos,
            nnz: self.nnz,
        }
    }
}

/// All three sparse kernels on one shape and weight, against their twins.
fn sparse_case(gpu: &Gpu, rng: &mut Lcg, name: &str, g: &ConvGeom, w: &SparseWeight, bias: bool) {
    let s = ConvShape::new(g).unwrap();
    let dev = DevSparse::new(gpu, w);
    let x = rng.vec(g.cin * g.n * g.h * g.w);
    let dy = rng.vec(g.cout * g.col_cols());
    let b = rng.vec(g.cout);
    let (xb, dyb, bb) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&dy).unwrap(),
        gpu.upload(&b).unwrap(),
    );
    let what = format!("{name}, density {:.3}, nnz {}", w.density(), w.nnz());

    // Forward.
    let p = ConvSparseFwdParams {
        s,
        nnz: w.nnz() as u32,
        ..Default::default()
    };
    let mut want = vec![0f32; g.cout * g.col_cols()];
    let bias_s = bias.then_some(&b[..]);
    twin::conv_fwd_sparse_f32(&p, &x, &w.row_ptr, &w.col_idx, &w.values, bias_s, &mut want);
    let mut y = out_buf(gpu, want.len());
    conv_fwd_sparse(gpu, g, &xb, &dev.bufs(), bias.then_some(&bb), &mut y).unwrap();
    check(
        &format!("fwd sparse {what}"),
        &gpu.read::<f32>(&y).unwrap(),
        &want,
        g.col_rows(),
    );

    // Input gradient.
    let p = ConvSparseBwdDataParams {
        s,
        nnz: w.nnz() as u32,
        ..Default::default()
    };
    let mut want = vec![0f32; x.len()];
    twin::conv_bwd_data_sparse_f32(
        &p, &dy, &w.col_ptr, &w.csc_row, &w.csc_pos, &w.values, &mut want,
    );
    let mut dx = out_buf(gpu, want.len());
    conv_bwd_data_sparse(gpu, g, &dyb, &dev.bufs(), &mut dx).unwrap();
    check(
        &format!("bwd data sparse {what}"),
        &gpu.read::<f32>(&dx).unwrap(),
        &want,
        g.cout * g.k * g.k,
    );

    // Weight gradient at the active positions.
    let p = ConvSparseBwdWeightParams {
        s,
        nnz: w.nnz() as u32,
        ..Default::default()
    };
    let mut want = vec![0f32; w.nnz()];
    twin::conv_bwd_weight_sparse_f32(&p, &x, &dy, &w.row_ptr, &w.col_idx, &mut want);
    // One split, and the splits the wrapper picks (with a workspace).
    let splits = conv_bwd_weight_sparse_splits(g).unwrap();
    let mut work = out_buf(
        gpu,
        conv_bwd_weight_sparse_workspace(w.nnz(), splits).max(1),
    );
    for (label, work) in [("one split", None), ("split", Some(&mut work))] {
        let mut dv = out_buf(gpu, w.nnz().max(1));
        conv_bwd_weight_sparse(gpu, g, &xb, &dyb, &dev.bufs(), &mut dv, work).unwrap();
        let got = gpu.read::<f32>(&dv).unwrap();
        check(
            &format!("bwd weight sparse {what}, {label} of {splits}"),
            &got[..w.nnz()],
            &want,
            g.col_cols(),
        );
    }
}

#[test]
fn sparse_kernels_match_twins() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(7);
    for (i, &(name, s)) in SHAPES.iter().enumerate() {
        let g = geom(s);
        for density in [0.3, 0.05] {
            let w = sparse_weight(&mut rng, g.cout, g.col_rows(), density);
            sparse_case(&gpu, &mut rng, name, &g, &w, i % 2 == 1);
        }
    }
}

/// The sparse forward's tiles: several whole images per block, bands of rows of one image (an
/// output plane over 1024 pixels), and bands whose staged window holds a strided 7×7 stem's rows.
#[test]
fn sparse_forward_tiles_of_images_and_of_row_bands_match_twins() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(11);
    let shapes: &[(&str, Shape, (usize, usize))] = &[
        (
            "k3 s1 p1 6x5, images per block",
            (7, 3, 6, 5, 9, 3, 1, 1),
            (6, 7),
        ),
        ("k3 s1 p1 40x36, bands", (2, 2, 40, 36, 9, 3, 1, 1), (28, 1)),
        (
            "k7 s2 p3 70x66, bands",
            (1, 3, 70, 66, 17, 7, 2, 3),
            (31, 1),
        ),
    ];
    for &(name, s, tile) in shapes {
        let g = geom(s);
        assert_eq!(
            rest::device::gpu::kernels::conv::sparse_fwd_tile(&ConvShape::new(&g).unwrap())
                .unwrap(),
            tile,
            "{name}: the tile this test means to cover"
        );
        let w = sparse_weight(&mut rng, g.cout, g.col_rows(), 0.2);
        sparse_case(&gpu, &mut rng, name, &g, &w, true);
    }
}

#[test]
fn sparse_kernels_with_no_active_weight() {
    let gpu = Gpu::emu();
    let mut rng = Lcg(8);
    let g = geom(SHAPES[0].1);
    let w = sparse_weight(&mut rng, g.cout, g.col_rows(), 0.0);
    assert_eq!(w.nnz(), 0);
    sparse_case(&gpu, &mut rng, "empty", &g, &w, true);
}

#[test]
fn sparse_rows_longer_than_one_staging_chunk() {
    // A dense-ish 4×(32·9) weight: rows of ~280 entries exceed the 256-entry staging chunk of the
    // forward kernel, and the weight gradient's 8-entry groups straddle rows.
    let gpu = Gpu::emu();
    let mut rng = Lcg(9);
    let g = geom((1, 32, 5, 6, 4, 3, 1, 1));
    let w = sparse_weight(&mut rng, g.cout, g.col_rows(), 0.97);
    assert!(w.row_ptr[1] > 256, "row 0 has {} entries", w.row_ptr[1]);
    sparse_case(&gpu, &mut rng, "long rows", &g, &w, false);
}

#[test]
fn wrappers_reject_wrong_buffer_sizes() {
    let gpu = Gpu::emu();
    let g = geom(SHAPES[0].1);
    let x = gpu.zeros::<f32>(g.cin * g.n * g.h * g.w).unwrap();
    let w = gpu.zeros::<f32>(g.cout * g.col_rows()).unwrap();
    let mut y_short = gpu.zeros::<f32>(g.cout * g.col_cols() - 1).unwrap();
    let e = conv_fwd_dense(&gpu, &g, &x, &w, None, &mut y_short).unwrap_err();
    assert!(e.to_string().contains("y holds"), "{e}");
    let mut dx = gpu.zeros::<f32>(g.cin * g.n * g.h * g.w).unwrap();
    let e = conv_bwd_data_dense(&gpu, &g, &x, &w, &mut dx).unwrap_err();
    assert!(e.to_string().contains("dy holds"), "{e}");
    let mut dw = gpu.zeros::<f32>(g.cout * g.col_rows()).unwrap();
    let dy = gpu.zeros::<f32>(g.cout * g.col_cols()).unwrap();
    let e = conv_bwd_weight_dense_split(&gpu, &g, &x, &dy, &mut dw, 3, None).unwrap_err();
    assert!(e.to_string().contains("workspace"), "{e}");
    let one = gpu.zeros::<u32>(1).unwrap();
    let bufs = SparseBufs {
        row_ptr: &one,
        col_idx: &one,
        values: &w,
        col_ptr: &one,
        csc_row: &one,
        csc_pos: &one,
        nnz: 0,
    };
    let mut y = gpu.zeros::<f32>(g.cout * g.col_cols()).unwrap();
    let e = conv_fwd_sparse(&gpu, &g, &x, &bufs, None, &mut y).unwrap_err();
    assert!(e.to_string().contains("row_ptr"), "{e}");
}

/// The twins agree with the CPU engine (im2col + GEMM, CSR spmm / spmm_t / sddmm): they share its
/// layouts, so kernels that match the twins match the engine.
#[test]
fn twins_match_cpu_engine() {
    let mut rng = Lcg(10);
    for &(name, s) in SHAPES {
        let g = geom(s);
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let x = rng.vec(g.cin * g.n * g.h * g.w);
        let w = rng.vec(g.cout * rows);
        let b = rng.vec(g.cout);
        let dy = rng.vec(g.cout * cols);
        let shape = ConvShape::new(&g).unwrap();

        let mut col = vec![0f32; rows * cols];
        let mut y = vec![0f32; g.cout * cols];
        cpu_conv::conv2d_forward(&g, &x, &w, Some(&b), &mut col, &mut y);
        let mut ty = vec![0f32; y.len()];
        let p = ConvFwdParams {
            s: shape,
            ..Default::default()
        };
        twin::conv_fwd_dense_f32(&p, &x, &w, Some(&b), &mut ty);
        check(&format!("engine fwd {name}"), &ty, &y, rows);

        let (mut dw, mut db, mut dx) =
            (vec![0f32; w.len()], vec![0f32; g.cout], vec![0f32; x.len()]);
        let mut dcol = vec![0f32; rows * cols];
        cpu_conv::conv2d_backward(
            &g,
            &col,
            &w,
            &dy,
            Some(&mut dw[..]),
            Some(&mut db[..]),
            &mut dcol,
            Some(&mut dx[..]),
        );
        let mut t = vec![0f32; w.len()];
        let pw = ConvBwdWeightParams {
            s: shape,
            ..Default::default()
        };
        twin::conv_bwd_weight_dense_f32(&pw, &x, &dy, &mut t);
        check(&format!("engine dW {name}"), &t, &dw, cols);
        let mut t = vec![0f32; x.len()];
        let pd = ConvBwdDataParams {
            s: shape,
            ..Default::default()
        };
        twin::conv_bwd_data_dense_f32(&pd, &dy, &w, &mut t);
        check(&format!("engine dX {name}"), &t, &dx, g.cout * g.k * g.k);
        let mut t = vec![0f32; g.cout];
        let pb = ConvBwdBiasParams {
            cout: g.cout as u32,
            cols: cols as u32,
            ..Default::default()
        };
        twin::conv_bwd_bias_f32(&pb, &dy, &mut t);
        check(&format!("engine db {name}"), &t, &db, cols);

        // Sparse: spmm over im2col, spmm_t + col2im, sddmm.
        let sw = sparse_weight(&mut rng, g.cout, rows, 0.3);
        let mut y = vec![0f32; g.cout * cols];
        reference::spmm(&sw, &col, cols, &mut y);
        let ps = ConvSparseFwdParams {
            s: shape,
            nnz: sw.nnz() as u32,
            ..Default::default()
        };
        let mut t = vec![0f32; y.len()];
        twin::conv_fwd_sparse_f32(&ps, &x, &sw.row_ptr, &sw.col_idx, &sw.values, None, &mut t);
        check(&format!("engine sparse fwd {name}"), &t, &y, rows);
        reference::spmm_t(&sw, &dy, cols, &mut dcol);
        cpu_conv::col2im(&g, &dcol, &mut dx);
        let pds = ConvSparseBwdDataParams {
            s: shape,
            nnz: sw.nnz() as u32,
            ..Default::default()
        };
        let mut t = vec![0f32; x.len()];
        twin::conv_bwd_data_sparse_f32(
            &pds,
            &dy,
            &sw.col_ptr,
            &sw.csc_row,
            &sw.csc_pos,
            &sw.values,
            &mut t,
        );
        check(
            &format!("engine sparse dX {name}"),
            &t,
            &dx,
            g.cout * g.k * g.k,
        );
        let mut gv = vec![0f32; sw.nnz()];
        reference::sddmm(&sw, &dy, &col, cols, &mut gv);
        let pws = ConvSparseBwdWeightParams {
            s: shape,
            nnz: sw.nnz() as u32,
            ..Default::default()
        };
        let mut t = vec![0f32; sw.nnz()];
        twin::conv_bwd_weight_sparse_f32(&pws, &x, &dy, &sw.row_ptr, &sw.col_idx, &mut t);
        check(&format!("engine sparse dW {name}"), &t, &gv, cols);
    }
}
