//! A whole training step with the model on the CUDA backend (run by the emulator, `Gpu::Emu`)
//! against the same step on the CPU (`train::train_step` on the tape, both): the CMNIST CNN and a narrow ResNet-18, dense and sparse (density 0.1;
//! the CPU side with both compute paths), and a topology-update step. Also `rest train --device
//! emu` end to end.
//!
//! Tolerances (sized for a real GPU's summation order, not only the emulator's):
//! - losses: |gpu − cpu| ≤ 1e-4·(1 + |cpu|);
//! - parameters after the SGD step: compared as the step taken, Δ = w_after − w_before, per
//!   tensor: ‖Δgpu − Δcpu‖₂ ≤ 2e-3·‖Δcpu‖₂ + 1e-7·√len, and every element within
//!   2e-3·max|Δcpu| + 1e-6 (the gradients are sums over the batch in another order; batch norm's
//!   backward subtracts nearly equal means, which amplifies rounding in relative terms);
//! - SGD momentum after the step: as Δ (it is the step divided by lr on a first step);
//! - batch-norm running statistics: |gpu − cpu| ≤ 1e-4·(1 + |cpu|);
//! - topology update: per layer, the active positions agree on ≥ 99 % of the entries (weights
//!   or dense gradients that differ by rounding only can swap places at the k-th rank; in these
//!   runs they agree exactly, the bound is for other summation orders), and at the common
//!   positions values and momentum follow the tolerances above.
//!
//! Emulated time per step is printed (`--nocapture`) — see the report in the test output.

use rest::device::gpu::alloc::GpuDevice;
use rest::device::gpu::Gpu;
use rest::dst::{self, PathChoice, SparseConfig, SparseState};
use rest::nn::param::{ComputePath, Values};
use rest::nn::{Arch, Model, ModelConfig};
use rest::optim::Sgd;
use rest::rng::Rng;
use rest::sparse::schedule::{death_rate, DecaySchedule};
use rest::tensor::Tensor;
use rest::train::train_step;
use std::time::Instant;

mod common;

const LR: f32 = 0.05;
const MOMENTUM: f32 = 0.9;
const WD: f32 = 5e-4;
/// Constant death rate, so the CPU's schedule and the GPU's agree by construction.
const DEATH: f64 = 0.3;

fn model_cfg(arch: Arch, width: usize) -> ModelConfig {
    ModelConfig {
        arch,
        width,
        in_channels: 3,
        num_classes: 10,
    }
}

fn sparse_cfg(density: f64) -> SparseConfig {
    SparseConfig {
        death_rate: DEATH,
        decay: DecaySchedule::Constant,
        update_every: 1,
        compute: PathChoice::Sparse,
        ..SparseConfig::reference(density)
    }
}

fn set_paths(model: &mut Model, path: ComputePath) {
    for p in &mut model.params.params {
        if let Values::Sparse(_, pth) = &mut p.values {
            *pth = path;
        }
    }
}

/// A batch: images [3, N, S, S] (normal), labels, sample weights (some upweighted, λ = 5).
fn batch(n: usize, size: usize, seed: u64) -> (Tensor, Vec<u32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..3 * n * size * size).map(|_| rng.normal()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
    let weights: Vec<f32> = (0..n).map(|i| if i % 3 == 1 { 5.0 } else { 1.0 }).collect();
    (
        Tensor::from_vec(&[3, n, size, size], x).unwrap(),
        labels,
        weights,
    )
}

fn close_scalar(gpu: f32, cpu: f32, tol: f32, what: &str) {
    assert!(
        (gpu - cpu).abs() <= tol * (1.0 + cpu.abs()),
        "{what}: gpu {gpu} vs cpu {cpu}"
    );
}

/// Compares two steps Δgpu, Δcpu (see the file comment).
fn close_step(dg: &[f32], dc: &[f32], what: &str) {
    assert_eq!(dg.len(), dc.len(), "{what}: lengths");
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut dg.iter().zip(dc).map(|(a, b)| (a - b) as f64));
    let base = norm(&mut dc.iter().map(|&b| b as f64));
    assert!(
        diff <= 2e-3 * base + 1e-7 * (dc.len() as f64).sqrt(),
        "{what}: ‖Δgpu − Δcpu‖ = {diff:e}, ‖Δcpu‖ = {base:e}"
    );
    let max = dc.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in dg.iter().zip(dc).enumerate() {
        assert!(
            (a - b).abs() <= 2e-3 * max + 1e-6,
            "{what}[{i}]: Δgpu {a:e} vs Δcpu {b:e} (max |Δcpu| {max:e})"
        );
    }
}

/// Flat position → index into the layer's values, for a sparse parameter.
fn entries(model: &Model, i: usize) -> Vec<u32> {
    match &model.params.params[i].values {
        Values::Sparse(sw, _) => sw.positions(),
        Values::Dense(v) => (0..v.len() as u32).collect(),
    }
}

/// Compares the GPU state (downloaded into `gm_model`/`gm_opt`) with the CPU state after a step
/// from `before`/`opt_before`. With `topology`, positions may differ by < 1 % per layer; values
/// are then compared at the common positions.
#[allow(clippy::too_many_arguments)]
fn compare_models(
    what: &str,
    before: &Model,
    opt_before: &Sgd,
    cpu: &Model,
    cpu_opt: &Sgd,
    gpu: &Model,
    gpu_opt: &Sgd,
    topology: bool,
) {
    for (i, pc) in cpu.params.params.iter().enumerate() {
        let name = format!("{what}: {}", pc.name);
        let (pos_c, pos_g, pos_b) = (entries(cpu, i), entries(gpu, i), entries(before, i));
        if !topology {
            assert_eq!(pos_c, pos_g, "{name}: positions");
        }
        let set_g: std::collections::HashMap<u32, usize> =
            pos_g.iter().enumerate().map(|(e, &p)| (p, e)).collect();
        let set_b: std::collections::HashMap<u32, usize> =
            pos_b.iter().enumerate().map(|(e, &p)| (p, e)).collect();
        let common: Vec<(usize, usize, Option<usize>)> = pos_c
            .iter()
            .enumerate()
            .filter_map(|(e, p)| set_g.get(p).map(|&eg| (e, eg, set_b.get(p).copied())))
            .collect();
        let overlap = common.len() as f64 / pos_c.len().max(1) as f64;
        if topology && pos_c.len() != pc.numel() {
            eprintln!(
                "{name}: {:.2}% of the active positions agree after the update",
                100.0 * overlap
            );
        }
        assert!(
            overlap >= 0.99,
            "{name}: only {:.2}% of the active positions agree",
            100.0 * overlap
        );
        // Steps (value after − value before; 0 before for a regrown weight) and momenta.
        let (vc, vg, vb) = (
            pc.data(),
            gpu.params.params[i].data(),
            before.params.params[i].data(),
        );
        let (mc, mg, mb) = (
            &cpu_opt.buffers[i],
            &gpu_opt.buffers[i],
            &opt_before.buffers[i],
        );
        let mut steps = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &(ec, eg, eb) in &common {
            let (b, m0) = eb.map_or((0.0, 0.0), |eb| (vb[eb], mb[eb]));
            steps.0.push(vg[eg] - b);
            steps.1.push(vc[ec] - b);
            steps.2.push(mg[eg] - m0);
            steps.3.push(mc[ec] - m0);
        }
        close_step(&steps.0, &steps.1, &format!("{name} (weights)"));
        close_step(&steps.2, &steps.3, &format!("{name} (momentum)"));
    }
    for (l, (sc, sg)) in cpu.bn.iter().zip(&gpu.bn).enumerate() {
        for (a, b) in sg.mean.iter().zip(&sc.mean) {
            close_scalar(*a, *b, 1e-4, &format!("{what}: bn {l} running mean"));
        }
        for (a, b) in sg.var.iter().zip(&sc.var) {
            close_scalar(*a, *b, 1e-4, &format!("{what}: bn {l} running var"));
        }
    }
}

/// Two steps on CPU and emulated GPU from the same state: a plain step, then (sparse only) an
/// update step with its topology update; compares after each.
fn check(arch: Arch, width: usize, n: usize, size: usize, sparse: Option<ComputePath>) {
    let what = format!("{arch:?} w{width} {sparse:?}");
    let mut model = Model::new(&model_cfg(arch, width), 3).unwrap();
    let mut state: Option<SparseState> = sparse.map(|path| {
        let s = dst::sparsify(&mut model, &sparse_cfg(0.1), 5).unwrap();
        set_paths(&mut model, path);
        s
    });
    let mut opt = Sgd::new(&model.params, LR, MOMENTUM, WD);
    let steps = if sparse.is_some() { 2 } else { 1 };
    let dev = GpuDevice::new(Gpu::emu());
    for step in 0..steps {
        let update = step == 1;
        // Each step starts from the CPU's state, so it is compared alone (differences of one
        // step would otherwise grow through the next). That the device state carries over from
        // step to step is what the download comparison after each step checks.
        let t = Instant::now();
        let (mut gmodel, mut gopt, mut gstate) = (model.clone(), opt.clone(), state.clone());
        gmodel.to_device(&dev, &gopt.buffers).unwrap();
        let upload = t.elapsed();
        let (x, labels, weights) = batch(n, size, 100 + step as u64);
        // Two groups, as aligned (0) / conflicting (1).
        let groups: Vec<u32> = (0..n as u32).map(|i| (i % 3 == 1) as u32).collect();
        let (before, opt_before) = (model.clone(), opt.clone());
        let (stats, grads) = train_step(
            &mut model,
            &mut opt,
            x.clone(),
            &labels,
            &weights,
            Some(&groups),
            update,
        )
        .unwrap();
        let t = Instant::now();
        let (gs, ggrads) = train_step(
            &mut gmodel,
            &mut gopt,
            x.clone(),
            &labels,
            &weights,
            Some(&groups),
            update,
        )
        .unwrap();
        let step_time = t.elapsed();
        let (stats, gs) = (stats.resolve().unwrap(), gs.resolve().unwrap());
        close_scalar(gs.loss, stats.loss, 1e-4, &format!("{what}: loss"));
        for (a, b) in gs.losses.iter().zip(&stats.losses) {
            close_scalar(*a, *b, 1e-4, &format!("{what}: per-sample loss"));
        }
        assert_eq!(gs.losses.len(), n);
        assert_eq!(gs.correct, stats.correct, "{what}: correct predictions");
        assert_eq!(gs.groups.len(), stats.groups.len());
        for (g, c) in gs.groups.iter().zip(&stats.groups) {
            close_scalar(g.0, c.0, 1e-4, &format!("{what}: group loss sum"));
            assert_eq!((g.1, g.2), (c.1, c.2), "{what}: group correct/samples");
        }
        let mut t_update = None;
        if update {
            let s = state.as_mut().unwrap();
            let (cs, rate) = s
                .update(&mut model, &mut opt, &grads, 1, 100, &mut Rng::new(0))
                .unwrap();
            assert_eq!(
                rate,
                death_rate(DEATH, 0.005, 1, 100, DecaySchedule::Constant)
            );
            let t = Instant::now();
            let (us, grate) = gstate
                .as_mut()
                .unwrap()
                .update(&mut gmodel, &mut gopt, &ggrads, 1, 100, &mut Rng::new(0))
                .unwrap();
            t_update = Some(t.elapsed());
            assert_eq!(grate, rate);
            assert_eq!(us, cs, "{what}: pruned/grown counts");
        }
        gmodel.download(&mut gopt.buffers).unwrap();
        compare_models(
            &format!("{what} step {step}"),
            &before,
            &opt_before,
            &model,
            &opt,
            &gmodel,
            &gopt,
            update,
        );
        eprintln!(
            "{what}: batch {n} {size}x{size}, step {step}: emulated step {:.2}s{}, upload {:.3}s",
            step_time.as_secs_f64(),
            t_update.map_or(String::new(), |t| format!(
                ", topology update {:.2}s",
                t.as_secs_f64()
            )),
            upload.as_secs_f64()
        );
    }
    // Evaluation logits (batch norm in evaluation mode) against the CPU forward.
    let (x, _, _) = batch(n, size, 999);
    let mut gmodel = model.clone();
    gmodel.to_device(&dev, &opt.buffers).unwrap();
    let lg = gmodel.logits(x.clone()).unwrap();
    let lc = model.logits(x).unwrap();
    assert_eq!(lg.len(), lc.len());
    for (a, b) in lg.iter().zip(&lc) {
        close_scalar(*a, *b, 1e-4, &format!("{what}: evaluation logits"));
    }
    // A second step at the same shapes allocates nothing new on the device.
    let (x, labels, weights) = batch(n, size, 7);
    let mut gopt = opt.clone();
    train_step(
        &mut gmodel,
        &mut gopt,
        x.clone(),
        &labels,
        &weights,
        None,
        false,
    )
    .unwrap();
    let fresh = dev.fresh_allocations();
    train_step(&mut gmodel, &mut gopt, x, &labels, &weights, None, false).unwrap();
    assert_eq!(
        dev.fresh_allocations(),
        fresh,
        "{what}: a repeated step allocated new device buffers"
    );
}

#[test]
fn cnn_dense_step_matches_cpu() {
    check(Arch::Cnn, 8, 6, 28, None);
}

#[test]
fn cnn_sparse_step_and_update_match_cpu_sparse_path() {
    check(Arch::Cnn, 8, 6, 28, Some(ComputePath::Sparse));
}

#[test]
fn cnn_sparse_step_and_update_match_cpu_dense_masked_path() {
    check(Arch::Cnn, 8, 6, 28, Some(ComputePath::DenseMasked));
}

#[test]
fn resnet_dense_step_matches_cpu() {
    check(Arch::Resnet18, 4, 4, 32, None);
}

#[test]
fn resnet_sparse_step_and_update_match_cpu() {
    check(Arch::Resnet18, 4, 4, 32, Some(ComputePath::Sparse));
}

#[test]
fn topology_update_needs_an_update_step() {
    let mut model = Model::new(&model_cfg(Arch::Cnn, 4), 3).unwrap();
    dst::sparsify(&mut model, &sparse_cfg(0.1), 5).unwrap();
    let opt = Sgd::new(&model.params, LR, MOMENTUM, WD);
    model
        .to_device(&GpuDevice::new(Gpu::emu()), &opt.buffers)
        .unwrap();
    let dp = model.params.device.as_mut().unwrap();
    let err = dp.topology_update(0.3).unwrap_err().to_string();
    assert!(err.contains("dense gradients"), "{err}");
}

#[test]
fn train_on_emu_from_the_command_line_writes_a_summary() {
    let out = std::env::temp_dir().join(format!("rest-gpu-step-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = common::command()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--synthetic-train",
            "48",
            "--batch-size",
            "16",
            "--width",
            "4",
            "--density",
            "0.1",
            "--update-every",
            "2",
            "--sparse-compute",
            "sparse",
            "--epochs",
            "1",
            "--device",
            "emu",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .env_remove("REST_DEVICE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "rest train --device emu failed: {text}");
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(v["density"].as_f64().unwrap() < 0.2, "{summary}");
    assert!(out.join("last.safetensors").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn other_topology_rules_on_the_gpu_are_a_clear_error() {
    let out = std::env::temp_dir().join(format!("rest-gpu-step-set-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = common::command()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--synthetic-train",
            "32",
            "--batch-size",
            "16",
            "--width",
            "4",
            "--density",
            "0.1",
            "--prune",
            "set",
            "--epochs",
            "1",
            "--device",
            "emu",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .env_remove("REST_DEVICE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "should fail: {text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.contains("--device cpu"), "{text}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn step_totals_on_the_device_match_the_host_and_wait_for_nothing_until_read() {
    use rest::train::StepTotals;
    let cfg = model_cfg(Arch::Cnn, 8);
    let model = Model::new(&cfg, 5).unwrap();
    let opt = Sgd::new(&model.params, LR, MOMENTUM, WD);
    let (mut cpu, mut copt) = (model.clone(), opt.clone());
    let (mut gpu, mut gopt) = (model, opt);
    let dev = GpuDevice::new(Gpu::emu());
    gpu.to_device(&dev, &gopt.buffers).unwrap();
    let (mut host_totals, mut device_totals) = (StepTotals::new(), StepTotals::new());
    let reads = dev.gpu().traffic().to_host;
    for step in 0..3 {
        let n = 6;
        let (x, labels, weights) = batch(n, 28, 40 + step);
        let groups: Vec<u32> = (0..n as u32).map(|i| (i % 3 == 1) as u32).collect();
        let (rc, _) = train_step(
            &mut cpu,
            &mut copt,
            x.clone(),
            &labels,
            &weights,
            Some(&groups),
            false,
        )
        .unwrap();
        let (rg, _) = train_step(
            &mut gpu,
            &mut gopt,
            x,
            &labels,
            &weights,
            Some(&groups),
            false,
        )
        .unwrap();
        host_totals.add(rc).unwrap();
        device_totals.add(rg).unwrap();
    }
    assert_eq!(
        dev.gpu().traffic().to_host,
        reads,
        "three GPU steps and their totals read nothing back"
    );
    let (h, d) = (host_totals.read().unwrap(), device_totals.read().unwrap());
    assert_eq!(
        dev.gpu().traffic().to_host,
        reads + 1,
        "one read for the sums"
    );
    assert_eq!(d.correct, h.correct);
    assert_eq!(d.by_group, h.by_group);
    assert_eq!(d.by_group[0].1 + d.by_group[1].1, 18);
    assert!(
        (d.loss_sum - h.loss_sum).abs() <= 1e-4 * (1.0 + h.loss_sum.abs()),
        "{} vs {}",
        d.loss_sum,
        h.loss_sum
    );
}
