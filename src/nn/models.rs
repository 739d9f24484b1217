//! The paper's two models: the Colored-MNIST CNN of the reference code and ResNet-18 with a
//! width parameter (the ImageNet-style stem of the reference's `resnet18vw`).

use crate::autograd::{Tape, Var};
use crate::device::gpu::alloc::GpuDevice;
use crate::nn::on_device::DeviceParams;
use crate::nn::ops::{self, BnStats};
use crate::nn::param::{ParamId, ParamKind, ParamStore};
use crate::rng::Rng;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
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

// The layer graph is crate-visible (read-only use) so that other engines — the CUDA backend's
// `device::gpu::model` — run exactly this architecture without a second copy of it.
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

#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub(crate) c1: ConvLayer,
    pub(crate) b1: BnLayer,
    pub(crate) c2: ConvLayer,
    pub(crate) b2: BnLayer,
    pub(crate) shortcut: Option<(ConvLayer, BnLayer)>,
}

#[derive(Clone, Debug)]
pub(crate) enum Body {
    Cnn(Vec<(ConvLayer, BnLayer)>),
    ResNet {
        stem: (ConvLayer, BnLayer),
        blocks: Vec<Block>,
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
    pub(crate) body: Body,
    /// The classifier: (weight, bias).
    pub(crate) fc: (ParamId, ParamId),
}

/// How a convolution's weights start, as the reference model of each architecture does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ConvInit {
    /// Kaiming-normal, fan-out, ReLU gain: N(0, 2/(cout·k²)). The reference ResNet-18 (torchvision).
    KaimingFanOut,
    /// PyTorch's default for `nn.Conv2d` (Kaiming-uniform with a = √5): U(±1/√(cin·k²)). The
    /// reference CMNIST CNN leaves its convolutions at this default.
    TorchDefault,
}

struct Builder {
    params: ParamStore,
    bn: Vec<BnStats>,
    seed: u64,
}

impl Builder {
    fn rng(&self) -> Rng {
        Rng::derive(self.seed, self.params.params.len() as u64 + 1)
    }

    /// A bias-free convolution, its weights drawn by `init`.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        init: ConvInit,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> ConvLayer {
        let mut rng = self.rng();
        let n = cout * cin * k * k;
        let v: Vec<f32> = match init {
            ConvInit::KaimingFanOut => {
                let std = (2.0 / (cout * k * k) as f32).sqrt();
                (0..n).map(|_| rng.normal() * std).collect()
            }
            ConvInit::TorchDefault => {
                let bound = 1.0 / ((cin * k * k) as f32).sqrt();
                (0..n)
                    .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                    .collect()
            }
        };
        let w = self.params.add(
            format!("{name}.weight"),
            &[cout, cin, k, k],
            ParamKind::Weight,
            v,
        );
        ConvLayer {
            w,
            b: None,
            k,
            stride,
            pad,
        }
    }

    fn bn(&mut self, name: &str, c: usize) -> BnLayer {
        let gamma = self.params.add(
            format!("{name}.weight"),
            &[c],
            ParamKind::BnGamma,
            vec![1.0; c],
        );
        let beta = self.params.add(
            format!("{name}.bias"),
            &[c],
            ParamKind::BnBeta,
            vec![0.0; c],
        );
        self.bn.push(BnStats::new(c, self.bn.len()));
        BnLayer {
            gamma,
            beta,
            stats: self.bn.len() - 1,
        }
    }

    /// PyTorch's default linear initialisation: U(±1/√fan_in) for weight and bias.
    fn linear(&mut self, name: &str, fin: usize, fout: usize) -> (ParamId, ParamId) {
        let bound = 1.0 / (fin as f32).sqrt();
        let mut rng = self.rng();
        let v: Vec<f32> = (0..fout * fin)
            .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
            .collect();
        let w = self
            .params
            .add(format!("{name}.weight"), &[fout, fin], ParamKind::Weight, v);
        let mut rng = self.rng();
        let b: Vec<f32> = (0..fout)
            .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
            .collect();
        let b = self
            .params
            .add(format!("{name}.bias"), &[fout], ParamKind::Bias, b);
        (w, b)
    }
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
            seed,
        };
        let w = config.width;
        let (body, feat) = match config.arch {
            Arch::Cnn => {
                let cnn_init = ConvInit::TorchDefault;
                let mut layers = Vec::new();
                let mut cin = config.in_channels;
                for (i, cout) in [w, 2 * w, 4 * w].into_iter().enumerate() {
                    let c = b.conv(&format!("conv{}", i + 1), cnn_init, cin, cout, 4, 2, 1);
                    let n = b.bn(&format!("bn{}", i + 1), cout);
                    layers.push((c, n));
                    cin = cout;
                }
                (Body::Cnn(layers), 4 * w)
            }
            Arch::Resnet18 => {
                let kaiming = ConvInit::KaimingFanOut;
                let stem = (
                    b.conv("conv1", kaiming, config.in_channels, w, 7, 2, 3),
                    b.bn("bn1", w),
                );
                let mut blocks = Vec::new();
                let mut cin = w;
                for (s, mult) in [1, 2, 4, 8].into_iter().enumerate() {
                    let cout = w * mult;
                    for i in 0..2 {
                        let stride = if s > 0 && i == 0 { 2 } else { 1 };
                        let name = format!("layer{}.{}", s + 1, i);
                        let c1 = b.conv(&format!("{name}.conv1"), kaiming, cin, cout, 3, stride, 1);
                        let b1 = b.bn(&format!("{name}.bn1"), cout);
                        let c2 = b.conv(&format!("{name}.conv2"), kaiming, cout, cout, 3, 1, 1);
                        let b2 = b.bn(&format!("{name}.bn2"), cout);
                        let shortcut = (stride != 1 || cin != cout).then(|| {
                            (
                                b.conv(
                                    &format!("{name}.downsample.0"),
                                    kaiming,
                                    cin,
                                    cout,
                                    1,
                                    stride,
                                    0,
                                ),
                                b.bn(&format!("{name}.downsample.1"), cout),
                            )
                        });
                        blocks.push(Block {
                            c1,
                            b1,
                            c2,
                            b2,
                            shortcut,
                        });
                        cin = cout;
                    }
                }
                (Body::ResNet { stem, blocks }, 8 * w)
            }
        };
        let fc = b.linear("fc", feat, config.num_classes);
        Ok(Self {
            config: config.clone(),
            params: b.params,
            bn: b.bn,
            body,
            fc,
        })
    }

    /// Logits [N, K] for images x [C, N, H, W]. `train` selects batch statistics in batch norm.
    pub fn forward(&mut self, tape: &mut Tape, x: Var, train: bool) -> Result<Var> {
        let shape = tape.value(x).shape().to_vec();
        ensure!(
            shape.len() == 4 && shape[0] == self.config.in_channels,
            "model expects images [C={}, N, H, W], got {:?}",
            self.config.in_channels,
            shape
        );
        let Self {
            params,
            bn,
            body,
            fc,
            ..
        } = self;
        let params = &*params;
        let mut conv_bn =
            |tape: &mut Tape, x: Var, c: &ConvLayer, n: &BnLayer, relu: bool| -> Result<Var> {
                let y = ops::conv2d(tape, params, x, c.w, c.b, c.stride, c.pad)?;
                let stats = &mut bn[n.stats];
                if relu {
                    ops::batchnorm_relu(tape, params, stats, y, n.gamma, n.beta, train)
                } else {
                    ops::batchnorm(tape, params, stats, y, n.gamma, n.beta, train)
                }
            };
        let mut h = ops::to_batch_innermost(tape, x)?;
        match body {
            Body::Cnn(layers) => {
                for (c, n) in layers.iter() {
                    h = conv_bn(tape, h, c, n, true)?;
                }
            }
            Body::ResNet { stem, blocks } => {
                h = conv_bn(tape, h, &stem.0, &stem.1, true)?;
                h = ops::maxpool(tape, h, 3, 2, 1)?;
                for blk in blocks.iter() {
                    let y = conv_bn(tape, h, &blk.c1, &blk.b1, true)?;
                    let y = conv_bn(tape, y, &blk.c2, &blk.b2, false)?;
                    let s = match &blk.shortcut {
                        Some((c, n)) => conv_bn(tape, h, c, n, false)?,
                        None => h,
                    };
                    let sum = ops::add(tape, y, s)?;
                    h = ops::relu(tape, sum)?;
                }
            }
        }
        let feats = ops::global_avgpool(tape, h)?;
        ops::linear(tape, params, feats, fc.0, Some(fc.1))
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
        let d = DeviceParams::upload(device, &self.params, momentum, &self.bn)?;
        self.params.device = Some(Box::new(d));
        Ok(())
    }

    /// Brings the host copy (and `momentum`) up to date with the device's; nothing to do for a
    /// model on the host.
    pub fn download(&mut self, momentum: &mut [Vec<f32>]) -> Result<()> {
        if let Some(d) = self.params.device.take() {
            let done = d.download(&mut self.params, momentum, &mut self.bn);
            self.params.device = Some(d);
            done?;
        }
        Ok(())
    }

    /// Every masked weight with its output size for an input of `h`×`w` pixels.
    pub fn weight_geometry(&self, h: usize, w: usize) -> Vec<WeightGeom> {
        let mut out = Vec::new();
        let mut push = |c: &ConvLayer, size: (usize, usize), first: bool| -> (usize, usize) {
            let o = (
                out_size(size.0, c.k, c.stride, c.pad),
                out_size(size.1, c.k, c.stride, c.pad),
            );
            out.push(WeightGeom {
                param: c.w.0,
                name: self.params.get(c.w).name.clone(),
                out_pixels: o.0 * o.1,
                first,
                in_size: size,
                k: c.k,
                stride: c.stride,
                pad: c.pad,
            });
            o
        };
        let mut size = (h, w);
        match &self.body {
            Body::Cnn(layers) => {
                for (i, (c, _)) in layers.iter().enumerate() {
                    size = push(c, size, i == 0);
                }
            }
            Body::ResNet { stem, blocks } => {
                size = push(&stem.0, size, true);
                size = (out_size(size.0, 3, 2, 1), out_size(size.1, 3, 2, 1));
                for blk in blocks {
                    let inner = push(&blk.c1, size, false);
                    push(&blk.c2, inner, false);
                    if let Some((c, _)) = &blk.shortcut {
                        push(c, size, false);
                    }
                    size = inner;
                }
            }
        }
        out.push(WeightGeom {
            param: self.fc.0 .0,
            name: self.params.get(self.fc.0).name.clone(),
            out_pixels: 1,
            first: false,
            in_size: (1, 1),
            k: 1,
            stride: 1,
            pad: 0,
        });
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

    /// Mean, variance and largest magnitude of a parameter's values.
    fn stats(m: &Model, name: &str) -> (f64, f64, f64) {
        let p = m.params.params.iter().find(|p| p.name == name).unwrap();
        let v = p.data();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let max = v.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()));
        (mean, var, max)
    }

    #[test]
    fn cnn_starts_as_pytorch_default_resnet_as_kaiming_fan_out() {
        let cnn = ModelConfig {
            arch: Arch::Cnn,
            width: 64,
            in_channels: 3,
            num_classes: 10,
        };
        let m = Model::new(&cnn, 41).unwrap();
        // nn.Conv2d's default: U(±1/√fan_in), variance bound²/3.
        for (name, fan_in) in [
            ("conv1.weight", 3 * 16),
            ("conv2.weight", 64 * 16),
            ("conv3.weight", 128 * 16),
            ("fc.weight", 256),
        ] {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let (mean, var, max) = stats(&m, name);
            assert!(max <= bound, "{name}: |w| {max} beyond the bound {bound}");
            assert!(
                max > 0.9 * bound,
                "{name}: |w| {max} never near the bound {bound}"
            );
            let want = bound * bound / 3.0;
            assert!(
                (var / want - 1.0).abs() < 0.15,
                "{name}: variance {var}, want {want}"
            );
            assert!(mean.abs() < 0.1 * bound, "{name}: mean {mean}");
        }
        // The classifier's ten biases: within the same bound (too few for a variance).
        let (_, _, max) = stats(&m, "fc.bias");
        assert!(max <= 1.0 / 16.0);
        let resnet = ModelConfig {
            arch: Arch::Resnet18,
            ..cnn
        };
        let m = Model::new(&resnet, 41).unwrap();
        // Kaiming-normal, fan-out: variance 2/(cout·k²); unbounded (normal tails).
        for (name, fan_out) in [
            ("conv1.weight", 64 * 49),
            ("layer2.0.conv1.weight", 128 * 9),
        ] {
            let want = 2.0 / fan_out as f64;
            let (_, var, max) = stats(&m, name);
            assert!(
                (var / want - 1.0).abs() < 0.1,
                "{name}: variance {var}, want {want}"
            );
            assert!(
                max > 3.0 * want.sqrt(),
                "{name}: no normal tail (max {max})"
            );
        }
    }
}
