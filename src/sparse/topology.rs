//! Topology: initial masks with an exact count, pruning, regrowth, in-time statistics.

use super::csr::SparseWeight;
use crate::rng::Rng;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum PruneRule {
    /// Remove the active weights of smallest |w|.
    Magnitude,
    /// SET: half of the removals from the smallest positive weights, half from the negative
    /// weights closest to zero.
    Set,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
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

/// A set of positions in 0..len as a bit vector.
fn bit_words(len: usize) -> Vec<u64> {
    vec![0u64; len.div_ceil(64)]
}

#[inline]
fn bit_get(bits: &[u64], p: usize) -> bool {
    bits[p / 64] >> (p % 64) & 1 == 1
}

#[inline]
fn bit_set(bits: &mut [u64], p: usize) {
    bits[p / 64] |= 1 << (p % 64);
}

/// The set bits, ascending.
fn bit_positions(bits: &[u64]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, &word) in bits.iter().enumerate() {
        let mut x = word;
        while x != 0 {
            out.push((i * 64) as u32 + x.trailing_zeros());
            x &= x - 1;
        }
    }
    out
}

/// Sort key: |x| ascending under `f32::total_cmp` (NaN above ∞), then `index` ascending.
#[inline]
fn abs_key(x: f32, index: usize) -> u64 {
    ((x.abs().to_bits() as u64) << 32) | index as u64
}

/// The k smallest keys, ascending.
fn smallest(mut keys: Vec<u64>, k: usize) -> Vec<u64> {
    let k = k.min(keys.len());
    if k == 0 {
        return Vec::new();
    }
    if k < keys.len() {
        keys.select_nth_unstable(k - 1);
        keys.truncate(k);
    }
    keys.sort_unstable();
    keys
}

/// A layer with exactly `nnz` active positions chosen uniformly at random; each active value is
/// taken from `dense_init` at its position.
///
/// Panics if `nnz > rows·cols` or `dense_init` is not [rows·cols].
pub fn random_layer(
    rows: usize,
    cols: usize,
    nnz: usize,
    dense_init: &[f32],
    rng: &mut Rng,
) -> SparseWeight {
    let size = rows * cols;
    assert!(
        nnz <= size,
        "random_layer: nnz {nnz} exceeds the layer size {size}"
    );
    assert_eq!(
        dense_init.len(),
        size,
        "random_layer: dense_init must be [rows·cols]"
    );
    // Floyd's algorithm: a uniform nnz-subset with exactly nnz draws.
    let mut bits = bit_words(size);
    for j in size - nnz..size {
        let t = rng.below(j + 1);
        let pick = if bit_get(&bits, t) { j } else { t };
        bit_set(&mut bits, pick);
    }
    let positions = bit_positions(&bits);
    let values = positions.iter().map(|&p| dense_init[p as usize]).collect();
    SparseWeight::from_positions(rows, cols, &positions, values)
}

/// Number of weights one update removes (and regrows): ⌈rate · nnz⌉, `rate` clamped to [0, 1]
/// (NaN counts as 0).
pub fn prune_count(rate: f64, nnz: usize) -> usize {
    let rate = if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    };
    ((rate * nnz as f64).ceil() as usize).min(nnz)
}

/// Entry indices (into `values`) to prune, ascending.
fn select_prune(values: &[f32], k: usize, rule: PruneRule) -> Vec<usize> {
    let mut out: Vec<usize> = match rule {
        PruneRule::Magnitude => {
            let keys = values
                .iter()
                .enumerate()
                .map(|(e, &v)| abs_key(v, e))
                .collect();
            smallest(keys, k)
                .into_iter()
                .map(|key| key as u32 as usize)
                .collect()
        }
        PruneRule::Set => {
            // Non-negative side: v ≥ 0 (zeros, e.g. just-regrown weights, included; NaN too),
            // smallest first. Negative side: v < 0, closest to zero first.
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            for (e, &v) in values.iter().enumerate() {
                if v < 0.0 {
                    neg.push(abs_key(v, e));
                } else {
                    pos.push(abs_key(v, e));
                }
            }
            let mut kp = k.div_ceil(2);
            let mut kn = k - kp;
            if kp > pos.len() {
                kn += kp - pos.len();
                kp = pos.len();
            }
            if kn > neg.len() {
                kp += kn - neg.len();
                kn = neg.len();
            }
            let mut out: Vec<usize> = smallest(pos, kp)
                .into_iter()
                .map(|key| key as u32 as usize)
                .collect();
            out.extend(smallest(neg, kn).into_iter().map(|key| key as u32 as usize));
            out
        }
    };
    out.sort_unstable();
    out
}

/// One topology update of one layer, in place. Prunes k = ⌈rate · nnz⌉ active weights by `prune`,
/// then activates k positions that are inactive after pruning by `grow`, ranked by |score|
/// (`score` is [rows·cols]: the dense gradient or its momentum; unused by `Random`). Regrown
/// weights start at 0 (a just-pruned weight may be regrown, also at 0). nnz is unchanged.
/// Ties: among equal magnitudes the lower flat position is pruned first / grown first.
/// `per_entry_state` (e.g. optimiser momentum, one value per active weight in `values` order) is
/// remapped: survivors keep their value, regrown entries get 0.
///
/// Magnitudes are ordered by `f32::total_cmp` on |x| (a NaN counts as larger than ∞). SET takes
/// ⌈k/2⌉ removals from the non-negative weights (v ≥ 0, smallest first; zeros count here) and the
/// rest from the negative weights closest to zero; a side that runs short passes the remainder
/// to the other. Random growth draws k distinct inactive positions uniformly with `rng`.
pub fn update_layer(
    w: &mut SparseWeight,
    rate: f64,
    prune: PruneRule,
    grow: GrowRule,
    score: &[f32],
    per_entry_state: &mut [&mut Vec<f32>],
    rng: &mut Rng,
) -> UpdateStats {
    let nnz = w.nnz();
    let size = w.rows * w.cols;
    for (i, st) in per_entry_state.iter().enumerate() {
        assert_eq!(
            st.len(),
            nnz,
            "update_layer: per_entry_state[{i}] has {} values for {nnz} weights",
            st.len()
        );
    }
    if grow != GrowRule::Random {
        assert_eq!(score.len(), size, "update_layer: score must be [rows·cols]");
    }
    let k = prune_count(rate, nnz);
    if k == 0 {
        return UpdateStats::default();
    }
    let pruned = select_prune(&w.values, k, prune);
    let positions = w.positions();
    let mut keep = vec![true; nnz];
    for &e in &pruned {
        keep[e] = false;
    }
    let mut active = bit_words(size);
    for (&p, _) in positions.iter().zip(&keep).filter(|(_, &kp)| kp) {
        bit_set(&mut active, p as usize);
    }
    let grown: Vec<u32> = match grow {
        GrowRule::Gradient | GrowRule::Momentum => {
            // Key: larger |score| first (complemented bits), then lower position.
            let keys: Vec<u64> = (0..size)
                .filter(|&p| !bit_get(&active, p))
                .map(|p| ((!score[p].abs().to_bits() as u64) << 32) | p as u64)
                .collect();
            let mut g: Vec<u32> = smallest(keys, k)
                .into_iter()
                .map(|key| key as u32)
                .collect();
            g.sort_unstable();
            g
        }
        GrowRule::Random => {
            let mut cand: Vec<u32> = (0..size)
                .filter(|&p| !bit_get(&active, p))
                .map(|p| p as u32)
                .collect();
            for i in 0..k {
                let j = i + rng.below(cand.len() - i);
                cand.swap(i, j);
            }
            cand.truncate(k);
            cand.sort_unstable();
            cand
        }
    };
    debug_assert_eq!(grown.len(), k);

    // Merge survivors (ascending) with the grown positions (ascending, disjoint from them).
    let new_nnz = nnz - k + grown.len();
    let mut new_pos = Vec::with_capacity(new_nnz);
    let mut new_val = Vec::with_capacity(new_nnz);
    let mut new_state: Vec<Vec<f32>> = per_entry_state
        .iter()
        .map(|_| Vec::with_capacity(new_nnz))
        .collect();
    let mut gi = 0;
    for e in (0..nnz).filter(|&e| keep[e]) {
        let p = positions[e];
        while gi < grown.len() && grown[gi] < p {
            new_pos.push(grown[gi]);
            new_val.push(0.0);
            new_state.iter_mut().for_each(|s| s.push(0.0));
            gi += 1;
        }
        new_pos.push(p);
        new_val.push(w.values[e]);
        for (s, old) in new_state.iter_mut().zip(per_entry_state.iter()) {
            s.push(old[e]);
        }
    }
    for &p in &grown[gi..] {
        new_pos.push(p);
        new_val.push(0.0);
        new_state.iter_mut().for_each(|s| s.push(0.0));
    }
    *w = SparseWeight::from_positions(w.rows, w.cols, &new_pos, new_val);
    for (old, new) in per_entry_state.iter_mut().zip(new_state) {
        **old = new;
    }
    UpdateStats {
        pruned: k,
        grown: grown.len(),
    }
}

/// In-time over-parameterisation tracker of one layer: which positions were ever active.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fired {
    rows: usize,
    cols: usize,
    bits: Vec<u64>,
    count: usize,
}

impl Fired {
    /// Nothing recorded yet.
    pub fn new(rows: usize, cols: usize) -> Self {
        Fired {
            rows,
            cols,
            bits: bit_words(rows * cols),
            count: 0,
        }
    }

    /// A tracker that has recorded `w`.
    pub fn from_layer(w: &SparseWeight) -> Self {
        let mut f = Fired::new(w.rows, w.cols);
        f.record(w);
        f
    }

    /// Marks every active position of `w` as ever active. Panics if its shape differs.
    pub fn record(&mut self, w: &SparseWeight) {
        assert_eq!(
            (w.rows, w.cols),
            (self.rows, self.cols),
            "Fired::record: layer shape differs"
        );
        for r in 0..w.rows {
            let base = r * w.cols;
            for &c in &w.col_idx[w.row_ptr[r] as usize..w.row_ptr[r + 1] as usize] {
                self.mark(base + c as usize);
            }
        }
    }

    /// Marks flat positions r·cols + c (e.g. read back from a GPU layer) as ever active. Panics
    /// if one lies outside the layer.
    pub fn record_positions(&mut self, positions: &[u32]) {
        let size = self.rows * self.cols;
        for &p in positions {
            assert!(
                (p as usize) < size,
                "Fired::record_positions: {p} outside {size}"
            );
            self.mark(p as usize);
        }
    }

    fn mark(&mut self, p: usize) {
        if !bit_get(&self.bits, p) {
            bit_set(&mut self.bits, p);
            self.count += 1;
        }
    }

    /// Whether flat position `p` was ever active.
    pub fn is_fired(&self, p: usize) -> bool {
        bit_get(&self.bits, p)
    }

    /// Number of positions ever active.
    pub fn ever_active(&self) -> usize {
        self.count
    }

    /// Number of positions (rows·cols).
    pub fn total(&self) -> usize {
        self.rows * self.cols
    }

    /// The ever-active bits, 64 positions per word (position p is bit p % 64 of word p / 64).
    pub fn words(&self) -> &[u64] {
        &self.bits
    }

    /// A tracker from saved words; errors if their number does not fit rows·cols.
    pub fn from_words(rows: usize, cols: usize, words: Vec<u64>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            words.len() == bit_words(rows * cols).len(),
            "in-time statistics of a {rows}x{cols} layer need {} words, got {}",
            bit_words(rows * cols).len(),
            words.len()
        );
        let count = (0..rows * cols).filter(|&p| bit_get(&words, p)).count();
        Ok(Fired {
            rows,
            cols,
            bits: words,
            count,
        })
    }

    /// ever-active / total (0 for an empty layer).
    pub fn fraction(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.count as f64 / self.total() as f64
        }
    }
}

/// Global in-time over-parameterisation rate: Σ ever-active / Σ total over the layers.
pub fn fired_fraction(layers: &[Fired]) -> f64 {
    let total: usize = layers.iter().map(Fired::total).sum();
    if total == 0 {
        0.0
    } else {
        layers.iter().map(Fired::ever_active).sum::<usize>() as f64 / total as f64
    }
}
