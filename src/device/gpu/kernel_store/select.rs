//! Which compiled file a GPU and its driver can run: the ranking of a folder's entries by
//! architecture, the driver's CUDA version against the NVRTC that compiled a file, and what
//! NVRTC compiles for a GPU it may not know.

use super::folder::{read_entry, rebuild_hint, Entry, Manifest};
use crate::device::gpu::nvrtc::Target;
use anyhow::{bail, Result};
use std::path::Path;

/// A compiled kernel file ready for `cuModuleLoadData`.
pub struct Image {
    /// The cubin, or the PTX with its terminating NUL.
    pub bytes: Vec<u8>,
    pub target: Target,
    pub nvrtc: (u32, u32),
    /// Where it came from, in words.
    pub from: String,
}

/// Whether a driver supporting CUDA `driver` (major, minor) can load what NVRTC `nvrtc` made
/// for `target`; `Err` names why not.
pub fn driver_accepts(driver: (u32, u32), nvrtc: (u32, u32), target: Target) -> Result<()> {
    if target.is_cubin() {
        if driver.0 < nvrtc.0 {
            bail!(
                "a {target} cubin from NVRTC {}.{} needs a driver for CUDA {}.x, and this driver \
                 supports CUDA {}.{}: update the driver, or compile with NVRTC {}.x \
                 (REST_NVRTC_DIR, or `pip install nvidia-cuda-nvrtc-cu12` for CUDA 12)",
                nvrtc.0,
                nvrtc.1,
                nvrtc.0,
                driver.0,
                driver.1,
                driver.0
            );
        }
    } else if driver < nvrtc {
        bail!(
            "{target} PTX from NVRTC {}.{} needs a driver for CUDA ≥ {}.{} to compile it, and \
             this driver supports CUDA {}.{}: update the driver, or use an NVRTC no newer than \
             the driver (e.g. `pip install nvidia-cuda-nvrtc=={}.{}.*`)",
            nvrtc.0,
            nvrtc.1,
            nvrtc.0,
            nvrtc.1,
            driver.0,
            driver.1,
            driver.0,
            driver.1
        );
    }
    Ok(())
}

/// The manifest entries of `module` a GPU of architecture `arch` can run, best first.
pub(super) fn usable<'a>(man: &'a Manifest, module: &str, arch: u32) -> Vec<(&'a Entry, Target)> {
    let mut v: Vec<(u32, &Entry, Target)> = man
        .entries
        .iter()
        .filter(|e| e.module == module)
        .filter_map(|e| {
            let t: Target = e.target.parse().ok()?;
            let rank = match t {
                Target::Sm(a) if a == arch => 0,
                // Same major, lower minor: binary compatible.
                Target::Sm(a) if a / 10 == arch / 10 && a < arch => 1000 - a,
                Target::Sm(_) => return None,
                Target::Compute(a) if a <= arch => 2000 - a,
                Target::Compute(_) => return None,
            };
            Some((rank, e, t))
        })
        .collect();
    v.sort_by_key(|(rank, e, _)| (*rank, std::cmp::Reverse(e.nvrtc)));
    v.into_iter().map(|(_, e, t)| (e, t)).collect()
}

/// The best file of `module` in a kernel folder for a GPU of architecture `arch` whose driver
/// supports CUDA `driver`, read and checked.
pub fn load_from(
    dir: &Path,
    man: &Manifest,
    module: &str,
    arch: u32,
    driver: (u32, u32),
) -> Result<Image> {
    let cands = usable(man, module, arch);
    if cands.is_empty() {
        let have: Vec<&str> = man
            .entries
            .iter()
            .filter(|e| e.module == module)
            .map(|e| e.target.as_str())
            .collect();
        bail!(
            "kernel folder {} has no kernels/{module}.cu for sm_{arch} (it has: {}); {}",
            dir.display(),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            },
            rebuild_hint(dir, Some(arch))
        );
    }
    let mut why = Vec::new();
    for (e, t) in cands {
        let nvrtc = (e.nvrtc[0], e.nvrtc[1]);
        if let Err(err) = driver_accepts(driver, nvrtc, t) {
            why.push(format!("{}: {err}", e.file));
            continue;
        }
        let bytes = read_entry(dir, e, t)?;
        return Ok(Image {
            bytes,
            target: t,
            nvrtc,
            from: dir.display().to_string(),
        });
    }
    bail!(
        "kernel folder {}: no file of kernels/{module}.cu that this driver can load:\n  {}",
        dir.display(),
        why.join("\n  ")
    )
}

/// What NVRTC (knowing the real architectures `archs`) compiles for a GPU of architecture
/// `arch`: its own sm_XY when NVRTC knows it, else PTX for the newest architecture NVRTC knows
/// below it (the driver compiles that PTX for the GPU); `None` when NVRTC knows none at or below.
pub fn nvrtc_target(archs: &[u32], arch: u32) -> Option<Target> {
    if archs.contains(&arch) {
        return Some(Target::Sm(arch));
    }
    archs
        .iter()
        .copied()
        .filter(|&a| a <= arch)
        .max()
        .map(Target::Compute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvrtc_makes_cubins_for_known_architectures_and_ptx_for_others() {
        let archs = [75, 80, 86, 89, 90, 100, 120];
        assert_eq!(nvrtc_target(&archs, 90), Some(Target::Sm(90)));
        assert_eq!(nvrtc_target(&archs, 86), Some(Target::Sm(86)));
        // A GPU newer than this NVRTC: PTX of the newest it knows below, for the driver's JIT.
        assert_eq!(nvrtc_target(&archs, 103), Some(Target::Compute(100)));
        assert_eq!(nvrtc_target(&archs, 130), Some(Target::Compute(120)));
        // Older than anything it knows (CUDA 13 dropped Volta): nothing.
        assert_eq!(nvrtc_target(&archs, 70), None);
    }
}
