//! The CPU engine's results, bit for bit: a few training steps of both models (dense, and sparse
//! on both compute paths with a topology update) must leave exactly the weights, momentum and
//! batch-norm statistics they left when the values below were recorded. A refactor of the engine
//! (issue 16: one engine for every device) must not move a single bit on the CPU.
//!
//! Bits depend on the instruction set: the sparse kernels and the `gemm` crate pick AVX-512 or
//! AVX2 code with other summation orders. Values are recorded per instruction set; on a machine
//! whose set has none recorded yet, the test checks that two runs agree bit for bit and prints
//! the values to record.
//!
//! If a change is meant to alter the CPU's numbers (a new summation order, a new kernel), say so
//! in its commit and record the new values: the failure message prints them.

use rest::device::cpu::isa::Kernels;
use rest::dst::{self, PathChoice, SparseConfig};
use rest::nn::param::{ComputePath, Values};
use rest::nn::{Arch, Model, ModelConfig};
use rest::optim::Sgd;
use rest::rng::Rng;
use rest::sparse::schedule::DecaySchedule;
use rest::tensor::Tensor;
use rest::train::train_step;

/// FNV-1a over the bits of every f32, and the positions of sparse layers.
fn fingerprint(model: &Model, opt: &Sgd) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for p in &model.params.params {
        p.data().iter().for_each(|v| eat(v.to_bits()));
        if let Values::Sparse(sw, _) = &p.values {
            sw.positions().into_iter().for_each(&mut eat);
        }
    }
    for m in &opt.buffers {
        m.iter().for_each(|v| eat(v.to_bits()));
    }
    for s in &model.bn {
        s.mean.iter().chain(&s.var).for_each(|v| eat(v.to_bits()));
    }
    h
}

fn run(arch: Arch, width: usize, size: usize, sparse: Option<ComputePath>) -> u64 {
    let config = ModelConfig {
        arch,
        width,
        in_channels: 3,
        num_classes: 10,
    };
    let mut model = Model::new(&config, 7).unwrap();
    let mut state = sparse.map(|path| {
        let cfg = SparseConfig {
            death_rate: 0.3,
            decay: DecaySchedule::Constant,
            update_every: 1,
            compute: PathChoice::Sparse,
            ..SparseConfig::reference(0.1)
        };
        let s = dst::sparsify(&mut model, &cfg, 5).unwrap();
        for p in &mut model.params.params {
            if let Values::Sparse(_, pth) = &mut p.values {
                *pth = path;
            }
        }
        s
    });
    let mut opt = Sgd::new(&model.params, 0.05, 0.9, 5e-4);
    let n = 8;
    for step in 0..3u64 {
        let mut rng = Rng::new(50 + step);
        let x: Vec<f32> = (0..3 * n * size * size).map(|_| rng.normal()).collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
        let weights: Vec<f32> = (0..n).map(|i| if i % 3 == 1 { 4.0 } else { 1.0 }).collect();
        let x = Tensor::from_vec(&[3, n, size, size], x).unwrap();
        let update = state.is_some() && step == 1;
        let (_, grads) =
            train_step(&mut model, &mut opt, x, &labels, &weights, None, update).unwrap();
        if update {
            let s = state.as_mut().unwrap();
            s.update(&mut model, &mut opt, &grads, 1, 100, &mut Rng::new(3))
                .unwrap();
        }
    }
    fingerprint(&model, &opt)
}

#[test]
fn cpu_training_steps_are_bit_for_bit_as_recorded() {
    let cases: [(&str, Arch, usize, usize, Option<ComputePath>); 6] = [
        ("cnn dense", Arch::Cnn, 8, 28, None),
        ("cnn sparse", Arch::Cnn, 8, 28, Some(ComputePath::Sparse)),
        (
            "cnn masked",
            Arch::Cnn,
            8,
            28,
            Some(ComputePath::DenseMasked),
        ),
        ("resnet dense", Arch::Resnet18, 4, 16, None),
        (
            "resnet sparse",
            Arch::Resnet18,
            4,
            16,
            Some(ComputePath::Sparse),
        ),
        (
            "resnet masked",
            Arch::Resnet18,
            4,
            16,
            Some(ComputePath::DenseMasked),
        ),
    ];
    // Recorded on an Intel Xeon (AVX-512) before the engine became one for every device.
    let recorded: Option<[u64; 6]> = match Kernels::detect() {
        Kernels::Avx512 => Some([
            0x5c6746bb49be3479,
            0xadb761c63dbb25b9,
            0x74c497bec987bf2a,
            0xefdf19c563c3bea3,
            0xe509fc7cb7acea3e,
            0x1e5d01a9bbe16a5c,
        ]),
        Kernels::Avx2 | Kernels::Portable => None,
    };
    let got: Vec<u64> = cases
        .iter()
        .map(|(_, arch, w, s, path)| run(*arch, *w, *s, *path))
        .collect();
    let want: Vec<u64> = match recorded {
        Some(r) => r.to_vec(),
        None => {
            eprintln!(
                "no values recorded for {:?}: checking that two runs agree",
                Kernels::detect()
            );
            cases
                .iter()
                .map(|(_, arch, w, s, path)| run(*arch, *w, *s, *path))
                .collect()
        }
    };
    assert_eq!(
        got,
        want,
        "CPU results moved: {}",
        cases
            .iter()
            .zip(&got)
            .map(|(c, g)| format!("{}: {g:#018x}", c.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
