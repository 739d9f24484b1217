//! The CPU engine's batch-innermost [C, H, W, N] kernels against the [C, N, H, W] ones (which
//! tests/ops_gradcheck.rs proves against naive loops): the same results, transposed.

use rest::autograd::Tape;
use rest::device::cpu::conv::{col2im, conv2d_backward, conv2d_forward, im2col, ConvGeom, Layout};
use rest::device::cpu::pool::{
    global_avgpool_backward, global_avgpool_backward_chwn, global_avgpool_forward,
    global_avgpool_forward_chwn, maxpool_backward_chwn, maxpool_forward_chwn, pool_out,
};
use rest::nn::ops;
use rest::rng::Rng;
use rest::tensor::{transpose_inner, Tensor};

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// [c, n, hw] → [c, hw, n].
fn to_chwn(x: &[f32], c: usize, n: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.len()];
    transpose_inner(x, c, n, hw, &mut out);
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn transpose_inner_swaps_the_inner_axes() {
    let x: Vec<f32> = (0..2 * 3 * 5).map(|v| v as f32).collect();
    let y = to_chwn(&x, 2, 3, 5);
    for c in 0..2 {
        for i in 0..3 {
            for j in 0..5 {
                assert_eq!(y[(c * 5 + j) * 3 + i], x[(c * 3 + i) * 5 + j]);
            }
        }
    }
    // Whole 16×16 tiles (the AVX-512 path where the CPU has it) with ragged edges both ways,
    // against the definition.
    let mut rng = Rng::new(1);
    let (c, a, b) = (2, 40, 35);
    let x = randn(&mut rng, c * a * b);
    let y = to_chwn(&x, c, a, b);
    for ci in 0..c {
        for i in 0..a {
            for j in 0..b {
                assert_eq!(
                    y[(ci * b + j) * a + i],
                    x[(ci * a + i) * b + j],
                    "({ci}, {i}, {j})"
                );
            }
        }
    }
    // Larger than a tile in both directions, and back again.
    let x = randn(&mut rng, 3 * 37 * 50);
    let y = to_chwn(&x, 3, 37, 50);
    assert_eq!(to_chwn(&y, 3, 50, 37), x);
}

#[test]
fn conv_chwn_is_the_cnhw_conv_transposed() {
    let mut rng = Rng::new(3);
    // (n, cin, h, w, cout, k, stride, pad): strides 1–3, kernels 1–7, pads 0–3, and sizes
    // that take the parallel paths.
    let cases: &[[usize; 8]] = &[
        [2, 3, 7, 9, 5, 3, 1, 1],
        [3, 4, 9, 7, 6, 3, 2, 1],
        [2, 3, 11, 10, 4, 7, 2, 3],
        [2, 2, 8, 8, 3, 4, 2, 1],
        [1, 3, 6, 5, 2, 4, 1, 3],
        [2, 2, 5, 6, 3, 3, 3, 0],
        [3, 3, 9, 11, 4, 1, 2, 0],
        [1, 5, 1, 1, 3, 1, 1, 0],
        [16, 8, 14, 14, 16, 4, 2, 1],
    ];
    for &[n, cin, h, w, cout, k, s, p] in cases {
        let g = ConvGeom::new(n, cin, h, w, cout, k, s, p).unwrap();
        let gc = g.with_layout(Layout::Chwn);
        let (hw, ohw) = (h * w, g.oh * g.ow);
        let x = randn(&mut rng, cin * n * hw);
        let wt = randn(&mut rng, cout * cin * k * k);
        let b = randn(&mut rng, cout);
        let dy = randn(&mut rng, cout * n * ohw);
        let run = |g: &ConvGeom, x: &[f32], dy: &[f32]| {
            let mut col = vec![f32::NAN; g.col_rows() * g.col_cols()];
            let mut y = vec![f32::NAN; cout * g.col_cols()];
            conv2d_forward(g, x, &wt, Some(&b), &mut col, &mut y);
            let (mut dw, mut db) = (vec![f32::NAN; wt.len()], vec![f32::NAN; cout]);
            let (mut dcol, mut dx) = (vec![f32::NAN; col.len()], vec![f32::NAN; x.len()]);
            conv2d_backward(
                g,
                &col,
                &wt,
                dy,
                Some(&mut dw),
                Some(&mut db),
                &mut dcol,
                Some(&mut dx),
            );
            (y, dw, db, dx)
        };
        let (y, dw, db, dx) = run(&g, &x, &dy);
        let (yc, dwc, dbc, dxc) = run(&gc, &to_chwn(&x, cin, n, hw), &to_chwn(&dy, cout, n, ohw));
        let what = format!("{g:?}");
        assert_close(&format!("y {what}"), &yc, &to_chwn(&y, cout, n, ohw), 1e-5);
        assert_close(&format!("dx {what}"), &dxc, &to_chwn(&dx, cin, n, hw), 1e-5);
        assert_close(&format!("dw {what}"), &dwc, &dw, 1e-4);
        assert_close(&format!("db {what}"), &dbc, &db, 1e-4);

        // col2im is im2col's adjoint in this layout too.
        let xc = randn(&mut rng, x.len());
        let c = randn(&mut rng, gc.col_rows() * gc.col_cols());
        let mut col = vec![f32::NAN; c.len()];
        im2col(&gc, &xc, &mut col);
        let mut back = vec![f32::NAN; x.len()];
        col2im(&gc, &c, &mut back);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        let (lhs, rhs) = (dot(&col, &c), dot(&xc, &back));
        assert!(
            (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
            "adjoint {what}: {lhs} vs {rhs}"
        );
    }
}

#[test]
fn pooling_chwn_is_the_cnhw_pooling_transposed() {
    let mut rng = Rng::new(5);
    for &(c, n, h, w, k, s, p) in &[
        (3, 5, 9, 8, 3, 2, 1),
        (2, 4, 4, 4, 2, 2, 0),
        (16, 64, 16, 16, 3, 2, 1),
    ] {
        let (oh, ow) = (pool_out(h, k, s, p), pool_out(w, k, s, p));
        let x = randn(&mut rng, c * n * h * w);
        let (mut y, mut a) = (vec![f32::NAN; c * n * oh * ow], vec![0u32; c * n * oh * ow]);
        maxpool_forward_chwn(c * n, h, w, 1, k, s, p, &x, &mut y, &mut a);
        let xc = to_chwn(&x, c, n, h * w);
        let (mut yc, mut ac) = (vec![f32::NAN; y.len()], vec![0u32; y.len()]);
        maxpool_forward_chwn(c, h, w, n, k, s, p, &xc, &mut yc, &mut ac);
        assert_eq!(yc, to_chwn(&y, c, n, oh * ow), "maxpool y");
        let a_f: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let ac_f: Vec<f32> = ac.iter().map(|&v| v as f32).collect();
        assert_eq!(ac_f, to_chwn(&a_f, c, n, oh * ow), "maxpool argmax");

        let dy = randn(&mut rng, y.len());
        let mut dx = vec![f32::NAN; x.len()];
        maxpool_backward_chwn(1, h * w, &dy, &a, &mut dx);
        let mut dxc = vec![f32::NAN; x.len()];
        maxpool_backward_chwn(n, h * w, &to_chwn(&dy, c, n, oh * ow), &ac, &mut dxc);
        assert_eq!(dxc, to_chwn(&dx, c, n, h * w), "maxpool dx");

        let hw = h * w;
        let mut g = vec![f32::NAN; c * n];
        global_avgpool_forward(c, n, hw, &x, &mut g);
        let mut gc = vec![f32::NAN; c * n];
        global_avgpool_forward_chwn(c, n, hw, &xc, &mut gc);
        assert_close("avgpool y", &gc, &g, 1e-6);
        let dg = randn(&mut rng, c * n);
        let mut dx = vec![f32::NAN; x.len()];
        global_avgpool_backward(c, n, hw, &dg, &mut dx);
        let mut dxc = vec![f32::NAN; x.len()];
        global_avgpool_backward_chwn(c, n, hw, &dg, &mut dxc);
        assert_eq!(dxc, to_chwn(&dx, c, n, hw), "avgpool dx");
    }
}

#[test]
fn to_batch_innermost_transposes_and_checks_its_input() {
    let mut rng = Rng::new(9);
    let (c, n, h, w) = (3, 4, 5, 6);
    let x = randn(&mut rng, c * n * h * w);
    let mut tape = Tape::new();
    let xv = tape.input(Tensor::from_vec(&[c, n, h, w], x.clone()).unwrap());
    let y = ops::to_batch_innermost(&mut tape, xv).unwrap();
    assert_eq!(tape.value(y).shape(), &[c, h, w, n]);
    assert_eq!(tape.value(y).data(), &to_chwn(&x, c, n, h * w)[..]);
    // A [C, H, W] image is not a batch.
    let bad = tape.input(Tensor::from_vec(&[c, h, w], vec![0.0; c * h * w]).unwrap());
    let err = ops::to_batch_innermost(&mut tape, bad).unwrap_err();
    assert!(err.to_string().contains("[C, N, H, W]"), "{err}");
}

#[test]
fn maxpool_chwn_keeps_first_maxima_and_nans_as_the_plane_pooling() {
    // Few distinct values (many ties) and some NaNs: the first maximum and the first NaN of a
    // window win in both layouts, bit for bit.
    let mut rng = Rng::new(9);
    let (c, n, h, w, k, s, p) = (4, 48, 9, 10, 3, 2, 1);
    let (oh, ow) = (pool_out(h, k, s, p), pool_out(w, k, s, p));
    let x: Vec<f32> = randn(&mut rng, c * n * h * w)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i % 37 == 5 { f32::NAN } else { v.round() })
        .collect();
    let (mut y, mut a) = (vec![0.0; c * n * oh * ow], vec![0u32; c * n * oh * ow]);
    maxpool_forward_chwn(c * n, h, w, 1, k, s, p, &x, &mut y, &mut a);
    let xc = to_chwn(&x, c, n, h * w);
    let (mut yc, mut ac) = (vec![0.0; y.len()], vec![0u32; y.len()]);
    maxpool_forward_chwn(c, h, w, n, k, s, p, &xc, &mut yc, &mut ac);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(
        y.iter().any(|v| v.is_nan()),
        "the input reaches a NaN maximum"
    );
    assert_eq!(bits(&yc), bits(&to_chwn(&y, c, n, oh * ow)), "maxpool y");
    let a_f: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    let ac_f: Vec<f32> = ac.iter().map(|&v| v as f32).collect();
    assert_eq!(ac_f, to_chwn(&a_f, c, n, oh * ow), "maxpool argmax");
}
