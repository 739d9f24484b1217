//! `rest bench gpu`: the CUDA engine's speed, every ratio measured in the same run on the same
//! device:
//! - per layer, sparse against dense convolution (forward, input gradient, weight gradient) on
//!   ResNet-18's distinct convolution shapes (32×32 input, batch 64, width 64) at a range of
//!   densities (uniform random masks): time per pass, useful GFLOP/s (2·nnz·pixels), GB/s of the
//!   compulsory traffic (each tensor and index array read or written once), speed-up against the
//!   dense kernel;
//! - the fused cross-entropy's bandwidth against a plain copy kernel's (`elementwise_scale_f32`)
//!   over the same number of logits;
//! - one topology update (prune and regrow) of every masked weight of ResNet-18 (11 M weights,
//!   ERK density 0.05) with the device kernels, one layer at a time and batched (every layer's
//!   pass in one launch), with each path's launch count;
//! - training-step images/s of both models (the tape on the device) at densities 1, 0.05 and 0.01.
//!
//! With `--cost`, nothing is timed: training steps of the CMNIST CNN and ResNet-18 (32 and 128 px,
//! batch 64 and 256, densities 1, 0.05, 0.01) run on the dry emulator and the cost model prices
//! them on the GPU named by `--gpu-model` (`cost.rs`, `device::gpu::cost`).
//!
//! Timing: one warm-up call (it also compiles the kernel files with NVRTC), then `--reps`
//! samples, each the mean over enough back-to-back calls to fill ~2 ms, bracketed by
//! `gpu.sync()`; the median sample is reported. On the emulator the numbers say nothing about a
//! GPU (`--device emu --quick` exists so tests can run the whole bench in seconds).
//!
//! One file per section, named as the kernel family it times (`conv.rs`, `xent.rs`, `topk.rs`)
//! and `step.rs` for whole training steps; `timing.rs` holds the sizes and the timer.

mod conv;
mod cost;
mod step;
mod timing;
mod topk;
mod xent;

pub use conv::{ConvLayerRow, ConvSection, NetworkRow, PassTime, Passes, SparseRow};
pub use cost::{measure_step, record_step, CostRow, StepSpec};
pub use step::StepRow;
pub use topk::TopkRow;
pub use xent::XentRow;

use crate::cli::device::gpu_for;
use crate::rng::Rng;
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use timing::{Plan, Timer};

#[derive(clap::Args, Debug)]
pub struct GpuArgs {
    /// cuda[:N] (a GPU) or emu (the emulator: the numbers then mean nothing).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tiny shapes and one sample per measurement (for tests on the emulator).
    #[arg(long)]
    pub quick: bool,
    /// Timed samples per measurement (the median is reported); default 5, 1 with --quick.
    #[arg(long)]
    pub reps: Option<usize>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Estimate instead of measure: cost training steps with the cost model (every kernel's
    /// stated bytes and FLOPs, priced by a roofline of --gpu-model). Needs no GPU and ignores
    /// --device; the figures are estimates, not measurements.
    #[arg(long)]
    pub cost: bool,
    /// The GPU --cost prices for: h100 (SXM) or h200.
    #[arg(long, default_value = "h100", requires = "cost")]
    pub gpu_model: String,
    /// With --cost: each step's kernels, largest estimated time first.
    #[arg(long, requires = "cost")]
    pub per_kernel: bool,
}

// Results (the JSON file).

#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuBench {
    pub device: String,
    pub emulated: bool,
    pub quick: bool,
    pub reps: usize,
    pub conv: conv::ConvSection,
    pub xent: Vec<xent::XentRow>,
    pub topology_update: topk::TopkRow,
    pub train_step: Vec<step::StepRow>,
}

pub fn run(args: &GpuArgs) -> Result<()> {
    ensure!(
        args.reps != Some(0),
        "--reps must be at least 1 (timed samples per measurement)"
    );
    if let Some(p) = &args.json {
        super::checks::check_json_path(p)?;
    }
    if args.cost {
        let spec = cost::spec(&args.gpu_model)?;
        let rows = cost::section(&spec, args.quick, args.per_kernel, args.seed)?;
        return write_json(args, &rows);
    }
    let (gpu, why) = gpu_for(&args.device, "rest bench gpu")?;
    let plan = Plan::new(args.quick, args.reps);
    let emu_note = "(emulator: the CUDA kernels run on the CPU, so these times say nothing about \
                    a GPU; use --device cuda for real numbers)";
    println!("bench gpu on {} ({why})", gpu.describe());
    if gpu.is_emu() {
        println!("{emu_note}");
        if !args.quick {
            println!(
                "(the full-size bench takes tens of minutes on the emulator: --quick runs tiny \
                 shapes in seconds)"
            );
        }
    }
    let timer = Timer {
        gpu: &gpu,
        reps: plan.reps,
    };
    let mut rng = Rng::new(args.seed);

    let conv = conv::section(&timer, &plan, &mut rng).context("convolution bench")?;
    let xent = xent::section(&timer, &plan, &mut rng).context("cross-entropy bench")?;
    let topology_update =
        topk::section(&timer, &plan, &mut rng).context("topology-update bench")?;
    let train_step =
        step::section(&gpu, &args.device, &plan, args.seed).context("training-step bench")?;
    if gpu.is_emu() {
        println!("\n{emu_note}");
    }
    let results = GpuBench {
        device: gpu.describe(),
        emulated: gpu.is_emu(),
        quick: args.quick,
        reps: plan.reps,
        conv,
        xent,
        topology_update,
        train_step,
    };
    write_json(args, &results)
}

fn write_json(args: &GpuArgs, results: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = &args.json {
        crate::checkpoint::write_atomic(p, serde_json::to_string_pretty(results)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
        println!("results written to {}", p.display());
    }
    Ok(())
}
