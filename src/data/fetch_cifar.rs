//! `rest data fetch --dataset cifar10`: installs the CIFAR-10 binary version under
//! `DATA_DIR/cifar-10-batches-bin/`, where `rest data make --dataset cifar10c` reads it.
//!
//! The archive comes from its canonical address (Krizhevsky's page at the University of
//! Toronto) and is checked against the MD5 that page publishes; the download resumes a partial
//! file (see [`download`]). `--from` takes the archive, or an extracted folder, already on disk.
//! `REST_CIFAR10_URL` and `REST_CIFAR10_MD5` replace the address and checksum (a mirror; the
//! tests' loopback server).

use super::{cache, cifar, download, fetch};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The archive's name in the data directory while (and after) it downloads.
pub const ARCHIVE: &str = "cifar-10-binary.tar.gz";
pub const FOLDER: &str = "cifar-10-batches-bin";
pub const BATCHES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

fn env_or(key: &str, default: &str) -> String {
    match std::env::var(key) {
        Ok(v) if !v.is_empty() => v,
        _ => default.to_string(),
    }
}

/// Whether `data_dir/cifar-10-batches-bin` holds the six batch files.
pub fn cifar10_present(data_dir: &Path) -> bool {
    let d = data_dir.join(FOLDER);
    BATCHES.iter().all(|b| d.join(b).is_file())
}

/// `rest data fetch --dataset cifar10`: installs into `data_dir/cifar-10-batches-bin` and checks the
/// files; returns that folder and whether anything was installed.
pub fn fetch_cifar10(data_dir: &Path, from: Option<&Path>) -> Result<(PathBuf, bool)> {
    fetch::check_data_dir(data_dir)?;
    let dest = data_dir.join(FOLDER);
    match from {
        Some(src) if src.is_dir() => copy_batches(src, &dest)?,
        Some(src) => {
            let want = env_or("REST_CIFAR10_MD5", CIFAR10_MD5);
            let got = download::md5_file(src)?;
            if !got.eq_ignore_ascii_case(&want) {
                bail!(
                    "{}: MD5 {got}, expected {want} (the published checksum of {ARCHIVE}): not \
                     the CIFAR-10 binary archive, or a damaged copy",
                    src.display()
                );
            }
            extract(src, &dest)?;
        }
        None if cifar10_present(data_dir) && verify(&dest).is_ok() => return Ok((dest, false)),
        None => {
            let url = env_or("REST_CIFAR10_URL", CIFAR10_URL);
            let md5 = env_or("REST_CIFAR10_MD5", CIFAR10_MD5);
            let archive = data_dir.join(ARCHIVE);
            let whole =
                archive.is_file() && download::md5_file(&archive)?.eq_ignore_ascii_case(&md5);
            if !whole {
                download::download(&url, &archive, &md5, ARCHIVE)?;
            }
            extract(&archive, &dest)?;
            std::fs::remove_file(&archive)
                .with_context(|| format!("{}: cannot remove", archive.display()))?;
        }
    }
    verify(&dest)?;
    Ok((dest, true))
}

/// Takes the six batch files out of the archive into `dest`.
fn extract(archive: &Path, dest: &Path) -> Result<()> {
    eprintln!("extracting {} …", archive.display());
    let entries = fetch::read_tgz(archive)?;
    for b in BATCHES {
        let e = entries
            .iter()
            .find(|e| e.path.rsplit('/').next() == Some(b))
            .with_context(|| format!("{}: the archive has no {b}", archive.display()))?;
        cache::write_atomic(&dest.join(b), &e.data)?;
    }
    Ok(())
}

/// Copies the batch files from an extracted folder (or its `cifar-10-batches-bin/`).
fn copy_batches(src: &Path, dest: &Path) -> Result<()> {
    let dir = if src.join(BATCHES[0]).is_file() {
        src.to_path_buf()
    } else {
        src.join(FOLDER)
    };
    for b in BATCHES {
        let p = dir.join(b);
        if !p.is_file() {
            bail!(
                "{}: missing CIFAR-10 batch file {b} (expected data_batch_1.bin … \
                 data_batch_5.bin and test_batch.bin, as in cifar-10-binary.tar.gz)",
                dir.display()
            );
        }
        if p.canonicalize().ok() != dest.join(b).canonicalize().ok() {
            let bytes =
                std::fs::read(&p).with_context(|| format!("{}: cannot read", p.display()))?;
            cache::write_atomic(&dest.join(b), &bytes)?;
        }
    }
    Ok(())
}

/// Reads the installed batches back; prints their sizes and warns when they are not the
/// standard 50000/10000 images with 5000/1000 per class.
pub fn verify(dir: &Path) -> Result<()> {
    let (train, test) = cifar::load_cifar10(dir)?;
    let counts = |labels: &[u8]| {
        let mut c = [0usize; 10];
        for &l in labels {
            c[l as usize % 10] += 1;
        }
        c
    };
    let (ct, cv) = (counts(&train.labels), counts(&test.labels));
    if ct != [5000; 10] || cv != [1000; 10] {
        eprintln!(
            "warning: {}: not the standard CIFAR-10 (training images per class {ct:?}, test \
             {cv:?}; expected 5000 and 1000 each)",
            dir.display()
        );
    }
    eprintln!(
        "CIFAR-10 in {}: {} training and {} test images, 32x32 RGB",
        dir.display(),
        train.len(),
        test.len()
    );
    Ok(())
}
