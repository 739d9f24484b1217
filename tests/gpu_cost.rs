//! The GPU cost model (`device::gpu::cost`, `rest bench gpu --cost`): the dry emulator records
//! what the real backend does, a steady training step launches no memset, and the roofline
//! prices a record as its documentation says.

use rest::bench::gpu::{measure_step, record_step, StepSpec};
use rest::device::gpu::cost::{Cost, GpuSpec, H100_SXM};
use rest::device::gpu::{Event, Gpu};
use rest::nn::Arch;

mod common;

/// (arch, width, image, batch, density) of small steps the emulator runs quickly.
const SMALL: &[(Arch, usize, usize, usize, f64)] = &[
    (Arch::Cnn, 4, 12, 4, 1.0),
    (Arch::Cnn, 4, 12, 4, 0.1),
    (Arch::Resnet18, 4, 16, 2, 1.0),
    (Arch::Resnet18, 4, 16, 2, 0.1),
];

fn step(arch: Arch, width: usize, image: usize, batch: usize, density: f64) -> StepSpec {
    StepSpec {
        arch,
        width,
        image,
        batch,
        density,
        seed: 3,
    }
}

#[test]
fn the_dry_emulator_records_what_the_real_one_does() {
    for &(arch, width, image, batch, density) in SMALL {
        let spec = step(arch, width, image, batch, density);
        let wet = record_step(Gpu::emu(), spec).unwrap();
        let dry = record_step(Gpu::emu_dry(), spec).unwrap();
        assert!(!wet.is_empty());
        assert_eq!(wet, dry, "{arch:?} width {width} density {density}");
    }
}

#[test]
fn a_steady_training_step_launches_no_memset_never_waits_and_costs_every_kernel() {
    for &(arch, width, image, batch, density) in SMALL {
        let events = record_step(Gpu::emu_dry(), step(arch, width, image, batch, density)).unwrap();
        let memsets = events
            .iter()
            .filter(|e| matches!(e, Event::Memset { .. }))
            .count();
        assert_eq!(memsets, 0, "{arch:?} density {density}: memsets in a step");
        let waits = events
            .iter()
            .filter(|e| matches!(e, Event::ToHost { .. } | Event::Sync))
            .count();
        assert_eq!(
            waits, 0,
            "{arch:?} density {density}: the host waited for the step"
        );
        for e in &events {
            if let Event::Launch { kernel, cost, .. } = e {
                assert!(cost.modelled, "{kernel} launched in a step without a cost");
                assert!(cost.written > 0, "{kernel} writes nothing?");
            }
        }
        let est = H100_SXM.estimate(&events);
        assert_eq!(
            est.launches as usize,
            events
                .iter()
                .filter(|e| matches!(e, Event::Launch { .. }))
                .count()
        );
        assert!(est.flops > 0 && est.total_s > 0.0);
    }
}

#[test]
fn a_sparse_step_moves_fewer_bytes_and_flops_than_the_dense_one() {
    let cost = |density| {
        let spec = step(Arch::Resnet18, 64, 32, 64, density);
        H100_SXM.estimate(&record_step(Gpu::emu_dry(), spec).unwrap())
    };
    let (dense, sparse) = (cost(1.0), cost(0.01));
    assert!(
        sparse.flops * 5 < dense.flops,
        "{} vs {}",
        sparse.flops,
        dense.flops
    );
    assert!(sparse.bytes < dense.bytes);
}

/// A spec with round numbers, so expected times are easy to write down.
const ROUND: GpuSpec = GpuSpec {
    name: "round",
    dram_bytes_per_s: 1e12,
    l2_bytes_per_s: 2e12,
    l2_bytes: 1e6,
    fp32_flops_per_s: 10e12,
    tf32_flops_per_s: 100e12,
    sms: 100,
    host_launch_s: 4e-6,
    kernel_gap_s: 1e-6,
    sync_s: 10e-6,
    pageable_copy_bytes_per_s: 1e10,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
}

#[test]
fn the_roofline_takes_the_slowest_resource_and_idle_sms_into_account() {
    // 1 MB read once, 1 MB written: DRAM-bound, 2 µs + the gap.
    let stream = Cost::streaming(1_000_000, 1_000_000, 0);
    assert!(close(ROUND.launch_time(1000, &stream).0, 2e-6 + 1e-6));
    // Half the SMs busy: twice as long.
    assert!(close(ROUND.launch_time(50, &stream).0, 4e-6 + 1e-6));
    // Compute-bound: 100 MFLOP at 10 TFLOP/s.
    let math = Cost::streaming(1000, 1000, 100_000_000);
    assert!(close(ROUND.launch_time(1000, &math).0, 10e-6 + 1e-6));
    // Re-reads within L2 are served at L2 speed: 0.5 MB footprint, 8 MB requested.
    let reuse = Cost::streaming(250_000, 250_000, 0).with_requests(8_000_000);
    assert!(close(
        ROUND.launch_time(1000, &reuse).0,
        8.25e6 / 2e12 + 1e-6
    ));
    // A footprint 4× L2 spills three quarters of its re-reads to DRAM.
    let spill = Cost::streaming(2_000_000, 2_000_000, 0).with_requests(10_000_000);
    let (_, dram) = ROUND.launch_time(1000, &spill);
    assert!(close(dram, 4e6 + 8e6 * 0.75));
}

#[test]
fn a_step_estimate_adds_host_waits_to_the_larger_of_gpu_and_host_time() {
    let launch = Event::Launch {
        kernel: "k",
        blocks: 1000,
        threads_per_block: 256,
        cost: Cost::streaming(1_000_000, 1_000_000, 0),
    };
    let events = vec![
        launch.clone(),
        launch,
        Event::ToDevice { bytes: 10_000 },
        Event::ToHost { bytes: 100 },
        Event::Sync,
    ];
    let e = ROUND.estimate(&events);
    assert_eq!((e.launches, e.to_device, e.to_host, e.syncs), (2, 1, 1, 1));
    assert!(close(e.gpu_s, 2.0 * 3e-6));
    // Host: two launches, and the upload (1 µs of copying plus its issue).
    assert!(close(e.host_s, 2.0 * 4e-6 + 1e-6 + 4e-6));
    assert!(close(e.stall_s, (100.0 / 1e10 + 10e-6) + 10e-6));
    assert!(close(e.total_s, e.host_s.max(e.gpu_s) + e.stall_s));
    assert_eq!(e.kernels.len(), 1);
    assert_eq!(e.kernels[0].launches, 2);
}

#[test]
fn bench_cost_runs_from_the_command_line_and_names_unknown_gpus() {
    let dir = common::temp_dir("bench-cost");
    let json = dir.join("cost.json");
    let (ok, text) = common::rest(&[
        "bench",
        "gpu",
        "--cost",
        "--quick",
        "--per-kernel",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("estimated on H100 SXM"), "{text}");
    assert!(text.contains("conv_fwd_dense_f32"), "{text}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4);
    assert!(rows[0]["estimate"]["launches"].as_u64().unwrap() > 10);
    common::fails_with(
        &["bench", "gpu", "--cost", "--gpu-model", "a100"],
        "h100, h200",
    );
    common::fails_with(&["bench", "gpu", "--gpu-model", "h200"], "--cost");
}

/// Kernels whose threads load distinct addresses (no warp-wide broadcast of one value): the
/// emulator's per-thread request count is then what the kernel asks of L2, and the stated
/// `requested` must agree with it. Other kernels broadcast indices or per-channel scalars to
/// every thread (one transaction per warp on a GPU, 32 counted here), so the count only bounds
/// the stated figure from above.
const PER_THREAD_LOADS: &[&str] = &[
    "conv_fwd_dense_f32",
    "conv_bwd_data_dense_f32",
    "conv_bwd_weight_dense_f32",
    "conv_bwd_weight_reduce_f32",
    "conv_bwd_bias_f32",
    "elementwise_add_relu_f32",
    "elementwise_acc_f32",
    "pool_max_fwd_f32",
    "pool_max_bwd_f32",
    "pool_avg_fwd_f32",
    "pool_avg_bwd_f32",
    "xent_fused_f32",
    "xent_reduce_f32",
];

/// Every kernel of small training steps, run on the emulator with its global-memory accesses
/// counted (`Gpu::measure`): the cost model's bytes against what the kernel touched.
/// - written: exact (±512 bytes);
/// - read: exact, except `elementwise_relu_bwd_f32`, which loads dy only where the output is
///   positive (stated in full: a GPU fetches whole 32-byte sectors), and
///   `optim_sgd_multi_f32`, which also reads its table of tensors (+1 %);
/// - requested: ±15 % for `PER_THREAD_LOADS` (the formulas count whole tiles), else at most the
///   per-thread count.
#[test]
fn stated_bytes_match_the_bytes_the_kernels_touch() {
    let cases: &[(Arch, usize, usize, usize, f64)] = &[
        (Arch::Cnn, 8, 28, 8, 1.0),
        (Arch::Cnn, 8, 28, 8, 0.2),
        (Arch::Resnet18, 8, 32, 4, 1.0),
        (Arch::Resnet18, 8, 32, 4, 0.2),
    ];
    let mut kernels = std::collections::BTreeSet::new();
    for &(arch, width, image, batch, density) in cases {
        let measured = measure_step(Gpu::emu(), step(arch, width, image, batch, density)).unwrap();
        assert!(measured.len() > 20);
        for m in &measured {
            let what = format!("{arch:?} density {density}: {}", m.kernel);
            let (stated, got) = (m.cost, m.bytes);
            kernels.insert(m.kernel);
            assert!(stated.modelled, "{what}: no cost stated");
            assert!(
                got.written.abs_diff(stated.written) <= 512,
                "{what}: wrote {} bytes, {} stated",
                got.written,
                stated.written
            );
            let read_ok = match m.kernel {
                "elementwise_relu_bwd_f32" => {
                    got.read <= stated.read && got.read * 2 >= stated.read
                }
                "optim_sgd_multi_f32" => got.read.abs_diff(stated.read) <= stated.read / 100 + 512,
                _ => got.read.abs_diff(stated.read) <= 512,
            };
            assert!(
                read_ok,
                "{what}: read {} bytes, {} stated",
                got.read, stated.read
            );
            let (req, got_req) = (stated.requested as f64, got.read_requests as f64);
            if PER_THREAD_LOADS.contains(&m.kernel) {
                assert!(
                    (req - got_req).abs() <= 0.15 * got_req + 512.0,
                    "{what}: {got_req} bytes requested, {req} stated"
                );
            } else {
                // relu_bwd's conditional loads: see read.
                let slack = if m.kernel == "elementwise_relu_bwd_f32" {
                    2.0
                } else {
                    1.05
                };
                assert!(
                    req <= got_req * slack + 512.0,
                    "{what}: {got_req} bytes requested, {req} stated"
                );
            }
        }
    }
    // Every kernel of a training step was checked.
    for k in [
        "conv_fwd_sparse_f32",
        "conv_bwd_data_sparse_f32",
        "conv_bwd_weight_sparse_f32",
        "norm_fwd_train_relu_f32",
        "norm_bwd_f32",
        "pool_max_bwd_f32",
        "optim_sgd_multi_f32",
    ] {
        assert!(kernels.contains(k), "{k} not in the measured steps");
    }
    assert!(kernels.len() >= 20, "{kernels:?}");
}
