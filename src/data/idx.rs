//! MNIST IDX files (`train-images-idx3-ubyte`, …), raw or gzip-compressed.
//!
//! Format: a 4-byte magic `00 00 08 D` (type 0x08 = unsigned byte, D = number of dimensions),
//! D big-endian u32 sizes, then the bytes. Every problem (missing file, wrong magic, truncated
//! data, trailing bytes, count mismatch) is an error naming the file; nothing panics.

use super::{Dataset, Normalize};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a whole file, transparently decompressing it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt or truncated gzip data", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `what` names the source in errors.
pub fn parse_idx(bytes: &[u8], what: &str) -> Result<IdxArray> {
    if bytes.len() < 4 {
        bail!(
            "{what}: truncated IDX file ({} bytes, no header)",
            bytes.len()
        );
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        bail!(
            "{what}: wrong magic {:02x} {:02x} {:02x} {:02x}, not an IDX file (expected 00 00 08 0D)",
            bytes[0],
            bytes[1],
            bytes[2],
            bytes[3]
        );
    }
    if bytes[2] != 0x08 {
        bail!(
            "{what}: IDX element type 0x{:02x} is not unsigned byte (0x08); wrong magic for MNIST",
            bytes[2]
        );
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 {
        bail!("{what}: IDX header has {nd} dimensions; wrong magic for MNIST");
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        bail!(
            "{what}: truncated IDX header ({} bytes, need {header})",
            bytes.len()
        );
    }
    let dims: Vec<usize> = (0..nd)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .with_context(|| format!("{what}: IDX dimensions {dims:?} overflow"))?;
    let have = bytes.len() - header;
    if have < n {
        bail!("{what}: truncated IDX data: dimensions {dims:?} need {n} bytes, file has {have}");
    }
    if have > n {
        bail!(
            "{what}: {} trailing bytes after the IDX data of dimensions {dims:?}",
            have - n
        );
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file (raw or .gz).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes, &path.display().to_string())
}

/// Images: a 3-d IDX array [N, H, W]. Returns (N, H, W, bytes).
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let a = read_idx(path)?;
    if a.dims.len() != 3 {
        bail!(
            "{}: wrong magic for an image file: {} dimensions (expected 3, magic 00 00 08 03)",
            path.display(),
            a.dims.len()
        );
    }
    Ok((a.dims[0], a.dims[1], a.dims[2], a.data))
}

/// Labels: a 1-d IDX array [N].
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let a = read_idx(path)?;
    if a.dims.len() != 1 {
        bail!(
            "{}: wrong magic for a label file: {} dimensions (expected 1, magic 00 00 08 01)",
            path.display(),
            a.dims.len()
        );
    }
    Ok(a.data)
}

/// Writes an IDX array (raw; `.gz` in the name → gzip-compressed). Used by tests and `--from`.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<()> {
    let mut bytes = vec![0u8, 0, 8, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if path.extension().is_some_and(|e| e == "gz") {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes)?;
        bytes = enc.finish()?;
    }
    std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

/// The four MNIST file stems.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Finds `stem` in `dir` under its usual spellings: `stem`, `stem.gz`, and with the last `-`
/// written as `.` (`train-images.idx3-ubyte`).
pub fn find_mnist_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let dotted = match stem.rfind("-idx") {
        Some(i) => format!("{}.{}", &stem[..i], &stem[i + 1..]),
        None => stem.to_string(),
    };
    for name in [stem.to_string(), dotted] {
        for suffix in ["", ".gz"] {
            let p = dir.join(format!("{name}{suffix}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn mnist_path(dir: &Path, stem: &str) -> Result<PathBuf> {
    find_mnist_file(dir, stem).with_context(|| {
        format!(
            "{}: missing MNIST file {stem} (or {stem}.gz); run `rest data fetch --dataset mnist`",
            dir.display()
        )
    })
}

/// Reads one MNIST split from an images file and a labels file, checking the counts agree.
pub fn read_mnist_pair(images: &Path, labels: &Path, name: &str) -> Result<Dataset> {
    let (n, h, w, pixels) = read_idx_images(images)?;
    let labs = read_idx_labels(labels)?;
    if labs.len() != n {
        bail!(
            "{} has {} labels but {} has {n} images: label/image count mismatch",
            labels.display(),
            labs.len(),
            images.display()
        );
    }
    if let Some(&l) = labs.iter().find(|&&l| l > 9) {
        bail!("{}: label {l} is not a digit 0..9", labels.display());
    }
    Ok(Dataset {
        name: name.to_string(),
        channels: 1,
        height: h,
        width: w,
        num_classes: 10,
        pixels,
        bias: labs.clone(),
        labels: labs,
        normalize: Normalize::identity(1),
    })
}

/// Reads MNIST (train, test) from a directory holding the four IDX files (raw or .gz). The
/// bias attribute of a plain MNIST sample is set equal to its label.
pub fn load_mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    let train = read_mnist_pair(
        &mnist_path(dir, MNIST_FILES[0])?,
        &mnist_path(dir, MNIST_FILES[1])?,
        "mnist/train",
    )?;
    let test = read_mnist_pair(
        &mnist_path(dir, MNIST_FILES[2])?,
        &mnist_path(dir, MNIST_FILES[3])?,
        "mnist/test",
    )?;
    if (train.height, train.width) != (test.height, test.width) {
        bail!(
            "{}: train images are {}x{} but test images are {}x{}",
            dir.display(),
            train.height,
            train.width,
            test.height,
            test.width
        );
    }
    Ok((train, test))
}
