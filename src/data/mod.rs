//! Datasets: in-memory u8 images with label and bias attribute per sample, readers, generators,
//! and the batch loader.
//!
//! A sample is bias-aligned when its bias attribute equals its label (colour = digit class in
//! Colored MNIST, corruption index = class in Corrupted CIFAR-10, gender = age group in BFFHQ),
//! bias-conflicting otherwise.

pub mod cache;
pub mod cifar;
pub mod cli;
pub mod cmnist;
pub mod corrupt;
pub mod download;
pub mod fetch;
pub mod fetch_cifar;
pub mod fetch_frost;
pub mod folder;
pub mod gen;
pub mod idx;
pub mod import;
pub mod loader;
pub mod registry;
pub mod synthetic;
pub mod zip;

pub use registry::{open, open_with, OpenOptions};

use anyhow::{bail, Result};

/// Per-channel normalisation applied when a batch is made: x = (p/255 − mean) / std.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// The ImageNet channel statistics (used for BFFHQ's face photographs).
    pub fn imagenet() -> Self {
        Self {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// p/255, no shift or scale (the reference's Colored MNIST).
    pub fn identity(channels: usize) -> Self {
        Self {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }
}

/// One split of a dataset, held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    /// [N, C, H, W] bytes.
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    /// Bias attribute per sample; aligned iff `bias[i] == labels[i]`.
    pub bias: Vec<u8>,
    pub normalize: Normalize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.pixels[i * l..(i + 1) * l]
    }
    pub fn is_aligned(&self, i: usize) -> bool {
        self.bias[i] == self.labels[i]
    }
    pub fn num_conflicting(&self) -> usize {
        (0..self.len()).filter(|&i| !self.is_aligned(i)).count()
    }

    /// Checks internal consistency; errors name the dataset and the problem.
    pub fn validate(&self) -> Result<()> {
        let n = self.labels.len();
        if self.bias.len() != n {
            bail!(
                "{}: {} labels but {} bias attributes",
                self.name,
                n,
                self.bias.len()
            );
        }
        if self.pixels.len() != n * self.image_len() {
            bail!(
                "{}: {} pixels for {} images of {}x{}x{}",
                self.name,
                self.pixels.len(),
                n,
                self.channels,
                self.height,
                self.width
            );
        }
        if let Some(&l) = self
            .labels
            .iter()
            .find(|&&l| l as usize >= self.num_classes)
        {
            bail!(
                "{}: label {} out of range for {} classes",
                self.name,
                l,
                self.num_classes
            );
        }
        if self.normalize.mean.len() != self.channels || self.normalize.std.len() != self.channels {
            bail!(
                "{}: normalisation has the wrong number of channels",
                self.name
            );
        }
        Ok(())
    }
}

/// The three splits a run uses.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Dataset,
}

/// How every subcommand's `--dataset` names the datasets (one spelling: `rest train`, `eval`,
/// `predict`, `data show`; `data make` and `data fetch` take the ones they build or fetch).
pub const DATASET_HELP: &str =
    "Dataset: synthetic | cmnist | cifar10c | bffhq | folder:DIR (the debiasing folder layout)";
/// How every subcommand's `--ratio` is described.
pub const RATIO_HELP: &str = "Percentage of bias-conflicting training samples (the paper's: \
    0.5, 1, 2, 5; BFFHQ 0.5 only); Colored MNIST and Corrupted CIFAR-10 are generated at any \
    ratio in (0, 100)";
/// How every subcommand's `--data-dir` is described.
pub const DATA_DIR_HELP: &str = "Where datasets are fetched and generated (env REST_DATA_DIR)";
