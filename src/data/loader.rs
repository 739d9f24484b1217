//! Batches: order (shuffled, or drawn with replacement by a weighted sampler), u8 → f32 with
//! normalisation, and images laid out [C, N, H, W] as the engine computes.

use super::Dataset;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Training-time augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Augment {
    None,
    /// Random crop after zero padding by `pad` pixels, and a random horizontal flip.
    CropFlip {
        pad: usize,
    },
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub augment: Augment,
    /// Weighted sampling with replacement: as many draws per epoch as samples, sample i drawn
    /// with probability w_i / Σw (the reference's form of reweighting).
    pub sample_weights: Option<Vec<f32>>,
    pub seed: u64,
}

/// One batch: images [C, N, H, W] and per-sample label, group and dataset index.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Vec<u32>,
    pub aligned: Vec<bool>,
    pub indices: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The sample order of one epoch; a pure function of (config, epoch) so a resumed run sees
/// the same batches.
pub fn epoch_order(n: usize, cfg: &LoaderConfig, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::derive(cfg.seed, 0x5eed_0000 + epoch);
    if let Some(w) = &cfg.sample_weights {
        let mut cum = Vec::with_capacity(n);
        let mut total = 0.0f64;
        for &x in w {
            total += x.max(0.0) as f64;
            cum.push(total);
        }
        return (0..n)
            .map(|_| {
                let u = rng.uniform_f64() * total;
                cum.partition_point(|&c| c <= u).min(n - 1)
            })
            .collect();
    }
    let mut order: Vec<usize> = (0..n).collect();
    if cfg.shuffle {
        rng.shuffle(&mut order);
    }
    order
}

/// Makes the batch of the given sample indices.
pub fn make_batch(ds: &Dataset, indices: &[usize], augment: Augment, rng: &mut Rng) -> Batch {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let n = indices.len();
    let mut images = vec![0f32; c * n * h * w];
    let scale: Vec<f32> = ds.normalize.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = ds
        .normalize
        .mean
        .iter()
        .zip(&ds.normalize.std)
        .map(|(m, s)| m / s)
        .collect();
    for (b, &i) in indices.iter().enumerate() {
        let src = ds.image(i);
        let (dy, dx, flip) = match augment {
            Augment::None => (0isize, 0isize, false),
            Augment::CropFlip { pad } => {
                let p = pad as isize;
                (
                    rng.below(2 * pad + 1) as isize - p,
                    rng.below(2 * pad + 1) as isize - p,
                    rng.below(2) == 1,
                )
            }
        };
        for ch in 0..c {
            let dst = &mut images[(ch * n + b) * h * w..(ch * n + b + 1) * h * w];
            for y in 0..h {
                for x in 0..w {
                    let sy = y as isize + dy;
                    let sx0 = if flip {
                        (w - 1 - x) as isize
                    } else {
                        x as isize
                    };
                    let sx = sx0 + dx;
                    let p = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                        0.0
                    } else {
                        src[(ch * h + sy as usize) * w + sx as usize] as f32
                    };
                    dst[y * w + x] = p * scale[ch] - shift[ch];
                }
            }
        }
    }
    Batch {
        images: Tensor::from_vec(&[c, n, h, w], images).expect("batch shape"),
        labels: indices.iter().map(|&i| ds.labels[i] as u32).collect(),
        aligned: indices.iter().map(|&i| ds.is_aligned(i)).collect(),
        indices: indices.to_vec(),
    }
}

/// The batches of one epoch, made lazily.
pub fn batches<'a>(
    ds: &'a Dataset,
    cfg: &'a LoaderConfig,
    epoch: u64,
) -> impl Iterator<Item = Batch> + 'a {
    let order = epoch_order(ds.len(), cfg, epoch);
    let bs = cfg.batch_size.max(1);
    let n_batches = if cfg.drop_last && order.len() >= bs {
        order.len() / bs
    } else {
        order.len().div_ceil(bs)
    };
    let mut rng = Rng::derive(cfg.seed, 0xa06_0000 + epoch);
    (0..n_batches).map(move |b| {
        let idx = &order[b * bs..((b + 1) * bs).min(order.len())];
        make_batch(ds, idx, cfg.augment, &mut rng)
    })
}
