//! The architectures, one builder function each: a model is the list of `Layer`s its function
//! appends (with its parameters, initialised as the reference model of that architecture does),
//! and everything else (`Model::forward`, the weight geometry, FLOPs, the checkpoint's names) walks
//! that list.

use super::models::{BnLayer, ConvLayer, Layer, ModelConfig};
use super::ops::BnStats;
use super::param::{ParamId, ParamKind, ParamStore};
use crate::rng::Rng;

/// How a convolution's weights start, as the reference model of each architecture does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ConvInit {
    /// Kaiming-normal, fan-out, ReLU gain: N(0, 2/(cout·k²)). The reference ResNet-18 (torchvision).
    KaimingFanOut,
    /// PyTorch's default for `nn.Conv2d` (Kaiming-uniform with a = √5): U(±1/√(cin·k²)). The
    /// reference CMNIST CNN leaves its convolutions at this default.
    TorchDefault,
}

pub(super) struct Builder {
    pub(super) params: ParamStore,
    pub(super) bn: Vec<BnStats>,
    pub(super) layers: Vec<Layer>,
    pub(super) seed: u64,
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

    /// Global average pooling of value `h` ([C, …] → [C, N]), then the linear classifier "fc".
    fn classifier(&mut self, h: usize, c: usize, classes: usize) {
        let feats = self.push(Layer::GlobalAvgPool { input: h });
        let (w, b) = self.linear("fc", c, classes);
        self.push(Layer::Linear { w, b, input: feats });
    }

    /// Appends `layer`; returns the index of the value it makes.
    fn push(&mut self, layer: Layer) -> usize {
        self.layers.push(layer);
        self.layers.len()
    }

    /// A bias-free convolution of value `input` and its batch norm (+ ReLU); returns the
    /// output's value index.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        name: (&str, &str),
        init: ConvInit,
        input: usize,
        (cin, cout): (usize, usize),
        (k, stride, pad): (usize, usize, usize),
        relu: bool,
    ) -> usize {
        let conv = self.conv(name.0, init, cin, cout, k, stride, pad);
        let y = self.push(Layer::Conv { conv, input });
        let bn = self.bn(name.1, cout);
        self.push(Layer::BatchNorm { bn, relu, input: y })
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

/// The reference CMNIST CNN: three conv (k4 s2 p1) + batch norm + ReLU, widths w, 2w, 4w;
/// global average pool; linear. PyTorch's default initialisation, as the reference leaves it.
pub(super) fn cnn(b: &mut Builder, config: &ModelConfig) {
    let w = config.width;
    let (mut h, mut cin) = (0, config.in_channels);
    for (i, cout) in [w, 2 * w, 4 * w].into_iter().enumerate() {
        let (conv, bn) = (format!("conv{}", i + 1), format!("bn{}", i + 1));
        let init = ConvInit::TorchDefault;
        h = b.conv_bn((&conv, &bn), init, h, (cin, cout), (4, 2, 1), true);
        cin = cout;
    }
    b.classifier(h, cin, config.num_classes);
}

/// ResNet-18 with width w (the reference's `resnet18vw`): 7×7/2 stem + batch norm + ReLU,
/// 3×3/2 max-pool, four stages of two BasicBlocks (w, 2w, 4w, 8w; a 1×1 projection where the
/// shape changes), global average pool, linear. Kaiming-normal (fan-out) convolutions.
pub(super) fn resnet18(b: &mut Builder, config: &ModelConfig) {
    let (w, init) = (config.width, ConvInit::KaimingFanOut);
    let stem = b.conv_bn(
        ("conv1", "bn1"),
        init,
        0,
        (config.in_channels, w),
        (7, 2, 3),
        true,
    );
    let mut h = b.push(Layer::MaxPool {
        k: 3,
        stride: 2,
        pad: 1,
        input: stem,
    });
    let mut cin = w;
    for (s, mult) in [1, 2, 4, 8].into_iter().enumerate() {
        let cout = w * mult;
        for i in 0..2 {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let name = format!("layer{}.{}", s + 1, i);
            let n = |part: &str| format!("{name}.{part}");
            let (c, o) = ((cin, cout), (cout, cout));
            let y = b.conv_bn((&n("conv1"), &n("bn1")), init, h, c, (3, stride, 1), true);
            let y = b.conv_bn((&n("conv2"), &n("bn2")), init, y, o, (3, 1, 1), false);
            let shortcut = if stride != 1 || cin != cout {
                let (conv, bn) = (n("downsample.0"), n("downsample.1"));
                b.conv_bn((&conv, &bn), init, h, c, (1, stride, 0), false)
            } else {
                h
            };
            h = b.push(Layer::AddRelu { a: y, b: shortcut });
            cin = cout;
        }
    }
    b.classifier(h, cin, config.num_classes);
}

#[cfg(test)]
mod tests {
    use crate::nn::{Arch, Model, ModelConfig};

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
