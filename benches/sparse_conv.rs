//! The direct sparse convolution's passes (`sparse::conv`) on the CMNIST CNN's second and third
//! convolutions (batch 256, ERK densities of the global 0.05 and 0.01), beside the dense GEMM of
//! the same layer, all with throughput in multiply-adds of the layer's active weights (the dense
//! GEMM: of all its weights; both gradients: twice the layer's), so the rates compare in one run:
//! `cargo bench --bench sparse_conv`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rest::device::cpu::conv::{im2col, ConvGeom, Layout};
use rest::device::cpu::gemm::matmul;
use rest::rng::Rng;
use rest::sparse::conv::DirectGeom;
use rest::sparse::csr::SparseWeight;
use rest::sparse::density::{layer_nnz, DensityRule};
use std::hint::black_box;

/// A uniformly random topology of `nnz` active weights with normal values.
fn weight(rows: usize, cols: usize, nnz: usize, rng: &mut Rng) -> SparseWeight {
    let mut chosen = vec![false; rows * cols];
    let mut left = nnz;
    while left > 0 {
        let p = rng.below(rows * cols);
        if !chosen[p] {
            chosen[p] = true;
            left -= 1;
        }
    }
    let pos: Vec<u32> = (0..rows * cols)
        .filter(|&p| chosen[p])
        .map(|p| p as u32)
        .collect();
    let vals = pos.iter().map(|_| rng.normal()).collect();
    SparseWeight::from_positions(rows, cols, &pos, vals)
}

fn benches(c: &mut Criterion) {
    let n = 256;
    // The CNN's weight shapes, for ERK: conv1, conv2, conv3, fc.
    let shapes = vec![
        vec![64, 3, 4, 4],
        vec![128, 64, 4, 4],
        vec![256, 128, 4, 4],
        vec![10, 256],
    ];
    let mut rng = Rng::new(7);
    // (layer index, cin, input side, cout).
    for &(li, cin, h, cout) in &[(1usize, 64usize, 14usize, 128usize), (2, 128, 7, 256)] {
        let g = ConvGeom::new(n, cin, h, h, cout, 4, 2, 1)
            .unwrap()
            .with_layout(Layout::Chwn);
        let x: Vec<f32> = (0..cin * h * h * n).map(|_| rng.normal()).collect();
        let dy: Vec<f32> = (0..cout * g.oh * g.ow * n).map(|_| rng.normal()).collect();
        let mut group = c.benchmark_group(format!("conv{}", li + 1));
        group.sample_size(10);

        // The dense anchor: im2col + GEMM of the whole weight.
        let wd: Vec<f32> = (0..cout * cin * 16).map(|_| rng.normal()).collect();
        let mut col = vec![0.0; g.col_rows() * g.col_cols()];
        let mut y = vec![0.0; cout * g.col_cols()];
        group.throughput(Throughput::Elements(
            (cout * cin * 16 * g.col_cols()) as u64,
        ));
        group.bench_function("dense forward (im2col + GEMM)", |b| {
            b.iter(|| {
                im2col(&g, black_box(&x), &mut col);
                matmul(
                    cout,
                    cin * 16,
                    g.col_cols(),
                    &wd,
                    false,
                    &col,
                    false,
                    &mut y,
                    false,
                );
            })
        });

        for density in [0.05, 0.01] {
            let nnz = layer_nnz(&shapes, density, DensityRule::Erk).unwrap()[li];
            let w = weight(cout, cin * 16, nnz, &mut rng);
            let d = DirectGeom::new(&g);
            group.throughput(Throughput::Elements((nnz * g.oh * g.ow * n) as u64));
            group.bench_function(format!("{density} forward"), |b| {
                b.iter(|| black_box(d.forward(&w, black_box(&x), None)))
            });
            group.bench_function(format!("{density} weight gradient"), |b| {
                b.iter(|| black_box(d.weight_grad(&w, black_box(&dy), &x)))
            });
            group.bench_function(format!("{density} input gradient"), |b| {
                b.iter(|| black_box(d.input_grad(&w, black_box(&dy))))
            });
            // Two passes' worth of multiply-adds.
            group.throughput(Throughput::Elements((2 * nnz * g.oh * g.ow * n) as u64));
            group.bench_function(format!("{density} both gradients"), |b| {
                b.iter(|| black_box(d.backward(&w, black_box(&dy), &x)))
            });
        }
        group.finish();
    }
}

criterion_group!(sparse_conv, benches);
criterion_main!(sparse_conv);
