//! `rest data import bffhq DIR`: checks a BFFHQ download and caches it for training.
//!
//! BFFHQ (Lee et al., "Learning Debiased Representation via Disentangled Feature Augmentation",
//! 2021) is distributed by its authors through a file-sharing link, so rest cannot fetch it.
//! The download unpacks to the layout the reference reads (REFERENCE-NOTES, "Data"):
//!
//! ```text
//! bffhq/0.5pct/align/<label>/*_{label}_{bias}.png      bias-aligned training faces
//! bffhq/0.5pct/conflict/<label>/*_{label}_{bias}.png   bias-conflicting training faces
//! bffhq/valid/…*_{label}_{bias}.png                     validation
//! bffhq/test/…*_{label}_{bias}.png                      test
//! ```
//!
//! (label = age group, bias = gender.) `DIR` is that `bffhq` folder or its parent. The import
//! checks every part is there and holds images, naming all that is missing at once, reads the
//! images (sizes, names, two classes) and writes the three splits as cache files under
//! `DATA_DIR/bffhq/cache/0.5pct/`, which `--dataset bffhq` then reads instead of the PNGs.

use super::{cache, folder, gen, Normalize, Splits};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// BFFHQ's one conflict ratio, in percent.
pub const BFFHQ_RATIO: f64 = 0.5;

/// Where the imported splits are cached.
pub fn bffhq_cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("bffhq").join("cache").join("0.5pct")
}

/// The BFFHQ root inside `dir`: `dir` itself, or `dir/bffhq`.
fn bffhq_root(dir: &Path) -> PathBuf {
    let nested = dir.join("bffhq");
    if !dir.join("0.5pct").is_dir() && nested.join("0.5pct").is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Every part of the layout that is missing or holds no PNG image, as readable lines.
pub fn check_layout(root: &Path) -> Result<()> {
    let parts: [(PathBuf, &str); 4] = [
        (
            root.join("0.5pct/align"),
            "bias-aligned training images (0.5pct/align/<label>/)",
        ),
        (
            root.join("0.5pct/conflict"),
            "bias-conflicting training images (0.5pct/conflict/<label>/)",
        ),
        (root.join("valid"), "validation images (valid/)"),
        (root.join("test"), "test images (test/)"),
    ];
    let mut missing = Vec::new();
    for (dir, what) in &parts {
        // valid/ may also sit inside 0.5pct/, as the folder reader allows.
        let alt = root.join("0.5pct").join("valid");
        let dir = if dir.ends_with("valid") && !dir.is_dir() && alt.is_dir() {
            &alt
        } else {
            dir
        };
        if !dir.is_dir() {
            missing.push(format!("{} is missing: {what}", dir.display()));
        } else if folder::list_pngs(dir)?.is_empty() {
            missing.push(format!("{} holds no .png image: {what}", dir.display()));
        }
    }
    if !missing.is_empty() {
        bail!(
            "{}: not the BFFHQ layout ({}).\n  {}\nBFFHQ comes from its authors' download link \
             (see the README); give `rest data import bffhq` the unpacked `bffhq` folder or the \
             folder holding it",
            root.display(),
            "0.5pct/align, 0.5pct/conflict, valid, test with *_{label}_{bias}.png images",
            missing.join("\n  ")
        );
    }
    Ok(())
}

/// Imports BFFHQ from `dir` into `data_dir`'s cache; returns the splits and the cache folder.
pub fn import_bffhq(dir: &Path, data_dir: &Path) -> Result<(Splits, PathBuf)> {
    super::fetch::check_data_dir(data_dir)?;
    if !dir.is_dir() {
        bail!("{}: no such folder to import BFFHQ from", dir.display());
    }
    let root = bffhq_root(dir);
    check_layout(&root)?;
    let splits = folder::read_folder(&root, BFFHQ_RATIO, Some(2), Some(Normalize::imagenet()))
        .with_context(|| format!("{}: reading the BFFHQ images", root.display()))?;
    gen::conflicting_count(&splits.train.name, BFFHQ_RATIO, splits.train.len())?;
    let out = bffhq_cache_dir(data_dir);
    for (s, ds) in gen::SPLIT_NAMES
        .iter()
        .zip([&splits.train, &splits.valid, &splits.test])
    {
        cache::write(&out.join(format!("{s}.bin")), ds, 0, BFFHQ_RATIO, 0)?;
    }
    Ok((splits, out))
}

/// The imported splits, when `data_dir` has them.
pub fn read_bffhq_cache(data_dir: &Path) -> Option<Result<Splits>> {
    let dir = bffhq_cache_dir(data_dir);
    if !gen::cache_exists(&dir) {
        return None;
    }
    let read = || -> Result<Splits> {
        let mut it = gen::SPLIT_NAMES.iter().map(|s| {
            cache::read(&dir.join(format!("{s}.bin")))
                .map(|(ds, _)| ds)
                .with_context(|| {
                    format!(
                        "the BFFHQ cache in {} cannot be used: run `rest data import bffhq DIR` \
                         again",
                        dir.display()
                    )
                })
        });
        let (train, valid, test) = (
            it.next().context("train")??,
            it.next().context("valid")??,
            it.next().context("test")??,
        );
        Ok(Splits { train, valid, test })
    };
    Some(read())
}
