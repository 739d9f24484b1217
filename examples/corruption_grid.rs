//! Draws the README's picture of Corrupted CIFAR-10's corruptions: one row per corruption (in
//! class order: snow, frost, fog, brightness, contrast, spatter, elastic, JPEG, pixelate,
//! saturate), and for each source image the clean image beside it at severities 1 to 4.
//!
//! cargo run --release --example corruption_grid -- BATCH.bin FROST_DIR OUT.png
//!
//! BATCH.bin: CIFAR-10 binary records (3073 bytes each; the first few are used); FROST_DIR:
//! the photographs `rest data fetch frost` installs.

use anyhow::{bail, Context, Result};
use rest::data::cifar;
use rest::data::corrupt::{self, FrostPhotos, Img, CORRUPTIONS};
use rest::rng::Rng;
use std::path::Path;

const ZOOM: usize = 2;
const GAP: usize = 2;
const GROUP_GAP: usize = 10;
const IMAGES: usize = 3;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [batch, frost_dir, out] = args.as_slice() else {
        bail!("usage: corruption_grid BATCH.bin FROST_DIR OUT.png");
    };
    let ds = cifar::read_batches(&[Path::new(batch)], "grid")?;
    if ds.len() < IMAGES {
        bail!("{batch}: needs at least {IMAGES} images");
    }
    let frost = FrostPhotos::load(Path::new(frost_dir))?;
    let sevs = corrupt::MAX_SEVERITY as usize;
    let tile = 32 * ZOOM + GAP;
    let group = (1 + sevs) * tile + GROUP_GAP;
    let (w, h) = (IMAGES * group, CORRUPTIONS.len() * tile);
    let mut canvas = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    let mut put = |img: &[u8], row: usize, col: usize| {
        let (x0, y0) = (
            (col / (1 + sevs)) * group + (col % (1 + sevs)) * tile,
            row * tile,
        );
        for y in 0..32 * ZOOM {
            for x in 0..32 * ZOOM {
                let p = (y / ZOOM) * 32 + x / ZOOM;
                let px = [img[p], img[1024 + p], img[2048 + p]];
                canvas.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
            }
        }
    };
    for (k, _) in CORRUPTIONS.iter().enumerate() {
        for i in 0..IMAGES {
            let clean = ds.image(i);
            put(clean, k, i * (1 + sevs));
            for s in 1..=sevs {
                let mut img = Img::from_u8(clean, 3, 32, 32);
                corrupt::apply(&mut img, k, s as u32, &mut Rng::new(7 + i as u64), &frost);
                let mut bytes = vec![0u8; 3 * 1024];
                img.to_u8(&mut bytes);
                put(&bytes, k, i * (1 + sevs) + s);
            }
        }
    }
    let file = std::fs::File::create(out).with_context(|| format!("{out}: cannot write"))?;
    let png = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    canvas
        .write_with_encoder(png)
        .with_context(|| format!("{out}: cannot write"))?;
    eprintln!("wrote {out} ({w}x{h})");
    Ok(())
}
