//! A compact binary cache of one generated split.
//!
//! Layout (little-endian):
//!
//! ```text
//! magic      8 bytes  "RESTDSC\0"
//! version    u32      generator version (GENERATOR_VERSION); a mismatch is an error
//! seed       u64
//! ratio      f64      conflict ratio in percent
//! severity   u32
//! channels, height, width, num_classes  u32 each
//! n          u64      samples
//! name       u32 length + UTF-8
//! normalise  channels × f32 mean, channels × f32 std
//! pixels     n·c·h·w bytes, then labels n bytes, then bias n bytes
//! checksum   u64      FNV-1a of everything before it
//! ```
//!
//! Files are written to a temporary name and renamed into place, so a crash never leaves a
//! half-written cache under the real name.

use super::{Dataset, Normalize};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"RESTDSC\0";
/// Bump when any generator's output changes for the same seed, so old caches are rebuilt.
/// 2: Colored MNIST in LfF's palette, truncated to bytes as LfF does.
pub const GENERATOR_VERSION: u32 = 2;

/// What a cache was generated from.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheMeta {
    pub version: u32,
    pub seed: u64,
    pub ratio_percent: f64,
    pub severity: u32,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Serialises a dataset with its generation parameters.
pub fn encode(ds: &Dataset, seed: u64, ratio_percent: f64, severity: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(ds.pixels.len() + 2 * ds.len() + 128);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&GENERATOR_VERSION.to_le_bytes());
    b.extend_from_slice(&seed.to_le_bytes());
    b.extend_from_slice(&ratio_percent.to_le_bytes());
    b.extend_from_slice(&severity.to_le_bytes());
    for v in [ds.channels, ds.height, ds.width, ds.num_classes] {
        b.extend_from_slice(&(v as u32).to_le_bytes());
    }
    b.extend_from_slice(&(ds.len() as u64).to_le_bytes());
    b.extend_from_slice(&(ds.name.len() as u32).to_le_bytes());
    b.extend_from_slice(ds.name.as_bytes());
    for v in ds.normalize.mean.iter().chain(&ds.normalize.std) {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&ds.pixels);
    b.extend_from_slice(&ds.labels);
    b.extend_from_slice(&ds.bias);
    let h = fnv1a(&b);
    b.extend_from_slice(&h.to_le_bytes());
    b
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.b.len() - self.at < n {
            bail!(
                "{}: truncated cache file ({} bytes; ends inside the {field})",
                self.what,
                self.b.len()
            );
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self, f: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, f)?.try_into().unwrap()))
    }
    fn u64(&mut self, f: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, f)?.try_into().unwrap()))
    }
}

/// Parses cache bytes; `what` names the file in errors.
pub fn decode(bytes: &[u8], what: &str) -> Result<(Dataset, CacheMeta)> {
    let mut r = Reader {
        b: bytes,
        at: 0,
        what,
    };
    if r.take(8, "magic")? != MAGIC {
        bail!("{what}: wrong magic, not a rest dataset cache");
    }
    let version = r.u32("header")?;
    if version != GENERATOR_VERSION {
        bail!(
            "{what}: cache from generator version {version}, this build is version {GENERATOR_VERSION}; \
             delete it and run `rest data make` again"
        );
    }
    let seed = r.u64("header")?;
    let ratio_percent = f64::from_le_bytes(r.take(8, "header")?.try_into().unwrap());
    let severity = r.u32("header")?;
    let c = r.u32("header")? as usize;
    let h = r.u32("header")? as usize;
    let w = r.u32("header")? as usize;
    let k = r.u32("header")? as usize;
    let n = r.u64("header")? as usize;
    let name_len = r.u32("header")? as usize;
    let name = String::from_utf8(r.take(name_len, "name")?.to_vec())
        .with_context(|| format!("{what}: dataset name is not UTF-8"))?;
    let mut nf = Vec::with_capacity(2 * c);
    for _ in 0..2 * c {
        nf.push(f32::from_le_bytes(
            r.take(4, "normalisation")?.try_into().unwrap(),
        ));
    }
    let img = c
        .checked_mul(h)
        .and_then(|x| x.checked_mul(w))
        .and_then(|x| x.checked_mul(n))
        .with_context(|| format!("{what}: corrupt header (sizes overflow)"))?;
    let pixels = r.take(img, "pixels")?.to_vec();
    let labels = r.take(n, "labels")?.to_vec();
    let bias = r.take(n, "bias attributes")?.to_vec();
    let body_end = r.at;
    let sum = r.u64("checksum")?;
    if r.at != bytes.len() {
        bail!(
            "{what}: {} unexpected bytes after the cache data",
            bytes.len() - r.at
        );
    }
    if sum != fnv1a(&bytes[..body_end]) {
        bail!("{what}: checksum mismatch, the cache file is corrupt");
    }
    let ds = Dataset {
        name,
        channels: c,
        height: h,
        width: w,
        num_classes: k,
        pixels,
        labels,
        bias,
        normalize: Normalize {
            mean: nf[..c].to_vec(),
            std: nf[c..].to_vec(),
        },
    };
    ds.validate()
        .with_context(|| format!("{what}: inconsistent cache"))?;
    Ok((
        ds,
        CacheMeta {
            version,
            seed,
            ratio_percent,
            severity,
        },
    ))
}

/// Writes atomically: a temporary file next to `path`, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Writes a dataset's cache file.
pub fn write(
    path: &Path,
    ds: &Dataset,
    seed: u64,
    ratio_percent: f64,
    severity: u32,
) -> Result<()> {
    write_atomic(path, &encode(ds, seed, ratio_percent, severity))
}

/// Reads a dataset's cache file.
pub fn read(path: &Path) -> Result<(Dataset, CacheMeta)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{}: cannot read cache", path.display()))?;
    decode(&bytes, &path.display().to_string())
}
