//! `rest bench cpu`: dense against sparse training steps and inference of both paper models,
//! measured in one run and reported as images/s and as ratios to dense; checkpoint sizes; the
//! cost of a topology update; peak memory of a training run (each in its own process).

use crate::autograd::{OpTime, Tape};
use crate::data::loader::Augment;
use crate::data::synthetic::{generate, SyntheticConfig};
use crate::dst::{self, SparseConfig};
use crate::nn::param::Grads;
use crate::nn::{ops, Arch, Model, ModelConfig};
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::{Reweight, ReweightMode, TrainConfig, Trainer};
use anyhow::Result;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct CpuArgs {
    /// Models to measure.
    #[arg(long, value_delimiter = ',', default_value = "cnn,resnet18")]
    pub models: Vec<Arch>,
    /// Global densities (1 = dense, the baseline of every ratio).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,0.5,0.2,0.1,0.05,0.01,0.005,0.001"
    )]
    pub densities: Vec<f64>,
    /// Timed training steps (and inference passes) per density, after one warm-up each. The
    /// densities take turns step by step (a round); each reports its median step, and its ratio
    /// to the first density as the median of the per-round ratios, with their range
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Batch size of the CNN (28 px) runs; ResNet-18 (32 px) uses a quarter of it.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// After the table, time every op of the training step (forward and backward, per layer)
    /// at each density, as the mean of --steps extra steps.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuResult {
    /// The CPU and kernel variant measured (`isa::cpu_description`).
    pub cpu: String,
    pub model: String,
    pub density: f64,
    pub batch: usize,
    /// From the median step time.
    pub train_images_per_s: f64,
    /// Median over the rounds of (the baseline's step time / this density's) in that round.
    pub train_speedup: f64,
    /// The smallest and largest of those per-round ratios.
    pub train_speedup_range: (f64, f64),
    pub infer_images_per_s: f64,
    pub infer_speedup: f64,
    pub infer_speedup_range: (f64, f64),
    pub checkpoint_bytes: usize,
    pub checkpoint_ratio: f64,
    /// Time of one topology update (dense-gradient step + prune/regrow), in ms.
    pub update_ms: Option<f64>,
}

/// The benchmarked model of `arch`: width 64, RGB input, 10 classes.
pub(super) fn bench_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        width: 64,
        in_channels: 3,
        num_classes: 10,
    }
}

/// The input size the benchmarks give `arch`: 28 px (MNIST) for the CNN, 32 (CIFAR) else.
pub(super) fn input_size(arch: Arch) -> usize {
    if arch == Arch::Cnn {
        28
    } else {
        32
    }
}

/// A model of `arch` at `density` (1 = dense), as training would build it.
pub fn build(
    arch: Arch,
    density: f64,
    batch: usize,
    size: usize,
) -> Result<(Model, Option<dst::SparseState>)> {
    let cfg = bench_config(arch);
    crate::train::check_memory(&cfg, size, size, batch)?;
    let mut model = Model::new(&cfg, 1)?;
    let state = if density < 1.0 {
        let s = dst::sparsify(&mut model, &SparseConfig::reference(density), 1)?;
        dst::calibrate_paths(&mut model, batch, size, size)?;
        Some(s)
    } else {
        None
    };
    Ok((model, state))
}

pub(super) struct Inputs {
    /// Shared with each step's tape: a training step takes its batch without a copy.
    pub(super) images: Rc<Tensor>,
    pub(super) labels: Vec<u32>,
    pub(super) weights: Vec<f32>,
}

pub(super) fn inputs(batch: usize, size: usize) -> Inputs {
    let mut r = Rng::new(2);
    Inputs {
        images: Rc::new(
            Tensor::from_vec(
                &[3, batch, size, size],
                (0..3 * batch * size * size).map(|_| r.uniform()).collect(),
            )
            .expect("shape"),
        ),
        labels: (0..batch).map(|_| r.below(10) as u32).collect(),
        weights: vec![1.0; batch],
    }
}

/// One training step; returns the gradients (dense ones too when `dense_grads`).
pub(super) fn train_step(
    model: &mut Model,
    opt: &mut Sgd,
    inp: &Inputs,
    dense_grads: bool,
) -> Result<Grads> {
    train_step_on(Tape::new(), model, opt, inp, dense_grads).map(|(g, _)| g)
}

/// `train_step` on a given tape (a profiled one), also returning the ops' times.
fn train_step_on(
    mut tape: Tape,
    model: &mut Model,
    opt: &mut Sgd,
    inp: &Inputs,
    dense_grads: bool,
) -> Result<(Grads, Vec<OpTime>)> {
    let (x, labels, weights) = (&inp.images, &inp.labels[..], &inp.weights[..]);
    let _awake = crate::device::cpu::KeepAwake::new();
    let xv = tape.input_shared(Rc::clone(x));
    let logits = model.forward(&mut tape, xv, true)?;
    let (loss, _) = ops::cross_entropy(&mut tape, logits, labels, weights, None)?;
    let mut grads = Grads::zeros(&model.params, dense_grads);
    tape.backward(loss, Tensor::full(&[1], 1.0), &model.params, &mut grads)?;
    opt.step(&mut model.params, &grads)?;
    Ok((grads, tape.op_times()))
}

/// Prints the mean time of each op of `steps` profiled training steps, in forward order, and
/// what the step spends outside the ops (gradient buffers, the optimiser).
fn print_profile(
    density: f64,
    steps: usize,
    model: &mut Model,
    opt: &mut Sgd,
    inp: &Inputs,
) -> Result<()> {
    // A warm-up step: the topology update before it dropped the cached plans.
    train_step(model, opt, inp, false)?;
    let mut sums: Vec<OpTime> = Vec::new();
    let mut total = 0.0;
    for _ in 0..steps {
        let t = Instant::now();
        let (_, ops) = train_step_on(Tape::profiled(), model, opt, inp, false)?;
        total += t.elapsed().as_secs_f64();
        if sums.is_empty() {
            sums = ops;
        } else {
            for (s, o) in sums.iter_mut().zip(ops) {
                s.forward_s += o.forward_s;
                s.backward_s += o.backward_s;
            }
        }
    }
    let ms = |s: f64| 1e3 * s / steps as f64;
    println!("\n  density {density}: mean of {steps} steps, ms");
    println!(
        "  {:<20} {:<20} {:>8} {:>8} {:>8}",
        "op", "output", "forward", "backward", "share"
    );
    for o in &sums {
        println!(
            "  {:<20} {:<20} {:>8.3} {:>8.3} {:>7.1}%",
            o.name,
            format!("{:?}", o.shape),
            ms(o.forward_s),
            ms(o.backward_s),
            100.0 * (o.forward_s + o.backward_s) / total
        );
    }
    let in_ops: f64 = sums.iter().map(|o| o.forward_s + o.backward_s).sum();
    println!(
        "  {:<41} {:>17.3} {:>7.1}%",
        "outside the ops (gradients, optimiser)",
        ms(total - in_ops),
        100.0 * (total - in_ops) / total
    );
    println!("  {:<41} {:>17.3}", "step", ms(total));
    Ok(())
}

/// Per item, the times of `reps` calls of `f`, after one warm-up call each; the calls go round
/// by round over the items, so round r's times were taken back to back.
fn rounds<T>(
    reps: usize,
    items: &mut [T],
    mut f: impl FnMut(&mut T) -> Result<()>,
) -> Result<Vec<Vec<f64>>> {
    for it in items.iter_mut() {
        f(it)?;
    }
    let mut times = vec![Vec::with_capacity(reps); items.len()];
    for _ in 0..reps {
        for (it, t) in items.iter_mut().zip(&mut times) {
            let start = Instant::now();
            f(it)?;
            t.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// The speed-up of `item` over `base` round by round (base time / item time, from the same
/// round): its median, smallest and largest. A slow spell of this shared machine that lasts
/// longer than a round slows both alike and cancels out of the ratio, and the range shows how
/// far the ratio moved during the run.
pub fn speedup_spread(base: &[f64], item: &[f64]) -> (f64, f64, f64) {
    assert_eq!(base.len(), item.len(), "speedup_spread: rounds differ");
    assert!(!base.is_empty(), "speedup_spread: no rounds");
    let r: Vec<f64> = base.iter().zip(item).map(|(b, i)| b / i).collect();
    let (lo, hi) = r.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    (median(r), lo, hi)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn checkpoint_bytes(model: &Model, state: Option<dst::SparseState>) -> Result<usize> {
    // Size of the safetensors checkpoint that training writes (weights, index, momentum, stats).
    let splits = generate(&SyntheticConfig {
        train: 4,
        valid: 2,
        test: 2,
        conflict_ratio: 0.5,
        seed: 1,
    })?;
    let config = TrainConfig {
        dataset: "synthetic".into(),
        ratio: 50.0,
        model: model.config.clone(),
        epochs: 1,
        batch_size: 2,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0,
        sparse: state.as_ref().map(|s| s.config.clone()),
        reweight: Reweight::Off,
        upweight: 1.0,
        reweight_mode: ReweightMode::Sampler,
        jtt_epochs: 1,
        augment: Augment::None,
        seed: 1,
        synthetic_train: None,
    };
    let mut t = Trainer::new(config, &splits)?;
    t.model = model.clone();
    t.opt = Sgd::new(&t.model.params, 0.01, 0.9, 0.0);
    t.sparse = state;
    let path = std::env::temp_dir().join(format!("rest-bench-{}.safetensors", std::process::id()));
    t.checkpoint().save(&path)?;
    let n = std::fs::metadata(&path)?.len() as usize;
    let _ = std::fs::remove_file(&path);
    Ok(n)
}

pub fn cpu(args: &CpuArgs) -> Result<()> {
    super::checks::check_run(&args.densities, args.steps, args.batch)?;
    if let Some(p) = &args.json {
        super::checks::check_json_path(p)?;
    }
    let shape = |arch| match arch {
        Arch::Cnn => (input_size(arch), args.batch),
        Arch::Resnet18 => (input_size(arch), (args.batch / 4).max(2)),
    };
    // Every model is checked before the first is measured.
    for &arch in &args.models {
        let (size, batch) = shape(arch);
        crate::train::check_memory(&bench_config(arch), size, size, batch)?;
    }
    let mut results = Vec::new();
    let cpu = crate::device::cpu::isa::cpu_description();
    println!(
        "rest bench cpu: {cpu}, {} threads; training step = forward + backward + SGD; topology fixed while timing",
        rayon::current_num_threads()
    );
    for &arch in &args.models {
        let (size, batch) = shape(arch);
        let name = format!("{arch:?}").to_lowercase();
        let inp = inputs(batch, size);
        println!("\n{name}, {size}x{size} px, batch {batch}");
        println!(
            "{:>9} {:>12} {:>8} {:>11} {:>12} {:>8} {:>11} {:>12} {:>8} {:>11}",
            "density",
            "train img/s",
            "×dense",
            "range",
            "infer img/s",
            "×dense",
            "range",
            "ckpt bytes",
            "×dense",
            "update ms"
        );
        // Every density's model first; then the timed steps in rounds, one step of each density
        // per round, so a slow spell of this (shared, noisy) machine hits all densities alike;
        // each density's speed is from its median step, its ratio the median of its per-round
        // ratios to the first density's step (with their range).
        let mut runs = Vec::new();
        for &d in &args.densities {
            let (model, state) = build(arch, d, batch, size)?;
            let opt = Sgd::new(&model.params, 0.01, 0.9, 0.0);
            runs.push((d, model, opt, state));
        }
        let train_times = rounds(args.steps, &mut runs, |(_, model, opt, _)| {
            train_step(model, opt, &inp, false).map(|_| ())
        })?;
        let infer_times = rounds(args.steps, &mut runs, |(_, model, _, _)| {
            let _awake = crate::device::cpu::KeepAwake::new();
            let mut tape = Tape::no_grad();
            let x = tape.input_shared(Rc::clone(&inp.images));
            model.forward(&mut tape, x, false).map(|_| ())
        })?;
        let (train_base, infer_base) = (train_times[0].clone(), infer_times[0].clone());
        let mut base_ckpt = None;
        for (i, (((d, model, opt, state), t_train), t_infer)) in runs
            .iter_mut()
            .zip(train_times)
            .zip(infer_times)
            .enumerate()
        {
            let d = *d;
            let (train_x, train_lo, train_hi) = speedup_spread(&train_base, &t_train);
            let (infer_x, infer_lo, infer_hi) = speedup_spread(&infer_base, &t_infer);
            let (t_train, t_infer) = (median(t_train), median(t_infer));
            let update_ms = match state.clone() {
                Some(mut s) => {
                    let mut rng = Rng::new(5);
                    let t = Instant::now();
                    let grads = train_step(model, opt, &inp, true)?;
                    s.update(model, opt, &grads, 1000, 100_000, &mut rng)?;
                    Some(1e3 * (t.elapsed().as_secs_f64() - t_train))
                }
                None => None,
            };
            let ck = checkpoint_bytes(model, state.clone())?;
            let b_ck = *base_ckpt.get_or_insert(ck);
            let r = CpuResult {
                cpu: cpu.clone(),
                model: name.clone(),
                density: d,
                batch,
                train_images_per_s: batch as f64 / t_train,
                train_speedup: train_x,
                train_speedup_range: (train_lo, train_hi),
                infer_images_per_s: batch as f64 / t_infer,
                infer_speedup: infer_x,
                infer_speedup_range: (infer_lo, infer_hi),
                checkpoint_bytes: ck,
                checkpoint_ratio: ck as f64 / b_ck as f64,
                update_ms,
            };
            // The baseline's ratios are 1 by definition: no range to show.
            let range = |(lo, hi): (f64, f64)| match i {
                0 => "-".to_string(),
                _ => format!("{lo:.2}–{hi:.2}"),
            };
            println!(
                "{:>9} {:>12.0} {:>8.2} {:>11} {:>12.0} {:>8.2} {:>11} {:>12} {:>8.3} {:>11}",
                d,
                r.train_images_per_s,
                r.train_speedup,
                range(r.train_speedup_range),
                r.infer_images_per_s,
                r.infer_speedup,
                range(r.infer_speedup_range),
                r.checkpoint_bytes,
                r.checkpoint_ratio,
                r.update_ms.map_or("-".into(), |m| format!("{m:.1}"))
            );
            results.push(r);
        }
        if args.profile {
            for (d, model, opt, _) in &mut runs {
                print_profile(*d, args.steps, model, opt, &inp)?;
            }
        }
        if args.densities.first() != Some(&1.0) {
            println!(
                "(ratios are to the first density listed, {}, not to dense)",
                args.densities[0]
            );
        }
    }
    if let Some(p) = &args.json {
        crate::checkpoint::write_atomic(p, serde_json::to_string_pretty(&results)?.as_bytes())?;
        println!("\nwrote {}", p.display());
    }
    Ok(())
}
