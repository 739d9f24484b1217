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

use super::nvrtc::{Nvrtc, Target};
use super::{module_source_for_nvrtc, MODULES};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// NVRTC options besides the architecture. Numerics as documented per kernel: no fast-math,
/// IEEE division and square root, fused multiply-adds allowed.
pub const COMPILE_OPTIONS: &[&str] = &["--fmad=true", "--std=c++17"];

const FORMAT: &str = "rest-kernels/1";
const MANIFEST: &str = "manifest.json";

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
    fn new() -> Self {
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

    fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        write_atomic_unique(&dir.join(MANIFEST), text.as_bytes())
    }
}

/// The command that rebuilds a kernel folder, for error messages.
fn rebuild_hint(dir: &Path, arch: Option<u32>) -> String {
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

fn store_file(
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

/// Reads and checks one manifest entry's file: size, hash, and that a cubin is ELF and PTX is
/// PTX text.
fn read_entry(dir: &Path, e: &Entry, target: Target) -> Result<Vec<u8>> {
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

/// The manifest entries of `module` a GPU of architecture `arch` can run, best first.
fn usable<'a>(man: &'a Manifest, module: &str, arch: u32) -> Vec<(&'a Entry, Target)> {
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

/// The per-user cache of compiled kernels: `$XDG_CACHE_HOME/rest`, else `~/.cache/rest`, one
/// kernel folder per source hash.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("rest").join(format!("kernels-{}", source_hash())))
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

/// Where a GPU's kernels come from.
pub enum Source {
    /// `REST_KERNEL_DIR`: used alone; anything missing or stale there is an error.
    Export { dir: PathBuf, manifest: Manifest },
    /// The cache, with NVRTC to compile (and store) what it lacks, or without NVRTC (then only
    /// what it holds).
    Cache {
        dir: PathBuf,
        nvrtc: Option<&'static Nvrtc>,
        manifest: Mutex<Manifest>,
    },
}

/// Kernel images for one GPU (architecture `arch`, driver supporting CUDA `driver`).
pub struct Provider {
    pub source: Source,
    pub arch: u32,
    pub driver: (u32, u32),
}

impl Provider {
    /// `REST_KERNEL_DIR` if set, else the cache with NVRTC when it loads. An error names what is
    /// missing and how to get kernels onto this machine.
    pub fn from_env(arch: u32, driver: (u32, u32)) -> Result<Provider> {
        if let Some(d) = std::env::var_os("REST_KERNEL_DIR").filter(|d| !d.is_empty()) {
            return Provider::export(PathBuf::from(d), arch, driver).context("REST_KERNEL_DIR");
        }
        let nvrtc = super::nvrtc::get();
        let Some(dir) = cache_dir() else {
            let n = nvrtc
                .map_err(|e| anyhow!("no HOME or XDG_CACHE_HOME for a kernel cache, and {e:#}"))?;
            // No per-user cache folder: this process's compiles go to a temporary one.
            let tmp = std::env::temp_dir().join(format!("rest-kernels-{}", std::process::id()));
            return Provider::cache(tmp, Some(n), arch, driver);
        };
        match nvrtc {
            Ok(n) => Provider::cache(dir, Some(n), arch, driver),
            Err(e) => {
                let held = Manifest::read(&dir).unwrap_or_else(|_| Manifest::new());
                let complete = MODULES
                    .iter()
                    .all(|m| !usable(&held, m.name, arch).is_empty());
                if !complete {
                    bail!(
                        "no compiled kernels for sm_{arch} here: {e:#}; and the kernel cache {} \
                         does not hold them. Either install NVRTC, or on a machine that has it \
                         run `rest device --export-kernels DIR --arch sm_{arch}`, copy DIR here \
                         and set REST_KERNEL_DIR=DIR",
                        dir.display()
                    );
                }
                Provider::cache(dir, None, arch, driver)
            }
        }
    }

    /// A kernel folder given by the user (`REST_KERNEL_DIR`), checked now.
    pub fn export(dir: PathBuf, arch: u32, driver: (u32, u32)) -> Result<Provider> {
        let manifest = Manifest::read(&dir)?;
        Ok(Provider {
            source: Source::Export { dir, manifest },
            arch,
            driver,
        })
    }

    /// The cache in `dir` (created when NVRTC can fill it). A manifest there that is missing,
    /// unreadable or from other sources counts as empty.
    pub fn cache(
        dir: PathBuf,
        nvrtc: Option<&'static Nvrtc>,
        arch: u32,
        driver: (u32, u32),
    ) -> Result<Provider> {
        let manifest = Manifest::read(&dir).unwrap_or_else(|_| Manifest::new());
        Ok(Provider {
            source: Source::Cache {
                dir,
                nvrtc,
                manifest: Mutex::new(manifest),
            },
            arch,
            driver,
        })
    }

    /// One line for `rest device`: which kernel source is used.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Export { dir, .. } => {
                format!("kernel folder {} (REST_KERNEL_DIR)", dir.display())
            }
            Source::Cache {
                dir,
                nvrtc: Some(n),
                ..
            } => format!(
                "kernel cache {}, NVRTC {}.{} compiling what it lacks ({})",
                dir.display(),
                n.version.0,
                n.version.1,
                n.origin
            ),
            Source::Cache {
                dir, nvrtc: None, ..
            } => {
                format!("kernel cache {} (no NVRTC on this machine)", dir.display())
            }
        }
    }

    /// The compiled image of kernel file `module` for this GPU.
    pub fn image(&self, module: &str) -> Result<Image> {
        match &self.source {
            Source::Export { dir, manifest } => {
                load_from(dir, manifest, module, self.arch, self.driver)
            }
            Source::Cache {
                dir,
                nvrtc: None,
                manifest,
            } => load_from(
                dir,
                &manifest.lock().unwrap(),
                module,
                self.arch,
                self.driver,
            ),
            Source::Cache {
                dir,
                nvrtc: Some(n),
                manifest,
            } => {
                let target = nvrtc_target(&n.archs, self.arch).ok_or_else(|| {
                    anyhow!(
                        "NVRTC {}.{} supports sm_{:?}, nothing at or below this GPU's sm_{}: \
                         use an NVRTC of CUDA 12 for GPUs before sm_75",
                        n.version.0,
                        n.version.1,
                        n.archs,
                        self.arch
                    )
                })?;
                driver_accepts(self.driver, n.version, target)?;
                let hit = {
                    let man = manifest.lock().unwrap();
                    man.entries
                        .iter()
                        .find(|e| {
                            e.module == module
                                && e.target == target.to_string()
                                && e.nvrtc == [n.version.0, n.version.1]
                        })
                        .and_then(|e| read_entry(dir, e, target).ok())
                };
                if let Some(bytes) = hit {
                    return Ok(Image {
                        bytes,
                        target,
                        nvrtc: n.version,
                        from: format!("cache {}", dir.display()),
                    });
                }
                let mut bytes = compile(n, module, target)?;
                if let Err(e) = self.store(dir, n, manifest, module, target, &bytes) {
                    // A cache that cannot be written costs start-up time, nothing else.
                    eprintln!("warning: kernel cache {}: {e:#}", dir.display());
                }
                if !target.is_cubin() {
                    bytes.push(0);
                }
                Ok(Image {
                    bytes,
                    target,
                    nvrtc: n.version,
                    from: format!("NVRTC {}.{}", n.version.0, n.version.1),
                })
            }
        }
    }

    fn store(
        &self,
        dir: &Path,
        n: &Nvrtc,
        manifest: &Mutex<Manifest>,
        module: &str,
        target: Target,
        bytes: &[u8],
    ) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let entry = store_file(dir, module, target, n.version, bytes)?;
        let mut man = manifest.lock().unwrap();
        // Another process may have added entries since we read it: merge with what is on disk.
        if let Ok(disk) = Manifest::read(dir) {
            for e in disk.entries {
                if !man.entries.iter().any(|m| m.file == e.file) {
                    man.entries.push(e);
                }
            }
        }
        man.entries.retain(|e| e.file != entry.file);
        man.entries.push(entry);
        man.write(dir)
    }
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

    #[test]
    fn fnv64_is_the_published_function() {
        // FNV-1a 64 test vectors: "" and "a".
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
