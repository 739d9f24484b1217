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
//! - training-step images/s of both models through `GpuModel` at densities 1, 0.05 and 0.01.
//!
//! Timing: one warm-up call (it also compiles the kernel files with NVRTC), then `--reps`
//! samples, each the mean over enough back-to-back calls to fill ~2 ms, bracketed by
//! `gpu.sync()`; the median sample is reported. On the emulator the numbers say nothing about a
//! GPU (`--device emu --quick` exists so tests can run the whole bench in seconds).

use crate::cli::device::gpu_for;
use crate::device::cpu::ConvGeom;
use crate::device::gpu::kernels::{conv, elementwise as ew, topk, xent};
use crate::device::gpu::model::GpuModel;
use crate::device::gpu::{Buf, Gpu};
use crate::dst::{self, SparseConfig};
use crate::nn::{Arch, Model, ModelConfig};
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::sparse::density::{layer_nnz, DensityRule};
use crate::sparse::topology::{prune_count, random_layer};
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use std::time::Instant;

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
}

/// Sizes of one bench run.
struct Plan {
    /// ResNet-18 width, input size and batch of the per-layer convolutions and the topology
    /// update.
    width: usize,
    size: usize,
    batch: usize,
    densities: Vec<f64>,
    /// (N, K) of the cross-entropy.
    xent: Vec<(usize, usize)>,
    topo_density: f64,
    /// (arch, width, batch, image size) of the training steps, and their densities.
    steps: Vec<(Arch, usize, usize, usize)>,
    step_densities: Vec<f64>,
    reps: usize,
}

impl Plan {
    fn new(quick: bool, reps: Option<usize>) -> Self {
        if quick {
            Plan {
                width: 4,
                size: 16,
                batch: 2,
                densities: vec![1.0, 0.1],
                xent: vec![(1000, 10)],
                topo_density: 0.05,
                steps: vec![(Arch::Cnn, 4, 4, 12), (Arch::Resnet18, 4, 2, 16)],
                step_densities: vec![1.0, 0.05],
                reps: reps.unwrap_or(1),
            }
        } else {
            Plan {
                width: 64,
                size: 32,
                batch: 64,
                densities: vec![1.0, 0.5, 0.2, 0.1, 0.05, 0.01, 0.005, 0.001],
                xent: vec![(65536, 10), (1 << 20, 10)],
                topo_density: 0.05,
                steps: vec![(Arch::Cnn, 64, 256, 28), (Arch::Resnet18, 64, 64, 32)],
                step_densities: vec![1.0, 0.05, 0.01],
                reps: reps.unwrap_or(5),
            }
        }
    }
}

/// Times `f` on `gpu`: seconds per call (median sample).
struct Timer<'a> {
    gpu: &'a Gpu,
    reps: usize,
}

impl Timer<'_> {
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?; // warm-up: NVRTC compiles on first use, caches fill
        self.gpu.sync()?;
        let t = Instant::now();
        f()?;
        self.gpu.sync()?;
        let one = t.elapsed().as_secs_f64();
        // Calls per sample: ~2 ms of work on a GPU so launch latency is amortised; one on the
        // emulator (it runs synchronously anyway).
        let inner = if self.gpu.is_emu() {
            1
        } else {
            ((2e-3 / one.max(1e-7)).ceil() as usize).clamp(1, 200)
        };
        let mut samples = Vec::with_capacity(self.reps);
        for _ in 0..self.reps.max(1) {
            self.gpu.sync()?;
            let t = Instant::now();
            for _ in 0..inner {
                f()?;
            }
            self.gpu.sync()?;
            samples.push(t.elapsed().as_secs_f64() / inner as f64);
        }
        Ok(median(&mut samples))
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// Results (the JSON file).

#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuBench {
    pub device: String,
    pub emulated: bool,
    pub quick: bool,
    pub reps: usize,
    pub conv: ConvSection,
    pub xent: Vec<XentRow>,
    pub topology_update: TopoRow,
    pub train_step: Vec<StepRow>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvSection {
    pub model: String,
    pub batch: usize,
    pub input: usize,
    pub layers: Vec<ConvLayerRow>,
    /// Per density: the three passes summed over every convolution of the network (each distinct
    /// shape times its number of layers), and the speed-up against dense.
    pub network: Vec<NetworkRow>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvLayerRow {
    /// The first layer of this shape, and how many layers of the network share it.
    pub layer: String,
    pub count: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Output pixels over the batch (N·OH·OW).
    pub pixels: usize,
    pub dense: Passes,
    pub sparse: Vec<SparseRow>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SparseRow {
    pub density: f64,
    pub nnz: usize,
    pub passes: Passes,
    /// Dense time / sparse time, per pass (fwd, bwd_data, bwd_weight).
    pub speedup: [f64; 3],
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Passes {
    pub fwd: PassTime,
    pub bwd_data: PassTime,
    pub bwd_weight: PassTime,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PassTime {
    pub ms: f64,
    /// Useful FLOPs (2·nnz·pixels) per second, in 10⁹.
    pub gflops: f64,
    /// Compulsory bytes per second, in 10⁹.
    pub gbs: f64,
}

impl PassTime {
    fn new(secs: f64, flops: f64, bytes: f64) -> Self {
        PassTime {
            ms: secs * 1e3,
            gflops: flops / secs / 1e9,
            gbs: bytes / secs / 1e9,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NetworkRow {
    pub density: f64,
    pub ms: f64,
    pub speedup: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct XentRow {
    pub n: usize,
    pub k: usize,
    pub xent_ms: f64,
    /// Bytes the fused kernel and its reduction touch (logits and dlogits, labels, weights,
    /// groups, losses, partials), per second, in 10⁹.
    pub xent_gbs: f64,
    /// y = α·x over N·K floats (8 bytes per float).
    pub copy_ms: f64,
    pub copy_gbs: f64,
    /// xent_gbs / copy_gbs.
    pub ratio: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TopoRow {
    pub model: String,
    pub layers: usize,
    pub weights: usize,
    pub density: f64,
    pub nnz: usize,
    /// Fraction of each layer's active weights pruned and regrown.
    pub death_rate: f64,
    pub pruned: usize,
    /// One layer at a time (`topk::update_layer`, 14–20 launches per layer).
    pub ms: f64,
    /// Every layer at once (`topk::update_layers`, each pass launched once; what `GpuModel`
    /// runs).
    pub batched_ms: f64,
    /// Kernel launches of one update: one layer at a time, and batched (which also copies its
    /// layer table to the device once).
    pub launches: usize,
    pub batched_launches: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StepRow {
    pub model: String,
    pub width: usize,
    pub batch: usize,
    pub image: usize,
    pub density: f64,
    pub ms: f64,
    pub images_per_s: f64,
    /// images/s over the dense model's, same model and batch.
    pub vs_dense: f64,
    /// Kernel launches of one (non-update) training step (`Gpu::launches`; the same on every
    /// backend). At low density a step on a GPU is bound by them, a few µs each.
    pub launches: u64,
}

// ---------------------------------------------------------------------------------------------

pub fn run(args: &GpuArgs) -> Result<()> {
    ensure!(
        args.reps != Some(0),
        "--reps must be at least 1 (timed samples per measurement)"
    );
    if let Some(p) = &args.json {
        super::checks::check_json_path(p)?;
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

    let conv = conv_section(&timer, &plan, &mut rng).context("convolution bench")?;
    let xent = xent_section(&timer, &plan, &mut rng).context("cross-entropy bench")?;
    let topology_update = topo_section(&timer, &plan, &mut rng).context("topology-update bench")?;
    let train_step =
        step_section(&gpu, &args.device, &plan, args.seed).context("training-step bench")?;
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
    if let Some(p) = &args.json {
        crate::checkpoint::write_atomic(p, serde_json::to_string_pretty(&results)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
        println!("results written to {}", p.display());
    }
    Ok(())
}

fn uniform(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
}

/// ResNet-18's convolutions at the plan's size: each distinct geometry once, with the name of its
/// first layer and how many layers share it.
fn resnet_convs(plan: &Plan) -> Result<Vec<(String, usize, ConvGeom)>> {
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        width: plan.width,
        in_channels: 3,
        num_classes: 10,
    };
    let model = Model::new(&cfg, 1)?;
    let mut out: Vec<(String, usize, ConvGeom)> = Vec::new();
    for wg in model.weight_geometry(plan.size, plan.size) {
        let shape = &model.params.params[wg.param].shape;
        if shape.len() != 4 {
            continue; // the linear layer
        }
        let g = ConvGeom::new(
            plan.batch,
            shape[1],
            wg.in_size.0,
            wg.in_size.1,
            shape[0],
            wg.k,
            wg.stride,
            wg.pad,
        )?;
        match out.iter_mut().find(|(_, _, o)| *o == g) {
            Some((_, n, _)) => *n += 1,
            None => out.push((wg.name.clone(), 1, g)),
        }
    }
    Ok(out)
}

fn conv_section(timer: &Timer, plan: &Plan, rng: &mut Rng) -> Result<ConvSection> {
    let gpu = timer.gpu;
    println!(
        "\n== convolution per layer: ResNet-18 width {}, {}×{} input, batch {} (ms per pass; × = \
         dense time / this time; GF/s useful = 2·nnz·pixels; GB/s compulsory traffic) ==",
        plan.width, plan.size, plan.size, plan.batch
    );
    println!(
        "{:<26} {:>6} {:>9} | {:>9} {:>7} {:>7} {:>7} | {:>9} {:>7} {:>7} | {:>9} {:>7} {:>7}",
        "layer (×count)",
        "dens",
        "nnz",
        "fwd ms",
        "×",
        "GF/s",
        "GB/s",
        "bwd-d ms",
        "×",
        "GF/s",
        "bwd-w ms",
        "×",
        "GF/s"
    );
    let f4 = 4.0f64;
    let mut layers = Vec::new();
    for (name, count, g) in resnet_convs(plan)? {
        let (rows, cols, pixels) = (g.cout, g.col_rows(), g.col_cols());
        let s = conv::ConvShape::new(&g)?;
        let (xl, yl, wl) = (s.x_len(), s.y_len(), s.w_len());
        let x = gpu.upload(&uniform(rng, xl))?;
        let dy = gpu.upload(&uniform(rng, yl))?;
        let dense_w = uniform(rng, wl);
        let w = gpu.upload(&dense_w)?;
        let mut y = gpu.zeros::<f32>(yl)?;
        let mut dx = gpu.zeros::<f32>(xl)?;
        let mut dw = gpu.zeros::<f32>(wl)?;
        let splits = conv::conv_bwd_weight_dense_splits(&g);
        let mut work =
            gpu.zeros::<f32>(conv::conv_bwd_weight_dense_workspace(&g, splits).max(1))?;
        let (xb, yb, wb) = (xl as f64 * f4, yl as f64 * f4, wl as f64 * f4);
        let flops = |nnz: usize| 2.0 * nnz as f64 * pixels as f64;

        let t_fwd = timer.time(|| conv::conv_fwd_dense(gpu, &g, &x, &w, None, &mut y))?;
        let t_bd = timer.time(|| conv::conv_bwd_data_dense(gpu, &g, &dy, &w, &mut dx))?;
        let t_bw = timer
            .time(|| conv::conv_bwd_weight_dense(gpu, &g, &x, &dy, &mut dw, Some(&mut work)))?;
        let dense = Passes {
            fwd: PassTime::new(t_fwd, flops(wl), xb + wb + yb),
            bwd_data: PassTime::new(t_bd, flops(wl), yb + wb + xb),
            bwd_weight: PassTime::new(t_bw, flops(wl), xb + yb + wb),
        };
        let short = name.strip_suffix(".weight").unwrap_or(&name);
        let label = format!("{short} (×{count})");
        print_layer_row(&label, 1.0, wl, &dense, None, true);

        let mut sparse = Vec::new();
        for &d in &plan.densities {
            let nnz = ((d * wl as f64).round() as usize).clamp(1, wl);
            let sw = random_layer(rows, cols, nnz, &dense_w, rng);
            let bufs = [
                gpu.upload(&sw.row_ptr)?,
                gpu.upload(&sw.col_idx)?,
                gpu.upload(&sw.values)?,
                gpu.upload(&sw.col_ptr)?,
                gpu.upload(&sw.csc_row)?,
                gpu.upload(&sw.csc_pos)?,
            ];
            let sp = conv::SparseBufs {
                row_ptr: &bufs[0],
                col_idx: &bufs[1],
                values: &bufs[2],
                col_ptr: &bufs[3],
                csc_row: &bufs[4],
                csc_pos: &bufs[5],
                nnz,
            };
            let mut dv = gpu.zeros::<f32>(nnz)?;
            let t_fwd = timer.time(|| conv::conv_fwd_sparse(gpu, &g, &x, &sp, None, &mut y))?;
            let t_bd = timer.time(|| conv::conv_bwd_data_sparse(gpu, &g, &dy, &sp, &mut dx))?;
            let t_bw =
                timer.time(|| conv::conv_bwd_weight_sparse(gpu, &g, &x, &dy, &sp, &mut dv))?;
            let nz = nnz as f64;
            let csr = nz * 8.0 + (rows + 1) as f64 * f4;
            let csc = nz * 12.0 + (cols + 1) as f64 * f4;
            let passes = Passes {
                fwd: PassTime::new(t_fwd, flops(nnz), xb + csr + yb),
                bwd_data: PassTime::new(t_bd, flops(nnz), yb + csc + xb),
                bwd_weight: PassTime::new(
                    t_bw,
                    flops(nnz),
                    xb + yb + nz * f4 + (rows + 1) as f64 * f4 + nz * f4,
                ),
            };
            let speedup = [
                dense.fwd.ms / passes.fwd.ms,
                dense.bwd_data.ms / passes.bwd_data.ms,
                dense.bwd_weight.ms / passes.bwd_weight.ms,
            ];
            print_layer_row("", d, nnz, &passes, Some(speedup), false);
            sparse.push(SparseRow {
                density: d,
                nnz,
                passes,
                speedup,
            });
        }
        layers.push(ConvLayerRow {
            layer: name,
            count,
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
            k: g.k,
            stride: g.stride,
            pad: g.pad,
            pixels,
            dense,
            sparse,
        });
    }

    // The whole network's convolutions, each shape weighted by its number of layers.
    let total = |p: &Passes| p.fwd.ms + p.bwd_data.ms + p.bwd_weight.ms;
    let dense_ms: f64 = layers
        .iter()
        .map(|l| l.count as f64 * total(&l.dense))
        .sum();
    println!("\nall convolutions of the network, fwd + bwd-data + bwd-weight:");
    println!("  dense kernels          {dense_ms:>9.3} ms");
    let mut network = Vec::new();
    for (i, &d) in plan.densities.iter().enumerate() {
        let ms: f64 = layers
            .iter()
            .map(|l| l.count as f64 * total(&l.sparse[i].passes))
            .sum();
        let speedup = dense_ms / ms;
        println!("  sparse at density {d:<5} {ms:>8.3} ms  ×{speedup:.2}");
        network.push(NetworkRow {
            density: d,
            ms,
            speedup,
        });
    }
    Ok(ConvSection {
        model: format!("resnet18 width {}", plan.width),
        batch: plan.batch,
        input: plan.size,
        layers,
        network,
    })
}

fn print_layer_row(
    label: &str,
    density: f64,
    nnz: usize,
    p: &Passes,
    speedup: Option<[f64; 3]>,
    dense: bool,
) {
    let x = |i: usize| match speedup {
        Some(s) => format!("{:.2}", s[i]),
        None => "dense".into(),
    };
    let dens = if dense {
        "dense".to_string()
    } else {
        format!("{density}")
    };
    println!(
        "{:<26} {:>6} {:>9} | {:>9.4} {:>7} {:>7.1} {:>7.1} | {:>9.4} {:>7} {:>7.1} | {:>9.4} {:>7} {:>7.1}",
        label,
        dens,
        nnz,
        p.fwd.ms,
        x(0),
        p.fwd.gflops,
        p.fwd.gbs,
        p.bwd_data.ms,
        x(1),
        p.bwd_data.gflops,
        p.bwd_weight.ms,
        x(2),
        p.bwd_weight.gflops
    );
}

fn xent_section(timer: &Timer, plan: &Plan, rng: &mut Rng) -> Result<Vec<XentRow>> {
    let gpu = timer.gpu;
    println!("\n== fused cross-entropy against a copy of the same logits ==");
    println!(
        "{:>8} {:>4} | {:>9} {:>8} | {:>9} {:>8} | {:>6}",
        "N", "K", "xent ms", "GB/s", "copy ms", "GB/s", "ratio"
    );
    let mut rows = Vec::new();
    for &(n, k) in &plan.xent {
        let logits = gpu.upload(&uniform(rng, n * k))?;
        let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| if i % 50 == 0 { 80.0 } else { 1.0 })
            .collect();
        let groups: Vec<u32> = (0..n).map(|i| (i % 50 == 0) as u32).collect();
        let inv_wsum = (1.0 / weights.iter().map(|&w| w as f64).sum::<f64>()) as f32;
        let (bl, bw, bg) = (
            gpu.upload(&labels)?,
            gpu.upload(&weights)?,
            gpu.upload(&groups)?,
        );
        let losses = gpu.zeros::<f32>(n)?;
        let dlogits = gpu.zeros::<f32>(n * k)?;
        let partials = gpu.zeros::<f32>(xent::partials_len(n))?;
        let stats = gpu.zeros::<f32>(xent::XENT_STATS)?;
        let bufs = xent::XentBufs {
            logits: &logits,
            labels: &bl,
            weights: &bw,
            groups: Some(&bg),
            losses: &losses,
            dlogits: &dlogits,
            partials: &partials,
            stats: &stats,
        };
        let t_x = timer.time(|| xent::cross_entropy(gpu, &bufs, n, k, 2, inv_wsum))?;
        // logits in, dlogits out; labels, weights, groups in, losses out; partials out and in.
        let xbytes = (2 * n * k + 4 * n + 2 * xent::partials_len(n)) as f64 * 4.0;
        let out = gpu.zeros::<f32>(n * k)?;
        let t_c = timer.time(|| ew::scale(gpu, &logits, &out, 1.0, n * k))?;
        let cbytes = (2 * n * k) as f64 * 4.0;
        let (xg, cg) = (xbytes / t_x / 1e9, cbytes / t_c / 1e9);
        println!(
            "{:>8} {:>4} | {:>9.4} {:>8.1} | {:>9.4} {:>8.1} | {:>6.2}",
            n,
            k,
            t_x * 1e3,
            xg,
            t_c * 1e3,
            cg,
            xg / cg
        );
        rows.push(XentRow {
            n,
            k,
            xent_ms: t_x * 1e3,
            xent_gbs: xg,
            copy_ms: t_c * 1e3,
            copy_gbs: cg,
            ratio: xg / cg,
        });
    }
    Ok(rows)
}

fn topo_section(timer: &Timer, plan: &Plan, rng: &mut Rng) -> Result<TopoRow> {
    let gpu = timer.gpu;
    let death_rate = 0.5;
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        width: plan.width,
        in_channels: 3,
        num_classes: 10,
    };
    let model = Model::new(&cfg, 1)?;
    let ids = model.params.weight_ids();
    let shapes: Vec<Vec<usize>> = ids
        .iter()
        .map(|&i| model.params.get(i).shape.clone())
        .collect();
    let nnzs = layer_nnz(&shapes, plan.topo_density, DensityRule::Erk)?;
    let mut layers = Vec::new();
    let mut scores: Vec<Buf> = Vec::new();
    let mut ws: Option<topk::TopkWorkspace> = None;
    let (mut weights, mut nnz_total, mut pruned) = (0usize, 0usize, 0usize);
    for (shape, &nnz) in shapes.iter().zip(&nnzs) {
        let rows = shape[0];
        let cols: usize = shape[1..].iter().product();
        let size = rows * cols;
        let nnz = nnz.clamp(1, size);
        let dense: Vec<f32> = (0..size).map(|_| rng.normal()).collect();
        let w = random_layer(rows, cols, nnz, &dense, rng);
        let momentum = vec![0.0f32; nnz];
        layers.push(topk::SparseLayerBufs::upload(gpu, &w, &momentum)?);
        let score: Vec<f32> = (0..size).map(|_| rng.normal()).collect();
        scores.push(gpu.upload(&score)?);
        let g = topk::Geometry::new(rows, cols, nnz)?;
        match &mut ws {
            Some(ws) => ws.ensure(gpu, &g)?,
            None => ws = Some(topk::TopkWorkspace::new(gpu, &g)?),
        }
        weights += size;
        nnz_total += nnz;
        pruned += prune_count(death_rate, nnz);
    }
    let mut ws = ws.context("a model without masked weights")?;
    let ks: Vec<usize> = layers
        .iter()
        .map(|l| prune_count(death_rate, l.nnz))
        .collect();
    let secs = timer.time(|| {
        for ((layer, score), &k) in layers.iter_mut().zip(&scores).zip(&ks) {
            topk::update_layer(gpu, layer, &mut ws, k, score)?;
        }
        Ok(())
    })?;
    let mut bws = topk::TopkBatchWorkspace::new(gpu, &topk::BatchLayout::new(&[]))?;
    let batched_secs = timer.time(|| {
        let items: Vec<topk::BatchItem> = layers
            .iter()
            .zip(&scores)
            .zip(&ks)
            .map(|((l, s), &k)| topk::BatchItem {
                layer: l.refs(),
                score: s,
                k_prune: k,
            })
            .collect();
        topk::update_layers(gpu, &items, &mut bws)
    })?;
    // Launch counts, from the plans the two paths run.
    let mut recs = Vec::new();
    let mut launches = 0;
    for (l, &k) in layers.iter().zip(&ks) {
        let g = topk::Geometry::new(l.rows, l.cols, l.nnz)?;
        if k > 0 {
            launches += topk::plan(&g, k, topk::TopkParams::default()).len();
            recs.push((g, k, topk::TopkParams::default()));
        }
    }
    let batched_launches = topk::plan_batched(&recs, &topk::TopkParams::default(), 0, 0)
        .steps
        .len();
    println!(
        "\n== topology update on the device: ResNet-18 width {}, {} layers, {} weights, ERK \
         density {} ({} active), death rate {death_rate} ({} pruned and regrown) ==",
        plan.width,
        layers.len(),
        weights,
        plan.topo_density,
        nnz_total,
        pruned
    );
    println!(
        "  one layer at a time: {:.3} ms per update of every layer ({launches} launches)",
        secs * 1e3
    );
    println!(
        "  batched:             {:.3} ms per update of every layer ({batched_launches} launches \
         and one table copy), {:.1}× the speed",
        batched_secs * 1e3,
        secs / batched_secs.max(1e-12)
    );
    Ok(TopoRow {
        model: format!("resnet18 width {}", plan.width),
        layers: layers.len(),
        weights,
        density: plan.topo_density,
        nnz: nnz_total,
        death_rate,
        pruned,
        ms: secs * 1e3,
        batched_ms: batched_secs * 1e3,
        launches,
        batched_launches,
    })
}

/// Training steps through `GpuModel` (each model on its own `Gpu` of the same device: the model
/// owns it; compiled kernel files are shared across them).
fn step_section(gpu: &Gpu, spec: &str, plan: &Plan, seed: u64) -> Result<Vec<StepRow>> {
    println!(
        "\n== training step through GpuModel (forward, reweighted cross-entropy, backward, SGD) =="
    );
    println!(
        "{:<9} {:>5} {:>5} {:>5} {:>7} | {:>9} {:>10} {:>8} {:>8}",
        "model", "width", "batch", "image", "density", "ms", "images/s", "vs dense", "launches"
    );
    let mut rows = Vec::new();
    for &(arch, width, batch, image) in &plan.steps {
        let mut dense_ips = None;
        for &density in &plan.step_densities {
            let cfg = ModelConfig {
                arch,
                width,
                in_channels: 3,
                num_classes: 10,
            };
            let mut model = Model::new(&cfg, seed)?;
            if density < 1.0 {
                dst::sparsify(&mut model, &SparseConfig::reference(density), seed)?;
            }
            let opt = Sgd::new(&model.params, 0.01, 0.9, 0.0);
            let dev = if gpu.is_emu() {
                Gpu::emu()
            } else {
                gpu_for(spec, "rest bench gpu")?.0
            };
            let mut gm = GpuModel::upload(dev, &model, &opt)?;
            let mut rng = Rng::new(seed);
            let images: Vec<f32> = (0..3 * batch * image * image)
                .map(|_| rng.normal())
                .collect();
            let labels: Vec<u32> = (0..batch).map(|_| rng.below(10) as u32).collect();
            let weights: Vec<f32> = (0..batch)
                .map(|i| if i % 20 == 0 { 80.0 } else { 1.0 })
                .collect();
            let groups: Vec<u32> = (0..batch).map(|i| (i % 20 == 0) as u32).collect();
            let launches0 = gm.gpu().launches();
            // `train_step` reads the losses back, so every step ends synchronised.
            let mut step = || -> Result<()> {
                gm.train_step(
                    &images,
                    (batch, image, image),
                    &labels,
                    &weights,
                    Some(&groups),
                    0.01,
                    false,
                )
                .map(|_| ())
            };
            let secs = time_steps(plan.reps, &mut step)?;
            // Every step is alike (no topology update): the warm-up and the timed ones.
            let launches = (gm.gpu().launches() - launches0) / (plan.reps.max(1) as u64 + 1);
            let ips = batch as f64 / secs;
            let base = *dense_ips.get_or_insert(ips);
            println!(
                "{:<9} {:>5} {:>5} {:>5} {:>7} | {:>9.3} {:>10.1} {:>8.2} {:>8}",
                format!("{arch:?}").to_lowercase(),
                width,
                batch,
                image,
                density,
                secs * 1e3,
                ips,
                ips / base,
                launches
            );
            rows.push(StepRow {
                model: format!("{arch:?}").to_lowercase(),
                width,
                batch,
                image,
                density,
                ms: secs * 1e3,
                images_per_s: ips,
                vs_dense: ips / base,
                launches,
            });
        }
    }
    ensure!(!rows.is_empty(), "no training step measured");
    Ok(rows)
}

/// Seconds per call of a synchronising `step`: one warm-up (allocates the activation arena), then
/// the median of `reps` calls.
fn time_steps(reps: usize, step: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    step()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        step()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(median(&mut samples))
}
