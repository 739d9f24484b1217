//! Batches: order (shuffled, or drawn with replacement by a weighted sampler), u8 → f32 with
//! normalisation, and images laid out [C, N, H, W] as the engine computes.

use super::Dataset;
use crate::rng::Rng;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::sync::Arc;

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
///
/// The augmentation draws come from `rng` in sample order (so the batch is a pure function of
/// the rng state); the pixels are then converted in parallel, one (channel, sample) plane per
/// task, through a 256-entry lookup table per channel.
pub fn make_batch(ds: &Dataset, indices: &[usize], augment: Augment, rng: &mut Rng) -> Batch {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let n = indices.len();
    let hw = h * w;
    let mut images = vec![0f32; c * n * hw];
    let lut: Vec<[f32; 256]> = (0..c)
        .map(|ch| {
            let (m, s) = (ds.normalize.mean[ch], ds.normalize.std[ch]);
            let (scale, shift) = (1.0 / (255.0 * s), m / s);
            std::array::from_fn(|p| p as f32 * scale - shift)
        })
        .collect();
    let params: Vec<(isize, isize, bool)> = indices
        .iter()
        .map(|_| match augment {
            Augment::None => (0isize, 0isize, false),
            Augment::CropFlip { pad } => {
                let p = pad as isize;
                (
                    rng.below(2 * pad + 1) as isize - p,
                    rng.below(2 * pad + 1) as isize - p,
                    rng.below(2) == 1,
                )
            }
        })
        .collect();
    if hw > 0 && n > 0 {
        images
            .par_chunks_mut(hw)
            .with_min_len(8)
            .enumerate()
            .for_each(|(plane, dst)| {
                let (ch, b) = (plane / n, plane % n);
                let src = &ds.image(indices[b])[ch * hw..(ch + 1) * hw];
                let lut = &lut[ch];
                let zero = lut[0];
                let (dy, dx, flip) = params[b];
                if dy == 0 && dx == 0 && !flip {
                    for (d, &p) in dst.iter_mut().zip(src) {
                        *d = lut[p as usize];
                    }
                    return;
                }
                for y in 0..h {
                    let row = &mut dst[y * w..(y + 1) * w];
                    let sy = y as isize + dy;
                    if sy < 0 || sy >= h as isize {
                        row.fill(zero);
                        continue;
                    }
                    let srow = &src[sy as usize * w..(sy as usize + 1) * w];
                    for (x, d) in row.iter_mut().enumerate() {
                        let sx0 = if flip {
                            (w - 1 - x) as isize
                        } else {
                            x as isize
                        };
                        let sx = sx0 + dx;
                        *d = if sx < 0 || sx >= w as isize {
                            zero
                        } else {
                            lut[srow[sx as usize] as usize]
                        };
                    }
                }
            });
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

/// The same batches as [`batches`], made ahead on a background thread and handed over through
/// a bounded channel of `depth` batches, so that making batch b+1 overlaps the training step on
/// batch b. The thread stops when the iterator is dropped.
pub fn batches_prefetched(
    ds: Arc<Dataset>,
    cfg: LoaderConfig,
    epoch: u64,
    depth: usize,
) -> impl Iterator<Item = Batch> {
    let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
    std::thread::spawn(move || {
        for b in batches(&ds, &cfg, epoch) {
            if tx.send(b).is_err() {
                break;
            }
        }
    });
    rx.into_iter()
}
