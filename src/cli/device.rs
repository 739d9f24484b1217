//! `rest device`: which backend would run and why, `--check` (every CUDA kernel against its CPU
//! twin), `--export-kernels`; and the device choice of the other commands.

use crate::device::{self, Device, DeviceRequest};
use anyhow::{bail, ensure, Context, Result};

pub(crate) fn choose_device(spec: &str, quiet: bool) -> Result<Device> {
    let req: DeviceRequest = spec.parse()?;
    let (dev, why) = device::resolve(req)?;
    if !quiet {
        eprintln!("device: {dev} ({why})");
    }
    Ok(dev)
}

#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// auto | cpu | cuda[:N] | emu.
    #[arg(long, env = "REST_DEVICE", default_value = "auto")]
    pub device: String,
    /// Run every CUDA kernel against its CPU twin on random inputs on the device (cuda or emu)
    /// and print a pass/fail table; fails when any kernel does.
    #[arg(long)]
    pub check: bool,
    /// Seed of the check's random inputs.
    #[arg(long, default_value_t = 1, requires = "check")]
    pub check_seed: u64,
    /// Compile every kernel file with NVRTC into DIR (cubins and PTX, with a manifest) for a
    /// machine without NVRTC, which runs them with REST_KERNEL_DIR=DIR. Needs no GPU.
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    pub export_kernels: Option<std::path::PathBuf>,
    /// Architectures for --export-kernels, comma-separated: sm_XY writes a cubin and the PTX of
    /// compute_XY beside it; compute_XY writes PTX only.
    #[arg(long, value_name = "LIST", default_value = device::gpu::info::DEFAULT_EXPORT_ARCHS, requires = "export_kernels")]
    pub arch: String,
}

/// The CUDA backend a device request names, for commands that need one (`--check`, the GPU
/// bench): `emu`, `cuda[:N]` (an error saying why when it is unusable), or for `auto` GPU 0 when
/// it is usable, else the emulator — with the reason in words. `cpu` is refused.
pub fn gpu_for(spec: &str, what: &str) -> Result<(device::gpu::Gpu, String)> {
    use device::gpu::Gpu;
    use device::Device;
    Ok(match spec.parse::<DeviceRequest>()? {
        DeviceRequest::Exact(Device::Cpu) => bail!(
            "{what} runs the CUDA kernels: it needs --device cuda[:N] (a GPU) or emu (the \
             emulator), not cpu"
        ),
        DeviceRequest::Exact(Device::Emu) => (Gpu::emu(), "requested with --device emu".into()),
        DeviceRequest::Exact(Device::Cuda(i)) => {
            let gpu = Gpu::cuda(i)
                .with_context(|| format!("--device cuda:{i}: the GPU is not usable"))?;
            (gpu, format!("requested with --device cuda:{i}"))
        }
        DeviceRequest::Auto => match Gpu::cuda(0) {
            Ok(gpu) => (gpu, "auto: GPU 0 is usable".into()),
            Err(e) => (
                Gpu::emu(),
                format!("auto: no usable GPU ({e:#}), so the emulator"),
            ),
        },
    })
}

/// `rest device`.
pub fn run(args: &DeviceArgs) -> Result<()> {
    if let Some(dir) = &args.export_kernels {
        return device::gpu::info::export_kernels(dir, &args.arch);
    }
    device::gpu::info::print_environment();
    println!("CPU threads: {}", rayon::current_num_threads());
    if !args.check {
        let (dev, why) = device::resolve(args.device.parse()?)?;
        println!("backend: {dev} ({why})");
        if let Device::Cuda(i) = dev {
            device::gpu::info::print_gpu(i)?;
        }
        return Ok(());
    }
    let (gpu, why) = gpu_for(&args.device, "--check")?;
    println!("check on: {} ({why})", gpu.describe());
    if let device::gpu::Gpu::Cuda(c) = &gpu {
        for (k, v) in c.report() {
            println!("{k}: {v}");
        }
    }
    if gpu.is_emu() {
        println!(
            "(the emulator runs the kernels' own code on the CPU; on a GPU the same check \
                  also covers the compiler and the hardware)"
        );
    }
    let t = std::time::Instant::now();
    let rows = device::gpu::check::run(&gpu, args.check_seed)?;
    print!("{}", device::gpu::check::render(&rows));
    let failed = rows.iter().filter(|r| !r.pass).count();
    let kernels: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.kernel).collect();
    println!(
        "{} checks of {} kernels in {:.1} s: {}",
        rows.len(),
        kernels.len(),
        t.elapsed().as_secs_f64(),
        if failed == 0 {
            "all pass".to_string()
        } else {
            format!("{failed} FAIL")
        }
    );
    ensure!(
        failed == 0,
        "{failed} of {} kernel checks failed on {}",
        rows.len(),
        gpu.describe()
    );
    Ok(())
}
