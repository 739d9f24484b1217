//! `rest bench memory`: peak resident memory of a short training run per density, each in its own
//! process (`memory-child`).

use super::checks::check_run;
use super::cpu::{bench_config, build, input_size, inputs, train_step};
use crate::nn::Arch;
use crate::optim::Sgd;
use anyhow::{ensure, Context, Result};

#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    #[arg(long, value_enum, default_value_t = Arch::Resnet18)]
    pub model: Arch,
    #[arg(long, value_delimiter = ',', default_value = "1,0.05")]
    pub densities: Vec<f64>,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
}

#[derive(clap::Args, Debug)]
pub struct MemoryChildArgs {
    #[arg(long, value_enum)]
    pub model: Arch,
    #[arg(long)]
    pub density: f64,
    #[arg(long)]
    pub batch: usize,
    #[arg(long)]
    pub steps: usize,
}

/// Peak resident set size of this process, from /proc (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn memory_child(a: &MemoryChildArgs) -> Result<()> {
    let size = input_size(a.model);
    let (mut model, _) = build(a.model, a.density, a.batch, size)?;
    let mut opt = Sgd::new(&model.params, 0.01, 0.9, 0.0);
    let inp = inputs(a.batch, size);
    for _ in 0..a.steps {
        train_step(&mut model, &mut opt, &inp, false)?;
    }
    println!(
        "{}",
        peak_rss().context("peak memory is only read on Linux (/proc/self/status)")?
    );
    Ok(())
}

pub fn memory(a: &MemoryArgs) -> Result<()> {
    check_run(&a.densities, a.steps, a.batch)?;
    let size = input_size(a.model);
    crate::train::check_memory(&bench_config(a.model), size, size, a.batch)?;
    let exe = std::env::current_exe()?;
    println!(
        "peak resident memory of {} training steps, {:?}, batch {} (one process each)",
        a.steps, a.model, a.batch
    );
    let mut dense = None;
    for &d in &a.densities {
        let out = std::process::Command::new(&exe)
            .args([
                "bench",
                "memory-child",
                "--model",
                &format!("{:?}", a.model).to_lowercase(),
                "--density",
                &d.to_string(),
                "--batch",
                &a.batch.to_string(),
                "--steps",
                &a.steps.to_string(),
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "memory run at density {d} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("memory run printed no number")?;
        let base = *dense.get_or_insert(bytes);
        println!(
            "density {d:>7}: peak {:>8.1} MiB ({:.2}× the first)",
            bytes / 1048576.0,
            bytes / base
        );
    }
    Ok(())
}
