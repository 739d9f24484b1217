//! `rest bench`: `cpu` (dense against sparse training steps and inference, `cpu.rs`), `memory`
//! (peak memory of a short run per density, each in its own process, `memory.rs`) and `gpu` (the
//! CUDA engine per kernel family and per step, `gpu.rs`); `checks.rs` holds the option checks
//! they share.

pub mod checks;
pub mod cpu;
pub mod gpu;
pub mod memory;

pub use checks::check_json_path;
pub use cpu::{speedup_spread, CpuArgs, CpuResult};
pub use memory::{MemoryArgs, MemoryChildArgs};

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchWhat {
    /// Training step and inference, dense vs sparse, for both models on this CPU.
    Cpu(cpu::CpuArgs),
    /// Peak resident memory of a short training run, dense vs sparse (one process each).
    Memory(memory::MemoryArgs),
    /// The CUDA engine: sparse vs dense convolution per layer, cross-entropy bandwidth, topology
    /// update, training steps (on a GPU, or the emulator); with --cost, training steps estimated
    /// by the cost model (no GPU needed).
    Gpu(gpu::GpuArgs),
    #[command(hide = true)]
    MemoryChild(memory::MemoryChildArgs),
}

/// Runs the `rest bench` subcommand `what`.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.what {
        BenchWhat::Cpu(c) => cpu::cpu(c),
        BenchWhat::Memory(m) => memory::memory(m),
        BenchWhat::Gpu(g) => gpu::run(g),
        BenchWhat::MemoryChild(m) => memory::memory_child(m),
    }
}
