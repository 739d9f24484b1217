//! Topology: initial masks with an exact count, pruning, regrowth, in-time statistics.

use super::csr::SparseWeight;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum PruneRule {
    /// Remove the active weights of smallest |w|.
    Magnitude,
    /// SET: half of the removals from the smallest positive weights, half from the negative
    /// weights closest to zero.
    Set,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum GrowRule {
    /// RigL: the inactive positions of largest |dense gradient|.
    Gradient,
    /// The inactive positions of largest |momentum of the dense gradient|.
    Momentum,
    /// Uniformly random inactive positions.
    Random,
}

/// Counts of one layer's update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateStats {
    pub pruned: usize,
    pub grown: usize,
}

/// A layer with exactly `nnz` active positions chosen uniformly at random; each active value is
/// taken from `dense_init` at its position.
pub fn random_layer(rows: usize, cols: usize, nnz: usize, dense_init: &[f32], rng: &mut Rng) -> SparseWeight {
    let _ = (rows, cols, nnz, dense_init, rng);
    todo!("sparse helper")
}

/// One topology update of one layer, in place. Prunes k = ⌈rate · nnz⌉ active weights by `prune`,
/// then activates k positions that are inactive after pruning by `grow`, ranked by |score|
/// (`score` is [rows·cols]: the dense gradient or its momentum; unused by `Random`). Regrown
/// weights start at 0 (a just-pruned weight may be regrown, also at 0). nnz is unchanged.
/// Ties: among equal magnitudes the lower flat position is pruned first / grown first.
/// `per_entry_state` (e.g. optimiser momentum, one value per active weight in `values` order) is
/// remapped: survivors keep their value, regrown entries get 0.
pub fn update_layer(
    w: &mut SparseWeight,
    rate: f64,
    prune: PruneRule,
    grow: GrowRule,
    score: &[f32],
    per_entry_state: &mut [&mut Vec<f32>],
    rng: &mut Rng,
) -> UpdateStats {
    let _ = (w, rate, prune, grow, score, per_entry_state, rng);
    todo!("sparse helper")
}
