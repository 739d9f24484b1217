//! CIFAR-10 binary version (`cifar-10-batches-bin/data_batch_{1..5}.bin`, `test_batch.bin`).
//!
//! Each record is 3073 bytes: one label byte (0..9) and 3072 pixel bytes, R plane then G then B,
//! each 32×32 row-major — already the [C, H, W] layout a [`Dataset`] stores.

use super::{Dataset, Normalize};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub const RECORD: usize = 3073;
pub const SIDE: usize = 32;

/// CIFAR-10 channel statistics (the usual train-set mean and std).
pub fn cifar_normalize() -> Normalize {
    Normalize {
        mean: vec![0.4914, 0.4822, 0.4465],
        std: vec![0.2470, 0.2435, 0.2616],
    }
}

/// Reads one CIFAR-10 binary batch file; appends to `pixels` and `labels`.
pub fn read_batch_into(path: &Path, pixels: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<usize> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.is_empty() {
        bail!("{}: empty CIFAR-10 batch file", path.display());
    }
    if bytes.len() % RECORD != 0 {
        bail!(
            "{}: {} bytes is not a whole number of 3073-byte CIFAR-10 records (truncated or not CIFAR-10 binary)",
            path.display(),
            bytes.len()
        );
    }
    let n = bytes.len() / RECORD;
    pixels.reserve(n * (RECORD - 1));
    labels.reserve(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] > 9 {
            bail!(
                "{}: record {i} has label {} (CIFAR-10 labels are 0..9)",
                path.display(),
                rec[0]
            );
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(n)
}

fn dataset(name: &str, pixels: Vec<u8>, labels: Vec<u8>) -> Dataset {
    Dataset {
        name: name.to_string(),
        channels: 3,
        height: SIDE,
        width: SIDE,
        num_classes: 10,
        pixels,
        bias: labels.clone(),
        labels,
        normalize: cifar_normalize(),
    }
}

/// Reads the given batch files into one dataset (bias = label).
pub fn read_batches(paths: &[&Path], name: &str) -> Result<Dataset> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for p in paths {
        read_batch_into(p, &mut pixels, &mut labels)?;
    }
    Ok(dataset(name, pixels, labels))
}

/// Reads (train, test) from a `cifar-10-batches-bin` directory.
pub fn load_cifar10(dir: &Path) -> Result<(Dataset, Dataset)> {
    if !dir.is_dir() {
        bail!(
            "{}: no CIFAR-10 binary directory; run `rest data fetch --dataset cifar10` (downloads the \
             \"CIFAR-10 binary version\", cifar-10-binary.tar.gz, from \
             https://www.cs.toronto.edu/~kriz/cifar.html), or `rest data fetch --dataset cifar10 --from \
             FILE_OR_DIR` with a copy you have, so that this directory holds data_batch_1.bin .. \
             data_batch_5.bin and test_batch.bin",
            dir.display()
        );
    }
    let train_paths: Vec<_> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    for p in &train_paths {
        if !p.is_file() {
            bail!("{}: missing CIFAR-10 batch file", p.display());
        }
    }
    let refs: Vec<&Path> = train_paths.iter().map(|p| p.as_path()).collect();
    let train = read_batches(&refs, "cifar10/train")?;
    let test = read_batches(&[&dir.join("test_batch.bin")], "cifar10/test")?;
    Ok((train, test))
}
