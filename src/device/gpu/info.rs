//! What `rest device` prints about the CUDA side of this machine, and `--export-kernels`.

use super::nvrtc::{self, Target};
use super::{cuda::CudaGpu, kernel_store, MODULES};
use anyhow::{bail, Result};
use std::path::Path;

/// The architectures `--export-kernels` writes by default: Ampere (A100, A10/30-series),
/// Ada (L4, L40, 40-series) and Hopper (H100, H200), as cubins, plus their PTX.
pub const DEFAULT_EXPORT_ARCHS: &str = "sm_80,sm_86,sm_89,sm_90";

/// Driver, NVRTC and kernel source lines. Says plainly when there is no GPU driver.
pub fn print_environment() {
    match super::driver::probe() {
        Ok(d) => println!(
            "CUDA driver: {} (supports CUDA {}.{})",
            d.version.as_deref().unwrap_or("version unknown"),
            d.cuda.0,
            d.cuda.1
        ),
        Err(e) => println!("CUDA driver: none usable, so no GPU: {e:#}"),
    }
    match nvrtc::get() {
        Ok(n) => println!(
            "NVRTC: {}.{} ({}); cubins for sm_{}",
            n.version.0,
            n.version.1,
            n.origin,
            n.archs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Err(e) => println!("NVRTC: not found ({e:#}); a GPU can still run exported kernels"),
    }
    println!(
        "CUDA kernels: {} in {} files, sources hash {}",
        super::all_kernels().len(),
        MODULES.len(),
        kernel_store::source_hash()
    );
    match std::env::var_os("REST_KERNEL_DIR").filter(|d| !d.is_empty()) {
        Some(d) => println!(
            "kernel folder: {} (REST_KERNEL_DIR)",
            Path::new(&d).display()
        ),
        None => println!(
            "kernel cache: {}",
            kernel_store::cache_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "none (no HOME or XDG_CACHE_HOME)".into())
        ),
    }
}

/// GPU `ordinal`'s details, and every kernel file loaded onto it with where it came from.
pub fn print_gpu(ordinal: usize) -> Result<()> {
    let gpu = CudaGpu::new(ordinal)?;
    for (k, v) in gpu.report() {
        println!("{k}: {v}");
    }
    let t = std::time::Instant::now();
    let loaded = gpu.load_all()?;
    println!("kernel files loaded in {:.2} s:", t.elapsed().as_secs_f64());
    for l in loaded {
        println!("  {l}");
    }
    Ok(())
}

/// Parses `--arch`: each `sm_XY` gives the cubin and the PTX of compute_XY, each `compute_XY`
/// the PTX; duplicates dropped, order kept.
pub fn export_targets(list: &str) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let t: Target = item.parse()?;
        let add = match t {
            Target::Sm(a) => vec![t, Target::Compute(a)],
            Target::Compute(_) => vec![t],
        };
        for t in add {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    if out.is_empty() {
        bail!("--arch names no architecture (e.g. --arch sm_80,sm_90)");
    }
    Ok(out)
}

/// `rest device --export-kernels DIR --arch LIST`.
pub fn export_kernels(dir: &Path, archs: &str) -> Result<()> {
    let targets = export_targets(archs)?;
    let n = nvrtc::get().map_err(|e| {
        anyhow::anyhow!("--export-kernels compiles with NVRTC, which is needed here: {e:#}")
    })?;
    let unknown: Vec<String> = targets
        .iter()
        .filter(|t| !n.archs.contains(&t.arch()))
        .map(|t| t.to_string())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "NVRTC {}.{} does not know {} (it knows sm_{:?}): drop them from --arch, or use \
             another NVRTC (REST_NVRTC_DIR)",
            n.version.0,
            n.version.1,
            unknown.join(", "),
            n.archs
        );
    }
    let t = std::time::Instant::now();
    let man = kernel_store::export(n, dir, &targets)?;
    let bytes: u64 = man.entries.iter().map(|e| e.bytes).sum();
    println!(
        "exported {} files ({} kernel files × {}) to {} in {:.1} s, {:.1} MB, NVRTC {}.{}, \
         sources hash {}",
        man.entries.len(),
        MODULES.len(),
        targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        dir.display(),
        t.elapsed().as_secs_f64(),
        bytes as f64 / 1e6,
        n.version.0,
        n.version.1,
        man.source_hash
    );
    let min_driver = if targets.iter().any(|t| !t.is_cubin()) {
        format!(
            "cubins need a driver for CUDA {}.x or newer, the PTX one for CUDA ≥ {}.{}",
            n.version.0, n.version.0, n.version.1
        )
    } else {
        format!("cubins need a driver for CUDA {}.x or newer", n.version.0)
    };
    println!(
        "use on a GPU machine (no NVRTC needed): REST_KERNEL_DIR={} rest ...; {min_driver}",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_targets_expand_sm_to_cubin_and_ptx() {
        assert_eq!(
            export_targets("sm_80, compute_90,sm_80").unwrap(),
            vec![Target::Sm(80), Target::Compute(80), Target::Compute(90)]
        );
        assert!(export_targets(" , ").is_err());
        assert!(export_targets("sm_80,volta").is_err());
    }
}
