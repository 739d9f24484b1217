//! CPU training step of both paper models (images/s) beside the GEMM alone (FLOP/s), so their
//! ratio is measured in one run: `cargo bench --bench train_step`.
//!
//! The step's GFLOP/s is its dense conv/linear FLOPs (forward + backward, from `flops.rs`) per
//! second; compare it with the GEMM group's GFLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rest::autograd::Tape;
use rest::device::cpu::gemm::matmul;
use rest::flops::FlopsReport;
use rest::nn::param::Grads;
use rest::nn::{ops, Arch, Model, ModelConfig};
use rest::optim::Sgd;
use rest::rng::Rng;
use rest::tensor::Tensor;
use std::hint::black_box;

fn step_bench(c: &mut Criterion, name: &str, arch: Arch, batch: usize, size: usize) {
    let cfg = ModelConfig {
        arch,
        width: 64,
        in_channels: 3,
        num_classes: 10,
    };
    let mut model = Model::new(&cfg, 1).unwrap();
    let mut opt = Sgd::new(&model.params, 0.01, 0.9, 0.0);
    let mut r = Rng::new(2);
    let images = Tensor::from_vec(
        &[3, batch, size, size],
        (0..3 * batch * size * size).map(|_| r.uniform()).collect(),
    )
    .unwrap();
    let labels: Vec<u32> = (0..batch).map(|_| r.below(10) as u32).collect();
    let weights = vec![1.0; batch];
    let flops = FlopsReport::new(&model, size, size, None);
    eprintln!(
        "{name}: {:.2} GFLOP per training step (batch {batch})",
        flops.dense_train * batch as f64 / 1e9
    );
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut tape = Tape::new();
            let x = tape.input(images.clone());
            let logits = model.forward(&mut tape, x, true).unwrap();
            let (loss, _) = ops::cross_entropy(&mut tape, logits, &labels, &weights, None).unwrap();
            let mut grads = Grads::zeros(&model.params, false);
            tape.backward(loss, Tensor::full(&[1], 1.0), &model.params, &mut grads)
                .unwrap();
            opt.step(&mut model.params, &grads).unwrap();
        })
    });
    g.finish();
}

fn gemm_bench(c: &mut Criterion) {
    // The CMNIST CNN's largest GEMM (second conv, batch 256): 128 × 1024 × 12544.
    let (m, k, n) = (128, 1024, 12544);
    let mut r = Rng::new(3);
    let a: Vec<f32> = (0..m * k).map(|_| r.normal()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| r.normal()).collect();
    let mut out = vec![0.0; m * n];
    let mut g = c.benchmark_group("gemm");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("128x1024x12544 (elements = FLOPs)", |bch| {
        bch.iter(|| {
            matmul(
                m,
                k,
                n,
                black_box(&a),
                false,
                black_box(&b),
                false,
                &mut out,
                false,
            )
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    gemm_bench(c);
    step_bench(c, "cmnist_cnn_b256_28px", Arch::Cnn, 256, 28);
    step_bench(c, "resnet18_b64_32px", Arch::Resnet18, 64, 32);
}

criterion_group!(train, benches);
criterion_main!(train);
