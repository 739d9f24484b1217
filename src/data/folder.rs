//! Image folders in the layout of the debiasing benchmarks (LfF / DFA style):
//!
//! ```text
//! ROOT/{pct}pct/align/<label>/<name>_{label}_{bias}.png     bias-aligned training images
//! ROOT/{pct}pct/conflict/<label>/<name>_{label}_{bias}.png  bias-conflicting training images
//! ROOT/{pct}pct/valid/[<label>/]<name>_{label}_{bias}.png   validation (flat or per label)
//! ROOT/test/<label>/<name>_{label}_{bias}.png               test, shared by every ratio
//! ```
//!
//! `valid/` and `test/` may also sit at the root next to `{pct}pct/` (BFFHQ keeps both there)
//! or inside `{pct}pct/`. Label and bias attribute always come from the file-name suffix
//! `_{label}_{bias}.png`; sub-directories are only walked. Images are decoded with the `image`
//! crate; errors name the file.

use super::{Dataset, Normalize, Splits};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The directory name of a ratio given in percent: 0.5 → `0.5pct`, 1 → `1pct`.
pub fn pct_dir(ratio_percent: f64) -> String {
    format!("{ratio_percent}pct")
}

/// Parses `<anything>_{label}_{bias}.png`; errors name the file.
pub fn parse_name(path: &Path, num_classes: Option<usize>) -> Result<(u8, u8)> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let mut parts = stem.rsplit('_');
    let (bias, label) = match (parts.next(), parts.next()) {
        (Some(b), Some(l)) if stem.contains('_') => (b, l),
        _ => bail!(
            "{}: file name does not end in _{{label}}_{{bias}}.png",
            path.display()
        ),
    };
    let parse = |s: &str, what: &str| -> Result<u8> {
        let v: u32 = s.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: unknown {what} {s:?} in file name (expected _{{label}}_{{bias}}.png with integers)",
                path.display()
            )
        })?;
        if let Some(k) = num_classes {
            if v as usize >= k {
                bail!(
                    "{}: unknown {what} {v} in file name (this dataset has {k} classes)",
                    path.display()
                );
            }
        }
        if v > 255 {
            bail!(
                "{}: unknown {what} {v} in file name (over 255)",
                path.display()
            );
        }
        Ok(v as u8)
    };
    Ok((parse(label, "label")?, parse(bias, "bias attribute")?))
}

/// All `.png` files below `dir`, sorted by path.
pub fn list_pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: image directory is missing", dir.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("{}: cannot list", d.display()))? {
            let p = e
                .with_context(|| format!("{}: cannot list", d.display()))?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x.eq_ignore_ascii_case("png"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// An `image` crate error as a single message. Its text already includes its source, which
/// `{:#}` would print a second time ("Invalid PNG signature.: Invalid PNG signature.").
pub fn image_error(e: image::ImageError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

struct Decoded {
    channels: usize,
    width: usize,
    height: usize,
    /// [C, H, W]
    pixels: Vec<u8>,
}

fn decode(path: &Path, want_channels: Option<usize>) -> Result<Decoded> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(image_error)
        .with_context(|| format!("{}: corrupt or unreadable PNG", path.display()))?;
    let grey = !img.color().has_color();
    let channels = want_channels.unwrap_or(if grey { 1 } else { 3 });
    let (width, height) = (img.width() as usize, img.height() as usize);
    let hw = width * height;
    let mut pixels = vec![0u8; channels * hw];
    if channels == 1 {
        let g = img.to_luma8();
        pixels.copy_from_slice(g.as_raw());
    } else {
        let rgb = img.to_rgb8();
        for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                pixels[c * hw + i] = px[c];
            }
        }
    }
    Ok(Decoded {
        channels,
        width,
        height,
        pixels,
    })
}

/// Reads every PNG below the given directories into one dataset. `check_group` = Some(true)
/// for an `align/` directory (label must equal bias), Some(false) for `conflict/`.
pub fn read_images(
    dirs: &[(PathBuf, Option<bool>)],
    name: &str,
    num_classes: Option<usize>,
    normalize: Option<Normalize>,
) -> Result<Dataset> {
    let mut files: Vec<(PathBuf, Option<bool>)> = Vec::new();
    for (d, g) in dirs {
        let list = list_pngs(d)?;
        if list.is_empty() {
            bail!("{}: no PNG images in this directory", d.display());
        }
        files.extend(list.into_iter().map(|p| (p, *g)));
    }
    let mut meta = Vec::with_capacity(files.len());
    for (p, g) in &files {
        let (l, b) = parse_name(p, num_classes)?;
        match g {
            Some(true) if l != b => bail!(
                "{}: in an align/ directory but label {l} != bias attribute {b}",
                p.display()
            ),
            Some(false) if l == b => bail!(
                "{}: in a conflict/ directory but label {l} == bias attribute {b}",
                p.display()
            ),
            _ => {}
        }
        meta.push((l, b));
    }
    // A given normalisation fixes the channel count (grey promoted to RGB); otherwise the
    // first image decides.
    let first = decode(&files[0].0, normalize.as_ref().map(|n| n.mean.len()))?;
    let (c, h, w) = (first.channels, first.height, first.width);
    let decoded: Vec<Result<Vec<u8>>> = files
        .par_iter()
        .map(|(p, _)| {
            let d = decode(p, Some(c))?;
            if (d.height, d.width) != (h, w) {
                bail!(
                    "{}: image is {}x{} but {} is {}x{}: inconsistent image sizes",
                    p.display(),
                    d.width,
                    d.height,
                    files[0].0.display(),
                    w,
                    h
                );
            }
            Ok(d.pixels)
        })
        .collect();
    let mut pixels = Vec::with_capacity(files.len() * c * h * w);
    for d in decoded {
        pixels.extend_from_slice(&d?);
    }
    let labels: Vec<u8> = meta.iter().map(|m| m.0).collect();
    let bias: Vec<u8> = meta.iter().map(|m| m.1).collect();
    let k = num_classes.unwrap_or_else(|| {
        labels
            .iter()
            .chain(&bias)
            .copied()
            .max()
            .map_or(1, |m| m as usize + 1)
    });
    let ds = Dataset {
        name: name.to_string(),
        channels: c,
        height: h,
        width: w,
        num_classes: k,
        pixels,
        labels,
        bias,
        normalize: normalize.unwrap_or_else(|| Normalize::identity(c)),
    };
    ds.validate()?;
    Ok(ds)
}

fn first_dir(cands: &[PathBuf], what: &str, root: &Path) -> Result<PathBuf> {
    cands.iter().find(|p| p.is_dir()).cloned().with_context(|| {
        let tried: Vec<String> = cands.iter().map(|p| p.display().to_string()).collect();
        format!(
            "{}: no {what} directory (looked for {})",
            root.display(),
            tried.join(", ")
        )
    })
}

/// Reads the three splits of one ratio from the folder layout at `root`.
pub fn read_folder(
    root: &Path,
    ratio_percent: f64,
    num_classes: Option<usize>,
    normalize: Option<Normalize>,
) -> Result<Splits> {
    let pct = root.join(pct_dir(ratio_percent));
    if !pct.is_dir() {
        bail!(
            "{}: missing PNG directory for ratio {ratio_percent}% (expected {}/align and {}/conflict)",
            pct.display(),
            pct.display(),
            pct.display()
        );
    }
    let name = root
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("folder")
        .to_string();
    let align = pct.join("align");
    let conflict = pct.join("conflict");
    if !align.is_dir() {
        bail!(
            "{}: missing PNG directory of bias-aligned training images",
            align.display()
        );
    }
    let mut train_dirs = vec![(align, Some(true))];
    // A 0 % split may have no conflicting images at all.
    if conflict.is_dir() && !list_pngs(&conflict)?.is_empty() {
        train_dirs.push((conflict, Some(false)));
    }
    let train = read_images(
        &train_dirs,
        &format!("{name}/{}/train", pct_dir(ratio_percent)),
        num_classes,
        normalize.clone(),
    )?;
    let valid_dir = first_dir(&[pct.join("valid"), root.join("valid")], "valid", root)?;
    let test_dir = first_dir(&[root.join("test"), pct.join("test")], "test", root)?;
    let k = Some(num_classes.unwrap_or(train.num_classes));
    let valid = read_images(
        &[(valid_dir, None)],
        &format!("{name}/{}/valid", pct_dir(ratio_percent)),
        k,
        normalize.clone(),
    )?;
    let test = read_images(&[(test_dir, None)], &format!("{name}/test"), k, normalize)?;
    for s in [&valid, &test] {
        if (s.channels, s.height, s.width) != (train.channels, train.height, train.width) {
            bail!(
                "{}: {} images are {}x{}x{} but training images are {}x{}x{}: inconsistent image sizes",
                root.display(),
                s.name,
                s.channels,
                s.height,
                s.width,
                train.channels,
                train.height,
                train.width
            );
        }
    }
    Ok(Splits { train, valid, test })
}

/// Encodes sample `i` of `ds` as PNG bytes (grey or RGB).
pub fn encode_png(ds: &Dataset, i: usize) -> Result<Vec<u8>> {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let src = ds.image(i);
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut out);
    use image::ImageEncoder;
    if c == 1 {
        enc.write_image(src, w as u32, h as u32, image::ExtendedColorType::L8)
            .map_err(image_error)?;
    } else if c == 3 {
        let mut hwc = vec![0u8; 3 * h * w];
        for p in 0..h * w {
            for ch in 0..3 {
                hwc[3 * p + ch] = src[ch * h * w + p];
            }
        }
        enc.write_image(&hwc, w as u32, h as u32, image::ExtendedColorType::Rgb8)
            .map_err(image_error)?;
    } else {
        bail!("{}: cannot write {c}-channel images as PNG", ds.name);
    }
    Ok(out)
}

/// Where [`write_images`] puts a split's files below its folder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FolderLayout {
    /// `align|conflict/<label>/`: the training split.
    Grouped,
    /// `<label>/`: the test split.
    PerLabel,
    /// Directly in the folder: the validation split (the reference's loader globs `valid/*`).
    Flat,
}

/// Writes one split's images below `dir` in `layout`. File names are
/// `{index:05}_{label}_{bias}.png`.
pub fn write_images(ds: &Dataset, dir: &Path, layout: FolderLayout) -> Result<()> {
    (0..ds.len())
        .into_par_iter()
        .try_for_each(|i| -> Result<()> {
            let (l, b) = (ds.labels[i], ds.bias[i]);
            let mut d = dir.to_path_buf();
            if layout == FolderLayout::Grouped {
                d.push(if l == b { "align" } else { "conflict" });
            }
            if layout != FolderLayout::Flat {
                d.push(l.to_string());
            }
            std::fs::create_dir_all(&d)
                .with_context(|| format!("{}: cannot create", d.display()))?;
            let p = d.join(format!("{i:05}_{l}_{b}.png"));
            std::fs::write(&p, encode_png(ds, i)?)
                .with_context(|| format!("{}: cannot write", p.display()))
        })
}

/// Writes the splits of one ratio in the folder layout under `root` (the test split to
/// `root/test`, shared by all ratios).
pub fn write_folder(splits: &Splits, ratio_percent: f64, root: &Path) -> Result<()> {
    let pct = root.join(pct_dir(ratio_percent));
    for sub in ["align", "conflict", "valid"] {
        let d = pct.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .with_context(|| format!("{}: cannot clear", d.display()))?;
        }
    }
    write_images(&splits.train, &pct, FolderLayout::Grouped)?;
    write_images(&splits.valid, &pct.join("valid"), FolderLayout::Flat)?;
    let test = root.join("test");
    if test.exists() {
        std::fs::remove_dir_all(&test)
            .with_context(|| format!("{}: cannot clear", test.display()))?;
    }
    write_images(&splits.test, &test, FolderLayout::PerLabel)
}
