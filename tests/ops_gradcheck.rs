//! Proof of the CPU kernels: known values computed by hand, comparisons with naive f64
//! reference loops, and central-difference gradient checks of every backward pass.
//!
//! Gradient checks: loss = Σ y·r for a fixed random projection r (so every output element
//! contributes), differentiated numerically in f64 over the f32 ops by central differences
//! (L(x + ε) − L(x − ε)) / (2ε), and compared with the analytic gradient by the norm-wise
//! relative error ‖g_num − g_ana‖₂ / ‖g_num‖₂. The stated tolerance is `GRAD_TOL` = 1e-2 for
//! every op; linear ops (conv, pooling, add) get `LINEAR_TOL` = 2e-3 since central differences
//! are exact for them up to f32 rounding.

use rest::device::cpu::conv::{
    col2im, conv2d_backward, conv2d_forward, im2col, transpose, ConvGeom,
};
use rest::device::cpu::elementwise::{add_forward, relu_backward, relu_forward};
use rest::device::cpu::gemm::matmul;
use rest::device::cpu::norm::{
    batchnorm_backward, batchnorm_eval_forward_with, batchnorm_relu_backward,
    batchnorm_relu_train_forward, batchnorm_train_forward, BnGradIn, BnIn, BwdOut, TrainFwdOut,
};
use rest::device::cpu::pool::{
    global_avgpool_backward, global_avgpool_forward, maxpool_backward_chwn, maxpool_forward_chwn,
    pool_out,
};
use rest::device::cpu::xent::cross_entropy;
use rest::rng::Rng;

/// Relative tolerance of the gradient checks of non-linear ops (batchnorm, cross-entropy,
/// relu, maxpool): ‖g_num − g_ana‖₂ ≤ 1e-2·‖g_num‖₂.
const GRAD_TOL: f64 = 1e-2;
/// Relative tolerance for ops that are linear in the checked input (conv, avgpool, add).
const LINEAR_TOL: f64 = 2e-3;

// ---------------------------------------------------------------------------------------------
// helpers

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Σ y·r in f64.
fn project(y: &[f32], r: &[f32]) -> f64 {
    assert_eq!(y.len(), r.len());
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central-difference gradient of `loss` at `x`, one coordinate at a time. The step actually
/// taken in f32 (x + ε and x − ε rounded) is used as the denominator.
fn numeric_grad(x: &[f32], eps: f32, loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let (hi, lo) = (x[i] + eps, x[i] - eps);
            xp[i] = hi;
            let lp = loss(&xp);
            xp[i] = lo;
            let lm = loss(&xp);
            xp[i] = x[i];
            (lp - lm) / (hi as f64 - lo as f64)
        })
        .collect()
}

/// Asserts ‖num − ana‖₂ ≤ tol·‖num‖₂ (‖num‖₂ floored at 1e-6 so an all-zero gradient is
/// compared absolutely).
fn assert_grad_close(name: &str, ana: &[f32], num: &[f64], tol: f64) {
    assert_eq!(ana.len(), num.len(), "{name}: length");
    let diff: f64 = ana
        .iter()
        .zip(num)
        .map(|(&a, &n)| (a as f64 - n).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = num.iter().map(|n| n * n).sum::<f64>().sqrt().max(1e-6);
    let rel = diff / norm;
    assert!(rel <= tol, "{name}: relative gradient error {rel:.3e} > {tol:.0e} (‖num‖ = {norm:.3e})\nanalytic {ana:?}\nnumeric  {num:?}");
}

/// Asserts |a − b| ≤ atol + rtol·|b| elementwise.
fn assert_close(name: &str, a: &[f32], b: &[f64], atol: f64, rtol: f64) {
    assert_eq!(a.len(), b.len(), "{name}: length");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let err = (x as f64 - y).abs();
        assert!(
            err <= atol + rtol * y.abs(),
            "{name}[{i}]: got {x}, want {y} (error {err:.3e})"
        );
    }
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------------------------------------
// convolution: references

/// Direct 7-loop convolution in f64: y[co, n, oh, ow].
fn naive_conv(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f64> {
    let mut y = vec![0f64; g.cout * g.n * g.oh * g.ow];
    for co in 0..g.cout {
        for n in 0..g.n {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let mut s = b.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..g.cin {
                        for kh in 0..g.k {
                            for kw in 0..g.k {
                                let ih = (oh * g.stride + kh) as isize - g.pad as isize;
                                let iw = (ow * g.stride + kw) as isize - g.pad as isize;
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((ci * g.n + n) * g.h + ih as usize) * g.w + iw as usize]
                                    as f64;
                                s += xv * w[((co * g.cin + ci) * g.k + kh) * g.k + kw] as f64;
                            }
                        }
                    }
                    y[((co * g.n + n) * g.oh + oh) * g.ow + ow] = s;
                }
            }
        }
    }
    y
}

/// Direct backward in f64: (dx, dw, db) for the upstream gradient dy.
fn naive_conv_backward(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; w.len()];
    let mut db = vec![0f64; g.cout];
    for co in 0..g.cout {
        for n in 0..g.n {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let d = dy[((co * g.n + n) * g.oh + oh) * g.ow + ow] as f64;
                    db[co] += d;
                    for ci in 0..g.cin {
                        for kh in 0..g.k {
                            for kw in 0..g.k {
                                let ih = (oh * g.stride + kh) as isize - g.pad as isize;
                                let iw = (ow * g.stride + kw) as isize - g.pad as isize;
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xi = ((ci * g.n + n) * g.h + ih as usize) * g.w + iw as usize;
                                let wi = ((co * g.cin + ci) * g.k + kh) * g.k + kw;
                                dx[xi] += w[wi] as f64 * d;
                                dw[wi] += x[xi] as f64 * d;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

fn conv(g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let mut col = vec![0f32; g.col_rows() * g.col_cols()];
    let mut y = vec![0f32; g.cout * g.col_cols()];
    conv2d_forward(g, x, w, b, &mut col, &mut y);
    y
}

/// (n, cin, h, w, cout, k, stride, pad, bias): ragged sizes, strides 1–3, pads 0/1/3,
/// kernels 1/3/4/7, and ones large enough to take the rayon paths (col ≥ 2¹⁵ floats, GEMM
/// > 64³ multiply-adds) and both weight-gradient orientations.
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize, bool);
/// The eight arguments of `ConvGeom::new`.
type ConvArgs = (usize, usize, usize, usize, usize, usize, usize, usize);

const GEOMS: &[ConvCase] = &[
    (2, 3, 7, 9, 5, 3, 1, 1, true),
    (1, 2, 5, 5, 3, 1, 1, 0, false),
    (3, 4, 9, 7, 6, 3, 2, 1, true),
    (2, 3, 11, 10, 4, 7, 2, 3, false),
    (2, 2, 8, 8, 3, 4, 2, 1, true),
    (1, 3, 6, 5, 2, 4, 1, 3, true),
    (2, 1, 13, 13, 2, 7, 1, 3, false),
    (1, 5, 1, 1, 3, 1, 1, 0, true),
    (2, 3, 3, 3, 2, 3, 1, 0, false),
    (2, 2, 5, 6, 3, 3, 3, 0, true),
    (3, 3, 9, 11, 4, 1, 2, 0, false),
    (4, 8, 16, 15, 16, 3, 1, 1, true),
    // cols ≥ 512 and rows ≥ 128: the weight gradient's transposed GEMM + tiled transpose.
    (2, 16, 16, 16, 40, 3, 1, 1, false),
];

// ---------------------------------------------------------------------------------------------
// convolution: tests

#[test]
fn conv_geom_rejects_impossible_shapes() {
    assert!(ConvGeom::new(2, 3, 8, 8, 4, 3, 1, 1).is_ok());
    let cases: &[(ConvArgs, &str)] = &[
        ((0, 3, 8, 8, 4, 3, 1, 1), "batch"),
        ((2, 0, 8, 8, 4, 3, 1, 1), "input channels"),
        ((2, 3, 0, 8, 4, 3, 1, 1), "empty input"),
        ((2, 3, 8, 0, 4, 3, 1, 1), "empty input"),
        ((2, 3, 8, 8, 0, 3, 1, 1), "output channels"),
        ((2, 3, 8, 8, 4, 0, 1, 1), "kernel size is 0"),
        ((2, 3, 8, 8, 4, 3, 0, 1), "stride"),
        ((2, 3, 4, 8, 4, 7, 1, 1), "larger than the padded"),
        ((2, 3, 8, 2, 4, 3, 1, 0), "larger than the padded"),
    ];
    for &((n, cin, h, w, cout, k, s, p), what) in cases {
        let err = ConvGeom::new(n, cin, h, w, cout, k, s, p).expect_err(what);
        let msg = format!("{err:#}");
        assert!(
            msg.contains(what),
            "error '{msg}' does not mention '{what}'"
        );
    }
    // Exactly fitting: kernel = padded input gives a 1x1 output.
    let g = ConvGeom::new(1, 1, 3, 3, 1, 5, 1, 1).unwrap();
    assert_eq!((g.oh, g.ow), (1, 1));
}

#[test]
fn conv_known_values() {
    // x = 1..9 as a 3x3 plane, w = [[1, 2], [3, 4]].
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let w = [1.0, 2.0, 3.0, 4.0];

    // Stride 1, no padding: 2x2 output, e.g. y[0,0] = 1·1 + 2·2 + 4·3 + 5·4 = 37.
    let g = ConvGeom::new(1, 1, 3, 3, 1, 2, 1, 0).unwrap();
    assert_eq!((g.oh, g.ow), (2, 2));
    assert_eq!(conv(&g, &x, &w, None), vec![37.0, 47.0, 67.0, 77.0]);
    assert_eq!(conv(&g, &x, &w, Some(&[0.5])), vec![37.5, 47.5, 67.5, 77.5]);

    // Stride 2, padding 1: windows start at (−1,−1), (−1,1), (1,−1), (1,1):
    //   y[0,0] = 1·4 = 4;  y[0,1] = 2·3 + 3·4 = 18;  y[1,0] = 4·2 + 7·4 = 36;
    //   y[1,1] = 5·1 + 6·2 + 8·3 + 9·4 = 77.
    let g = ConvGeom::new(1, 1, 3, 3, 1, 2, 2, 1).unwrap();
    assert_eq!((g.oh, g.ow), (2, 2));
    assert_eq!(conv(&g, &x, &w, None), vec![4.0, 18.0, 36.0, 77.0]);

    // Two output channels, two images: channel-major output [cout, n, oh, ow].
    let g = ConvGeom::new(2, 1, 3, 3, 2, 2, 1, 0).unwrap();
    let x2: Vec<f32> = x.iter().copied().chain([0.0; 9]).collect();
    let w2 = [1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0];
    let y = conv(&g, &x2, &w2, Some(&[0.0, 1.0]));
    assert_eq!(
        y,
        vec![37.0, 47.0, 67.0, 77.0, 0.0, 0.0, 0.0, 0.0, 2.0, 3.0, 5.0, 6.0, 1.0, 1.0, 1.0, 1.0]
    );
}

#[test]
fn conv_forward_and_backward_match_direct_loops() {
    let mut rng = Rng::new(11);
    for &(n, cin, h, w, cout, k, s, p, has_bias) in GEOMS {
        let g = ConvGeom::new(n, cin, h, w, cout, k, s, p).unwrap();
        let x = randn(&mut rng, cin * n * h * w);
        let wt = randn(&mut rng, cout * cin * k * k);
        let b = randn(&mut rng, cout);
        let bias = has_bias.then_some(&b[..]);
        let tag = format!("{g:?} bias={has_bias}");

        let mut col = vec![f32::NAN; g.col_rows() * g.col_cols()];
        let mut y = vec![f32::NAN; cout * g.col_cols()];
        conv2d_forward(&g, &x, &wt, bias, &mut col, &mut y);
        // f32 accumulation over cin·k·k ≤ 72 terms of unit size.
        assert_close(
            &format!("conv y {tag}"),
            &y,
            &naive_conv(&g, &x, &wt, bias),
            1e-4,
            1e-4,
        );

        let dy = randn(&mut rng, y.len());
        let (mut dw, mut db) = (vec![f32::NAN; wt.len()], vec![f32::NAN; cout]);
        let (mut dcol, mut dx) = (vec![f32::NAN; col.len()], vec![f32::NAN; x.len()]);
        conv2d_backward(
            &g,
            &col,
            &wt,
            &dy,
            Some(&mut dw),
            Some(&mut db),
            &mut dcol,
            Some(&mut dx),
        );
        let (rdx, rdw, rdb) = naive_conv_backward(&g, &x, &wt, &dy);
        // dw and db sum over n·oh·ow ≤ 960 terms.
        assert_close(&format!("conv dx {tag}"), &dx, &rdx, 1e-4, 1e-4);
        assert_close(&format!("conv dw {tag}"), &dw, &rdw, 1e-3, 1e-4);
        assert_close(&format!("conv db {tag}"), &db, &rdb, 1e-3, 1e-4);

        // Each gradient is optional and computed alone just the same.
        let mut dx2 = vec![f32::NAN; x.len()];
        conv2d_backward(&g, &col, &wt, &dy, None, None, &mut dcol, Some(&mut dx2));
        assert_eq!(dx, dx2, "dx alone {tag}");
        let mut dw2 = vec![f32::NAN; wt.len()];
        conv2d_backward(&g, &col, &wt, &dy, Some(&mut dw2), None, &mut dcol, None);
        assert_eq!(dw, dw2, "dw alone {tag}");
    }
}

#[test]
fn transpose_matches_index_swap() {
    // Ragged sizes around the 32-wide tiles, and one large enough for the parallel path.
    let mut rng = Rng::new(5);
    for &(r, c) in &[(1, 1), (1, 7), (9, 1), (31, 33), (70, 45), (300, 130)] {
        let src = randn(&mut rng, r * c);
        let mut dst = vec![f32::NAN; r * c];
        transpose(&src, r, c, &mut dst);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(dst[j * r + i], src[i * c + j], "{r}x{c} at ({i}, {j})");
            }
        }
    }
}

#[test]
fn col2im_is_the_adjoint_of_im2col() {
    // ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for every geometry.
    let mut rng = Rng::new(5);
    for &(n, cin, h, w, cout, k, s, p, _) in GEOMS {
        let g = ConvGeom::new(n, cin, h, w, cout, k, s, p).unwrap();
        let x = randn(&mut rng, cin * n * h * w);
        let c = randn(&mut rng, g.col_rows() * g.col_cols());
        let mut col = vec![f32::NAN; c.len()];
        im2col(&g, &x, &mut col);
        let mut dx = vec![f32::NAN; x.len()];
        col2im(&g, &c, &mut dx);
        let (lhs, rhs) = (project(&col, &c), project(&x, &dx));
        assert!(
            (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
            "{g:?}: {lhs} vs {rhs}"
        );
    }
}

#[test]
fn conv_gradcheck() {
    let mut rng = Rng::new(7);
    // Two small ragged geometries (each numeric gradient costs two forwards per entry).
    for &(n, cin, h, w, cout, k, s, p) in &[(2, 3, 5, 6, 4, 3, 2, 1), (1, 2, 6, 5, 3, 4, 1, 2)] {
        let g = ConvGeom::new(n, cin, h, w, cout, k, s, p).unwrap();
        let x = randn(&mut rng, cin * n * h * w);
        let wt = randn(&mut rng, cout * cin * k * k);
        let b = randn(&mut rng, cout);
        let r = randn(&mut rng, cout * g.col_cols());

        let mut col = vec![0f32; g.col_rows() * g.col_cols()];
        let mut y = vec![0f32; r.len()];
        conv2d_forward(&g, &x, &wt, Some(&b), &mut col, &mut y);
        let (mut dw, mut db, mut dcol, mut dx) = (
            vec![0f32; wt.len()],
            vec![0f32; cout],
            vec![0f32; col.len()],
            vec![0f32; x.len()],
        );
        // dL/dy = r for L = Σ y·r.
        conv2d_backward(
            &g,
            &col,
            &wt,
            &r,
            Some(&mut dw),
            Some(&mut db),
            &mut dcol,
            Some(&mut dx),
        );

        let eps = 1e-2;
        let num_dx = numeric_grad(&x, eps, |x| project(&conv(&g, x, &wt, Some(&b)), &r));
        let num_dw = numeric_grad(&wt, eps, |wt| project(&conv(&g, &x, wt, Some(&b)), &r));
        let num_db = numeric_grad(&b, eps, |b| project(&conv(&g, &x, &wt, Some(b)), &r));
        assert_grad_close("conv dx", &dx, &num_dx, LINEAR_TOL);
        assert_grad_close("conv dw", &dw, &num_dw, LINEAR_TOL);
        assert_grad_close("conv db", &db, &num_db, LINEAR_TOL);
    }
}

// ---------------------------------------------------------------------------------------------
// matmul

#[allow(clippy::too_many_arguments)]
fn naive_matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
) -> (Vec<f64>, Vec<f64>) {
    // Returns the product and Σ|a·b| per entry (the scale of its rounding error).
    let mut c = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let av = if a_t { a[p * m + i] } else { a[i * k + p] } as f64;
                let bv = if b_t { b[j * k + p] } else { b[p * n + j] } as f64;
                c[i * n + j] += av * bv;
                mag[i * n + j] += (av * bv).abs();
            }
        }
    }
    (c, mag)
}

#[test]
fn matmul_matches_triple_loop() {
    let mut rng = Rng::new(3);
    // (m, k, n): ragged, degenerate, two above 64³ multiply-adds (the rayon path), and two
    // long reductions.
    let sizes = [
        (1, 1, 1),
        (3, 5, 7),
        (17, 33, 9),
        (65, 1, 70),
        (1, 40, 1),
        (8, 0, 5),
        (130, 77, 129),
        (96, 300, 33),
        // Long reductions into small outputs: the split-k path (k ≥ 4096 per thread), with a
        // ragged last slice.
        (6, 9001, 5),
        (4, 70001, 3),
    ];
    for &(m, k, n) in &sizes {
        for a_t in [false, true] {
            for b_t in [false, true] {
                for accumulate in [false, true] {
                    let a = randn(&mut rng, m * k);
                    let b = randn(&mut rng, k * n);
                    let c0 = randn(&mut rng, m * n);
                    let mut c = c0.clone();
                    matmul(m, k, n, &a, a_t, &b, b_t, &mut c, accumulate);
                    let (mut want, mag) = naive_matmul(m, k, n, &a, a_t, &b, b_t);
                    if accumulate {
                        want.iter_mut().zip(&c0).for_each(|(w, &c)| *w += c as f64);
                    }
                    for i in 0..m * n {
                        // f32 rounding: a few ulps of the magnitude of the summed products.
                        let tol = 1e-5 + 1e-6 * (mag[i] + c0[i].abs() as f64) * (k as f64).sqrt();
                        let err = (c[i] as f64 - want[i]).abs();
                        assert!(err <= tol, "m={m} k={k} n={n} a_t={a_t} b_t={b_t} acc={accumulate} [{i}]: {} vs {} ", c[i], want[i]);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// batch normalisation

/// What one training forward of batch norm leaves (running statistics from mean 0, variance 1;
/// ε 1e-5, momentum 0.1).
struct BnFwd {
    y: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

/// Batch norm's training forward, fused with a ReLU or not.
fn bn_forward(relu: bool, fwd: BnIn) -> BnFwd {
    let (c, m) = (fwd.c, fwd.m);
    let mut f = BnFwd {
        y: vec![0f32; c * m],
        mean: vec![0f32; c],
        invstd: vec![0f32; c],
        running_mean: vec![0f32; c],
        running_var: vec![1f32; c],
    };
    let o = TrainFwdOut {
        running_mean: &mut f.running_mean,
        running_var: &mut f.running_var,
        y: &mut f.y,
        save_mean: &mut f.mean,
        save_invstd: &mut f.invstd,
    };
    if relu {
        batchnorm_relu_train_forward(fwd, 1e-5, 0.1, o);
    } else {
        batchnorm_train_forward(fwd, 1e-5, 0.1, o);
    }
    f
}

/// Batch norm's backward (fused with a ReLU or not) from a forward's saved statistics: (dx,
/// dgamma, dbeta).
fn bn_backward(
    relu: bool,
    fwd: BnIn,
    mean: &[f32],
    invstd: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (c, m) = (fwd.c, fwd.m);
    let (mut dx, mut dg, mut db) = (vec![0f32; c * m], vec![0f32; c], vec![0f32; c]);
    let g = BnGradIn {
        fwd,
        save_mean: mean,
        save_invstd: invstd,
        dy,
    };
    let o = BwdOut {
        dx: &mut dx,
        dgamma: &mut dg,
        dbeta: &mut db,
    };
    if relu {
        batchnorm_relu_backward(g, o);
    } else {
        batchnorm_backward(g, o);
    }
    (dx, dg, db)
}

fn bn_train(
    c: usize,
    m: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let f = bn_forward(false, BnIn::new(c, m, x, gamma, beta));
    (f.y, f.mean, f.invstd)
}

#[test]
fn batchnorm_known_values() {
    // Channel 0: x = [1, 2, 3, 4], gamma 1, beta 0: mean 2.5, biased var 1.25, unbiased 5/3.
    // Channel 1: x = [2, 4, 6, 8], gamma 2, beta 1: mean 5, biased var 5, unbiased 20/3.
    let (c, m, eps) = (2, 4, 1e-5f64);
    let x = [1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0];
    let (gamma, beta) = ([1.0, 2.0], [0.0, 1.0]);
    let (mut rm, mut rv) = (vec![0.0f32, 1.0], vec![1.0f32, 2.0]);
    let (mut y, mut mean, mut invstd) = (vec![0f32; 8], vec![0f32; 2], vec![0f32; 2]);
    let o = TrainFwdOut {
        running_mean: &mut rm,
        running_var: &mut rv,
        y: &mut y,
        save_mean: &mut mean,
        save_invstd: &mut invstd,
    };
    batchnorm_train_forward(BnIn::new(c, m, &x, &gamma, &beta), eps as f32, 0.1, o);

    let (i0, i1) = (1.0 / (1.25 + eps).sqrt(), 1.0 / (5.0 + eps).sqrt());
    assert_close("mean", &mean, &[2.5, 5.0], 1e-6, 1e-6);
    assert_close("invstd", &invstd, &[i0, i1], 1e-6, 1e-6);
    let want: Vec<f64> = [-1.5, -0.5, 0.5, 1.5]
        .iter()
        .map(|d| d * i0)
        .chain([-3.0, -1.0, 1.0, 3.0].iter().map(|d| 2.0 * d * i1 + 1.0))
        .collect();
    assert_close("y", &y, &want, 1e-5, 1e-5);
    // r = 0.9·r + 0.1·batch, with the unbiased variance.
    assert_close("running_mean", &rm, &[0.25, 0.9 + 0.5], 1e-6, 1e-6);
    assert_close(
        "running_var",
        &rv,
        &[0.9 + 0.1 * 5.0 / 3.0, 1.8 + 0.1 * 20.0 / 3.0],
        1e-6,
        1e-6,
    );

    // Eval mode uses the running statistics: y = gamma·(x − rm)/sqrt(rv + eps) + beta.
    let (rm, rv) = ([1.0f32, -1.0], [4.0f32, 0.25]);
    let mut ye = vec![0f32; 8];
    batchnorm_eval_forward_with(
        false,
        BnIn::new(c, m, &x, &gamma, &beta),
        &rm,
        &rv,
        0.0,
        &mut ye,
    );
    assert_close(
        "eval y",
        &ye,
        &[0.0, 0.5, 1.0, 1.5, 13.0, 21.0, 29.0, 37.0],
        1e-6,
        1e-6,
    );
}

#[test]
fn batchnorm_gradcheck() {
    let mut rng = Rng::new(13);
    let (c, m) = (3, 10);
    // Channels with different offsets and spreads.
    let x: Vec<f32> = (0..c * m)
        .map(|i| rng.normal() * (1.0 + (i / m) as f32) + (i / m) as f32)
        .collect();
    let gamma: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
    let beta = randn(&mut rng, c);
    let r = randn(&mut rng, c * m);

    let (_, mean, invstd) = bn_train(c, m, &x, &gamma, &beta);
    let fwd = BnIn::new(c, m, &x, &gamma, &[]);
    let (dx, dg, db) = bn_backward(false, fwd, &mean, &invstd, &r);

    // ε = 1e-2 on unit-scale inputs: truncation error O(ε²) ≪ GRAD_TOL.
    let eps = 1e-2;
    let num_dx = numeric_grad(&x, eps, |x| {
        project(&bn_train(c, m, x, &gamma, &beta).0, &r)
    });
    let num_dg = numeric_grad(&gamma, eps, |g| {
        project(&bn_train(c, m, &x, g, &beta).0, &r)
    });
    let num_db = numeric_grad(&beta, eps, |b| {
        project(&bn_train(c, m, &x, &gamma, b).0, &r)
    });
    assert_grad_close("batchnorm dx", &dx, &num_dx, GRAD_TOL);
    assert_grad_close("batchnorm dgamma", &dg, &num_dg, GRAD_TOL);
    assert_grad_close("batchnorm dbeta", &db, &num_db, GRAD_TOL);
}

#[test]
fn batchnorm_large_matches_f64_reference() {
    // c·m above the parallel threshold, with a large mean offset to stress precision.
    let mut rng = Rng::new(17);
    let (c, m) = (4, 12_345);
    let x: Vec<f32> = (0..c * m)
        .map(|i| 3.0 * (i / m) as f32 + 10.0 + 0.5 * rng.normal())
        .collect();
    let gamma: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
    let beta = randn(&mut rng, c);
    let dy = randn(&mut rng, c * m);
    let eps = 1e-5f32; // bn_forward's
    let BnFwd {
        y,
        mean,
        invstd,
        running_var: rv,
        ..
    } = bn_forward(false, BnIn::new(c, m, &x, &gamma, &beta));
    let fwd = BnIn::new(c, m, &x, &gamma, &[]);
    let (dx, dg, db) = bn_backward(false, fwd, &mean, &invstd, &dy);

    for ci in 0..c {
        let xc = to_f64(&x[ci * m..][..m]);
        let dyc = to_f64(&dy[ci * m..][..m]);
        let mu = xc.iter().sum::<f64>() / m as f64;
        let var = xc.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / m as f64;
        let is = 1.0 / (var + eps as f64).sqrt();
        let xhat: Vec<f64> = xc.iter().map(|v| (v - mu) * is).collect();
        let g = gamma[ci] as f64;
        let ry: Vec<f64> = xhat.iter().map(|h| g * h + beta[ci] as f64).collect();
        let rdb: f64 = dyc.iter().sum();
        let rdg: f64 = dyc.iter().zip(&xhat).map(|(d, h)| d * h).sum();
        let rdx: Vec<f64> = dyc
            .iter()
            .zip(&xhat)
            .map(|(d, h)| g * is * (d - rdb / m as f64 - h * rdg / m as f64))
            .collect();
        assert_close("mean", &mean[ci..ci + 1], &[mu], 1e-5, 1e-6);
        assert_close("invstd", &invstd[ci..ci + 1], &[is], 1e-5, 1e-4);
        assert_close(
            "running_var",
            &rv[ci..ci + 1],
            &[0.9 + 0.1 * var * m as f64 / (m - 1) as f64],
            1e-5,
            1e-4,
        );
        assert_close("y", &y[ci * m..][..m], &ry, 1e-4, 1e-4);
        assert_close("dx", &dx[ci * m..][..m], &rdx, 1e-4, 1e-3);
        assert_close("dgamma", &dg[ci..ci + 1], &[rdg], 1e-2, 1e-4);
        assert_close("dbeta", &db[ci..ci + 1], &[rdb], 1e-2, 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------
// elementwise

#[test]
fn relu_gradcheck() {
    let mut rng = Rng::new(19);
    // Keep every input at least 0.05 away from the kink at 0 so ±ε never crosses it.
    let x: Vec<f32> = (0..40)
        .map(|_| loop {
            let v = rng.normal();
            if v.abs() > 0.05 {
                break v;
            }
        })
        .collect();
    let r = randn(&mut rng, x.len());
    let relu = |x: &[f32]| {
        let mut y = vec![0f32; x.len()];
        relu_forward(x, &mut y);
        y
    };
    let y = relu(&x);
    assert!(y.iter().zip(&x).all(|(&y, &x)| y == x.max(0.0)));
    let mut dx = vec![f32::NAN; x.len()];
    relu_backward(&y, &r, &mut dx);
    let num = numeric_grad(&x, 1e-3, |x| project(&relu(x), &r));
    assert_grad_close("relu dx", &dx, &num, GRAD_TOL);
}

#[test]
fn add_gradcheck() {
    let mut rng = Rng::new(23);
    let (a, b, r) = (
        randn(&mut rng, 30),
        randn(&mut rng, 30),
        randn(&mut rng, 30),
    );
    let add = |a: &[f32], b: &[f32]| {
        let mut y = vec![0f32; a.len()];
        add_forward(a, b, &mut y);
        y
    };
    assert!(add(&a, &b)
        .iter()
        .zip(a.iter().zip(&b))
        .all(|(&y, (&a, &b))| y == a + b));
    // The backward of y = a + b passes dy to both inputs: da = db = r.
    let num_a = numeric_grad(&a, 1e-2, |a| project(&add(a, &b), &r));
    let num_b = numeric_grad(&b, 1e-2, |b| project(&add(&a, b), &r));
    assert_grad_close("add da", &r, &num_a, LINEAR_TOL);
    assert_grad_close("add db", &r, &num_b, LINEAR_TOL);
}

#[test]
fn elementwise_large_parallel_path() {
    let mut rng = Rng::new(29);
    let n = (1 << 17) + 123;
    let (a, b, dy) = (randn(&mut rng, n), randn(&mut rng, n), randn(&mut rng, n));
    let mut y = vec![f32::NAN; n];
    relu_forward(&a, &mut y);
    assert!(y.iter().zip(&a).all(|(&y, &a)| y == a.max(0.0)));
    let mut dx = vec![f32::NAN; n];
    relu_backward(&y, &dy, &mut dx);
    assert!(dx
        .iter()
        .zip(&y)
        .zip(&dy)
        .all(|((&d, &y), &g)| d == if y > 0.0 { g } else { 0.0 }));
    add_forward(&a, &b, &mut y);
    assert!(y
        .iter()
        .zip(a.iter().zip(&b))
        .all(|(&y, (&a, &b))| y == a + b));
}

// ---------------------------------------------------------------------------------------------
// pooling

fn maxpool(
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    x: &[f32],
) -> (Vec<f32>, Vec<u32>) {
    let (oh, ow) = (pool_out(h, k, s, p), pool_out(w, k, s, p));
    let (mut y, mut a) = (
        vec![f32::NAN; planes * oh * ow],
        vec![0u32; planes * oh * ow],
    );
    maxpool_forward_chwn(planes, h, w, 1, k, s, p, x, &mut y, &mut a);
    (y, a)
}

/// Naive max-pool: the maximum over each clipped window.
fn naive_maxpool(
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    x: &[f32],
) -> Vec<f32> {
    let (oh, ow) = (pool_out(h, k, s, p), pool_out(w, k, s, p));
    let mut y = vec![f32::NEG_INFINITY; planes * oh * ow];
    for pl in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = (
                            (oy * s + ky) as isize - p as isize,
                            (ox * s + kx) as isize - p as isize,
                        );
                        if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                            let v = x[(pl * h + iy as usize) * w + ix as usize];
                            let o = &mut y[(pl * oh + oy) * ow + ox];
                            *o = o.max(v);
                        }
                    }
                }
            }
        }
    }
    y
}

#[test]
fn maxpool_known_values() {
    // 4x4 plane, 2x2 windows, stride 2.
    #[rustfmt::skip]
    let x = [
        1.0, 5.0, 2.0, 0.0,
        3.0, 4.0, 8.0, 7.0,
        -1.0, -2.0, 6.0, 6.0,
        -3.0, -0.5, 6.0, 1.0,
    ];
    let (y, a) = maxpool(1, 4, 4, 2, 2, 0, &x);
    assert_eq!(y, vec![5.0, 8.0, -0.5, 6.0]);
    // The tie of three 6s: the first in scan order (index 10) wins.
    assert_eq!(a, vec![1, 6, 13, 10]);
    let mut dx = vec![f32::NAN; 16];
    maxpool_backward_chwn(1, 16, &[1.0, 2.0, 3.0, 4.0], &a, &mut dx);
    let mut want = vec![0f32; 16];
    (want[1], want[6], want[13], want[10]) = (1.0, 2.0, 3.0, 4.0);
    assert_eq!(dx, want);

    // ResNet stem pooling (k 3, stride 2, pad 1) over the same plane: padding never wins even
    // when all values are negative.
    let neg: Vec<f32> = x.iter().map(|v| -v.abs() - 1.0).collect();
    let (y, a) = maxpool(1, 4, 4, 3, 2, 1, &neg);
    assert_eq!(y, naive_maxpool(1, 4, 4, 3, 2, 1, &neg));
    assert!(a.iter().zip(&y).all(|(&i, &v)| neg[i as usize] == v));
}

#[test]
fn maxpool_matches_naive_large() {
    let mut rng = Rng::new(31);
    for &(planes, h, w, k, s, p) in &[
        (32, 33, 31, 3, 2, 1),
        (40, 30, 30, 2, 2, 0),
        (3, 7, 5, 3, 1, 1),
    ] {
        let x = randn(&mut rng, planes * h * w);
        let (y, a) = maxpool(planes, h, w, k, s, p, &x);
        assert_eq!(
            y,
            naive_maxpool(planes, h, w, k, s, p, &x),
            "planes={planes} {h}x{w} k={k} s={s} p={p}"
        );
        let (oh, ow) = (pool_out(h, k, s, p), pool_out(w, k, s, p));
        for (i, &ai) in a.iter().enumerate() {
            assert_eq!(x[(i / (oh * ow)) * h * w + ai as usize], y[i]);
        }
    }
}

#[test]
fn maxpool_gradcheck() {
    let mut rng = Rng::new(37);
    for &(planes, h, w, k, s, p) in &[(2, 5, 6, 3, 2, 1), (3, 4, 4, 2, 2, 0), (1, 6, 5, 3, 1, 1)] {
        // Distinct values 0.05 apart (shuffled) so ±ε = 1e-3 never changes any argmax.
        let n = planes * h * w;
        let mut x: Vec<f32> = (0..n).map(|i| 0.05 * i as f32 - 1.0).collect();
        rng.shuffle(&mut x);
        let (oh, ow) = (pool_out(h, k, s, p), pool_out(w, k, s, p));
        let r = randn(&mut rng, planes * oh * ow);
        let (_, a) = maxpool(planes, h, w, k, s, p, &x);
        let mut dx = vec![f32::NAN; n];
        maxpool_backward_chwn(1, h * w, &r, &a, &mut dx);
        let num = numeric_grad(&x, 1e-3, |x| {
            project(&maxpool(planes, h, w, k, s, p, x).0, &r)
        });
        assert_grad_close("maxpool dx", &dx, &num, GRAD_TOL);
    }
}

#[test]
fn global_avgpool_values_and_gradcheck() {
    let (c, n, hw) = (2, 3, 4);
    let x: Vec<f32> = (0..c * n * hw).map(|v| v as f32).collect();
    let mut y = vec![0f32; c * n];
    global_avgpool_forward(c, n, hw, &x, &mut y);
    // Plane j holds 4j..4j+3, mean 4j + 1.5.
    assert_eq!(y, (0..6).map(|j| 4.0 * j as f32 + 1.5).collect::<Vec<_>>());

    let mut rng = Rng::new(41);
    let x = randn(&mut rng, c * n * hw);
    let r = randn(&mut rng, c * n);
    let pool = |x: &[f32]| {
        let mut y = vec![0f32; c * n];
        global_avgpool_forward(c, n, hw, x, &mut y);
        y
    };
    let mut dx = vec![f32::NAN; x.len()];
    global_avgpool_backward(c, n, hw, &r, &mut dx);
    let num = numeric_grad(&x, 1e-2, |x| project(&pool(x), &r));
    assert_grad_close("global avgpool dx", &dx, &num, LINEAR_TOL);

    // The parallel path (≥ 2¹⁵ inputs) agrees with an f64 mean.
    let (c, n, hw) = (64, 16, 49);
    let x = randn(&mut rng, c * n * hw);
    let mut y = vec![0f32; c * n];
    global_avgpool_forward(c, n, hw, &x, &mut y);
    let want: Vec<f64> = x
        .chunks(hw)
        .map(|p| p.iter().map(|&v| v as f64).sum::<f64>() / hw as f64)
        .collect();
    assert_close("avgpool large", &y, &want, 1e-6, 1e-6);
    let mut dx = vec![0f32; x.len()];
    global_avgpool_backward(c, n, hw, &y, &mut dx);
    let want: Vec<f64> = y.iter().flat_map(|&g| [g as f64 / hw as f64; 49]).collect();
    assert_close("avgpool backward large", &dx, &want, 1e-7, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// cross-entropy

fn xent(
    n: usize,
    k: usize,
    logits: &[f32],
    labels: &[u32],
    weights: &[f32],
) -> (f32, Vec<f32>, Vec<f32>) {
    let (mut losses, mut dl) = (vec![f32::NAN; n], vec![f32::NAN; n * k]);
    let l = cross_entropy(n, k, logits, labels, weights, &mut losses, &mut dl);
    (l, losses, dl)
}

#[test]
fn cross_entropy_known_values() {
    // Uniform logits: every loss is ln K, whatever the weights; dlogits = w_i/Σw·(1/K − onehot).
    let (n, k) = (3, 5);
    let logits = vec![0.7f32; n * k];
    let labels = [0u32, 4, 2];
    let weights = [1.0f32, 2.0, 1.0];
    let (l, losses, dl) = xent(n, k, &logits, &labels, &weights);
    let lnk = (k as f64).ln();
    assert_close("uniform loss", &[l], &[lnk], 1e-6, 1e-6);
    assert_close("uniform losses", &losses, &[lnk; 3], 1e-6, 1e-6);
    let want: Vec<f64> = (0..n * k)
        .map(|j| {
            let (i, c) = (j / k, j % k);
            weights[i] as f64 / 4.0 * (0.2 - if c == labels[i] as usize { 1.0 } else { 0.0 })
        })
        .collect();
    assert_close("uniform dlogits", &dl, &want, 1e-7, 1e-6);

    // Two classes, logits [0, ln 3]: softmax [1/4, 3/4].
    let (l, losses, dl) = xent(
        2,
        2,
        &[0.0, 3f32.ln(), 0.0, 3f32.ln()],
        &[1, 0],
        &[1.0, 3.0],
    );
    let (l1, l0) = ((4.0f64 / 3.0).ln(), 4f64.ln());
    assert_close("two-class losses", &losses, &[l1, l0], 1e-6, 1e-6);
    assert_close("two-class mean", &[l], &[(l1 + 3.0 * l0) / 4.0], 1e-6, 1e-6);
    assert_close(
        "two-class dlogits",
        &dl,
        &[0.25 * 0.25, 0.25 * -0.25, 0.75 * -0.75, 0.75 * 0.75],
        1e-7,
        1e-6,
    );

    // Stable for huge logits: no overflow, loss of the winning class ≈ 0.
    let (l, _, dl) = xent(1, 3, &[1000.0, -1000.0, 999.0], &[0], &[1.0]);
    assert!(l.is_finite() && dl.iter().all(|v| v.is_finite()));
    assert_close(
        "huge logits",
        &[l],
        &[(1.0 + (-1f64).exp()).ln()],
        1e-6,
        1e-5,
    );
}

#[test]
fn cross_entropy_gradcheck() {
    let mut rng = Rng::new(43);
    let (n, k) = (6, 7);
    let logits: Vec<f32> = (0..n * k).map(|_| 2.0 * rng.normal()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
    // Non-uniform weights, one of them zero (that sample gets no gradient).
    let weights = [0.5f32, 2.0, 0.0, 1.0, 3.5, 0.25];
    let (_, _, dl) = xent(n, k, &logits, &labels, &weights);
    assert!(dl[2 * k..3 * k].iter().all(|&v| v == 0.0));
    // L is a scalar: differentiate it directly (ε = 1e-2; truncation O(ε²) ≪ GRAD_TOL).
    let num = numeric_grad(&logits, 1e-2, |z| xent(n, k, z, &labels, &weights).0 as f64);
    assert_grad_close("cross-entropy dlogits", &dl, &num, GRAD_TOL);
}

/// The fused batch norm + ReLU (forward and backward) against batch norm followed by ReLU, on a
/// small (serial) and a large (parallel) tensor with about half the outputs clipped.
#[test]
fn batchnorm_relu_matches_unfused() {
    let mut rng = Rng::new(29);
    for (c, m) in [(3, 10), (4, 12_345)] {
        let x: Vec<f32> = (0..c * m)
            .map(|i| rng.normal() * (1.0 + (i / m) as f32) + (i / m) as f32)
            .collect();
        let gamma: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
        let beta: Vec<f32> = (0..c).map(|_| 0.3 * rng.normal()).collect();
        let dy = randn(&mut rng, c * m);

        // Unfused: batch norm, ReLU; backward ReLU then batch norm.
        let BnFwd {
            y: ybn,
            mean,
            invstd,
            running_mean: rm,
            running_var: rv,
        } = bn_forward(false, BnIn::new(c, m, &x, &gamma, &beta));
        let mut y = vec![0f32; c * m];
        relu_forward(&ybn, &mut y);
        let mut dybn = vec![0f32; c * m];
        relu_backward(&ybn, &dy, &mut dybn);
        let fwd = BnIn::new(c, m, &x, &gamma, &[]);
        let (dx, dg, db) = bn_backward(false, fwd, &mean, &invstd, &dybn);

        // Fused.
        let BnFwd {
            y: fy,
            mean: fmean,
            invstd: finv,
            running_mean: frm,
            running_var: frv,
        } = bn_forward(true, BnIn::new(c, m, &x, &gamma, &beta));
        let fwd = BnIn::new(c, m, &x, &gamma, &beta);
        let (fdx, fdg, fdb) = bn_backward(true, fwd, &fmean, &finv, &dy);

        assert_eq!((&frm, &frv, &fmean, &finv), (&rm, &rv, &mean, &invstd));
        let clipped = fy.iter().filter(|&&v| v == 0.0).count();
        assert!(
            clipped > c * m / 5 && clipped < 4 * c * m / 5,
            "clipped {clipped}"
        );
        let close = |a: &[f32], b: &[f32], what: &str| {
            let scale = b.iter().fold(0f32, |s, v| s.max(v.abs())).max(1.0);
            for (i, (u, v)) in a.iter().zip(b).enumerate() {
                assert!((u - v).abs() <= 1e-5 * scale, "{what}[{i}]: {u} vs {v}");
            }
        };
        close(&fy, &y, "y");
        close(&fdx, &dx, "dx");
        close(&fdg, &dg, "dgamma");
        close(&fdb, &db, "dbeta");
    }
}
