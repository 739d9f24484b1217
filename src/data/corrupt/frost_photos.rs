//! The frost photographs of CIFAR-10-C (Hendrycks & Dietterich), as shipped in the PyPI package
//! `imagecorruptions` and installed by `rest data fetch --dataset frost` under `DATA_DIR/frost/`.
//!
//! The reference (LfF's protocol, from Hendrycks' CIFAR-10-C code) picks one of the first five
//! photographs at random (frost6.jpg is never picked), reads it with OpenCV, shrinks it to 0.2
//! of its size with bilinear interpolation, and crops a random 32×32 window from it.

use super::ops;
use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The photographs the reference draws from, in its order.
pub const FROST_FILES: [&str; 5] = [
    "frost1.png",
    "frost2.png",
    "frost3.png",
    "frost4.jpg",
    "frost5.jpg",
];
/// Every photograph of the package (frost6.jpg is installed too, though unused).
pub const PACKAGE_FROST_FILES: [&str; 6] = [
    "frost1.png",
    "frost2.png",
    "frost3.png",
    "frost4.jpg",
    "frost5.jpg",
    "frost6.jpg",
];
/// The reference's shrink factor for 32-pixel images.
pub const SCALE: f64 = 0.2;

/// One photograph, shrunk, planar RGB bytes.
#[derive(Clone, Debug)]
pub struct Photo {
    pub h: usize,
    pub w: usize,
    /// [3, h, w]
    pub rgb: Vec<u8>,
}

/// The shrunk photographs, ready to crop.
#[derive(Clone, Debug)]
pub struct FrostPhotos {
    photos: Vec<Photo>,
}

/// Where `rest data fetch --dataset frost` installs the photographs.
pub fn frost_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("frost")
}

impl FrostPhotos {
    /// From photographs already shrunk (tests; other sources). Each must be at least as large
    /// as the images to corrupt.
    pub fn from_photos(photos: Vec<Photo>) -> Result<Self> {
        if photos.is_empty() {
            bail!("no frost photographs given");
        }
        Ok(Self { photos })
    }

    /// Loads and shrinks the reference's five photographs from `dir`; the error says how to
    /// install them when any is missing.
    pub fn load(dir: &Path) -> Result<Self> {
        let missing: Vec<&str> = FROST_FILES
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{}: the frost photographs of CIFAR-10-C are missing ({}); Corrupted CIFAR-10 \
                 needs them for its frost class: run `rest data fetch --dataset frost` (downloads the \
                 PyPI package imagecorruptions, about 1.7 MB, and takes its frost images out), \
                 or `rest data fetch --dataset frost --from FILE` with the package's wheel or a folder \
                 holding frost1.png … frost5.jpg",
                dir.display(),
                missing.join(", ")
            );
        }
        let photos = FROST_FILES
            .iter()
            .map(|f| load_photo(&dir.join(f)))
            .collect::<Result<Vec<_>>>()?;
        Self::from_photos(photos)
    }

    /// A random window of `h`×`w` pixels of a random photograph, planar RGB.
    pub fn random_crop(&self, h: usize, w: usize, rng: &mut Rng) -> Vec<u8> {
        let p = &self.photos[rng.below(self.photos.len())];
        let y0 = rng.below(p.h.saturating_sub(h).max(1));
        let x0 = rng.below(p.w.saturating_sub(w).max(1));
        let mut out = vec![0u8; 3 * h * w];
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let (yy, xx) = ((y0 + y).min(p.h - 1), (x0 + x).min(p.w - 1));
                    out[(c * h + y) * w + x] = p.rgb[(c * p.h + yy) * p.w + xx];
                }
            }
        }
        out
    }
}

/// Decodes a photograph (PNG or JPEG) and shrinks it by [`SCALE`] as OpenCV's `resize` with
/// INTER_LINEAR does (new side round(side·0.2)).
pub fn load_photo(path: &Path) -> Result<Photo> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("{}: cannot read", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable frost photograph", path.display()))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nh, nw) = (
        (h as f64 * SCALE).round() as usize,
        (w as f64 * SCALE).round() as usize,
    );
    if nh < 32 || nw < 32 {
        bail!(
            "{}: {w}x{h} pixels is too small for a frost photograph",
            path.display()
        );
    }
    let raw = img.into_raw();
    let mut rgb = Vec::with_capacity(3 * nh * nw);
    for c in 0..3 {
        let plane: Vec<u8> = raw.iter().skip(c).step_by(3).copied().collect();
        rgb.extend(ops::resize_linear_u8(&plane, h, w, nh, nw));
    }
    Ok(Photo { h: nh, w: nw, rgb })
}
