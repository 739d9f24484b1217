//! The sparse core: layer densities, death-rate schedules, the CSR/CSC layout and its kernels,
//! and topology updates, each checked against a brute-force reference.

use rest::rng::Rng;
use rest::sparse::csr::{Kernels, SparseWeight};
use rest::sparse::density::{layer_nnz, DensityRule};
use rest::sparse::reference::{sddmm, sddmm_with, spmm, spmm_t, spmm_t_with, spmm_with};
use rest::sparse::schedule::{death_rate, DecaySchedule};
use rest::sparse::topology::{
    fired_fraction, random_layer, update_layer, Fired, GrowRule, PruneRule, UpdateStats,
};
use std::collections::BTreeSet;

// ---------------------------------------------------------------- densities

fn cmnist_shapes() -> Vec<Vec<usize>> {
    vec![
        vec![64, 3, 4, 4],
        vec![128, 64, 4, 4],
        vec![256, 128, 4, 4],
        vec![10, 256],
    ]
}

fn resnet18_shapes() -> Vec<Vec<usize>> {
    let mut s = vec![vec![64, 3, 3, 3]];
    for _ in 0..4 {
        s.push(vec![64, 64, 3, 3]);
    }
    for (cin, c) in [(64, 128), (128, 256), (256, 512)] {
        s.push(vec![c, cin, 3, 3]);
        for _ in 0..3 {
            s.push(vec![c, c, 3, 3]);
        }
        s.push(vec![c, cin, 1, 1]);
    }
    s.push(vec![10, 512]);
    s
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// Independent reference of the ERK/ER densities (the `Masking` loop: the layer of largest raw
/// score is made dense while ε·raw exceeds 1).
fn reference_densities(shapes: &[Vec<usize>], d: f64, two_dims: bool) -> Vec<f64> {
    let raw: Vec<f64> = shapes
        .iter()
        .map(|s| {
            let dims = if two_dims {
                &s[..2.min(s.len())]
            } else {
                &s[..]
            };
            dims.iter().sum::<usize>() as f64 / dims.iter().product::<usize>() as f64
        })
        .collect();
    let n: Vec<f64> = shapes.iter().map(|s| numel(s) as f64).collect();
    let mut dense = vec![false; shapes.len()];
    loop {
        let mut rhs = 0.0;
        let mut div = 0.0;
        for l in 0..shapes.len() {
            if dense[l] {
                rhs -= n[l] * (1.0 - d);
            } else {
                rhs += n[l] * d;
                div += raw[l] * n[l];
            }
        }
        let eps = rhs / div;
        let (lmax, &rmax) = raw
            .iter()
            .enumerate()
            .filter(|(l, _)| !dense[*l])
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        if rmax * eps > 1.0 {
            dense[lmax] = true;
            continue;
        }
        return (0..shapes.len())
            .map(|l| if dense[l] { 1.0 } else { eps * raw[l] })
            .collect();
    }
}

fn check_against_reference(shapes: &[Vec<usize>], d: f64, rule: DensityRule) -> Vec<usize> {
    let nnz = layer_nnz(shapes, d, rule).unwrap();
    assert_eq!(nnz.len(), shapes.len());
    let total: usize = shapes.iter().map(|s| numel(s)).sum();
    assert_eq!(
        nnz.iter().sum::<usize>(),
        (d * total as f64).round() as usize,
        "exact global count at d={d}"
    );
    let p = match rule {
        DensityRule::Uniform => vec![d; shapes.len()],
        DensityRule::Erk => reference_densities(shapes, d, false),
        DensityRule::Er => reference_densities(shapes, d, true),
    };
    for (l, s) in shapes.iter().enumerate() {
        let n = numel(s);
        assert!(nnz[l] <= n, "layer {l} over its size");
        let expect = p[l] * n as f64;
        // Largest-remainder rounding moves each layer by less than one weight.
        assert!(
            (nnz[l] as f64 - expect).abs() < 1.0 + 1e-6,
            "layer {l} {s:?} at d={d}: nnz {} vs p·n {expect}",
            nnz[l]
        );
    }
    nnz
}

#[test]
fn erk_cmnist_matches_formula_and_densifies_small_layers() {
    let shapes = cmnist_shapes();
    let nnz = check_against_reference(&shapes, 0.05, DensityRule::Erk);
    // By hand: raw(fc) = 266/2560 and raw(conv1) = 75/3072 give p > 1 in turn; both are dense.
    assert_eq!(nnz[3], 10 * 256, "the classifier is dense");
    assert_eq!(nnz[0], 64 * 3 * 16, "the first conv is dense");
    assert!(nnz[1] < 128 * 64 * 16 && nnz[2] < 256 * 128 * 16);
    // The sparse layers share one ε: nnz/(n·raw) = nnz/(sum of dims) equal up to rounding.
    let eps1 = nnz[1] as f64 / (128 + 64 + 4 + 4) as f64;
    let eps2 = nnz[2] as f64 / (256 + 128 + 4 + 4) as f64;
    assert!((eps1 - eps2).abs() / eps1 < 0.01, "ε {eps1} vs {eps2}");
    // ε = (D·N − dense) / Σ_sparse (sum of dims) = (33049.6 − 3072 − 2560) / 592.
    let eps = (0.05 * 660_992.0 - 3072.0 - 2560.0) / 592.0;
    assert!((nnz[1] as f64 - eps * 200.0).abs() < 1.0);
    for d in [0.01, 0.1, 0.2, 0.5, 0.9, 0.999] {
        check_against_reference(&shapes, d, DensityRule::Erk);
    }
}

#[test]
fn erk_resnet18_matches_formula() {
    let shapes = resnet18_shapes();
    for d in [0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 0.8] {
        let nnz = check_against_reference(&shapes, d, DensityRule::Erk);
        // Smaller layers are denser under ERK.
        assert!(
            nnz[0] as f64 / numel(&shapes[0]) as f64 >= nnz[15] as f64 / numel(&shapes[15]) as f64
        );
    }
    // At 0.2 the first conv (raw 15/1728) exceeds 1 and is dense.
    let nnz = layer_nnz(&shapes, 0.2, DensityRule::Erk).unwrap();
    assert_eq!(nnz[0], numel(&shapes[0]));
}

#[test]
fn er_and_uniform_match_formula() {
    for shapes in [cmnist_shapes(), resnet18_shapes()] {
        for d in [0.01, 0.05, 0.3, 0.7] {
            check_against_reference(&shapes, d, DensityRule::Er);
            let u = check_against_reference(&shapes, d, DensityRule::Uniform);
            for (l, s) in shapes.iter().enumerate() {
                assert!((u[l] as f64 - d * numel(s) as f64).abs() < 1.0);
            }
        }
    }
    // ER ignores kernel dims: [c, c, 1, 1] and [c, c, 3, 3] get the same density ratio by (2c)/(c²).
    let shapes = vec![vec![64, 64, 1, 1], vec![64, 64, 3, 3]];
    let nnz = layer_nnz(&shapes, 0.1, DensityRule::Er).unwrap();
    let (p0, p1) = (nnz[0] as f64 / 4096.0, nnz[1] as f64 / 36864.0);
    assert!((p0 - p1).abs() < 0.01, "{p0} vs {p1}");
    // while ERK favours the 1×1 layer.
    let nnz = layer_nnz(&shapes, 0.1, DensityRule::Erk).unwrap();
    assert!(nnz[0] as f64 / 4096.0 > 2.0 * nnz[1] as f64 / 36864.0);
}

#[test]
fn full_density_is_dense_and_tiny_density_is_exact() {
    for rule in [DensityRule::Erk, DensityRule::Er, DensityRule::Uniform] {
        let shapes = resnet18_shapes();
        let nnz = layer_nnz(&shapes, 1.0, rule).unwrap();
        for (l, s) in shapes.iter().enumerate() {
            assert_eq!(nnz[l], numel(s));
        }
        let nnz = layer_nnz(&[vec![3, 5]], 0.1, rule).unwrap();
        assert_eq!(nnz, vec![2]);
        let nnz = layer_nnz(&shapes, 1e-9, rule).unwrap();
        assert_eq!(nnz.iter().sum::<usize>(), 0);
    }
}

#[test]
fn density_errors_name_the_problem() {
    let s = cmnist_shapes();
    let msg = |r: anyhow::Result<Vec<usize>>| format!("{:#}", r.unwrap_err());
    for rule in [DensityRule::Erk, DensityRule::Er, DensityRule::Uniform] {
        assert!(msg(layer_nnz(&s, 0.0, rule)).contains("outside (0, 1]"));
        assert!(msg(layer_nnz(&s, -0.5, rule)).contains("outside (0, 1]"));
        assert!(msg(layer_nnz(&s, 1.5, rule)).contains("outside (0, 1]"));
        assert!(msg(layer_nnz(&s, f64::NAN, rule)).contains("NaN"));
        assert!(msg(layer_nnz(&[], 0.5, rule)).contains("empty"));
        assert!(msg(layer_nnz(&[vec![4, 0, 3]], 0.5, rule)).contains("zero-size"));
        assert!(msg(layer_nnz(&[vec![4, 4], vec![]], 0.5, rule)).contains("layer 1"));
    }
}

// ---------------------------------------------------------------- schedules

#[test]
fn death_rate_schedules() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let (s, e) = (0.5, 0.005);
    assert!(close(death_rate(s, e, 0, 1000, DecaySchedule::Cosine), s));
    assert!(close(
        death_rate(s, e, 500, 1000, DecaySchedule::Cosine),
        e + 0.5 * (s - e)
    ));
    assert!(close(
        death_rate(s, e, 1000, 1000, DecaySchedule::Cosine),
        e
    ));
    assert!(close(
        death_rate(s, e, 250, 1000, DecaySchedule::Cosine),
        e + 0.5 * (s - e) * (1.0 + 0.5f64.sqrt())
    ));
    assert!(
        close(death_rate(s, e, 5000, 1000, DecaySchedule::Cosine), e),
        "clamped past the end"
    );
    assert!(close(death_rate(s, e, 0, 1000, DecaySchedule::Linear), s));
    assert!(close(
        death_rate(s, e, 500, 1000, DecaySchedule::Linear),
        (s + e) / 2.0
    ));
    assert!(close(
        death_rate(s, e, 1000, 1000, DecaySchedule::Linear),
        e
    ));
    assert!(close(
        death_rate(s, e, 2000, 1000, DecaySchedule::Linear),
        e
    ));
    for t in [0, 500, 1000] {
        assert!(close(death_rate(s, e, t, 1000, DecaySchedule::Constant), s));
    }
    assert!(close(death_rate(s, e, 0, 0, DecaySchedule::Cosine), e));
    // Cosine decays monotonically.
    let mut prev = f64::INFINITY;
    for t in 0..=100 {
        let d = death_rate(s, e, t, 100, DecaySchedule::Cosine);
        assert!(d <= prev);
        prev = d;
    }
}

// ---------------------------------------------------------------- CSR layout

/// Random sorted positions at about `density`, with rows in `empty_rows` left empty.
fn random_positions(
    rows: usize,
    cols: usize,
    density: f64,
    empty_rows: &[usize],
    rng: &mut Rng,
) -> Vec<u32> {
    let mut out = Vec::new();
    for r in 0..rows {
        if empty_rows.contains(&r) {
            continue;
        }
        for c in 0..cols {
            if (rng.uniform() as f64) < density {
                out.push((r * cols + c) as u32);
            }
        }
    }
    out
}

fn random_weight(
    rows: usize,
    cols: usize,
    density: f64,
    empty_rows: &[usize],
    rng: &mut Rng,
) -> SparseWeight {
    let pos = random_positions(rows, cols, density, empty_rows, rng);
    let vals = pos.iter().map(|_| rng.normal()).collect();
    SparseWeight::from_positions(rows, cols, &pos, vals)
}

#[test]
fn csr_roundtrip_and_transpose_index() {
    let mut rng = Rng::new(1);
    for &(rows, cols, d) in &[
        (1, 1, 1.0),
        (7, 13, 0.3),
        (40, 3, 0.5),
        (3, 200, 0.05),
        (16, 16, 0.0),
        (25, 31, 1.0),
    ] {
        let pos = random_positions(rows, cols, d, &[1], &mut rng);
        let vals: Vec<f32> = pos.iter().map(|_| rng.normal()).collect();
        let w = SparseWeight::from_positions(rows, cols, &pos, vals.clone());
        w.validate().unwrap();
        assert_eq!(w.nnz(), pos.len());
        assert_eq!(w.positions(), pos);
        assert_eq!(w.values, vals);
        let mut dense = vec![f32::NAN; rows * cols];
        w.to_dense(&mut dense);
        let set: BTreeSet<u32> = pos.iter().copied().collect();
        for (p, &x) in dense.iter().enumerate() {
            if !set.contains(&(p as u32)) {
                assert_eq!(x, 0.0);
            }
        }
        let mask: Vec<bool> = (0..rows * cols)
            .map(|p| set.contains(&(p as u32)))
            .collect();
        assert_eq!(SparseWeight::from_dense_mask(rows, cols, &dense, &mask), w);
        let mut g = vec![0.0; w.nnz()];
        w.gather_from_dense(&dense, &mut g);
        assert_eq!(g, vals);
        // CSR rows/columns and CSC entries agree.
        for r in 0..rows {
            let range = w.row_ptr[r] as usize..w.row_ptr[r + 1] as usize;
            for (&p, &c) in pos[range.clone()].iter().zip(&w.col_idx[range]) {
                assert_eq!(p as usize, r * cols + c as usize);
            }
        }
        for c in 0..cols {
            let range = w.col_ptr[c] as usize..w.col_ptr[c + 1] as usize;
            let rows_here: Vec<u32> = w.csc_row[range.clone()].to_vec();
            assert!(
                rows_here.windows(2).all(|x| x[0] < x[1]),
                "rows ascend in a column"
            );
            let expect: Vec<u32> = pos
                .iter()
                .filter(|&&p| p as usize % cols == c)
                .map(|&p| p / cols as u32)
                .collect();
            assert_eq!(rows_here, expect);
            for k in range {
                assert_eq!(
                    pos[w.csc_pos[k] as usize] as usize,
                    w.csc_row[k] as usize * cols + c
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "strictly ascending")]
fn from_positions_rejects_unsorted() {
    SparseWeight::from_positions(2, 2, &[2, 1], vec![1.0, 2.0]);
}

// ---------------------------------------------------------------- kernels

fn dense_of(w: &SparseWeight) -> Vec<f32> {
    let mut d = vec![0.0; w.rows * w.cols];
    w.to_dense(&mut d);
    d
}

fn assert_close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
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

fn kernel_cases() -> Vec<(usize, usize, usize, f64, Vec<usize>)> {
    vec![
        (1, 1, 1, 1.0, vec![]),
        (7, 13, 1, 0.3, vec![2]),
        (33, 65, 37, 0.1, vec![0, 32]),
        (64, 48, 1000, 0.05, vec![3, 4, 5]),
        (5, 300, 700, 0.5, vec![]),
        (10, 256, 3, 0.9, vec![9]),
        (128, 1024, 600, 0.05, vec![7]),
        (300, 40, 2000, 0.02, vec![]),
        (9, 9, 17, 0.0, vec![]),
        (2000, 3000, 1, 0.02, vec![5, 1999]),
    ]
}

fn check_kernels(k: Kernels) {
    let mut rng = Rng::new(2);
    for (rows, cols, n, d, empty) in kernel_cases() {
        let w = random_weight(rows, cols, d, &empty, &mut rng);
        let wd = dense_of(&w);
        let b: Vec<f32> = (0..cols * n).map(|_| rng.normal()).collect();
        let dc: Vec<f32> = (0..rows * n).map(|_| rng.normal()).collect();
        // spmm
        let (mut want, mut scale) = (vec![0f64; rows * n], vec![0f64; rows * n]);
        for r in 0..rows {
            for c in 0..cols {
                let x = wd[r * cols + c] as f64;
                if x != 0.0 {
                    for j in 0..n {
                        want[r * n + j] += x * b[c * n + j] as f64;
                        scale[r * n + j] += (x * b[c * n + j] as f64).abs();
                    }
                }
            }
        }
        let mut c = vec![f32::NAN; rows * n];
        spmm_with(k, &w, &b, n, &mut c);
        assert_close(
            &c,
            &want,
            &scale,
            &format!("spmm {rows}x{cols} n={n} {k:?}"),
        );
        // spmm_t
        let (mut want, mut scale) = (vec![0f64; cols * n], vec![0f64; cols * n]);
        for r in 0..rows {
            for cc in 0..cols {
                let x = wd[r * cols + cc] as f64;
                if x != 0.0 {
                    for j in 0..n {
                        want[cc * n + j] += x * dc[r * n + j] as f64;
                        scale[cc * n + j] += (x * dc[r * n + j] as f64).abs();
                    }
                }
            }
        }
        let mut db = vec![f32::NAN; cols * n];
        spmm_t_with(k, &w, &dc, n, &mut db);
        assert_close(
            &db,
            &want,
            &scale,
            &format!("spmm_t {rows}x{cols} n={n} {k:?}"),
        );
        // sddmm
        let pos = w.positions();
        let (mut want, mut scale) = (vec![0f64; w.nnz()], vec![0f64; w.nnz()]);
        for (e, &p) in pos.iter().enumerate() {
            let (r, cc) = (p as usize / cols, p as usize % cols);
            for j in 0..n {
                want[e] += dc[r * n + j] as f64 * b[cc * n + j] as f64;
                scale[e] += (dc[r * n + j] as f64 * b[cc * n + j] as f64).abs();
            }
        }
        let mut dv = vec![f32::NAN; w.nnz()];
        sddmm_with(k, &w, &dc, &b, n, &mut dv);
        assert_close(
            &dv,
            &want,
            &scale,
            &format!("sddmm {rows}x{cols} n={n} {k:?}"),
        );
    }
}

#[test]
fn kernels_match_dense_reference() {
    // The default entry points use the preferred variant.
    let mut rng = Rng::new(3);
    let w = random_weight(20, 30, 0.2, &[4], &mut rng);
    let b: Vec<f32> = (0..30 * 50).map(|_| rng.normal()).collect();
    let dc: Vec<f32> = (0..20 * 50).map(|_| rng.normal()).collect();
    let (mut c1, mut c2) = (vec![0.0; 20 * 50], vec![0.0; 20 * 50]);
    spmm(&w, &b, 50, &mut c1);
    spmm_with(Kernels::preferred(), &w, &b, 50, &mut c2);
    assert_eq!(c1, c2);
    let (mut d1, mut d2) = (vec![0.0; 30 * 50], vec![0.0; 30 * 50]);
    spmm_t(&w, &dc, 50, &mut d1);
    spmm_t_with(Kernels::preferred(), &w, &dc, 50, &mut d2);
    assert_eq!(d1, d2);
    let (mut v1, mut v2) = (vec![0.0; w.nnz()], vec![0.0; w.nnz()]);
    sddmm(&w, &dc, &b, 50, &mut v1);
    sddmm_with(Kernels::preferred(), &w, &dc, &b, 50, &mut v2);
    assert_eq!(v1, v2);
    check_kernels(Kernels::preferred());
    check_kernels(Kernels::Avx512);
}

#[test]
fn kernels_portable_variant_matches_dense_reference() {
    check_kernels(Kernels::Portable);
}

#[test]
fn kernels_avx2_variant_matches_dense_reference() {
    // Lowered to Portable where the CPU lacks AVX2.
    check_kernels(Kernels::Avx2);
}

// ---------------------------------------------------------------- topology

/// Brute-force expected update for Magnitude pruning + score growth.
fn expected_update(w: &SparseWeight, rate: f64, score: &[f32]) -> (Vec<u32>, Vec<u32>) {
    let pos = w.positions();
    let k = ((rate * w.nnz() as f64).ceil() as usize).min(w.nnz());
    let mut order: Vec<usize> = (0..w.nnz()).collect();
    order.sort_by(|&a, &b| {
        w.values[a]
            .abs()
            .total_cmp(&w.values[b].abs())
            .then(pos[a].cmp(&pos[b]))
    });
    let mut pruned: Vec<u32> = order[..k].iter().map(|&e| pos[e]).collect();
    pruned.sort();
    let survivors: BTreeSet<u32> = pos
        .iter()
        .copied()
        .filter(|p| !pruned.contains(p))
        .collect();
    let mut cand: Vec<u32> = (0..(w.rows * w.cols) as u32)
        .filter(|p| !survivors.contains(p))
        .collect();
    cand.sort_by(|&a, &b| {
        score[b as usize]
            .abs()
            .total_cmp(&score[a as usize].abs())
            .then(a.cmp(&b))
    });
    let mut grown = cand[..k].to_vec();
    grown.sort();
    (pruned, grown)
}

#[test]
fn update_magnitude_gradient_matches_brute_force() {
    let mut rng = Rng::new(4);
    let (rows, cols) = (24, 37);
    let init: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
    let mut w = random_layer(rows, cols, 150, &init, &mut rng);
    let nnz = w.nnz();
    let mut fired = Fired::from_layer(&w);
    // The GPU path records positions read back from the device: it must count the same.
    let mut fired_by_positions = Fired::new(rows, cols);
    fired_by_positions.record_positions(&w.positions());
    let mut ever: BTreeSet<u32> = w.positions().into_iter().collect();
    for step in 0..8 {
        let rate = [0.3, 0.5, 0.05, 0.01, 0.9][step % 5];
        let score: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        let old_pos = w.positions();
        let old_vals = w.values.clone();
        let mut m1: Vec<f32> = old_pos.iter().map(|&p| p as f32 + 0.5).collect();
        let mut m2: Vec<f32> = old_vals.iter().map(|v| -v).collect();
        let (pruned, grown) = expected_update(&w, rate, &score);
        let stats = update_layer(
            &mut w,
            rate,
            PruneRule::Magnitude,
            GrowRule::Gradient,
            &score,
            &mut [&mut m1, &mut m2],
            &mut rng,
        );
        let k = ((rate * nnz as f64).ceil()) as usize;
        assert_eq!(
            stats,
            UpdateStats {
                pruned: k,
                grown: k
            }
        );
        assert_eq!(w.nnz(), nnz, "nnz constant");
        w.validate().unwrap();
        // New set = (old − pruned) ∪ grown, exactly.
        let mut expect: BTreeSet<u32> = old_pos
            .iter()
            .copied()
            .filter(|p| !pruned.contains(p))
            .collect();
        expect.extend(grown.iter().copied());
        let new_pos = w.positions();
        assert_eq!(
            new_pos,
            expect.into_iter().collect::<Vec<_>>(),
            "step {step}"
        );
        for (e, &p) in new_pos.iter().enumerate() {
            if grown.contains(&p) {
                assert_eq!(w.values[e], 0.0, "regrown value is 0");
                assert_eq!((m1[e], m2[e]), (0.0, 0.0), "regrown state is 0");
            } else {
                let old = old_pos.binary_search(&p).unwrap();
                assert_eq!(w.values[e], old_vals[old]);
                assert_eq!(m1[e], p as f32 + 0.5, "survivor state kept");
                assert_eq!(m2[e], -old_vals[old]);
            }
        }
        fired.record(&w);
        fired_by_positions.record_positions(&w.positions());
        ever.extend(new_pos.iter().copied());
        assert_eq!(fired.ever_active(), ever.len());
        assert_eq!(fired_by_positions.ever_active(), ever.len());
        assert!((fired.fraction() - ever.len() as f64 / (rows * cols) as f64).abs() < 1e-12);
        // Give the weights fresh magnitudes so the next prune is not dominated by the zeros.
        for v in w.values.iter_mut() {
            *v += rng.normal() * 0.1;
        }
    }
    assert!(fired.fraction() > 150.0 / (rows * cols) as f64);
    assert!((fired_fraction(&[fired.clone(), fired.clone()]) - fired.fraction()).abs() < 1e-12);
}

#[test]
fn update_can_regrow_a_just_pruned_weight_at_zero() {
    // Entries at positions 0..4 with |w| = 1..4; score is largest at position 0.
    let mut w = SparseWeight::from_positions(2, 4, &[0, 1, 2, 3], vec![1.0, -2.0, 3.0, -4.0]);
    let mut score = vec![0.1f32; 8];
    score[0] = 100.0;
    score[6] = -50.0;
    let mut m = vec![1.0, 2.0, 3.0, 4.0];
    let st = update_layer(
        &mut w,
        0.5,
        PruneRule::Magnitude,
        GrowRule::Momentum,
        &score,
        &mut [&mut m],
        &mut Rng::new(0),
    );
    assert_eq!(
        st,
        UpdateStats {
            pruned: 2,
            grown: 2
        }
    );
    assert_eq!(w.positions(), vec![0, 2, 3, 6]);
    assert_eq!(w.values, vec![0.0, 3.0, -4.0, 0.0]);
    assert_eq!(m, vec![0.0, 3.0, 4.0, 0.0]);
}

#[test]
fn update_ties_go_to_the_lower_position() {
    // All |w| equal: the lowest k positions are pruned; all scores equal: the lowest inactive
    // positions are grown.
    let pos: Vec<u32> = vec![3, 5, 8, 9, 12, 14, 20, 21];
    let vals = vec![1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0];
    let mut w = SparseWeight::from_positions(4, 6, &pos, vals);
    let score = vec![-2.0f32; 24];
    update_layer(
        &mut w,
        0.25,
        PruneRule::Magnitude,
        GrowRule::Gradient,
        &score,
        &mut [],
        &mut Rng::new(0),
    );
    // Pruned 3 and 5; grown 0 and 1 (lowest inactive after pruning).
    assert_eq!(w.positions(), vec![0, 1, 8, 9, 12, 14, 20, 21]);
    assert_eq!(w.values, vec![0.0, 0.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0]);

    // Equal magnitudes among a subset, and equal scores: ranking then position.
    let mut w = SparseWeight::from_positions(1, 10, &[1, 4, 6, 8], vec![0.5, 0.2, -0.2, 0.2]);
    let mut score = vec![0.0f32; 10];
    score[9] = 3.0;
    score[7] = -3.0;
    score[0] = 1.0;
    update_layer(
        &mut w,
        0.5,
        PruneRule::Magnitude,
        GrowRule::Gradient,
        &score,
        &mut [],
        &mut Rng::new(0),
    );
    // |w| = 0.2 at 4, 6, 8: prune 4 and 6. Grow |score| 3 at 7 and 9 (7 first by position).
    assert_eq!(w.positions(), vec![1, 7, 8, 9]);
}

#[test]
fn update_set_prunes_half_positive_half_negative() {
    // Positives 0.1 (p0), 0.5 (p1), 2.0 (p2), 0.3 (p3); negatives −0.2 (p4), −3.0 (p5), −0.05 (p6), −1.0 (p7).
    let vals = vec![0.1, 0.5, 2.0, 0.3, -0.2, -3.0, -0.05, -1.0];
    let pos: Vec<u32> = (0..8).collect();
    let score = vec![0.0f32; 16];
    let mut w = SparseWeight::from_positions(2, 8, &pos, vals.clone());
    update_layer(
        &mut w,
        0.5,
        PruneRule::Set,
        GrowRule::Gradient,
        &score,
        &mut [],
        &mut Rng::new(0),
    );
    // k = 4: positives 0.1, 0.3 (p0, p3); negatives closest to zero −0.05, −0.2 (p6, p4).
    // Magnitude pruning would instead remove p0, p6, p4 and p3 as well, so use k = 3 below.
    // Grown: score all 0, lowest inactive positions = the pruned 0, 3, 4, 6.
    assert_eq!(w.positions(), pos);
    assert_eq!(w.values, vec![0.0, 0.5, 2.0, 0.0, 0.0, -3.0, 0.0, -1.0]);

    // k = 3: ⌈3/2⌉ = 2 positives (p0, p3) and 1 negative (p6) — magnitude would take p4 (0.2)
    // before p3 (0.3). Score steers growth to fresh positions 8.. so the pruned set is visible.
    let mut score = vec![0.0f32; 16];
    for (i, s) in score.iter_mut().enumerate().skip(8) {
        *s = 100.0 - i as f32;
    }
    let mut w = SparseWeight::from_positions(2, 8, &pos, vals.clone());
    update_layer(
        &mut w,
        0.375,
        PruneRule::Set,
        GrowRule::Gradient,
        &score,
        &mut [],
        &mut Rng::new(0),
    );
    assert_eq!(w.positions(), vec![1, 2, 4, 5, 7, 8, 9, 10]);
    let mut w = SparseWeight::from_positions(2, 8, &pos, vals);
    update_layer(
        &mut w,
        0.375,
        PruneRule::Magnitude,
        GrowRule::Gradient,
        &score,
        &mut [],
        &mut Rng::new(0),
    );
    assert_eq!(w.positions(), vec![1, 2, 3, 5, 7, 8, 9, 10]);

    // One negative only: k = 4 takes it and 3 positives (zeros count as non-negative, first).
    let vals = vec![0.0, 0.5, 2.0, 0.3, 0.9, 3.0, -7.0, 1.0];
    let mut w = SparseWeight::from_positions(2, 8, &pos, vals);
    update_layer(
        &mut w,
        0.5,
        PruneRule::Set,
        GrowRule::Gradient,
        &score,
        &mut [],
        &mut Rng::new(0),
    );
    // Pruned p0 (0.0), p3 (0.3), p1 (0.5) and p6 (−7.0).
    assert_eq!(w.positions(), vec![2, 4, 5, 7, 8, 9, 10, 11]);
    // No negatives at all: everything from the positive side, smallest first.
    let mut w = SparseWeight::from_positions(1, 6, &[0, 1, 2, 3], vec![4.0, 1.0, 3.0, 2.0]);
    let score = vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0];
    update_layer(
        &mut w,
        0.5,
        PruneRule::Set,
        GrowRule::Gradient,
        &score,
        &mut [],
        &mut Rng::new(0),
    );
    assert_eq!(w.positions(), vec![0, 2, 4, 5]);
}

#[test]
fn update_random_growth_picks_inactive_positions() {
    let mut rng = Rng::new(5);
    let (rows, cols) = (30, 50);
    let init: Vec<f32> = (0..rows * cols).map(|_| rng.normal() + 10.0).collect();
    let mut w = random_layer(rows, cols, 75, &init, &mut rng);
    let mut seen_new = 0;
    for _ in 0..20 {
        let old_pos = w.positions();
        let (pruned, _) = expected_update(&w, 0.2, &vec![0.0; rows * cols]);
        let mut st: Vec<f32> = vec![1.0; w.nnz()];
        let s = update_layer(
            &mut w,
            0.2,
            PruneRule::Magnitude,
            GrowRule::Random,
            &[],
            &mut [&mut st],
            &mut rng,
        );
        assert_eq!(s.grown, 15);
        assert_eq!(w.nnz(), 75);
        w.validate().unwrap();
        let survivors: BTreeSet<u32> = old_pos
            .iter()
            .copied()
            .filter(|p| !pruned.contains(p))
            .collect();
        let new_pos = w.positions();
        assert!(
            survivors.iter().all(|p| new_pos.contains(p)),
            "survivors stay"
        );
        for (e, &p) in new_pos.iter().enumerate() {
            if survivors.contains(&p) {
                assert_eq!(st[e], 1.0);
            } else {
                assert_eq!(w.values[e], 0.0);
                assert_eq!(st[e], 0.0);
                if !old_pos.contains(&p) {
                    seen_new += 1;
                }
            }
        }
        for v in w.values.iter_mut() {
            *v += rng.normal();
        }
    }
    assert!(
        seen_new > 200,
        "random growth explores new positions ({seen_new})"
    );
    // Reproducible with the same seed.
    let run = |seed| {
        let mut r = Rng::new(seed);
        let mut w = random_layer(rows, cols, 75, &init, &mut r);
        update_layer(
            &mut w,
            0.3,
            PruneRule::Magnitude,
            GrowRule::Random,
            &[],
            &mut [],
            &mut r,
        );
        w
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn update_zero_rate_and_full_rate() {
    let mut rng = Rng::new(6);
    let init: Vec<f32> = (0..100).map(|_| rng.normal()).collect();
    let w0 = random_layer(10, 10, 20, &init, &mut rng);
    let mut w = w0.clone();
    let s = update_layer(
        &mut w,
        0.0,
        PruneRule::Magnitude,
        GrowRule::Gradient,
        &init,
        &mut [],
        &mut rng,
    );
    assert_eq!(s, UpdateStats::default());
    assert_eq!(w, w0);
    let s = update_layer(
        &mut w,
        1.0,
        PruneRule::Magnitude,
        GrowRule::Gradient,
        &init,
        &mut [],
        &mut rng,
    );
    assert_eq!(
        s,
        UpdateStats {
            pruned: 20,
            grown: 20
        }
    );
    assert_eq!(w.nnz(), 20);
    assert!(w.values.iter().all(|&v| v == 0.0));
    // The 20 largest |init| positions.
    let mut order: Vec<u32> = (0..100).collect();
    order.sort_by(|&a, &b| init[b as usize].abs().total_cmp(&init[a as usize].abs()));
    let mut top: Vec<u32> = order[..20].to_vec();
    top.sort();
    assert_eq!(w.positions(), top);
}

#[test]
fn update_large_layer_keeps_nnz() {
    // A ResNet-sized layer, to exercise the selection at scale.
    let mut rng = Rng::new(7);
    let (rows, cols) = (512, 4608);
    let init: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
    let mut w = random_layer(rows, cols, 117_965, &init, &mut rng);
    let score: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
    let mut m = vec![1.0f32; w.nnz()];
    let s = update_layer(
        &mut w,
        0.3,
        PruneRule::Magnitude,
        GrowRule::Gradient,
        &score,
        &mut [&mut m],
        &mut rng,
    );
    assert_eq!(s.pruned, (0.3f64 * 117_965.0).ceil() as usize);
    assert_eq!(w.nnz(), 117_965);
    assert_eq!(m.iter().filter(|&&x| x == 0.0).count(), s.grown);
    w.validate().unwrap();
}

#[test]
fn random_layer_is_exact_and_reproducible() {
    let init: Vec<f32> = (0..35 * 17).map(|i| i as f32).collect();
    for nnz in [0, 1, 100, 300, 35 * 17] {
        let w = random_layer(35, 17, nnz, &init, &mut Rng::new(11));
        assert_eq!(w.nnz(), nnz);
        w.validate().unwrap();
        for (e, &p) in w.positions().iter().enumerate() {
            assert_eq!(
                w.values[e], p as f32,
                "value taken from dense_init at its position"
            );
        }
        assert_eq!(w, random_layer(35, 17, nnz, &init, &mut Rng::new(11)));
    }
    assert_ne!(
        random_layer(35, 17, 100, &init, &mut Rng::new(11)),
        random_layer(35, 17, 100, &init, &mut Rng::new(12))
    );
    // Roughly uniform: every row gets some of 50% of positions.
    let w = random_layer(35, 17, 300, &init, &mut Rng::new(13));
    assert!((0..35).all(|r| w.row_ptr[r + 1] > w.row_ptr[r]));
    // Each position is chosen with probability nnz/size: count over many seeds.
    let mut hits = vec![0u32; 20];
    for seed in 0..4000 {
        for p in random_layer(4, 5, 5, &init[..20], &mut Rng::new(seed)).positions() {
            hits[p as usize] += 1;
        }
    }
    assert!(hits.iter().all(|&h| (850..1150).contains(&h)), "{hits:?}");
}

#[test]
fn fired_tracks_ever_active() {
    let a = SparseWeight::from_positions(2, 5, &[0, 3, 7], vec![1.0; 3]);
    let b = SparseWeight::from_positions(2, 5, &[0, 4, 9], vec![1.0; 3]);
    let mut f = Fired::new(2, 5);
    assert_eq!(f.fraction(), 0.0);
    f.record(&a);
    assert_eq!(f.ever_active(), 3);
    f.record(&b);
    f.record(&a);
    assert_eq!(f.ever_active(), 5);
    assert_eq!(f.total(), 10);
    assert_eq!(f.fraction(), 0.5);
    assert!(f.is_fired(9) && !f.is_fired(1));
}

// ---------------------------------------------------------------- timing (release, opt-in)

/// `cargo test --release --test sparse_core -- --ignored --nocapture timing`
#[test]
#[ignore]
fn timing_spmm_vs_dense_gemm() {
    use std::time::Instant;
    let mut rng = Rng::new(8);
    for &(rows, cols, n) in &[
        (128usize, 1024usize, 4096usize),
        (256, 2048, 2048),
        (512, 4608, 1024),
        (64, 576, 8192),
    ] {
        let a: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..cols * n).map(|_| rng.normal()).collect();
        let dc: Vec<f32> = (0..rows * n).map(|_| rng.normal()).collect();
        let mut c = vec![0f32; rows * n];
        let time = |f: &mut dyn FnMut()| {
            f();
            let reps = 5;
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64 * 1e3
        };
        let dense_ms = time(&mut || {
            // SAFETY: row-major a [rows, cols], b [cols, n], c [rows, n], all allocated at those sizes.
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    cols,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    cols as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                )
            }
        });
        for d in [0.05, 0.1, 0.2] {
            let nnz = (d * (rows * cols) as f64) as usize;
            let w = random_layer(rows, cols, nnz, &a, &mut rng);
            let mut db = vec![0f32; cols * n];
            let mut dv = vec![0f32; w.nnz()];
            for k in [Kernels::Avx512, Kernels::Avx2, Kernels::Portable] {
                let s = time(&mut || spmm_with(k, &w, &b, n, &mut c));
                let st = time(&mut || spmm_t_with(k, &w, &dc, n, &mut db));
                let sd = time(&mut || sddmm_with(k, &w, &dc, &b, n, &mut dv));
                println!(
                    "[{rows}x{cols}]·[{cols}x{n}] d={d} {k:?}: dense {dense_ms:.2} ms | spmm {s:.2} ({:.1}x) spmm_t {st:.2} ({:.1}x) sddmm {sd:.2} ({:.1}x)",
                    dense_ms / s,
                    dense_ms / st,
                    dense_ms / sd
                );
            }
        }
    }
}
