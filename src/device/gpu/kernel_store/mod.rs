//! Compiled kernels on disk: the cache NVRTC fills once per machine, and the folders
//! `rest device --export-kernels` writes for machines without NVRTC.
//!
//! Both are the same thing, a *kernel folder*: one file per kernel file and target
//! (`conv.sm_90.cubin`, `conv.compute_90.ptx`) and `manifest.json`, which names the kernel
//! sources' hash, and for each file its target, the NVRTC version that made it, its size and its
//! FNV-1a hash. A folder built from other sources, a file that differs from its manifest entry,
//! or a file of the wrong kind is refused with the command that rebuilds it.
//!
//! What a GPU of compute capability XY runs, best first: a cubin for sm_XY, a cubin for an
//! earlier sm_X* (same major: binary compatible), PTX for the highest compute_ab ≤ XY (the driver
//! compiles it, which needs a driver at least as new as the NVRTC that wrote it). A cubin needs
//! a driver of the same CUDA major as its NVRTC or newer.
//!
//! This file holds the compile step and the fingerprints; the folder and its manifest are in
//! `folder.rs`, the choice of file for a GPU and driver in `select.rs`, the cache and the
//! provider a GPU loads from in `provider.rs`.

mod folder;
mod provider;
mod select;

pub use folder::{export, Entry, Manifest};
pub use provider::{cache_dir, Provider, Source};
pub use select::{driver_accepts, load_from, nvrtc_target, Image};

use super::nvrtc::{Nvrtc, Target};
use super::{module_source_for_nvrtc, MODULES};
use anyhow::{anyhow, Result};

/// NVRTC options besides the architecture. Numerics as documented per kernel: no fast-math,
/// IEEE division and square root, fused multiply-adds allowed.
pub const COMPILE_OPTIONS: &[&str] = &["--fmad=true", "--std=c++17"];

/// 64-bit FNV-1a: a stable fingerprint (the same on every machine and Rust version), enough to
/// tell a stale or damaged file from the one the manifest describes. Not a security measure.
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The hash of everything that decides the compiled code: options, common.cuh and every kernel
/// file (name and text), as 16 hex digits.
pub fn source_hash() -> String {
    let mut all = COMPILE_OPTIONS.join(" ");
    for m in MODULES {
        all.push('\0');
        all.push_str(m.name);
        all.push('\0');
        all.push_str(&module_source_for_nvrtc(m));
    }
    format!("{:016x}", fnv64(all.as_bytes()))
}

/// Compiles one kernel file for `target`.
pub fn compile(nvrtc: &Nvrtc, module: &str, target: Target) -> Result<Vec<u8>> {
    let m = MODULES
        .iter()
        .find(|m| m.name == module)
        .ok_or_else(|| anyhow!("no kernel file named {module}"))?;
    nvrtc.compile(
        &module_source_for_nvrtc(m),
        &format!("kernels/{module}.cu"),
        target,
        COMPILE_OPTIONS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64_is_the_published_function() {
        // FNV-1a 64 test vectors: "" and "a".
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
