//! The direct sparse convolution (`sparse::conv`) against a naive f64 convolution of the same
//! masked weight, over many geometries: forward, weight gradient at active positions, input
//! gradient, all over batch-innermost [C, H, W, N] activations.

use rest::device::cpu::ConvGeom;
use rest::rng::Rng;
use rest::sparse::conv::DirectGeom;
use rest::sparse::csr::{Kernels, SparseWeight};

fn random_weight(rows: usize, cols: usize, d: f64, empty: &[usize], rng: &mut Rng) -> SparseWeight {
    let mut pos = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            if !empty.contains(&r) && (rng.uniform() as f64) < d {
                pos.push((r * cols + c) as u32);
            }
        }
    }
    let vals = pos.iter().map(|_| rng.normal()).collect();
    SparseWeight::from_positions(rows, cols, &pos, vals)
}

fn close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let tol = 1e-5 * scale[i] + 1e-6;
        assert!(
            (got[i] as f64 - want[i]).abs() <= tol,
            "{what}[{i}]: {} vs {} (tol {tol})",
            got[i],
            want[i]
        );
    }
}

/// (n, cin, h, w, cout, k, stride, pad, density, empty output rows)
type Case = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    f64,
    &'static [usize],
);

#[test]
fn direct_conv_matches_naive_convolution() {
    let mut rng = Rng::new(7);
    let cases: &[Case] = &[
        (2, 3, 14, 14, 8, 4, 2, 1, 0.3, &[1]),
        (3, 5, 7, 7, 6, 4, 2, 1, 0.2, &[]),
        (2, 4, 9, 11, 5, 3, 1, 1, 0.4, &[0, 4]),
        (1, 2, 8, 8, 3, 1, 1, 0, 1.0, &[]),
        (2, 3, 8, 6, 4, 1, 2, 0, 0.7, &[]),
        (2, 2, 16, 13, 4, 7, 2, 3, 0.1, &[2]),
        (1, 3, 5, 5, 2, 3, 1, 2, 0.5, &[]),
        (2, 2, 6, 9, 3, 3, 3, 0, 0.6, &[]),
        (1, 1, 4, 4, 1, 4, 1, 0, 1.0, &[]),
        (2, 3, 10, 10, 4, 5, 2, 0, 0.0, &[]),
        (1, 2, 3, 3, 2, 3, 2, 1, 0.8, &[]),
        (3, 16, 12, 12, 32, 3, 1, 1, 0.05, &[5, 31]),
        (2, 3, 11, 7, 4, 2, 2, 2, 0.5, &[]),
        (4, 6, 32, 32, 5, 3, 2, 1, 0.1, &[]),
        // Large enough for the parallel passes; batches that fill the 256-, 128- and 64-wide
        // register chunks, the 16-wide ones and a scalar tail.
        (8, 8, 28, 28, 16, 4, 2, 1, 0.15, &[3]),
        (4, 16, 8, 8, 24, 3, 1, 1, 0.2, &[]),
        (300, 4, 6, 6, 10, 3, 1, 1, 0.5, &[4]),
        (41, 6, 9, 9, 12, 4, 2, 1, 0.6, &[2]),
        (64, 5, 5, 7, 7, 3, 2, 1, 0.7, &[]),
        // Enough active weights per input channel for the fused backward (≥ 64), on a batch
        // that reaches its 128-, 64-, 32- and 16-column chunks and a scalar tail.
        (245, 4, 7, 7, 40, 4, 2, 1, 0.5, &[6]),
        // Fewer pixels than twice the tasks: the fused backward splits input channels.
        (512, 16, 2, 2, 32, 3, 1, 1, 0.5, &[]),
        // A window of 3·16·256 floats (48 KiB): the weight gradient walks output pixels.
        (256, 3, 12, 12, 16, 4, 2, 1, 0.3, &[2]),
        // 1×1 maps under a 3×3 kernel (ResNet-18's last stage at 32 px): only the centre tap
        // reads a pixel, the other weights get a zero gradient; and a strided 2×2 → 1×1 one.
        (64, 24, 1, 1, 40, 3, 1, 1, 0.4, &[]),
        (64, 16, 2, 2, 32, 3, 2, 1, 0.4, &[3]),
        // An input of 4 MiB: the forward splits pixels among tasks on a layer after the first.
        (256, 64, 8, 8, 4, 3, 1, 1, 0.1, &[]),
    ];
    for &(n, cin, h, w, cout, k, s, pad, d, empty) in cases {
        let g = ConvGeom::new(n, cin, h, w, cout, k, s, pad).unwrap();
        let what = format!("{g:?}");
        let sw = random_weight(cout, cin * k * k, d, empty, &mut rng);
        let mut wd = vec![0.0; cout * cin * k * k];
        sw.to_dense(&mut wd);
        let x: Vec<f32> = (0..cin * n * h * w).map(|_| rng.normal()).collect();
        let bias: Vec<f32> = (0..cout).map(|_| rng.normal()).collect();
        let beta: Vec<f32> = (0..cin).map(|_| rng.normal() * 0.5).collect();
        let dy: Vec<f32> = (0..cout * n * g.oh * g.ow).map(|_| rng.normal()).collect();
        // Naive f64 reference.
        let xi = |ci: usize, img: usize, r: isize, c: isize| -> f64 {
            if r < 0 || c < 0 || r >= h as isize || c >= w as isize {
                0.0
            } else {
                x[((ci * h + r as usize) * w + c as usize) * n + img] as f64
            }
        };
        let (mut y, mut ys) = (vec![0f64; dy.len()], vec![0f64; dy.len()]);
        let mut dwd = vec![0f64; wd.len()];
        let mut dws = vec![0f64; wd.len()];
        let (mut dx, mut dxs) = (vec![0f64; x.len()], vec![0f64; x.len()]);
        for (co, &bc) in bias.iter().enumerate() {
            for img in 0..n {
                for i in 0..g.oh {
                    for j in 0..g.ow {
                        let o = ((co * g.oh + i) * g.ow + j) * n + img;
                        y[o] = bc as f64;
                        ys[o] = (bc as f64).abs();
                        for ci in 0..cin {
                            for kh in 0..k {
                                for kw in 0..k {
                                    let wi = ((co * cin + ci) * k + kh) * k + kw;
                                    let r = (i * s + kh) as isize - pad as isize;
                                    let c = (j * s + kw) as isize - pad as isize;
                                    let v = xi(ci, img, r, c);
                                    y[o] += wd[wi] as f64 * v;
                                    ys[o] += (wd[wi] as f64 * v).abs();
                                    dwd[wi] += dy[o] as f64 * v;
                                    dws[wi] += (dy[o] as f64 * v).abs();
                                    if r >= 0 && c >= 0 && r < h as isize && c < w as isize {
                                        let xo = ((ci * h + r as usize) * w + c as usize) * n + img;
                                        dx[xo] += wd[wi] as f64 * dy[o] as f64;
                                        dxs[xo] += (wd[wi] as f64 * dy[o] as f64).abs();
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for k in [Kernels::Portable, Kernels::Avx2, Kernels::Avx512] {
            let what = format!("{what} {k:?}");
            let dg = DirectGeom::new(&g).with_kernels(k);
            close(
                &dg.forward(&sw, &x, Some(&bias)),
                &y,
                &ys,
                &format!("y {what}"),
            );
            let pos = sw.positions();
            let want: Vec<f64> = pos.iter().map(|&p| dwd[p as usize]).collect();
            let scale: Vec<f64> = pos.iter().map(|&p| dws[p as usize]).collect();
            close(
                &dg.weight_grad(&sw, &dy, &x),
                &want,
                &scale,
                &format!("dw {what}"),
            );
            // dx comes from the buffer pool (stale contents): poison it first with a NaN
            // gradient, so a pixel no output reads must be zeroed explicitly to pass.
            drop(dg.input_grad(&sw, &vec![f32::NAN; dy.len()]));
            close(&dg.input_grad(&sw, &dy), &dx, &dxs, &format!("dx {what}"));
            // Both gradients at once (one fused pass on AVX-512).
            let (gv, gx) = dg.backward(&sw, &dy, &x);
            close(&gv, &want, &scale, &format!("backward dw {what}"));
            close(&gx, &dx, &dxs, &format!("backward dx {what}"));
            // With x taken as a batch norm + ReLU output of shift beta: also each input
            // channel's (Σ dx', Σ dx'·(x − beta)), dx' = dx where x > 0 (AVX-512 only).
            let fused = dg.backward_with_relu_sums(&sw, &dy, &x, &beta);
            let avx512 = k.resolve() == Kernels::Avx512;
            assert_eq!(
                fused.is_some(),
                avx512,
                "relu sums run on AVX-512 only ({what})"
            );
            if let Some((gv, gx, sums)) = fused {
                close(&gv, &want, &scale, &format!("relu-sums dw {what}"));
                close(&gx, &dx, &dxs, &format!("relu-sums dx {what}"));
                assert_eq!(sums.len(), cin, "{what}: one pair per input channel");
                let plane = h * w * n;
                for (ci, &(s1, s2)) in sums.iter().enumerate() {
                    let (mut w1, mut w2, mut scale1, mut scale2) = (0f64, 0f64, 0f64, 0f64);
                    for i in ci * plane..(ci + 1) * plane {
                        if x[i] > 0.0 {
                            let t = (x[i] - beta[ci]) as f64;
                            w1 += dx[i];
                            w2 += dx[i] * t;
                            scale1 += dxs[i];
                            scale2 += dxs[i] * t.abs();
                        }
                    }
                    let (t1, t2) = (1e-5 * scale1 + 1e-6, 1e-5 * scale2 + 1e-6);
                    assert!(
                        (s1 - w1).abs() <= t1,
                        "{what} channel {ci}: Σdx' {s1} vs {w1}"
                    );
                    assert!(
                        (s2 - w2).abs() <= t2,
                        "{what} channel {ci}: Σdx'(x−β) {s2} vs {w2}"
                    );
                }
            }
        }
    }
}

/// A first layer's weight gradient through the batch norm + ReLU after it, each output-gradient
/// row computed from the batch norm's coefficients as the walk needs it, equals the weight
/// gradient of the stored batch-norm dx bit for bit (the same row arithmetic, the same walk).
#[test]
fn weight_gradient_through_batch_norm_equals_the_stored_gradient() {
    use rest::device::cpu::norm;
    let mut rng = Rng::new(11);
    for (n, h, cout, d) in [(64, 12, 16, 0.3), (256, 10, 8, 0.2), (37, 9, 5, 0.5)] {
        let g = ConvGeom::new(n, 3, h, h, cout, 4, 2, 1).unwrap();
        let dg = DirectGeom::new(&g);
        assert!(dg.walks_output_pixels(), "a first layer's window fits L1");
        let sw = random_weight(cout, 3 * 16, d, &[], &mut rng);
        let x: Vec<f32> = (0..3 * h * h * n).map(|_| rng.normal()).collect();
        let y = dg.forward(&sw, &x, None);
        let m = g.oh * g.ow * n;
        let gamma: Vec<f32> = (0..cout).map(|_| 1.0 + 0.3 * rng.normal()).collect();
        let beta: Vec<f32> = (0..cout).map(|_| 0.3 * rng.normal()).collect();
        let (mut rm, mut rv) = (vec![0.0; cout], vec![1.0; cout]);
        let (mut out, mut mean, mut invstd) =
            (vec![0.0; y.len()], vec![0.0; cout], vec![0.0; cout]);
        let fwd = norm::BnIn::new(cout, m, &y, &gamma, &beta);
        let o = norm::TrainFwdOut {
            running_mean: &mut rm,
            running_var: &mut rv,
            y: &mut out,
            save_mean: &mut mean,
            save_invstd: &mut invstd,
        };
        norm::batchnorm_relu_train_forward(fwd, 1e-5, 0.1, o);
        let dy: Vec<f32> = (0..y.len()).map(|_| rng.normal()).collect();
        let (mut dx, mut dga, mut dba) = (vec![0.0; y.len()], vec![0.0; cout], vec![0.0; cout]);
        let bg = norm::BnGradIn {
            fwd,
            save_mean: &mean,
            save_invstd: &invstd,
            dy: &dy,
        };
        let o = norm::BwdOut {
            dx: &mut dx,
            dgamma: &mut dga,
            dbeta: &mut dba,
        };
        norm::batchnorm_relu_backward(bg, o);
        let want = dg.weight_grad(&sw, &dx, &x);
        let (mut dgb, mut dbb) = (vec![0.0; cout], vec![0.0; cout]);
        let coefs = norm::batchnorm_backward_coefs(true, None, bg, &mut dgb, &mut dbb);
        let got = dg
            .weight_grad_through_bn(&sw, &dy, &coefs, &x)
            .expect("the output walk");
        assert_eq!(got, want, "n {n}: weight gradient");
        assert_eq!((dgb, dbb), (dga, dba), "n {n}: dgamma, dbeta");
    }
}
