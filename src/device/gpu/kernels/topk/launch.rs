//! Launch geometry shared by the per-layer and the batched plans: the radix-select digit passes,
//! the shape fields of a parameter record, and the block counts of each pass.

use super::{Geometry, TopkParams, DIGIT_BITS, HIST_ITEMS, MAX_HIST_BLOCKS, SLOT, THREADS};
use crate::device::gpu::{Dim3, LaunchCfg};

/// Digit passes over a key of `bits` significant bits, most significant first: (shift, width),
/// widths of at most `DIGIT_BITS`.
pub(super) fn digits(bits: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut rest = bits;
    while rest > 0 {
        let w = rest.min(DIGIT_BITS);
        rest -= w;
        out.push((rest, w));
    }
    out
}

/// Digit passes over an index in 0..n.
pub(super) fn index_digits(n: usize) -> Vec<(u32, u32)> {
    let bits = if n <= 1 {
        0
    } else {
        usize::BITS - (n - 1).leading_zeros()
    };
    digits(bits)
}

/// `base` with the shape fields of geometry `g` and `k`.
pub(super) fn shaped(g: &Geometry, k: usize, base: TopkParams) -> TopkParams {
    TopkParams {
        rows: g.rows as u32,
        cols: g.cols as u32,
        nnz: g.nnz as u32,
        size: g.size as u32,
        k: k as u32,
        ntiles: g.ntiles as u32,
        rows_per_chunk: g.rows_per_chunk as u32,
        nchunks: g.nchunks as u32,
        ..base
    }
}

/// Blocks of `topk_clear_u32` (grid-stride, at most 1024).
pub(super) fn clear_blocks(g: &Geometry) -> usize {
    g.size
        .max(g.ncells())
        .max(2 * SLOT)
        .div_ceil(THREADS as usize)
        .min(1024)
}

/// Blocks of a histogram pass over `n` candidates (grid-stride, `HIST_ITEMS` per thread at
/// least, at most `MAX_HIST_BLOCKS`).
pub(super) fn hist_blocks(n: usize) -> usize {
    n.div_ceil(HIST_ITEMS * THREADS as usize)
        .clamp(1, MAX_HIST_BLOCKS)
}

/// Blocks of `topk_csc_scatter_u32` along x (columns).
pub(super) fn col_blocks(g: &Geometry) -> usize {
    g.cols.div_ceil(THREADS as usize)
}

/// `blocks` blocks of `THREADS` along x.
pub(super) fn linear_x(blocks: usize) -> LaunchCfg {
    LaunchCfg {
        grid: Dim3::x(blocks as u32),
        block: Dim3::x(THREADS),
        smem: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_passes_cover_the_key() {
        assert_eq!(digits(32), vec![(21, 11), (10, 11), (0, 10)]);
        assert!(index_digits(0).is_empty());
        assert!(index_digits(1).is_empty());
        assert_eq!(index_digits(2), vec![(0, 1)]);
        assert_eq!(index_digits(2048), vec![(0, 11)]);
        assert_eq!(index_digits(2049), vec![(1, 11), (0, 1)]);
        assert_eq!(index_digits(1 << 22), vec![(11, 11), (0, 11)]);
        assert_eq!(index_digits((1 << 22) + 1), vec![(12, 11), (1, 11), (0, 1)]);
    }
}
