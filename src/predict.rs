//! `rest predict`: a trained model's class and class probabilities for PNG images.

use crate::checkpoint::{Checkpoint, InputSpec};
use crate::data::loader::{make_batch, Augment};
use crate::data::{Dataset, Normalize};
use crate::nn::{Model, ModelConfig};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  rest predict --checkpoint runs/DIR/best.safetensors digit.png\n  rest predict --checkpoint runs/DIR/best.safetensors --csv images/ > predictions.csv"
)]
pub struct PredictArgs {
    /// A checkpoint written by `rest train` (best.safetensors or last.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// PNG images, or folders searched for *.png (recursively, in path order).
    #[arg(required = true, value_name = "IMAGES_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Write CSV (image,class,p0,p1,…) instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// Images per forward pass (as `rest eval`'s).
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
}

/// The model a checkpoint holds, ready for inference: its input channels and classes are read
/// from the saved shapes (the first weight's [cout, cin, k, k], the classifier's [classes, in]).
pub fn model_of(ck: &Checkpoint) -> Result<Model> {
    let shapes = ck.param_shapes();
    let cin = shapes
        .first()
        .and_then(|(_, s)| s.get(1).copied())
        .context("the checkpoint holds no convolution")?;
    let classes = shapes
        .iter()
        .find(|(n, _)| *n == "fc.weight")
        .map(|(_, s)| s[0])
        .context("the checkpoint holds no classifier (fc.weight)")?;
    let mc = ModelConfig {
        in_channels: cin,
        num_classes: classes,
        ..ck.config.model.clone()
    };
    let mut model = Model::new(&mc, ck.config.seed)?;
    ck.restore_model(&mut model)?;
    Ok(model)
}

/// What the model takes as input: recorded in the checkpoint, or for checkpoints written before
/// it was, the scaling of the dataset the run trained on (size unknown: taken from the images).
pub fn input_of(ck: &Checkpoint, channels: usize) -> InputSpec {
    if let Some(spec) = &ck.input {
        return spec.clone();
    }
    let n = match ck.config.dataset.as_str() {
        "cifar10c" => crate::data::cifar::cifar_normalize(),
        "bffhq" => crate::data::Normalize::imagenet(),
        _ => Normalize::identity(channels),
    };
    InputSpec {
        channels,
        height: 0,
        width: 0,
        mean: n.mean,
        std: n.std,
    }
}

/// Every PNG the inputs name, in order: files as given, folders searched.
fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let found = crate::data::folder::list_pngs(p)?;
            ensure!(
                !found.is_empty(),
                "{}: no PNG images in this folder",
                p.display()
            );
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            bail!("{}: no such image or folder", p.display());
        }
    }
    Ok(files)
}

/// One image as [C, H, W] bytes with the model's channel count (grey promoted to RGB).
fn read_image(path: &Path, channels: usize) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(crate::data::folder::image_error)
        .with_context(|| format!("{}: not a readable PNG image", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let hw = w * h;
    let pixels = match channels {
        1 => img.to_luma8().into_raw(),
        3 => {
            let rgb = img.to_rgb8();
            let mut planes = vec![0u8; 3 * hw];
            for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
                for c in 0..3 {
                    planes[c * hw + i] = px[c];
                }
            }
            planes
        }
        c => bail!("the model takes {c}-channel images; only 1 or 3 can be read from PNG"),
    };
    Ok((h, w, pixels))
}

/// Softmax probabilities of each image under the model: one row of `classes` per image.
pub fn predict(
    model: &mut Model,
    spec: &InputSpec,
    images: &[(usize, usize, Vec<u8>)],
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    ensure!(batch_size > 0, "--batch-size must be at least 1");
    let Some((h, w, _)) = images.first() else {
        return Ok(Vec::new());
    };
    let ds = Dataset {
        name: "predict".into(),
        channels: spec.channels,
        height: *h,
        width: *w,
        num_classes: model.config.num_classes,
        pixels: images.iter().flat_map(|i| i.2.iter().copied()).collect(),
        labels: vec![0; images.len()],
        bias: vec![0; images.len()],
        normalize: Normalize {
            mean: spec.mean.clone(),
            std: spec.std.clone(),
        },
    };
    ds.validate()?;
    let mut rng = crate::rng::Rng::new(0);
    let mut out = Vec::with_capacity(images.len());
    let indices: Vec<usize> = (0..images.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let batch = make_batch(&ds, chunk, Augment::None, &mut rng);
        let _awake = crate::device::cpu::KeepAwake::new();
        let mut tape = crate::autograd::Tape::no_grad();
        let x = tape.input(batch.images);
        let logits = model.forward(&mut tape, x, false)?;
        let logits = tape.value(logits).data();
        let k = logits.len() / chunk.len();
        for row in logits.chunks_exact(k) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = row.iter().map(|&z| ((z - max) as f64).exp()).collect();
            let sum: f64 = e.iter().sum();
            out.push(e.iter().map(|&v| (v / sum) as f32).collect());
        }
    }
    Ok(out)
}

/// The index of the largest probability (the first on ties, as `metrics::argmax_rows`).
fn class_of(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

pub fn run(args: &PredictArgs) -> Result<()> {
    let ck = Checkpoint::load(&args.checkpoint)?;
    let mut model = model_of(&ck)
        .with_context(|| format!("{}: cannot build its model", args.checkpoint.display()))?;
    let spec = input_of(&ck, model.config.in_channels);
    let files = image_files(&args.inputs)?;
    let mut images = Vec::with_capacity(files.len());
    for f in &files {
        let img = read_image(f, spec.channels)?;
        if spec.height > 0 && (img.0, img.1) != (spec.height, spec.width) {
            bail!(
                "{}: image is {}x{}, the model was trained on {}x{} images",
                f.display(),
                img.1,
                img.0,
                spec.width,
                spec.height
            );
        }
        if let Some(first) = images.first() {
            let first: &(usize, usize, Vec<u8>) = first;
            ensure!(
                (first.0, first.1) == (img.0, img.1),
                "{}: image is {}x{} but {} is {}x{}",
                f.display(),
                img.1,
                img.0,
                files[0].display(),
                first.1,
                first.0
            );
        }
        images.push(img);
    }
    let spin = crate::progress::spinner(&format!("predicting {} images", images.len()));
    let probs = predict(&mut model, &spec, &images, args.batch_size)?;
    spin.finish_and_clear();
    let k = model.config.num_classes;
    let mut text = String::new();
    if args.csv {
        text += "image,class";
        for c in 0..k {
            text += &format!(",p{c}");
        }
        text += "\n";
        for (f, p) in files.iter().zip(&probs) {
            text += &format!("{},{}", csv_field(&f.display().to_string()), class_of(p));
            for v in p {
                text += &format!(",{v:.6}");
            }
            text += "\n";
        }
    } else {
        text += "| image | class |";
        for c in 0..k {
            text += &format!(" p{c} |");
        }
        text += &format!("\n|---|---|{}\n", "---|".repeat(k));
        for (f, p) in files.iter().zip(&probs) {
            text += &format!("| {} | {} |", f.display(), class_of(p));
            for v in p {
                text += &format!(" {v:.4} |");
            }
            text += "\n";
        }
    }
    print!("{text}");
    Ok(())
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
