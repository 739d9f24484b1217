//! SGD with momentum and weight decay (PyTorch semantics), and ReduceLROnPlateau.
//!
//! For a sparse layer the optimiser state has one entry per active weight, so an update costs
//! O(nnz); topology updates remap that state (survivors keep it, regrown weights start at 0).

use crate::nn::param::{Grads, ParamStore};

#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Momentum buffer per parameter, shaped like `Param::data()`.
    pub buffers: Vec<Vec<f32>>,
}

impl Sgd {
    pub fn new(store: &ParamStore, lr: f32, momentum: f32, weight_decay: f32) -> Self {
        Self {
            lr,
            momentum,
            weight_decay,
            buffers: store.params.iter().map(|p| vec![0.0; p.len()]).collect(),
        }
    }

    /// g ← grad + wd·w; buf ← μ·buf + g; w ← w − lr·buf. On the store's device when it has one
    /// (there the momentum lives with the device copy; `buffers` is brought up to date by
    /// `DeviceParams::download`).
    pub fn step(&mut self, store: &mut ParamStore, grads: &Grads) -> anyhow::Result<()> {
        if let Some(d) = &mut store.device {
            return d.sgd(self.lr, self.momentum, self.weight_decay);
        }
        for ((p, g), buf) in store.params.iter_mut().zip(&grads.g).zip(&mut self.buffers) {
            let w = p.data_mut();
            debug_assert_eq!(w.len(), g.len());
            debug_assert_eq!(w.len(), buf.len());
            for ((w, &g), b) in w.iter_mut().zip(g).zip(buf.iter_mut()) {
                let g = g + self.weight_decay * *w;
                *b = self.momentum * *b + g;
                *w -= self.lr * *b;
            }
        }
        Ok(())
    }
}

/// Divides the learning rate by 10 when the monitored loss has not improved (relative threshold
/// 1e-4) for more than `patience` epochs — PyTorch's ReduceLROnPlateau in 'min' mode.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plateau {
    pub factor: f32,
    pub patience: usize,
    pub best: f64,
    pub bad_epochs: usize,
}

impl Default for Plateau {
    fn default() -> Self {
        Self {
            factor: 0.1,
            patience: 5,
            best: f64::INFINITY,
            bad_epochs: 0,
        }
    }
}

impl Plateau {
    /// Records one epoch's metric; returns the factor to multiply the learning rate by.
    pub fn observe(&mut self, metric: f64) -> f32 {
        if metric < self.best * (1.0 - 1e-4) {
            self.best = metric;
            self.bad_epochs = 0;
            return 1.0;
        }
        self.bad_epochs += 1;
        if self.bad_epochs > self.patience {
            self.bad_epochs = 0;
            return self.factor;
        }
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::param::{ParamKind, ParamStore};

    #[test]
    fn sgd_matches_hand_computation() {
        let mut store = ParamStore::default();
        store.add("w", &[2], ParamKind::Bias, vec![1.0, -2.0]);
        let mut opt = Sgd::new(&store, 0.1, 0.9, 0.01);
        let mut grads = Grads::zeros(&store, false);
        grads.g[0] = vec![0.5, 0.25];
        opt.step(&mut store, &grads).unwrap();
        // g = 0.5 + 0.01·1 = 0.51 → w = 1 − 0.051; g = 0.25 − 0.02 = 0.23 → w = −2 − 0.023
        let w = store.params[0].data();
        assert!(
            (w[0] - 0.949).abs() < 1e-6 && (w[1] + 2.023).abs() < 1e-6,
            "{w:?}"
        );
        opt.step(&mut store, &grads).unwrap();
        // buf = 0.9·0.51 + (0.5 + 0.01·0.949) = 0.96849
        assert!((store.params[0].data()[0] - (0.949 - 0.096849)).abs() < 1e-6);
    }

    #[test]
    fn plateau_reduces_after_patience() {
        let mut p = Plateau::default();
        assert_eq!(p.observe(1.0), 1.0);
        for _ in 0..5 {
            assert_eq!(p.observe(1.0), 1.0);
        }
        assert_eq!(p.observe(1.0), 0.1);
        assert_eq!(p.observe(0.5), 1.0);
    }
}
