//! FLOPs accounting at the true input size, dense against sparse, for inference and training.
//!
//! Counted: the multiply-adds of every conv and linear layer (2 FLOPs each). Batch norm,
//! activations and pooling are left out (well under 1 % of a conv net's work). Training per
//! image = forward + backward-data (not for the first layer, whose input is the image) +
//! backward-weight; a sparse run adds the dense weight gradient of topology-update steps,
//! amortised over the steps between updates.

use crate::nn::Model;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerFlops {
    pub name: String,
    pub weights: usize,
    pub active: usize,
    /// Forward FLOPs per image, dense and with the active weights only.
    pub dense_forward: f64,
    pub sparse_forward: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FlopsReport {
    pub layers: Vec<LayerFlops>,
    /// Per image.
    pub dense_inference: f64,
    pub sparse_inference: f64,
    pub dense_train: f64,
    pub sparse_train: f64,
}

impl FlopsReport {
    /// Accounts the model as it is now, for `h`×`w` inputs. `update_every`: steps between
    /// topology updates (None for static or dense training).
    pub fn new(model: &Model, h: usize, w: usize, update_every: Option<u64>) -> Self {
        let mut layers = Vec::new();
        let (mut di, mut si, mut dt, mut st) = (0.0, 0.0, 0.0, 0.0);
        for g in model.weight_geometry(h, w) {
            let p = &model.params.params[g.param];
            let (numel, active) = (p.numel(), p.len());
            let dense_fwd = 2.0 * numel as f64 * g.out_pixels as f64;
            let sparse_fwd = 2.0 * active as f64 * g.out_pixels as f64;
            let passes = if g.first { 2.0 } else { 3.0 };
            di += dense_fwd;
            si += sparse_fwd;
            dt += passes * dense_fwd;
            st += passes * sparse_fwd;
            if let (Some(every), true) = (update_every, active < numel) {
                st += dense_fwd / every.max(1) as f64;
            }
            layers.push(LayerFlops {
                name: g.name,
                weights: numel,
                active,
                dense_forward: dense_fwd,
                sparse_forward: sparse_fwd,
            });
        }
        Self {
            layers,
            dense_inference: di,
            sparse_inference: si,
            dense_train: dt,
            sparse_train: st,
        }
    }

    /// A short table for people.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{:<28} {:>10} {:>10} {:>9} {:>12}\n",
            "layer", "weights", "active", "density", "MFLOPs/img"
        );
        for l in &self.layers {
            s += &format!(
                "{:<28} {:>10} {:>10} {:>9.4} {:>12.3}\n",
                l.name,
                l.weights,
                l.active,
                l.active as f64 / l.weights as f64,
                l.sparse_forward / 1e6
            );
        }
        s += &format!(
            "inference: {:.2} MFLOPs/img sparse vs {:.2} dense ({:.1}% of dense)\ntraining:  {:.2} MFLOPs/img sparse vs {:.2} dense ({:.1}% of dense)\n",
            self.sparse_inference / 1e6,
            self.dense_inference / 1e6,
            100.0 * self.sparse_inference / self.dense_inference,
            self.sparse_train / 1e6,
            self.dense_train / 1e6,
            100.0 * self.sparse_train / self.dense_train
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Arch, ModelConfig};

    #[test]
    fn dense_model_counts_match_the_reference_figures() {
        // The reference CNN: 11.75 M multiply-adds per 28×28 image; ResNet-18 at 32 px: 37.0 M.
        let cnn = Model::new(
            &ModelConfig {
                arch: Arch::Cnn,
                width: 64,
                in_channels: 3,
                num_classes: 10,
            },
            0,
        )
        .unwrap();
        let f = FlopsReport::new(&cnn, 28, 28, None);
        assert!(
            (f.dense_inference / 2.0 / 1e6 - 11.75).abs() < 0.05,
            "{}",
            f.dense_inference
        );
        assert_eq!(f.dense_inference, f.sparse_inference);
        let r = Model::new(
            &ModelConfig {
                arch: Arch::Resnet18,
                width: 64,
                in_channels: 3,
                num_classes: 10,
            },
            0,
        )
        .unwrap();
        let f = FlopsReport::new(&r, 32, 32, None);
        assert!(
            (f.dense_inference / 2.0 / 1e6 - 37.0).abs() < 0.5,
            "{}",
            f.dense_inference / 2e6
        );
    }
}
