//! A kernel folder on disk: its manifest, the files written into it (through a temporary file
//! and a rename), and one file read back and checked against its manifest entry.

use super::{compile, fnv64, source_hash};
use crate::device::gpu::nvrtc::{Nvrtc, Target};
use crate::device::gpu::MODULES;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

const FORMAT: &str = "rest-kernels/1";
const MANIFEST: &str = "manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub module: String,
    /// `sm_XY` (cubin) or `compute_XY` (PTX).
    pub target: String,
    /// NVRTC major and minor that compiled it.
    pub nvrtc: [u32; 2],
    pub file: String,
    pub bytes: u64,
    /// [`fnv64`] of the file, 16 hex digits.
    pub fnv64: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    /// [`source_hash`] of the rest that wrote it.
    pub source_hash: String,
    pub rest_version: String,
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub(super) fn new() -> Self {
        Manifest {
            format: FORMAT.into(),
            source_hash: source_hash(),
            rest_version: env!("CARGO_PKG_VERSION").into(),
            entries: Vec::new(),
        }
    }

    /// The manifest of `dir`, checked to belong to this rest's kernel sources.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "kernel folder {}: cannot read {MANIFEST}; {}",
                dir.display(),
                rebuild_hint(dir, None)
            )
        })?;
        let m: Manifest = serde_json::from_str(&text).with_context(|| {
            format!(
                "kernel folder {}: {MANIFEST} is not a rest kernel manifest; {}",
                dir.display(),
                rebuild_hint(dir, None)
            )
        })?;
        if m.format != FORMAT {
            bail!(
                "kernel folder {}: manifest format '{}', this rest reads '{FORMAT}'; {}",
                dir.display(),
                m.format,
                rebuild_hint(dir, None)
            );
        }
        let ours = source_hash();
        if m.source_hash != ours {
            bail!(
                "kernel folder {} was built from other kernel sources (hash {}, rest {}; this \
                 rest's kernels hash {ours}): it is stale or foreign; {}",
                dir.display(),
                m.source_hash,
                m.rest_version,
                rebuild_hint(dir, None)
            );
        }
        Ok(m)
    }

    pub(super) fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic_unique(&dir.join(MANIFEST), text.as_bytes())
    }
}

/// The command that rebuilds a kernel folder, for error messages.
pub(super) fn rebuild_hint(dir: &Path, arch: Option<u32>) -> String {
    let arch = arch.map_or("sm_80,sm_90".to_string(), |a| format!("sm_{a}"));
    format!(
        "rebuild it with this rest binary on a machine with NVRTC: `rest device --export-kernels \
         {} --arch {arch}`",
        dir.display()
    )
}

/// Writes through a temporary file named after this process and thread, then renames: two
/// processes filling the same cache never write into one temporary file.
fn write_atomic_unique(path: &Path, bytes: &[u8]) -> Result<()> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot move {} to {}", tmp.display(), path.display())
    })
}

fn file_name(module: &str, target: Target) -> String {
    let ext = if target.is_cubin() { "cubin" } else { "ptx" };
    format!("{module}.{target}.{ext}")
}

/// Writes every kernel file compiled for each of `targets` into `dir` (created if needed),
/// with its manifest. Returns the manifest.
pub fn export(nvrtc: &Nvrtc, dir: &Path, targets: &[Target]) -> Result<Manifest> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut man = Manifest::new();
    for &t in targets {
        for m in MODULES {
            let bytes = compile(nvrtc, m.name, t)?;
            man.entries
                .push(store_file(dir, m.name, t, nvrtc.version, &bytes)?);
        }
    }
    man.write(dir)?;
    Ok(man)
}

pub(super) fn store_file(
    dir: &Path,
    module: &str,
    target: Target,
    nvrtc: (u32, u32),
    bytes: &[u8],
) -> Result<Entry> {
    let file = file_name(module, target);
    write_atomic_unique(&dir.join(&file), bytes)?;
    Ok(Entry {
        module: module.into(),
        target: target.to_string(),
        nvrtc: [nvrtc.0, nvrtc.1],
        file,
        bytes: bytes.len() as u64,
        fnv64: format!("{:016x}", fnv64(bytes)),
    })
}

/// Reads and checks one manifest entry's file: size, hash, and that a cubin is ELF and PTX is
/// PTX text.
pub(super) fn read_entry(dir: &Path, e: &Entry, target: Target) -> Result<Vec<u8>> {
    let path = dir.join(&e.file);
    let mut bytes =
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let arch = Some(target.arch());
    if bytes.len() as u64 != e.bytes || format!("{:016x}", fnv64(&bytes)) != e.fnv64 {
        bail!(
            "{} differs from its manifest entry (damaged, truncated or replaced); {}",
            path.display(),
            rebuild_hint(dir, arch)
        );
    }
    let kind_ok = if target.is_cubin() {
        bytes.starts_with(b"\x7fELF")
    } else {
        std::str::from_utf8(&bytes).is_ok_and(|s| s.contains(".version") && s.contains(".target"))
    };
    if !kind_ok {
        bail!(
            "{} is not {}; {}",
            path.display(),
            if target.is_cubin() { "a cubin" } else { "PTX" },
            rebuild_hint(dir, arch)
        );
    }
    if !target.is_cubin() {
        bytes.push(0);
    }
    Ok(bytes)
}
