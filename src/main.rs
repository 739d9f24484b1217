//! The `rest` command line: parse, then call the library.

use clap::{Parser, Subcommand};
use rest::cli;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "rest",
    version,
    about = "Reweighted sparse training (REST) of bias-robust image classifiers",
    long_about = "Trains sparse networks from scratch (RigL-style dynamic sparse training: ERK layer \
densities, magnitude pruning, gradient regrowth) while upweighting the rare bias-conflicting \
samples, so the network stops leaning on spurious features. Sparse layers run on real sparse \
kernels, so fewer FLOPs become less time.\n\nStart with:  rest train            (REST on Colored MNIST)\n             rest train --dataset synthetic --epochs 2   (no download)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model: REST, sparse, dense + reweighting, or vanilla dense.
    Train(Box<cli::TrainArgs>),
    /// Report per-group accuracy of a saved checkpoint.
    Eval(cli::EvalArgs),
    /// Class and class probabilities of PNG images under a trained model.
    Predict(rest::predict::PredictArgs),
    /// Write a checkpoint as a dense PyTorch state dict (load_state_dict takes it as it is).
    Export(rest::export::ExportArgs),
    /// Fetch, generate and inspect datasets.
    Data(rest::data::cli::DataArgs),
    /// Which compute backend would run, and why.
    Device(cli::DeviceArgs),
    /// Measure speed and memory: dense vs sparse, in one run.
    Bench(rest::bench::BenchArgs),
    /// Run the paper's experiment grids (or emit them as a Slurm array), then tables and plots.
    Reproduce(Box<rest::reproduce::ReproduceArgs>),
}

/// Large buffers that the CPU engine's pool (`device::cpu::buffers`: outputs a kernel overwrites
/// and the step's large scratch) does not serve are allocated fresh every step: gradients,
/// optimiser scratch, loader batches, the GPU's host copies. glibc serves blocks above its mmap
/// threshold (128 KiB, adapting up to 32 MiB) with mmap and returns them with munmap on free, so
/// each step paid a page fault per 4 KiB of every such buffer (before the pool, ~40 % of a
/// training run was kernel time). Serving all sizes from the heap and not trimming it lets a step
/// reuse the previous step's pages. A replacement allocator crate was not taken (a new dependency
/// for one setting).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc malloc tunables; it is called once, before any other
    // thread exists, with valid parameter constants and values.
    unsafe {
        // M_MMAP_THRESHOLD is capped at 32 MiB, below our largest buffers, so turn mmap off.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Runs the command on a thread of rayon's pool rather than on the main thread. A parallel loop
/// started from outside the pool queues its work there and puts the caller to sleep until it is
/// done; started from a pool thread, the caller works on it itself and the other threads steal.
/// A training step runs dozens of parallel loops, each a fraction of a millisecond at low density,
/// so the hand-off showed: the CMNIST CNN step at density 0.01 ran 5–10 % faster from inside the
/// pool (`rest bench cpu`, alternated runs). The pool threads get the main thread's usual 8 MiB
/// stack.
fn run_in_pool(parsed: &Cli) -> Result<(), anyhow::Error> {
    match rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build() {
        Ok(pool) => pool.install(|| run(parsed)),
        Err(e) => Err(anyhow::anyhow!("cannot start the worker threads: {e}")),
    }
}

/// An environment variable set to the empty string (`REST_DEVICE= rest train`) means "not set":
/// clap would otherwise take "" as the option's value and report an empty `--data-dir`.
fn drop_empty_env() {
    for var in ["REST_DEVICE", "REST_DATA_DIR"] {
        if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(var);
        }
    }
}

/// Output piped into a command that stops reading (`rest reproduce --dry-run | head`) ends the
/// process quietly, as for other Unix tools, instead of a panic in `println!` on EPIPE.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE, once, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    default_sigpipe();
    drop_empty_env();
    let parsed = Cli::parse();
    match run_in_pool(&parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(parsed: &Cli) -> Result<(), anyhow::Error> {
    match &parsed.command {
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Predict(a) => rest::predict::run(a),
        Command::Export(a) => rest::export::run(a),
        Command::Data(a) => rest::data::cli::run(a),
        Command::Device(a) => cli::device::run(a),
        Command::Bench(a) => rest::bench::run(a),
        Command::Reproduce(a) => rest::reproduce::run(a),
    }
}
