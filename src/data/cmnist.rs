//! Colored MNIST, following the protocol of Learning from Failure (Nam et al., 2020).
//!
//! The digit stroke is coloured with its bias attribute's colour, the background stays black:
//! `pixel = ⌊raw · clamp(colour[bias] + N(0, σ²), 0, 1)⌋` per channel, with one colour draw per
//! image and σ set by the severity (1..5 → 0.05, 0.02, 0.01, 0.005, 0.002). The ten colours,
//! the σ table and the truncation to bytes are LfF's (alinlab/LfF: the palette is the tensor in
//! `data/resource/colors.th`, the jitter `data/colored_mnist_protocol.py`; `make_dataset.py`
//! passes the severity through unchanged for Colored MNIST, unlike Corrupted CIFAR-10's
//! `severity + 1`). LfF's Colored MNIST configurations use severity 4, the default here. In the biased splits a sample's colour is
//! its class's colour except for exactly `round(ratio · n)` bias-conflicting samples, which take
//! a random other class's colour; the test split's colour is uniform at random. No
//! normalisation (identity), as the reference.

use super::gen::{self, GenConfig};
use super::{Dataset, Normalize, Splits};
use anyhow::{bail, Result};

pub const DEFAULT_SEVERITY: u32 = 4;

/// Colour jitter standard deviation of a severity (1..5).
pub fn colour_std(severity: u32) -> f32 {
    [0.05, 0.02, 0.01, 0.005, 0.002][(severity.clamp(1, 5) - 1) as usize]
}

/// LfF's ten mean colours (RGB in [0, 1]), bias attribute k → `LFF_COLOURS[k]`: the float32
/// values stored in alinlab/LfF's `data/resource/colors.th` (a [10, 3, 1, 1] tensor; file
/// SHA-256 fb3736d5…ff76480), printed to nine significant digits so they parse to the same bits.
#[allow(clippy::excessive_precision)] // nine digits: the shortest that name every f32 exactly
pub const LFF_COLOURS: [[f32; 3]; 10] = [
    [0.983682334, 0.312519014, 0.168575346],
    [0.990529656, 0.915605247, 0.351512194],
    [0.672963977, 0.461070478, 0.579808176],
    [0.783251941, 0.831555903, 0.601329386],
    [0.0880157948, 0.77796334, 0.981807768],
    [0.321393371, 0.961054564, 0.446449876],
    [0.0246158838, 0.23565048, 0.758666277],
    [0.555246949, 0.101580143, 0.761763155],
    [0.2077232, 0.392948508, 0.0187023878],
    [0.833657622, 0.202409267, 0.266943097],
];

/// The class colour `k` in [0, 1].
pub fn class_colour(k: usize) -> [f32; 3] {
    LFF_COLOURS[k % LFF_COLOURS.len()]
}

/// Colours one grey image (`src`, H·W bytes) into `out` (3·H·W bytes, planar RGB).
pub fn colorize(src: &[u8], bias: u8, std: f32, rng: &mut crate::rng::Rng, out: &mut [u8]) {
    let base = class_colour(bias as usize);
    let col: [f32; 3] = std::array::from_fn(|c| (base[c] + std * rng.normal()).clamp(0.0, 1.0));
    let hw = src.len();
    for c in 0..3 {
        for (o, &p) in out[c * hw..(c + 1) * hw].iter_mut().zip(src) {
            // LfF converts with np.uint8, which truncates.
            *o = (p as f32 * col[c]) as u8;
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
    if mnist_train.num_classes > LFF_COLOURS.len() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_is_lffs() {
        // Spot values of LfF's colors.th, as float32 bit patterns read from the file.
        assert_eq!(LFF_COLOURS[0][0].to_bits(), 0x3f7bd29b);
        assert_eq!(LFF_COLOURS[4][0].to_bits(), 0x3db441a0);
        assert_eq!(LFF_COLOURS[9][2].to_bits(), 0x3e88acc4);
        // Ten distinct colours: no two classes share a hue.
        for (a, ca) in LFF_COLOURS.iter().enumerate() {
            for (b, cb) in LFF_COLOURS.iter().enumerate().skip(a + 1) {
                let d: f32 = ca.iter().zip(cb).map(|(x, y)| (x - y).abs()).sum();
                assert!(d > 0.2, "colours {a} and {b} are {d} apart");
            }
        }
    }

    #[test]
    fn colouring_scales_the_stroke_and_truncates() {
        let src = [0u8, 255, 100];
        let mut out = [0u8; 9];
        let mut rng = crate::rng::Rng::new(1);
        colorize(&src, 1, 0.0, &mut rng, &mut out);
        let c = LFF_COLOURS[1];
        for ch in 0..3 {
            assert_eq!(out[3 * ch], 0, "background stays black");
            assert_eq!(out[3 * ch + 1], (255.0 * c[ch]) as u8);
            assert_eq!(out[3 * ch + 2], (100.0 * c[ch]).floor() as u8);
        }
    }
}
