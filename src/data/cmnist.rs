//! Colored MNIST, following the protocol of Learning from Failure (Nam et al., 2020).
//!
//! The digit stroke is coloured with its bias attribute's colour, the background stays black:
//! `pixel = raw · clamp(colour[bias] + N(0, σ²), 0, 1)` per channel, with one colour draw per
//! image and σ set by the severity (1..5 → 0.05, 0.02, 0.01, 0.005, 0.002). LfF's Colored MNIST
//! configurations use severity 4, the default here. In the biased splits a sample's colour is
//! its class's colour except for exactly `round(ratio · n)` bias-conflicting samples, which take
//! a random other class's colour; the test split's colour is uniform at random. No
//! normalisation (identity), as the reference.

use super::gen::{self, GenConfig};
use super::{synthetic::COLOURS, Dataset, Normalize, Splits};
use anyhow::{bail, Result};

pub const DEFAULT_SEVERITY: u32 = 4;

/// Colour jitter standard deviation of a severity (1..5).
pub fn colour_std(severity: u32) -> f32 {
    [0.05, 0.02, 0.01, 0.005, 0.002][(severity.clamp(1, 5) - 1) as usize]
}

/// The class colour `k` in [0, 1].
pub fn class_colour(k: usize) -> [f32; 3] {
    let c = COLOURS[k % COLOURS.len()];
    [
        c[0] as f32 / 255.0,
        c[1] as f32 / 255.0,
        c[2] as f32 / 255.0,
    ]
}

/// Colours one grey image (`src`, H·W bytes) into `out` (3·H·W bytes, planar RGB).
pub fn colorize(src: &[u8], bias: u8, std: f32, rng: &mut crate::rng::Rng, out: &mut [u8]) {
    let base = class_colour(bias as usize);
    let col: [f32; 3] = std::array::from_fn(|c| (base[c] + std * rng.normal()).clamp(0.0, 1.0));
    let hw = src.len();
    for c in 0..3 {
        for (o, &p) in out[c * hw..(c + 1) * hw].iter_mut().zip(src) {
            *o = (p as f32 * col[c]).round() as u8;
        }
    }
}

/// Generates Colored MNIST from grey MNIST (train, test).
pub fn generate(mnist_train: &Dataset, mnist_test: &Dataset, cfg: &GenConfig) -> Result<Splits> {
    if mnist_train.channels != 1 || mnist_test.channels != 1 {
        bail!(
            "{}: Colored MNIST needs grey (1-channel) digits",
            mnist_train.name
        );
    }
    if mnist_train.num_classes > COLOURS.len() {
        bail!("{}: more classes than colours", mnist_train.name);
    }
    let plans = gen::plan_splits("cmnist", mnist_train, mnist_test, cfg)?;
    let std = colour_std(cfg.severity);
    let k = mnist_train.num_classes;
    let [a, b, c] = plans.map(|p| {
        gen::render_split(
            &p,
            3,
            k,
            Normalize::identity(3),
            cfg.seed,
            cfg.progress,
            |src, _l, bias, rng, out| colorize(src, bias, std, rng, out),
        )
    });
    Ok(Splits {
        train: a,
        valid: b,
        test: c,
    })
}
