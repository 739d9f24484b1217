//! The paper's two models: the Colored-MNIST CNN of the reference code and ResNet-18 with a
//! width parameter (the ImageNet-style stem of the reference's `resnet18vw`).

use super::architectures::{self, Builder};
use crate::autograd::{Tape, Var};
use crate::device::gpu::alloc::GpuDevice;
use crate::nn::on_device::{DeviceParams, Downloaded, HostParam};
use crate::nn::ops::{self, BnParams, BnStats};
use crate::nn::param::{ParamId, ParamStore, Values};
use crate::sparse::csr::SparseWeight;
use crate::tensor::Tensor;
use anyhow::{bail, ensure, Result};
use std::sync::Arc;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Arch {
    /// Conv 3→w (k4 s2 p1) + BN + ReLU, w→2w, 2w→4w the same, global average pool, linear.
    Cnn,
    /// ResNet-18: 7×7/2 stem + max-pool, four stages of two BasicBlocks (w, 2w, 4w, 8w).
    Resnet18,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Channels of the first stage (64 in the paper for both models).
    pub width: usize,
    pub in_channels: usize,
    pub num_classes: usize,
}

/// How much a model holds, for a memory estimate before anything large is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Parameters (weights, biases, batch-norm scales and shifts).
    pub params: u128,
    /// Floats of the convolution and linear outputs of one image.
    pub activations_per_image: u128,
}

impl ModelConfig {
    /// The footprint of this model on `h`×`w` inputs, from tiny models of the same architecture:
    /// every channel count is a multiple of the width (save the input's and the classes), so the
    /// parameters are a quadratic in the width and the activations linear in it. Exact, never
    /// allocates at the requested width; None when the counts overflow.
    pub fn footprint(&self, h: usize, w: usize) -> Result<Option<Footprint>> {
        let at = |width: usize| -> Result<(i128, i128)> {
            let m = Model::new(
                &ModelConfig {
                    width,
                    ..self.clone()
                },
                0,
            )?;
            let params: usize = m.params.params.iter().map(|p| p.numel()).sum();
            let acts: usize = m
                .weight_geometry(h, w)
                .iter()
                .map(|g| m.params.params[g.param].shape[0] * g.out_pixels)
                .sum();
            Ok((params as i128, acts as i128))
        };
        let ((p1, a1), (p2, a2), (p3, _)) = (at(1)?, at(2)?, at(3)?);
        let a = (p3 - 2 * p2 + p1) / 2;
        let b = p2 - p1 - 3 * a;
        let c = p1 - a - b;
        let x = self.width as i128;
        let params = x
            .checked_mul(x)
            .and_then(|xx| xx.checked_mul(a))
            .and_then(|q| q.checked_add(b.checked_mul(x)?))
            .and_then(|q| q.checked_add(c));
        let acts = (a2 - a1)
            .checked_mul(x)
            .and_then(|q| q.checked_add(2 * a1 - a2));
        Ok(params.zip(acts).map(|(p, a)| Footprint {
            params: p as u128,
            activations_per_image: a as u128,
        }))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ConvLayer {
    pub(crate) w: ParamId,
    pub(crate) b: Option<ParamId>,
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct BnLayer {
    pub(crate) gamma: ParamId,
    pub(crate) beta: ParamId,
    /// Index into `Model::bn`.
    pub(crate) stats: usize,
}

/// One layer of a model: it reads earlier values by index (0 is the input images, in the
/// device's layout; layer i writes value i + 1) and makes one value. A model is a list of these,
/// built once by its builder function; the forward on the tape, the weight geometry (FLOPs,
/// densities, the memory estimate) and the checkpoint's names all walk this one list.
#[derive(Clone, Debug)]
pub(crate) enum Layer {
    Conv {
        conv: ConvLayer,
        input: usize,
    },
    /// Batch norm, followed by ReLU in the same op when `relu`.
    BatchNorm {
        bn: BnLayer,
        relu: bool,
        input: usize,
    },
    MaxPool {
        k: usize,
        stride: usize,
        pad: usize,
        input: usize,
    },
    /// The residual sum a + b, then ReLU.
    AddRelu {
        a: usize,
        b: usize,
    },
    /// [C, …] images → features [C, N].
    GlobalAvgPool {
        input: usize,
    },
    /// Features → logits.
    Linear {
        w: ParamId,
        b: ParamId,
        input: usize,
    },
}

/// Geometry of one masked weight at a given input size, for FLOPs accounting.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WeightGeom {
    pub param: usize,
    pub name: String,
    /// Output positions per image (OH·OW; 1 for the linear layer).
    pub out_pixels: usize,
    /// Whether the layer's input is the image itself (no input gradient is needed).
    pub first: bool,
    /// Input plane (H, W), kernel size, stride and padding (1×1 input and kernel for the linear
    /// layer).
    pub in_size: (usize, usize),
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub params: ParamStore,
    pub bn: Vec<BnStats>,
    pub(crate) layers: Vec<Layer>,
}

fn out_size(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad).saturating_sub(k) / stride + 1
}

impl Model {
    /// Builds a model with seeded initialisation.
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Self> {
        ensure!(config.width > 0, "model width must be positive");
        ensure!(
            config.in_channels > 0,
            "the input needs at least one channel"
        );
        ensure!(
            config.num_classes >= 2,
            "a classifier needs at least 2 classes, got {}",
            config.num_classes
        );
        let mut b = Builder {
            params: ParamStore::default(),
            bn: Vec::new(),
            layers: Vec::new(),
            seed,
        };
        match config.arch {
            Arch::Cnn => architectures::cnn(&mut b, config),
            Arch::Resnet18 => architectures::resnet18(&mut b, config),
        }
        Ok(Self {
            config: config.clone(),
            params: b.params,
            bn: b.bn,
            layers: b.layers,
        })
    }

    /// Logits for images x [C, N, H, W] ([N, K] on the CPU, class-major [K, N] on a GPU: see
    /// `ops::logits_rows`). `train` selects batch statistics in batch norm.
    pub fn forward(&mut self, tape: &mut Tape, x: Var, train: bool) -> Result<Var> {
        let shape = tape.value(x).shape().to_vec();
        ensure!(
            shape.len() == 4 && shape[0] == self.config.in_channels,
            "model expects images [C={}, N, H, W], got {:?}",
            self.config.in_channels,
            shape
        );
        let (params, bn) = (&self.params, &mut self.bn);
        let mut values = vec![ops::to_batch_innermost(tape, x)?];
        for layer in &self.layers {
            let v = match layer {
                Layer::Conv { conv: c, input } => {
                    ops::conv2d(tape, params, values[*input], c.w, c.b, c.stride, c.pad)?
                }
                Layer::BatchNorm { bn: n, relu, input } => {
                    let p = BnParams {
                        gamma: n.gamma,
                        beta: n.beta,
                        relu: *relu,
                    };
                    ops::batchnorm(tape, params, &mut bn[n.stats], values[*input], p, train)?
                }
                Layer::MaxPool {
                    k,
                    stride,
                    pad,
                    input,
                } => ops::maxpool(tape, values[*input], *k, *stride, *pad)?,
                Layer::AddRelu { a, b } => ops::add_relu(tape, values[*a], values[*b])?,
                Layer::GlobalAvgPool { input } => ops::global_avgpool(tape, values[*input])?,
                Layer::Linear { w, b, input } => {
                    ops::linear(tape, params, values[*input], *w, Some(*b))?
                }
            };
            values.push(v);
        }
        Ok(*values.last().expect("a model has layers"))
    }

    /// Logits [N, K] on the host for images [C, N, H, W], batch norm in evaluation mode, on the
    /// device the parameters are on.
    pub fn logits(&mut self, images: Tensor) -> Result<Vec<f32>> {
        let device = self.params.device.as_ref().map(|d| Arc::clone(d.device()));
        let mut tape = Tape::no_grad().on(device);
        let x = tape.upload(images)?;
        let v = self.forward(&mut tape, x, false)?;
        ops::logits_rows(&tape, v)
    }

    /// Moves the trainable state to `device` (with `momentum`, the optimiser's buffers): from
    /// now on the ops run there and the host copy is stale until `download`.
    pub fn to_device(&mut self, device: &Arc<GpuDevice>, momentum: &[Vec<f32>]) -> Result<()> {
        ensure!(
            momentum.len() == self.params.params.len(),
            "optimiser state has {} buffers for {} parameters",
            momentum.len(),
            self.params.params.len()
        );
        let host: Vec<HostParam> = self
            .params
            .params
            .iter()
            .zip(momentum)
            .map(|(p, m)| {
                let (rows, cols) = p.matrix_dims();
                HostParam {
                    name: &p.name,
                    rows,
                    cols,
                    values: p.data(),
                    momentum: m,
                    sparse: p.sparse(),
                }
            })
            .collect();
        let bn: Vec<(&[f32], &[f32])> = self.bn.iter().map(|s| (&s.mean[..], &s.var[..])).collect();
        let d = DeviceParams::upload(device, &host, &bn)?;
        self.params.device = Some(Box::new(d));
        Ok(())
    }

    /// Brings the host copy (and `momentum`) up to date with the device's; nothing to do for a
    /// model on the host.
    pub fn download(&mut self, momentum: &mut [Vec<f32>]) -> Result<()> {
        let Some(d) = &self.params.device else {
            return Ok(());
        };
        let Downloaded { params: states, bn } = d.download()?;
        ensure!(
            states.len() == self.params.params.len() && momentum.len() == states.len(),
            "download into a model of another architecture"
        );
        for ((p, s), m) in self.params.params.iter_mut().zip(states).zip(momentum) {
            ensure!(p.name == s.name, "download: {} is not {}", s.name, p.name);
            let (rows, cols) = p.matrix_dims();
            match (&mut p.values, s.positions) {
                (Values::Dense(v), None) => *v = s.values,
                (Values::Sparse(sw, _), Some(pos)) => {
                    *sw = SparseWeight::from_positions(rows, cols, &pos, s.values)
                }
                _ => bail!("{}: dense on one side, sparse on the other", p.name),
            }
            *m = s.momentum;
        }
        for (s, (mean, var)) in self.bn.iter_mut().zip(bn) {
            s.mean = mean;
            s.var = var;
        }
        Ok(())
    }

    /// Every masked weight with its output size for an input of `h`×`w` pixels.
    pub fn weight_geometry(&self, h: usize, w: usize) -> Vec<WeightGeom> {
        let mut out = Vec::new();
        // The spatial size of every value; value 0 is the input.
        let mut sizes = vec![(h, w)];
        for layer in &self.layers {
            let size = match layer {
                Layer::Conv { conv: c, input } => {
                    let size = sizes[*input];
                    let o = (
                        out_size(size.0, c.k, c.stride, c.pad),
                        out_size(size.1, c.k, c.stride, c.pad),
                    );
                    out.push(WeightGeom {
                        param: c.w.0,
                        name: self.params.get(c.w).name.clone(),
                        out_pixels: o.0 * o.1,
                        first: *input == 0,
                        in_size: size,
                        k: c.k,
                        stride: c.stride,
                        pad: c.pad,
                    });
                    o
                }
                Layer::BatchNorm { input, .. } => sizes[*input],
                Layer::MaxPool {
                    k,
                    stride,
                    pad,
                    input,
                } => {
                    let size = sizes[*input];
                    (
                        out_size(size.0, *k, *stride, *pad),
                        out_size(size.1, *k, *stride, *pad),
                    )
                }
                Layer::AddRelu { a, .. } => sizes[*a],
                Layer::GlobalAvgPool { .. } => (1, 1),
                Layer::Linear { w: id, input, .. } => {
                    out.push(WeightGeom {
                        param: id.0,
                        name: self.params.get(*id).name.clone(),
                        out_pixels: 1,
                        first: *input == 0,
                        in_size: (1, 1),
                        k: 1,
                        stride: 1,
                        pad: 0,
                    });
                    (1, 1)
                }
            };
            sizes.push(size);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_matches_the_built_model() {
        for arch in [Arch::Cnn, Arch::Resnet18] {
            for (width, in_channels, size) in [(5, 3, 28), (16, 1, 32), (12, 3, 17)] {
                let config = ModelConfig {
                    arch,
                    width,
                    in_channels,
                    num_classes: 10,
                };
                let m = Model::new(&config, 1).unwrap();
                let params: usize = m.params.params.iter().map(|p| p.numel()).sum();
                let acts: usize = m
                    .weight_geometry(size, size)
                    .iter()
                    .map(|g| m.params.params[g.param].shape[0] * g.out_pixels)
                    .sum();
                let fp = config.footprint(size, size).unwrap().unwrap();
                assert_eq!(fp.params, params as u128, "{arch:?} width {width}");
                assert_eq!(
                    fp.activations_per_image, acts as u128,
                    "{arch:?} width {width}"
                );
            }
        }
        let huge = ModelConfig {
            arch: Arch::Resnet18,
            width: usize::MAX,
            in_channels: 3,
            num_classes: 10,
        };
        assert_eq!(huge.footprint(32, 32).unwrap(), None);
    }
}
