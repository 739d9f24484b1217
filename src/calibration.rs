//! This machine's stored choice of compute path per sparse layer, so that the same command and
//! seed give the same numbers on the same machine. `--sparse-compute auto` times the sparse and
//! the dense-masked path of a layer once, stores the faster under a key naming the CPU, its
//! kernel variant (ISA), the thread count and the layer's shape, and reuses it from then on; a
//! busy machine can no longer pick differently from one run to the next.
//! `--sparse-compute calibrate` times every layer of the run again and replaces its entries.
//!
//! The file is `calibration.json` in the cache folder: `$REST_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/rest`, else `~/.cache/rest`.

use crate::nn::param::ComputePath;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The cache file's name in the cache folder.
pub const FILE: &str = "calibration.json";

/// The cache folder (see the module's description); None when no variable names one.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("REST_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("rest")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("rest")))
}

/// One layer's measurement: the path taken and the two times it was chosen from (seconds).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub path: ComputePath,
    pub sparse_s: f64,
    pub dense_s: f64,
}

/// The stored calibration: key → entry.
#[derive(Debug, Default)]
pub struct Store {
    file: Option<PathBuf>,
    entries: BTreeMap<String, Entry>,
    changed: bool,
}

/// What a layer is keyed by beside the machine: its shape, the batch and its active weights.
#[allow(clippy::too_many_arguments)]
pub fn layer_key(
    rows: usize,
    cols: usize,
    k: usize,
    stride: usize,
    pad: usize,
    input: (usize, usize),
    batch: usize,
    nnz: usize,
    first: bool,
) -> String {
    format!(
        "{} | {} threads | conv {rows}x{cols} k{k} s{stride} p{pad} in {}x{} batch {batch} \
         nnz {nnz}{}",
        crate::device::cpu::isa::cpu_description(),
        rayon::current_num_threads(),
        input.0,
        input.1,
        if first { " first" } else { "" }
    )
}

impl Store {
    /// Reads the stored calibration; a missing file is empty, an unreadable one is replaced (with
    /// a warning: it only saves time).
    pub fn open() -> Self {
        let Some(dir) = cache_dir() else {
            return Self::default();
        };
        let file = dir.join(FILE);
        let entries = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                eprintln!(
                    "warning: {} cannot be read ({e}); the layers are timed again",
                    file.display()
                );
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Self {
            file: Some(file),
            entries,
            changed: false,
        }
    }

    /// Where the calibration is kept (None: nowhere, every run times its layers).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn insert(&mut self, key: String, entry: Entry) {
        self.entries.insert(key, entry);
        self.changed = true;
    }

    /// Writes the entries back when any changed, merged over what the file holds now (another
    /// run may have added its own); a failure is a warning, since the run goes on without.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        if !self.changed {
            return;
        }
        let write = || -> Result<()> {
            let dir = file.parent().context("no folder")?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut all: BTreeMap<String, Entry> = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            all.extend(self.entries.iter().map(|(k, v)| (k.clone(), v.clone())));
            let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(serde_json::to_string_pretty(&all)?.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, file).with_context(|| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot move {} to {}", tmp.display(), file.display())
            })
        };
        if let Err(e) = write() {
            eprintln!(
                "warning: the calibration could not be stored in {} ({e:#}); the next run times \
                 its layers again",
                file.display()
            );
        }
    }
}
