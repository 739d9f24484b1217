//! Kernels of kernels/topk.cu: one topology update of one sparse layer on the device (magnitude
//! prune, gradient/momentum regrow, rebuild of positions, values, momentum, CSR and CSC), with no
//! copy of weights to the host and nothing read back.
//!
//! A layer lives on the device as [`SparseLayerBufs`]; the update needs a [`TopkWorkspace`]
//! (reusable across layers: it grows to the largest shape it has served). [`update_layer`]
//! launches the sequence [`plan`] returns; the CPU twins (`device::cpu::twin::topk`) run the same
//! plan on host slices. The layer's buffers keep their addresses across updates.

use crate::device::gpu::{Buf, Dim3, Gpu, KernelDef, LaunchCfg};
use crate::sparse::csr::SparseWeight;
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("topk" =>
    topk_clear_u32,
    topk_hist_f32,
    topk_prune_f32,
    topk_grow_f32,
    topk_colscan_u32,
    topk_scan_u32,
    topk_compact_f32,
    topk_csc_scatter_u32,
);

/// Threads per block of every kernel but `topk_scan_u32`.
pub const THREADS: u32 = 256;
/// Threads of the one block of `topk_scan_u32`.
pub const SCAN_THREADS: u32 = 1024;
/// Positions per tile of `topk_grow_f32` / `topk_compact_f32` (256 threads × 8).
pub const TILE: usize = 2048;
/// Bins of a radix-select histogram (digits of up to 11 bits).
pub const BINS: usize = 2048;
/// Offset of the histogram in a slot.
pub const HIST: usize = 8;
/// u32 words of one radix-select slot: 8 of state, then the histogram.
pub const SLOT: usize = HIST + BINS;
/// Widest digit of a radix-select pass.
pub const DIGIT_BITS: u32 = 11;
/// `mark` value of a regrown position.
pub const GROWN: u32 = u32::MAX;
/// Upper bound on the blocks of one histogram pass (each block loops over its share).
pub const MAX_HIST_BLOCKS: usize = 264;
/// Rows per CSC counting cell (more when a layer has over 65535 cells in a column).
pub const ROWS_PER_CHUNK: usize = 16;

/// The one parameter struct of every topk kernel (mirrors `TopkParams` in kernels/topk.cu).
/// Addresses of the layer, the score and the workspace; shapes; and the fields of one pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TopkParams {
    pub positions: u64,
    pub values: u64,
    pub momentum: u64,
    pub row_ptr: u64,
    pub col_idx: u64,
    pub col_ptr: u64,
    pub csc_row: u64,
    pub csc_pos: u64,
    pub score: u64,
    pub mark: u64,
    pub old_values: u64,
    pub old_momentum: u64,
    pub state: u64,
    pub tile_cnt: u64,
    pub csc_cnt: u64,
    pub rows: u32,
    pub cols: u32,
    pub nnz: u32,
    pub size: u32,
    /// Number pruned (= number regrown).
    pub k: u32,
    /// `topk_hist_f32`: 0 prune, 1 grow.
    pub slot: u32,
    /// `topk_hist_f32`: 0 the digit is in the magnitude key, 1 in the index.
    pub word: u32,
    /// `topk_hist_f32`: bit offset of the digit.
    pub shift: u32,
    /// `topk_hist_f32`: width of the digit (1..=11).
    pub digit_bits: u32,
    pub ntiles: u32,
    pub rows_per_chunk: u32,
    pub nchunks: u32,
}

/// Index sizes derived from a layer's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub rows: usize,
    pub cols: usize,
    pub nnz: usize,
    pub size: usize,
    pub ntiles: usize,
    pub rows_per_chunk: usize,
    pub nchunks: usize,
}

impl Geometry {
    /// Errors if the layer does not fit the kernels' u32 indices.
    pub fn new(rows: usize, cols: usize, nnz: usize) -> Result<Self> {
        let size = rows
            .checked_mul(cols)
            .filter(|&s| s < u32::MAX as usize - TILE)
            .ok_or_else(|| anyhow::anyhow!("topk: a {rows}×{cols} layer exceeds the u32 index"))?;
        ensure!(
            nnz <= size,
            "topk: {nnz} active weights in a {rows}×{cols} layer"
        );
        let rows_per_chunk = ROWS_PER_CHUNK.max(rows.div_ceil(65535));
        Ok(Geometry {
            rows,
            cols,
            nnz,
            size,
            ntiles: size.div_ceil(TILE),
            rows_per_chunk,
            nchunks: rows.div_ceil(rows_per_chunk),
        })
    }

    /// Counting cells of the CSC rebuild (chunks × columns).
    pub fn ncells(&self) -> usize {
        self.nchunks * self.cols
    }
}

/// One sparse layer W[rows, cols] on the device (see kernels/topk.cu): positions (r·cols + c,
/// ascending), values and momentum (one per active weight, in position order), CSR
/// (row_ptr, col_idx) and CSC (col_ptr, csc_row, csc_pos) exactly as `SparseWeight` holds them.
pub struct SparseLayerBufs {
    pub rows: usize,
    pub cols: usize,
    pub nnz: usize,
    pub positions: Buf,
    pub values: Buf,
    pub momentum: Buf,
    pub row_ptr: Buf,
    pub col_idx: Buf,
    pub col_ptr: Buf,
    pub csc_row: Buf,
    pub csc_pos: Buf,
}

/// The same layer borrowed: for callers that keep the buffers elsewhere (the GPU model). The
/// kernels change the buffers' contents through their addresses, never the buffers themselves.
#[derive(Clone, Copy)]
pub struct SparseLayerRefs<'a> {
    pub rows: usize,
    pub cols: usize,
    pub nnz: usize,
    pub positions: &'a Buf,
    pub values: &'a Buf,
    pub momentum: &'a Buf,
    pub row_ptr: &'a Buf,
    pub col_idx: &'a Buf,
    pub col_ptr: &'a Buf,
    pub csc_row: &'a Buf,
    pub csc_pos: &'a Buf,
}

impl SparseLayerRefs<'_> {
    /// Errors if a buffer is smaller than the shape needs.
    pub fn check(&self) -> Result<()> {
        let (nnz, rows, cols) = (self.nnz, self.rows, self.cols);
        for (name, b, n) in [
            ("positions", &self.positions, nnz),
            ("values", &self.values, nnz),
            ("momentum", &self.momentum, nnz),
            ("row_ptr", &self.row_ptr, rows + 1),
            ("col_idx", &self.col_idx, nnz),
            ("col_ptr", &self.col_ptr, cols + 1),
            ("csc_row", &self.csc_row, nnz),
            ("csc_pos", &self.csc_pos, nnz),
        ] {
            ensure!(
                b.len_of::<u32>() >= n,
                "topk: {name} holds {} values, the {rows}×{cols} layer with {nnz} weights needs {n}",
                b.len_of::<u32>()
            );
        }
        Ok(())
    }
}

/// A layer read back from the device (tests, checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct HostLayer {
    pub positions: Vec<u32>,
    pub weight: SparseWeight,
    pub momentum: Vec<f32>,
}

impl SparseLayerBufs {
    /// Uploads `w` and its per-entry momentum.
    pub fn upload(gpu: &Gpu, w: &SparseWeight, momentum: &[f32]) -> Result<Self> {
        ensure!(
            momentum.len() == w.nnz(),
            "topk: {} momentum values for {} weights",
            momentum.len(),
            w.nnz()
        );
        Geometry::new(w.rows, w.cols, w.nnz())?;
        Ok(SparseLayerBufs {
            rows: w.rows,
            cols: w.cols,
            nnz: w.nnz(),
            positions: gpu.upload(&w.positions())?,
            values: gpu.upload(&w.values)?,
            momentum: gpu.upload(momentum)?,
            row_ptr: gpu.upload(&w.row_ptr)?,
            col_idx: gpu.upload(&w.col_idx)?,
            col_ptr: gpu.upload(&w.col_ptr)?,
            csc_row: gpu.upload(&w.csc_row)?,
            csc_pos: gpu.upload(&w.csc_pos)?,
        })
    }

    /// Reads the whole layer back, as the device holds it (no rebuilding on the host).
    pub fn download(&self, gpu: &Gpu) -> Result<HostLayer> {
        let take_u32 = |b: &Buf, n: usize| -> Result<Vec<u32>> {
            let mut v = gpu.read::<u32>(b)?;
            v.truncate(n);
            Ok(v)
        };
        let take_f32 = |b: &Buf, n: usize| -> Result<Vec<f32>> {
            let mut v = gpu.read::<f32>(b)?;
            v.truncate(n);
            Ok(v)
        };
        Ok(HostLayer {
            positions: take_u32(&self.positions, self.nnz)?,
            weight: SparseWeight {
                rows: self.rows,
                cols: self.cols,
                row_ptr: take_u32(&self.row_ptr, self.rows + 1)?,
                col_idx: take_u32(&self.col_idx, self.nnz)?,
                values: take_f32(&self.values, self.nnz)?,
                col_ptr: take_u32(&self.col_ptr, self.cols + 1)?,
                csc_row: take_u32(&self.csc_row, self.nnz)?,
                csc_pos: take_u32(&self.csc_pos, self.nnz)?,
            },
            momentum: take_f32(&self.momentum, self.nnz)?,
        })
    }

    /// The layer as borrowed buffers.
    pub fn refs(&self) -> SparseLayerRefs<'_> {
        SparseLayerRefs {
            rows: self.rows,
            cols: self.cols,
            nnz: self.nnz,
            positions: &self.positions,
            values: &self.values,
            momentum: &self.momentum,
            row_ptr: &self.row_ptr,
            col_idx: &self.col_idx,
            col_ptr: &self.col_ptr,
            csc_row: &self.csc_row,
            csc_pos: &self.csc_pos,
        }
    }

    /// Every buffer is large enough for the layer's shape and nnz.
    pub fn check(&self) -> Result<()> {
        self.refs().check()
    }
}

/// Scratch buffers of an update; one can serve every layer (it grows as needed).
pub struct TopkWorkspace {
    /// u32[size]: see kernels/topk.cu.
    pub mark: Buf,
    pub old_values: Buf,
    pub old_momentum: Buf,
    /// u32[2·SLOT]: the two radix-select slots.
    pub state: Buf,
    pub tile_cnt: Buf,
    pub csc_cnt: Buf,
}

impl TopkWorkspace {
    /// A workspace large enough for `g`.
    pub fn new(gpu: &Gpu, g: &Geometry) -> Result<Self> {
        Ok(TopkWorkspace {
            mark: gpu.zeros::<u32>(g.size)?,
            old_values: gpu.zeros::<f32>(g.nnz)?,
            old_momentum: gpu.zeros::<f32>(g.nnz)?,
            state: gpu.zeros::<u32>(2 * SLOT)?,
            tile_cnt: gpu.zeros::<u32>(g.ntiles + 1)?,
            csc_cnt: gpu.zeros::<u32>(g.ncells())?,
        })
    }

    /// Reallocates the buffers that are too small for `g`.
    pub fn ensure(&mut self, gpu: &Gpu, g: &Geometry) -> Result<()> {
        let grow = |b: &mut Buf, n: usize| -> Result<()> {
            if b.len_of::<u32>() < n {
                *b = gpu.zeros::<u32>(n)?;
            }
            Ok(())
        };
        grow(&mut self.mark, g.size)?;
        grow(&mut self.old_values, g.nnz)?;
        grow(&mut self.old_momentum, g.nnz)?;
        grow(&mut self.tile_cnt, g.ntiles + 1)?;
        grow(&mut self.csc_cnt, g.ncells())
    }
}

/// One launch of the update.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub kernel: &'static KernelDef,
    pub cfg: LaunchCfg,
    pub params: TopkParams,
}

/// Digit passes over a key of `bits` significant bits, most significant first: (shift, width),
/// widths of at most `DIGIT_BITS`.
fn digits(bits: u32) -> Vec<(u32, u32)> {
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
fn index_digits(n: usize) -> Vec<(u32, u32)> {
    let bits = if n <= 1 {
        0
    } else {
        usize::BITS - (n - 1).leading_zeros()
    };
    digits(bits)
}

/// The launches of one update of a layer of geometry `g` pruning and regrowing `k` (1 ≤ k ≤ nnz),
/// with `base` holding the buffer addresses (its pass and shape fields are overwritten).
pub fn plan(g: &Geometry, k: usize, base: TopkParams) -> Vec<Step> {
    let mut p = base;
    p.rows = g.rows as u32;
    p.cols = g.cols as u32;
    p.nnz = g.nnz as u32;
    p.size = g.size as u32;
    p.k = k as u32;
    p.ntiles = g.ntiles as u32;
    p.rows_per_chunk = g.rows_per_chunk as u32;
    p.nchunks = g.nchunks as u32;
    let mut steps = Vec::new();
    let mut push = |kernel: &'static KernelDef, cfg: LaunchCfg, p: TopkParams| {
        steps.push(Step {
            kernel,
            cfg,
            params: p,
        })
    };
    let mut clear = LaunchCfg::linear(g.size.max(g.ncells()).max(2 * SLOT), THREADS);
    clear.grid.x = clear.grid.x.min(1024);
    push(&topk_clear_u32, clear, p);
    for (slot, n) in [(0u32, g.nnz), (1, g.size)] {
        let blocks = n.div_ceil(16 * THREADS as usize).clamp(1, MAX_HIST_BLOCKS);
        let hist = LaunchCfg {
            grid: Dim3::x(blocks as u32),
            block: Dim3::x(THREADS),
            smem: 0,
        };
        let passes = digits(32)
            .into_iter()
            .map(|d| (0u32, d))
            .chain(index_digits(n).into_iter().map(|d| (1u32, d)));
        for (word, (shift, width)) in passes {
            let mut q = p;
            q.slot = slot;
            q.word = word;
            q.shift = shift;
            q.digit_bits = width;
            push(&topk_hist_f32, hist, q);
        }
        if slot == 0 {
            push(&topk_prune_f32, LaunchCfg::linear(g.nnz, THREADS), p);
        }
    }
    let tiles = LaunchCfg {
        grid: Dim3::x(g.ntiles as u32),
        block: Dim3::x(THREADS),
        smem: 0,
    };
    push(&topk_grow_f32, tiles, p);
    push(&topk_colscan_u32, LaunchCfg::linear(g.cols, THREADS), p);
    let one = LaunchCfg {
        grid: Dim3::x(1),
        block: Dim3::x(SCAN_THREADS),
        smem: 0,
    };
    push(&topk_scan_u32, one, p);
    push(&topk_compact_f32, tiles, p);
    let scatter = LaunchCfg {
        grid: Dim3::xy(g.cols.div_ceil(THREADS as usize) as u32, g.nchunks as u32),
        block: Dim3::x(THREADS),
        smem: 0,
    };
    push(&topk_csc_scatter_u32, scatter, p);
    steps
}

/// The addresses of `layer`, `ws` and `score` in a parameter struct (shape and pass fields 0).
pub fn addresses(layer: &SparseLayerRefs, ws: &TopkWorkspace, score: &Buf) -> TopkParams {
    TopkParams {
        positions: layer.positions.addr(),
        values: layer.values.addr(),
        momentum: layer.momentum.addr(),
        row_ptr: layer.row_ptr.addr(),
        col_idx: layer.col_idx.addr(),
        col_ptr: layer.col_ptr.addr(),
        csc_row: layer.csc_row.addr(),
        csc_pos: layer.csc_pos.addr(),
        score: score.addr(),
        mark: ws.mark.addr(),
        old_values: ws.old_values.addr(),
        old_momentum: ws.old_momentum.addr(),
        state: ws.state.addr(),
        tile_cnt: ws.tile_cnt.addr(),
        csc_cnt: ws.csc_cnt.addr(),
        ..TopkParams::zeroed()
    }
}

/// One topology update of `layer` in place on the device, as `sparse::topology::update_layer`
/// with `PruneRule::Magnitude` and `GrowRule::Gradient` (or `Momentum`, passing the gradient's
/// momentum as `score`): prunes the `k_prune` active weights of smallest |w|, regrows as many
/// positions inactive after pruning with the largest |score| (ties: lower position first, both
/// ways), at value 0 and momentum 0; survivors keep value and momentum. `score` is f32[rows·cols].
/// `k_prune` = `prune_count(rate, nnz)`; 0 changes nothing. Launches only (asynchronous on a GPU);
/// nothing is copied to the host.
pub fn update_layer(
    gpu: &Gpu,
    layer: &mut SparseLayerBufs,
    ws: &mut TopkWorkspace,
    k_prune: usize,
    score: &Buf,
) -> Result<()> {
    update_layer_refs(gpu, &layer.refs(), ws, k_prune, score)
}

/// [`update_layer`] on borrowed buffers.
pub fn update_layer_refs(
    gpu: &Gpu,
    layer: &SparseLayerRefs,
    ws: &mut TopkWorkspace,
    k_prune: usize,
    score: &Buf,
) -> Result<()> {
    layer.check()?;
    let g = Geometry::new(layer.rows, layer.cols, layer.nnz)?;
    ensure!(
        k_prune <= g.nnz,
        "topk: cannot prune {k_prune} of {} weights",
        g.nnz
    );
    ensure!(
        score.len_of::<f32>() >= g.size,
        "topk: the score holds {} values, the {}×{} layer needs {}",
        score.len_of::<f32>(),
        g.rows,
        g.cols,
        g.size
    );
    if k_prune == 0 {
        return Ok(());
    }
    ws.ensure(gpu, &g)?;
    for s in plan(&g, k_prune, addresses(layer, ws, score)) {
        gpu.launch(s.kernel, s.cfg, &s.params)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_has_no_padding() {
        assert_eq!(std::mem::size_of::<TopkParams>(), 15 * 8 + 12 * 4);
    }

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
