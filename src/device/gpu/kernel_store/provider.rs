//! Where a GPU's kernels come from at run time ([`Provider`]): the folder `REST_KERNEL_DIR`
//! names, or the per-user cache, filled by NVRTC where it loads.

use super::folder::{read_entry, store_file, Manifest};
use super::select::{driver_accepts, load_from, nvrtc_target, usable, Image};
use super::{compile, source_hash};
use crate::device::gpu::nvrtc::{self, Nvrtc, Target};
use crate::device::gpu::MODULES;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The per-user cache of compiled kernels: `$XDG_CACHE_HOME/rest`, else `~/.cache/rest`, one
/// kernel folder per source hash.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("rest").join(format!("kernels-{}", source_hash())))
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
        let nvrtc = nvrtc::get();
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
