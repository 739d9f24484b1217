//! A built-in synthetic biased dataset: coloured glyphs.
//!
//! Each class has a fixed random 5×5 glyph, drawn 2× magnified at a random place on a dark,
//! slightly noisy 16×16 canvas in one of ten colours. The colour is the bias attribute: in the
//! training split it equals the class except for a `conflict_ratio` fraction of samples, which get
//! another class's colour; validation and test splits are unbiased (colour uniform at random), so
//! the conflicting group is large there. Colour is easier to learn than shape, so a network that
//! takes the shortcut does well on aligned samples and badly on conflicting ones — the situation
//! REST is for, in miniature.

use super::{Dataset, Normalize, Splits};
use crate::rng::Rng;
use anyhow::{bail, Result};

pub const SIZE: usize = 16;
pub const CLASSES: usize = 10;

/// The ten class colours (RGB), the same as the Colored MNIST palette's order of hues.
pub const COLOURS: [[u8; 3]; 10] = [
    [220, 20, 60],
    [0, 128, 0],
    [0, 0, 255],
    [255, 215, 0],
    [255, 0, 255],
    [0, 255, 255],
    [255, 140, 0],
    [128, 0, 128],
    [139, 69, 19],
    [128, 128, 128],
];

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyntheticConfig {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Fraction of bias-conflicting training samples, in [0, 1].
    pub conflict_ratio: f64,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            train: 6000,
            valid: 1000,
            test: 2000,
            conflict_ratio: 0.01,
            seed: 1,
        }
    }
}

fn glyphs(seed: u64) -> Vec<[bool; 25]> {
    let mut rng = Rng::derive(seed, 0x61797068);
    let mut out: Vec<[bool; 25]> = Vec::new();
    while out.len() < CLASSES {
        let mut g = [false; 25];
        for cell in g.iter_mut() {
            *cell = rng.uniform() < 0.5;
        }
        let on = g.iter().filter(|&&b| b).count();
        // Distinct glyphs with enough ink to be recognisable.
        let far_enough = out
            .iter()
            .all(|o| o.iter().zip(&g).filter(|(a, b)| a != b).count() >= 6);
        if (9..=16).contains(&on) && far_enough {
            out.push(g);
        }
    }
    out
}

fn make_split(
    name: &str,
    n: usize,
    conflict: Option<f64>,
    glyphs: &[[bool; 25]],
    rng: &mut Rng,
) -> Dataset {
    let img = 3 * SIZE * SIZE;
    let mut pixels = vec![0u8; n * img];
    let mut labels = Vec::with_capacity(n);
    let mut bias = Vec::with_capacity(n);
    // Exactly round(ratio·n) conflicting samples in a biased split.
    let n_conflict = conflict.map(|r| (r * n as f64).round() as usize);
    let mut is_conflict: Vec<bool> = (0..n).map(|i| n_conflict.is_some_and(|k| i < k)).collect();
    rng.shuffle(&mut is_conflict);
    for (i, &conflicting) in is_conflict.iter().enumerate() {
        let label = rng.below(CLASSES);
        let colour = match conflict {
            Some(_) if conflicting => (label + 1 + rng.below(CLASSES - 1)) % CLASSES,
            Some(_) => label,
            None => rng.below(CLASSES),
        };
        labels.push(label as u8);
        bias.push(colour as u8);
        let px = &mut pixels[i * img..(i + 1) * img];
        for p in px.iter_mut() {
            *p = (rng.uniform() * 24.0) as u8;
        }
        let (oy, ox) = (rng.below(SIZE - 10 + 1), rng.below(SIZE - 10 + 1));
        for gy in 0..5 {
            for gx in 0..5 {
                if !glyphs[label][gy * 5 + gx] {
                    continue;
                }
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let (y, x) = (oy + 2 * gy + dy, ox + 2 * gx + dx);
                    for c in 0..3 {
                        let v = COLOURS[colour][c] as f32 * (0.85 + 0.15 * rng.uniform());
                        px[(c * SIZE + y) * SIZE + x] = v as u8;
                    }
                }
            }
        }
    }
    Dataset {
        name: format!("synthetic/{name}"),
        channels: 3,
        height: SIZE,
        width: SIZE,
        num_classes: CLASSES,
        pixels,
        labels,
        bias,
        normalize: Normalize::identity(3),
    }
}

/// Builds the three splits; the same config gives the same bytes.
pub fn generate(cfg: &SyntheticConfig) -> Result<Splits> {
    if !(0.0..=1.0).contains(&cfg.conflict_ratio) {
        bail!(
            "synthetic: conflict ratio {} is outside [0, 1]",
            cfg.conflict_ratio
        );
    }
    if cfg.train == 0 || cfg.valid == 0 || cfg.test == 0 {
        bail!("synthetic: every split needs at least one sample");
    }
    let g = glyphs(cfg.seed);
    let mut rng = Rng::derive(cfg.seed, 1);
    Ok(Splits {
        train: make_split("train", cfg.train, Some(cfg.conflict_ratio), &g, &mut rng),
        valid: make_split("valid", cfg.valid, None, &g, &mut rng),
        test: make_split("test", cfg.test, None, &g, &mut rng),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_determinism() {
        let cfg = SyntheticConfig {
            train: 1000,
            valid: 50,
            test: 50,
            conflict_ratio: 0.05,
            seed: 3,
        };
        let a = generate(&cfg).unwrap();
        let b = generate(&cfg).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.train.num_conflicting(), 50);
        a.train.validate().unwrap();
        assert!(a.test.num_conflicting() > 30, "test split is unbiased");
    }
}
