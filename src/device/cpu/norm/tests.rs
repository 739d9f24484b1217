//! Unit tests of batch norm's forward and backward passes.

use super::*;

/// The fused evaluation forward gives the bits of batch norm, then ReLU.
#[test]
fn fused_eval_forward_is_batchnorm_then_relu() {
    let (c, m) = (3, 2000);
    let mut r = crate::rng::Rng::new(4);
    let x: Vec<f32> = (0..c * m).map(|_| r.normal()).collect();
    let (g, b, rm, rv) = (
        [1.2, -0.4, 0.9],
        [0.1, 0.3, -0.2],
        [0.05, -0.1, 0.2],
        [0.8, 1.5, 0.3],
    );
    let (mut y, mut yr) = (vec![0.0; c * m], vec![0.0; c * m]);
    let i = BnIn::new(c, m, &x, &g, &b);
    batchnorm_eval_forward_with(false, i, &rm, &rv, 1e-5, &mut y);
    batchnorm_eval_forward_with(true, i, &rm, &rv, 1e-5, &mut yr);
    let want: Vec<f32> = y.iter().map(|v| v.max(0.0)).collect();
    assert_eq!(yr, want);
    assert!(yr.contains(&0.0) && yr.iter().any(|&v| v > 0.0));
}

/// The backward from sums over the output (`batchnorm_backward_with`) matches the one
/// that takes them from x; channels where those sums are not accurate enough (|β| > 16|γ|,
/// γ = 0) take theirs from x, bit for bit as the plain backward.
#[test]
fn backward_from_output_sums_matches() {
    let (c, m) = (5, 3000);
    let mut r = crate::rng::Rng::new(9);
    let x: Vec<f32> = (0..c * m).map(|_| r.normal() * 3.0 + 1.0).collect();
    let dy: Vec<f32> = (0..c * m).map(|_| r.normal()).collect();
    // The last two channels: |β| > 16|γ|, and γ = 0.
    let gamma = [1.3, -0.7, 0.2, 0.1, 0.0];
    let beta = [0.4, 0.3, -1.5, 2.0, 0.5];
    let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
    let (mut out, mut mean, mut invstd) = (vec![0.0; c * m], vec![0.0; c], vec![0.0; c]);
    let fwd = BnIn::new(c, m, &x, &gamma, &beta);
    let o = TrainFwdOut {
        running_mean: &mut rm,
        running_var: &mut rv,
        y: &mut out,
        save_mean: &mut mean,
        save_invstd: &mut invstd,
    };
    batchnorm_relu_train_forward(fwd, 1e-5, 0.1, o);
    let sums: Vec<(f64, f64)> = (0..c)
        .map(|ci| {
            let (mut s1, mut s2) = (0f64, 0f64);
            for i in ci * m..(ci + 1) * m {
                if out[i] > 0.0 {
                    s1 += dy[i] as f64;
                    s2 += dy[i] as f64 * (out[i] - beta[ci]) as f64;
                }
            }
            (s1, s2)
        })
        .collect();
    let run = |given: Option<&[(f64, f64)]>| {
        let (mut dx, mut dg, mut db) = (vec![0.0; c * m], vec![0.0; c], vec![0.0; c]);
        let g = BnGradIn {
            fwd,
            save_mean: &mean,
            save_invstd: &invstd,
            dy: &dy,
        };
        let o = BwdOut {
            dx: &mut dx,
            dgamma: &mut dg,
            dbeta: &mut db,
        };
        match given {
            Some(s) => batchnorm_backward_with(true, Some(s), g, o),
            None => batchnorm_relu_backward(g, o),
        }
        (dx, dg, db)
    };
    let (want_dx, want_dg, want_db) = run(None);
    let (dx, dg, db) = run(Some(&sums));
    for ci in 0..c {
        let range = ci * m..(ci + 1) * m;
        if ci >= 3 {
            assert_eq!(dx[range.clone()], want_dx[range], "channel {ci}: from x");
            assert_eq!((dg[ci], db[ci]), (want_dg[ci], want_db[ci]));
            continue;
        }
        assert!((dg[ci] - want_dg[ci]).abs() <= 1e-4 * want_dg[ci].abs().max(1.0));
        assert!((db[ci] - want_db[ci]).abs() <= 1e-4 * want_db[ci].abs().max(1.0));
        let big = want_dx[range.clone()]
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()));
        for i in range {
            assert!((dx[i] - want_dx[i]).abs() <= 1e-4 * big, "dx[{i}]");
        }
    }
}
