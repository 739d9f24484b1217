//! Loader: batches equal a plain per-pixel reference (normalisation, crop/flip, [C, N, H, W]),
//! the order is a pure function of (seed, epoch), prefetching changes nothing, and the
//! throughput on Colored MNIST is measured (printed) when the real data is present.

use rest::data::loader::{
    batches, batches_prefetched, epoch_order, make_batch, Augment, LoaderConfig,
};
use rest::data::{Dataset, Normalize};
use rest::rng::Rng;
use std::sync::Arc;

mod common;

fn data(n: usize) -> Dataset {
    let (c, h, w) = (3, 7, 5);
    Dataset {
        name: "d".into(),
        channels: c,
        height: h,
        width: w,
        num_classes: 4,
        pixels: (0..n * c * h * w).map(|j| (j * 31 % 256) as u8).collect(),
        labels: (0..n).map(|i| (i % 4) as u8).collect(),
        bias: (0..n).map(|i| (i % 3) as u8).collect(),
        normalize: Normalize {
            mean: vec![0.1, 0.5, 0.9],
            std: vec![0.2, 0.3, 0.4],
        },
    }
}

/// Per-pixel reference with the same random draws as make_batch.
fn reference(ds: &Dataset, idx: &[usize], augment: Augment, rng: &mut Rng) -> Vec<f32> {
    let (c, h, w, n) = (ds.channels, ds.height, ds.width, idx.len());
    let mut out = vec![0f32; c * n * h * w];
    for (b, &i) in idx.iter().enumerate() {
        let (dy, dx, flip) = match augment {
            Augment::None => (0, 0, false),
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
            let (m, s) = (ds.normalize.mean[ch], ds.normalize.std[ch]);
            for y in 0..h {
                for x in 0..w {
                    let sy = y as isize + dy;
                    let sx = if flip {
                        (w - 1 - x) as isize
                    } else {
                        x as isize
                    } + dx;
                    let p = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                        0.0
                    } else {
                        ds.image(i)[(ch * h + sy as usize) * w + sx as usize] as f32
                    };
                    out[((ch * n + b) * h + y) * w + x] = p * (1.0 / (255.0 * s)) - m / s;
                }
            }
        }
    }
    out
}

#[test]
fn batches_match_the_reference() {
    let ds = data(40);
    let idx: Vec<usize> = (0..40).rev().step_by(3).collect();
    for aug in [Augment::None, Augment::CropFlip { pad: 2 }] {
        let mut r1 = Rng::new(5);
        let mut r2 = Rng::new(5);
        let b = make_batch(&ds, &idx, aug, &mut r1);
        let want = reference(&ds, &idx, aug, &mut r2);
        assert_eq!(b.images.shape(), &[3, idx.len(), 7, 5]);
        let worst = b
            .images
            .data()
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{aug:?}: max difference {worst}");
        assert_eq!(r1.state(), r2.state(), "same number of random draws");
        assert_eq!(
            b.labels,
            idx.iter().map(|&i| (i % 4) as u32).collect::<Vec<_>>()
        );
        assert_eq!(
            b.aligned,
            idx.iter().map(|&i| i % 4 == i % 3).collect::<Vec<_>>()
        );
    }
}

#[test]
fn order_is_a_pure_function_of_seed_and_epoch_and_prefetch_is_identical() {
    let ds = data(50);
    let cfg = LoaderConfig {
        batch_size: 8,
        shuffle: true,
        drop_last: false,
        augment: Augment::CropFlip { pad: 1 },
        sample_weights: None,
        seed: 9,
    };
    assert_eq!(epoch_order(50, &cfg, 3), epoch_order(50, &cfg, 3));
    assert_ne!(epoch_order(50, &cfg, 3), epoch_order(50, &cfg, 4));
    let mut sorted = epoch_order(50, &cfg, 3);
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    let a: Vec<_> = batches(&ds, &cfg, 2).collect();
    let b: Vec<_> = batches_prefetched(Arc::new(ds.clone()), cfg.clone(), 2, 2).collect();
    assert_eq!(a.len(), 7);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.indices, y.indices);
        assert_eq!(x.images, y.images);
    }
    // Dropping the prefetching iterator early stops its thread without hanging.
    let mut it = batches_prefetched(Arc::new(ds), cfg, 2, 1);
    assert!(it.next().is_some());
    drop(it);
}

#[test]
fn throughput_on_cmnist_when_present() {
    let dd = common::real_data_dir();
    let cache = dd.join("cmnist/cache/1pct-sev4-seed0/train.bin");
    if !cache.is_file() {
        println!(
            "skipped: no Colored MNIST cache at {} (run `rest data make --dataset cmnist --ratio 1`)",
            cache.display()
        );
        return;
    }
    let t = std::time::Instant::now();
    let splits = rest::data::open("cmnist", 1.0, &dd).unwrap();
    println!(
        "open(\"cmnist\", 1, datasets) from the cache: {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let train = splits.train;
    for augment in [Augment::None, Augment::CropFlip { pad: 2 }] {
        let cfg = LoaderConfig {
            batch_size: 256,
            shuffle: true,
            drop_last: true,
            augment,
            sample_weights: None,
            seed: 1,
        };
        let t = std::time::Instant::now();
        let mut n = 0;
        for b in batches(&train, &cfg, 0) {
            n += b.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "loader, CMNIST train, batch 256, {augment:?}: {n} images in {s:.3} s = {:.0} images/s",
            n as f64 / s
        );
        assert!(n >= 53_000);
    }
}
