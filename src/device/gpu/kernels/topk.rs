//! Kernels of kernels/topk.cu: one topology update of one sparse layer on the device (magnitude
//! prune, gradient/momentum regrow, rebuild of positions, values, momentum, CSR and CSC), with no
//! copy of weights to the host and nothing read back.
//!
//! A layer lives on the device as [`SparseLayerBufs`]; the update needs a [`TopkWorkspace`]
//! (reusable across layers: it grows to the largest shape it has served). [`update_layer`]
//! launches the sequence [`plan`] returns; the CPU twins (`device::cpu::twin::topk`) run the same
//! plan on host slices. The layer's buffers keep their addresses across updates.
//!
//! [`update_layers`] is the batched form (what `GpuModel` runs): every pass launched once for all
//! layers (17 launches for ResNet-18's 21 layers instead of 357), the layers described by a table
//! of `TopkParams` records copied to the device once per update, each layer's scratch a slice of
//! one [`TopkBatchWorkspace`] ([`BatchLayout`]). The batched kernels run the per-layer kernels'
//! code (shared device functions), so the two paths give the same bits; [`update_layer`] stays
//! as the simple version.
//!
//! Over 600 lines (about 900 before its tests): one file per .cu, and topk.cu holds both forms of
//! the update (per layer and batched) over shared device functions; their plans share the
//! parameter structs, the geometry and the buffers, so they stay together.

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
    topk_clear_batched_u32,
    topk_hist_batched_f32,
    topk_prune_batched_f32,
    topk_grow_batched_f32,
    topk_colscan_batched_u32,
    topk_scan_batched_u32,
    topk_compact_batched_f32,
    topk_csc_scatter_batched_u32,
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
/// Candidates per thread a histogram pass is sized for (before the `MAX_HIST_BLOCKS` cap).
pub const HIST_ITEMS: usize = 16;
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
                plans: Default::default(),
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

/// `base` with the shape fields of geometry `g` and `k`.
fn shaped(g: &Geometry, k: usize, base: TopkParams) -> TopkParams {
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
fn clear_blocks(g: &Geometry) -> usize {
    g.size
        .max(g.ncells())
        .max(2 * SLOT)
        .div_ceil(THREADS as usize)
        .min(1024)
}

/// Blocks of a histogram pass over `n` candidates (grid-stride, `HIST_ITEMS` per thread at
/// least, at most `MAX_HIST_BLOCKS`).
fn hist_blocks(n: usize) -> usize {
    n.div_ceil(HIST_ITEMS * THREADS as usize)
        .clamp(1, MAX_HIST_BLOCKS)
}

/// Blocks of `topk_csc_scatter_u32` along x (columns).
fn col_blocks(g: &Geometry) -> usize {
    g.cols.div_ceil(THREADS as usize)
}

/// `blocks` blocks of `THREADS` along x.
fn linear_x(blocks: usize) -> LaunchCfg {
    LaunchCfg {
        grid: Dim3::x(blocks as u32),
        block: Dim3::x(THREADS),
        smem: 0,
    }
}

/// The launches of one update of a layer of geometry `g` pruning and regrowing `k` (1 ≤ k ≤ nnz),
/// with `base` holding the buffer addresses (its pass and shape fields are overwritten).
pub fn plan(g: &Geometry, k: usize, base: TopkParams) -> Vec<Step> {
    let p = shaped(g, k, base);
    let mut steps = Vec::new();
    let mut push = |kernel: &'static KernelDef, cfg: LaunchCfg, p: TopkParams| {
        steps.push(Step {
            kernel,
            cfg,
            params: p,
        })
    };
    push(&topk_clear_u32, linear_x(clear_blocks(g)), p);
    for (slot, n) in [(0u32, g.nnz), (1, g.size)] {
        let hist = LaunchCfg {
            grid: Dim3::x(hist_blocks(n) as u32),
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
        grid: Dim3::xy(col_blocks(g) as u32, g.nchunks as u32),
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

// ---------------------------------------------------------------------------------------------
// Batched update: every layer's pass in one launch (see kernels/topk.cu, "Batched update").

/// Kinds of flattened launch, in the order of the `starts` table.
pub const KIND_CLEAR: usize = 0;
pub const KIND_PRUNE: usize = 1;
pub const KIND_TILES: usize = 2;
pub const KIND_COLS: usize = 3;
pub const KIND_SCATTER: usize = 4;
pub const KINDS: usize = 5;

/// The one parameter struct of every batched topk kernel (mirrors `TopkBatchParams` in
/// kernels/topk.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TopkBatchParams {
    /// `TopkParams[nlayers]`: each layer's addresses (its workspace slices included) and shape.
    pub table: u64,
    /// u32[KINDS·(nlayers+1)]: per kind, the first flattened block of each layer, then the total.
    pub starts: u64,
    pub nlayers: u32,
    /// `topk_hist_batched_f32`: 0 prune, 1 grow.
    pub slot: u32,
    /// `topk_hist_batched_f32`: digit pass, 0..3 magnitude, 3.. index digit `pass - 3` of each
    /// layer's own index width.
    pub pass: u32,
    pub pad: u32,
}

/// Element offsets of one layer's scratch in a batched workspace (or, in
/// [`BatchLayout::total`], the extents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSlice {
    /// mark (u32[size]).
    pub mark: usize,
    /// old_values and old_momentum (f32[nnz] each).
    pub old: usize,
    /// state (u32[2·SLOT]).
    pub state: usize,
    /// tile_cnt (u32[ntiles+1]).
    pub tile: usize,
    /// csc_cnt (u32[ncells]).
    pub csc: usize,
}

/// Where each layer's scratch lives in one workspace, back to back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    pub slices: Vec<BatchSlice>,
    pub total: BatchSlice,
}

impl BatchLayout {
    pub fn new(geoms: &[Geometry]) -> Self {
        let mut t = BatchSlice::default();
        let mut slices = Vec::with_capacity(geoms.len());
        for g in geoms {
            slices.push(t);
            t.mark += g.size;
            t.old += g.nnz;
            t.state += 2 * SLOT;
            t.tile += g.ntiles + 1;
            t.csc += g.ncells();
        }
        BatchLayout { slices, total: t }
    }
}

/// Scratch of a batched update: every layer's slice of each workspace buffer, the layer table
/// and the block prefix sums. Grows as needed; reusable across updates.
pub struct TopkBatchWorkspace {
    pub mark: Buf,
    pub old_values: Buf,
    pub old_momentum: Buf,
    pub state: Buf,
    pub tile_cnt: Buf,
    pub csc_cnt: Buf,
    /// `TopkParams[nlayers]`, then the u32[KINDS·(nlayers+1)] block prefix sums (one copy to
    /// the device per update).
    pub table: Buf,
}

impl TopkBatchWorkspace {
    /// A workspace large enough for `layout`.
    pub fn new(gpu: &Gpu, layout: &BatchLayout) -> Result<Self> {
        let t = &layout.total;
        let n = layout.slices.len().max(1);
        Ok(TopkBatchWorkspace {
            mark: gpu.zeros::<u32>(t.mark.max(1))?,
            old_values: gpu.zeros::<f32>(t.old.max(1))?,
            old_momentum: gpu.zeros::<f32>(t.old.max(1))?,
            state: gpu.zeros::<u32>(t.state.max(1))?,
            tile_cnt: gpu.zeros::<u32>(t.tile.max(1))?,
            csc_cnt: gpu.zeros::<u32>(t.csc.max(1))?,
            table: gpu.zeros::<u8>(table_bytes(n))?,
        })
    }

    /// Reallocates the buffers that are too small for `layout`.
    pub fn ensure(&mut self, gpu: &Gpu, layout: &BatchLayout) -> Result<()> {
        let grow = |b: &mut Buf, bytes: usize| -> Result<()> {
            if b.bytes() < bytes {
                *b = gpu.zeros::<u8>(bytes)?;
            }
            Ok(())
        };
        let (t, n) = (&layout.total, layout.slices.len());
        grow(&mut self.mark, 4 * t.mark)?;
        grow(&mut self.old_values, 4 * t.old)?;
        grow(&mut self.old_momentum, 4 * t.old)?;
        grow(&mut self.state, 4 * t.state)?;
        grow(&mut self.tile_cnt, 4 * t.tile)?;
        grow(&mut self.csc_cnt, 4 * t.csc)?;
        grow(&mut self.table, table_bytes(n))
    }

    /// The device addresses of the layer table and of the prefix sums after it, for `n` layers.
    pub fn table_addresses(&self, n: usize) -> (u64, u64) {
        let a = self.table.addr();
        (a, a + (std::mem::size_of::<TopkParams>() * n) as u64)
    }
}

/// Bytes of the layer table and the prefix sums of `n` layers.
fn table_bytes(n: usize) -> usize {
    std::mem::size_of::<TopkParams>() * n.max(1) + 4 * KINDS * (n + 1)
}

impl BatchPlan {
    /// The table, then the prefix sums, as one block of bytes (what `update_layers` copies to
    /// `TopkBatchWorkspace::table`).
    pub fn table_bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = bytemuck::cast_slice(&self.table).to_vec();
        b.extend_from_slice(bytemuck::cast_slice(&self.starts));
        b
    }
}

/// One launch of a batched update.
#[derive(Clone, Copy, Debug)]
pub struct BatchStep {
    pub kernel: &'static KernelDef,
    pub cfg: LaunchCfg,
    pub params: TopkBatchParams,
}

/// A batched update: the layer table and block prefix sums to upload, and the launches.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    pub table: Vec<TopkParams>,
    pub starts: Vec<u32>,
    pub steps: Vec<BatchStep>,
}

/// The launches of one batched update of `layers` (geometry, k with 1 ≤ k ≤ nnz, and a
/// `TopkParams` holding the layer's and its score's addresses), their scratch laid out by
/// `BatchLayout::new` in workspace buffers whose base addresses `ws` holds (mark, old_values,
/// old_momentum, state, tile_cnt, csc_cnt; 0 on the host twins), the table at `table` and the
/// prefix sums at `starts`. Each layer's record is what [`plan`] would give its launches, pass
/// fields aside; the batched kernels run the same per-layer code.
pub fn plan_batched(
    layers: &[(Geometry, usize, TopkParams)],
    ws: &TopkParams,
    table: u64,
    starts: u64,
) -> BatchPlan {
    let n = layers.len();
    let geoms: Vec<Geometry> = layers.iter().map(|l| l.0).collect();
    let layout = BatchLayout::new(&geoms);
    let at = |base: u64, off: usize| if base == 0 { 0 } else { base + 4 * off as u64 };
    let mut recs = Vec::with_capacity(n);
    let mut pre = vec![0u32; KINDS * (n + 1)];
    let mut sum = [0usize; KINDS];
    for (i, ((g, k, base), sl)) in layers.iter().zip(&layout.slices).enumerate() {
        recs.push(shaped(
            g,
            *k,
            TopkParams {
                mark: at(ws.mark, sl.mark),
                old_values: at(ws.old_values, sl.old),
                old_momentum: at(ws.old_momentum, sl.old),
                state: at(ws.state, sl.state),
                tile_cnt: at(ws.tile_cnt, sl.tile),
                csc_cnt: at(ws.csc_cnt, sl.csc),
                ..*base
            },
        ));
        let blocks = [
            clear_blocks(g),
            g.nnz.div_ceil(THREADS as usize).max(1),
            g.ntiles,
            col_blocks(g),
            col_blocks(g) * g.nchunks,
        ];
        for (kind, b) in blocks.into_iter().enumerate() {
            pre[kind * (n + 1) + i] = sum[kind] as u32;
            sum[kind] += b;
        }
    }
    for (kind, s) in sum.iter().enumerate() {
        pre[kind * (n + 1) + n] = *s as u32;
    }
    let p = TopkBatchParams {
        table,
        starts,
        nlayers: n as u32,
        ..TopkBatchParams::zeroed()
    };
    let mut steps = Vec::new();
    let mut push = |kernel: &'static KernelDef, cfg: LaunchCfg, params: TopkBatchParams| {
        steps.push(BatchStep {
            kernel,
            cfg,
            params,
        })
    };
    let flat = |kind: usize| linear_x(sum[kind].max(1));
    push(&topk_clear_batched_u32, flat(KIND_CLEAR), p);
    for slot in 0..2u32 {
        let count = |g: &Geometry| if slot == 0 { g.nnz } else { g.size };
        let blocks = geoms
            .iter()
            .map(|g| hist_blocks(count(g)))
            .max()
            .unwrap_or(1);
        let index_passes = geoms
            .iter()
            .map(|g| index_digits(count(g)).len())
            .max()
            .unwrap_or(0);
        let hist = LaunchCfg {
            grid: Dim3::xy(blocks as u32, n as u32),
            block: Dim3::x(THREADS),
            smem: 0,
        };
        for pass in 0..(digits(32).len() + index_passes) as u32 {
            push(
                &topk_hist_batched_f32,
                hist,
                TopkBatchParams { slot, pass, ..p },
            );
        }
        if slot == 0 {
            push(&topk_prune_batched_f32, flat(KIND_PRUNE), p);
        }
    }
    push(&topk_grow_batched_f32, flat(KIND_TILES), p);
    push(&topk_colscan_batched_u32, flat(KIND_COLS), p);
    let per_layer = LaunchCfg {
        grid: Dim3::x(n.max(1) as u32),
        block: Dim3::x(SCAN_THREADS),
        smem: 0,
    };
    push(&topk_scan_batched_u32, per_layer, p);
    push(&topk_compact_batched_f32, flat(KIND_TILES), p);
    push(&topk_csc_scatter_batched_u32, flat(KIND_SCATTER), p);
    BatchPlan {
        table: recs,
        starts: pre,
        steps,
    }
}

/// The per-layer digit a batched histogram pass `pass` of `slot` works on for a layer of
/// geometry `g`: (word, shift, width), or None when the layer's key has no such digit (the
/// kernel returns). The same digits, in the same order, as [`plan`] launches for the layer.
pub fn batch_digit(g: &Geometry, slot: u32, pass: u32) -> Option<(u32, u32, u32)> {
    let mag = digits(32);
    let pass = pass as usize;
    if pass < mag.len() {
        let (shift, width) = mag[pass];
        return Some((0, shift, width));
    }
    let n = if slot == 0 { g.nnz } else { g.size };
    index_digits(n)
        .get(pass - mag.len())
        .map(|&(shift, width)| (1, shift, width))
}

/// One layer of a batched update: the layer, its score (f32[rows·cols]) and k.
#[derive(Clone, Copy)]
pub struct BatchItem<'a> {
    pub layer: SparseLayerRefs<'a>,
    pub score: &'a Buf,
    pub k_prune: usize,
}

/// [`update_layer_refs`] of every item at once: each pass of the update is launched once for
/// all layers (about 17 launches in all, against 14–20 per layer), plus one copy of the layer
/// table (a few KiB) to the device. The results are bit for bit those of updating the layers one by one.
/// Items with `k_prune` = 0 are left alone. The layers must not share buffers.
pub fn update_layers(gpu: &Gpu, items: &[BatchItem], ws: &mut TopkBatchWorkspace) -> Result<()> {
    let mut layers = Vec::with_capacity(items.len());
    for it in items {
        let layer = &it.layer;
        layer.check()?;
        let g = Geometry::new(layer.rows, layer.cols, layer.nnz)?;
        ensure!(
            it.k_prune <= g.nnz,
            "topk: cannot prune {} of {} weights",
            it.k_prune,
            g.nnz
        );
        ensure!(
            it.score.len_of::<f32>() >= g.size,
            "topk: the score holds {} values, the {}×{} layer needs {}",
            it.score.len_of::<f32>(),
            g.rows,
            g.cols,
            g.size
        );
        if it.k_prune > 0 {
            layers.push((g, it.k_prune, layer_addresses(layer, it.score)));
        }
    }
    if layers.is_empty() {
        return Ok(());
    }
    ensure!(
        layers.len() <= 65535,
        "topk: {} layers in one batched update (at most 65535)",
        layers.len()
    );
    let geoms: Vec<Geometry> = layers.iter().map(|l| l.0).collect();
    ws.ensure(gpu, &BatchLayout::new(&geoms))?;
    let (table, starts) = ws.table_addresses(layers.len());
    let plan = plan_batched(&layers, &batch_addresses(ws), table, starts);
    ensure!(
        plan.starts.iter().all(|&s| s < i32::MAX as u32),
        "topk: too many blocks for one batched launch"
    );
    gpu.write(&mut ws.table, &plan.table_bytes())?;
    for s in &plan.steps {
        gpu.launch(s.kernel, s.cfg, &s.params)?;
    }
    Ok(())
}

/// The addresses of `layer` and `score` (workspace, shape and pass fields 0).
pub fn layer_addresses(layer: &SparseLayerRefs, score: &Buf) -> TopkParams {
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
        ..TopkParams::zeroed()
    }
}

/// The base addresses of a batched workspace's scratch buffers (other fields 0).
pub fn batch_addresses(ws: &TopkBatchWorkspace) -> TopkParams {
    TopkParams {
        mark: ws.mark.addr(),
        old_values: ws.old_values.addr(),
        old_momentum: ws.old_momentum.addr(),
        state: ws.state.addr(),
        tile_cnt: ws.tile_cnt.addr(),
        csc_cnt: ws.csc_cnt.addr(),
        ..TopkParams::zeroed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_has_no_padding() {
        assert_eq!(std::mem::size_of::<TopkParams>(), 15 * 8 + 12 * 4);
        assert_eq!(std::mem::size_of::<TopkBatchParams>(), 2 * 8 + 4 * 4);
    }

    #[test]
    fn batch_digits_follow_each_layers_plan() {
        // A layer's batched histogram passes that do work are exactly its per-layer passes.
        for (rows, cols, nnz) in [(3usize, 5usize, 7usize), (64, 64, 3000), (300, 300, 2)] {
            let g = Geometry::new(rows, cols, nnz).unwrap();
            let per: Vec<(u32, u32, u32, u32)> = plan(&g, 1, TopkParams::default())
                .iter()
                .filter(|s| s.kernel.name == "topk_hist_f32")
                .map(|s| {
                    (
                        s.params.slot,
                        s.params.word,
                        s.params.shift,
                        s.params.digit_bits,
                    )
                })
                .collect();
            let batched: Vec<(u32, u32, u32, u32)> = (0..2)
                .flat_map(|slot| {
                    (0..8).filter_map(move |pass| {
                        batch_digit(&g, slot, pass).map(|(w, sh, wd)| (slot, w, sh, wd))
                    })
                })
                .collect();
            assert_eq!(per, batched, "{rows}×{cols}, nnz {nnz}");
        }
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
