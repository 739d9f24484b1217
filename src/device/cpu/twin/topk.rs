//! CPU twins of kernels/topk.cu: one function per kernel (same name, same `TopkParams`, buffers
//! as slices), each computing the whole grid's result plainly, and [`run_plan`], which runs a
//! launch plan (`gpu::kernels::topk::plan`) on host arrays — the reference the device's every
//! buffer, workspace included, is compared with. The end result also equals
//! `sparse::topology::update_layer` (tests/gpu_topk.rs checks both).

use crate::device::gpu::kernels::topk::{
    batch_digit, plan_batched, BatchStep, Geometry, Step, TopkBatchParams, TopkParams, GROWN, HIST,
    SLOT, TILE,
};
use crate::sparse::csr::SparseWeight;

fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Whether the composite key (hi, lo), masked by the slot, is ≤ the slot's prefix.
fn selected(s: &[u32], hi: u32, lo: u32) -> bool {
    (hi & s[2], lo & s[3]) <= (s[0], s[1])
}

/// The composite key of candidate `i` of slot `slot`, or None if `i` is not a candidate.
fn key(slot: u32, i: usize, values: &[f32], score: &[f32], mark: &[u32]) -> Option<(u32, u32)> {
    if slot == 0 {
        Some((abs_bits(values[i]), i as u32))
    } else if mark[i] != 0 {
        None
    } else {
        Some((!abs_bits(score[i]), i as u32))
    }
}

pub fn topk_clear_u32(p: &TopkParams, mark: &mut [u32], csc_cnt: &mut [u32], state: &mut [u32]) {
    mark[..p.size as usize].fill(0);
    csc_cnt[..(p.nchunks * p.cols) as usize].fill(0);
    for (i, s) in state[..2 * SLOT].iter_mut().enumerate() {
        *s = if i % SLOT == 4 { p.k } else { 0 };
    }
}

/// One radix-select pass: histogram of the digit over the candidates matching the prefix, then
/// the digit holding the remaining rank joins the prefix.
pub fn topk_hist_f32(
    p: &TopkParams,
    values: &[f32],
    score: &[f32],
    mark: &[u32],
    state: &mut [u32],
) {
    let s = &mut state[p.slot as usize * SLOT..][..SLOT];
    if s[5] != 0 {
        return;
    }
    let n = if p.slot == 0 { p.nnz } else { p.size } as usize;
    let dmask = (1u32 << p.digit_bits) - 1;
    let mut hist = vec![0u32; dmask as usize + 1];
    for i in 0..n {
        let Some((hi, lo)) = key(p.slot, i, values, score, mark) else {
            continue;
        };
        if hi & s[2] == s[0] && lo & s[3] == s[1] {
            let w = if p.word == 0 { hi } else { lo };
            hist[((w >> p.shift) & dmask) as usize] += 1;
        }
    }
    let rank = s[4];
    let mut before = 0u32;
    for (d, &h) in hist.iter().enumerate() {
        if before < rank && rank <= before + h {
            let rem = rank - before;
            s[p.word as usize] |= (d as u32) << p.shift;
            s[2 + p.word as usize] |= dmask << p.shift;
            s[4] = rem;
            if h == rem {
                s[5] = 1;
            }
            break;
        }
        before += h;
    }
    // The device leaves the histogram and the arrival counter at zero.
    s[HIST..].fill(0);
    s[6] = 0;
}

#[allow(clippy::too_many_arguments)]
pub fn topk_prune_f32(
    p: &TopkParams,
    positions: &[u32],
    values: &[f32],
    momentum: &[f32],
    state: &[u32],
    mark: &mut [u32],
    old_values: &mut [f32],
    old_momentum: &mut [f32],
) {
    for e in 0..p.nnz as usize {
        old_values[e] = values[e];
        old_momentum[e] = momentum[e];
        if !selected(state, abs_bits(values[e]), e as u32) {
            mark[positions[e] as usize] = e as u32 + 1;
        }
    }
}

pub fn topk_grow_f32(
    p: &TopkParams,
    score: &[f32],
    state: &[u32],
    mark: &mut [u32],
    tile_cnt: &mut [u32],
    csc_cnt: &mut [u32],
) {
    let s = &state[SLOT..];
    let cols = p.cols as usize;
    tile_cnt[..p.ntiles as usize].fill(0);
    for q in 0..p.size as usize {
        if mark[q] == 0 && selected(s, !abs_bits(score[q]), q as u32) {
            mark[q] = GROWN;
        }
        if mark[q] != 0 {
            tile_cnt[q / TILE] += 1;
            let (r, c) = (q / cols, q % cols);
            csc_cnt[r / p.rows_per_chunk as usize * cols + c] += 1;
        }
    }
}

pub fn topk_colscan_u32(p: &TopkParams, csc_cnt: &mut [u32], col_ptr: &mut [u32]) {
    let cols = p.cols as usize;
    for c in 0..cols {
        let mut run = 0;
        for ch in 0..p.nchunks as usize {
            let v = csc_cnt[ch * cols + c];
            csc_cnt[ch * cols + c] = run;
            run += v;
        }
        col_ptr[c] = run;
    }
}

/// In-place exclusive scan of a[..m]; a[m] = the total.
fn scan(a: &mut [u32], m: usize) {
    let mut run = 0;
    for x in &mut a[..m] {
        let v = *x;
        *x = run;
        run += v;
    }
    a[m] = run;
}

pub fn topk_scan_u32(p: &TopkParams, tile_cnt: &mut [u32], col_ptr: &mut [u32]) {
    scan(tile_cnt, p.ntiles as usize);
    scan(col_ptr, p.cols as usize);
}

#[allow(clippy::too_many_arguments)]
pub fn topk_compact_f32(
    p: &TopkParams,
    tile_cnt: &[u32],
    old_values: &[f32],
    old_momentum: &[f32],
    mark: &mut [u32],
    positions: &mut [u32],
    values: &mut [f32],
    momentum: &mut [f32],
    col_idx: &mut [u32],
    row_ptr: &mut [u32],
) {
    let cols = p.cols as usize;
    let mut j = 0usize;
    for q in 0..p.size as usize {
        if q % cols == 0 {
            row_ptr[q / cols] = j as u32;
        }
        let m = mark[q];
        if m != 0 {
            positions[j] = q as u32;
            col_idx[j] = (q % cols) as u32;
            (values[j], momentum[j]) = if m == GROWN {
                (0.0, 0.0)
            } else {
                (old_values[m as usize - 1], old_momentum[m as usize - 1])
            };
            mark[q] = j as u32 + 1;
            j += 1;
        }
    }
    row_ptr[p.rows as usize] = tile_cnt[p.ntiles as usize];
}

pub fn topk_csc_scatter_u32(
    p: &TopkParams,
    mark: &[u32],
    col_ptr: &[u32],
    csc_cnt: &[u32],
    csc_row: &mut [u32],
    csc_pos: &mut [u32],
) {
    let (rows, cols, rpc) = (p.rows as usize, p.cols as usize, p.rows_per_chunk as usize);
    for c in 0..cols {
        for ch in 0..p.nchunks as usize {
            let mut k = (col_ptr[c] + csc_cnt[ch * cols + c]) as usize;
            for r in ch * rpc..rows.min((ch + 1) * rpc) {
                let m = mark[r * cols + c];
                if m != 0 {
                    csc_row[k] = r as u32;
                    csc_pos[k] = m - 1;
                    k += 1;
                }
            }
        }
    }
}

/// Host mirror of a layer (`SparseLayerBufs`), its score and a workspace (`TopkWorkspace`).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTopk {
    pub rows: usize,
    pub cols: usize,
    pub positions: Vec<u32>,
    pub values: Vec<f32>,
    pub momentum: Vec<f32>,
    pub row_ptr: Vec<u32>,
    pub col_idx: Vec<u32>,
    pub col_ptr: Vec<u32>,
    pub csc_row: Vec<u32>,
    pub csc_pos: Vec<u32>,
    pub score: Vec<f32>,
    pub mark: Vec<u32>,
    pub old_values: Vec<f32>,
    pub old_momentum: Vec<f32>,
    pub state: Vec<u32>,
    pub tile_cnt: Vec<u32>,
    pub csc_cnt: Vec<u32>,
}

impl HostTopk {
    /// `w` with its momentum and a score, and a zeroed workspace sized for it.
    pub fn new(w: &SparseWeight, momentum: &[f32], score: &[f32]) -> Self {
        let g = Geometry::new(w.rows, w.cols, w.nnz()).expect("HostTopk: layer too large");
        HostTopk {
            rows: w.rows,
            cols: w.cols,
            positions: w.positions(),
            values: w.values.clone(),
            momentum: momentum.to_vec(),
            row_ptr: w.row_ptr.clone(),
            col_idx: w.col_idx.clone(),
            col_ptr: w.col_ptr.clone(),
            csc_row: w.csc_row.clone(),
            csc_pos: w.csc_pos.clone(),
            score: score.to_vec(),
            mark: vec![0; g.size],
            old_values: vec![0.0; g.nnz],
            old_momentum: vec![0.0; g.nnz],
            state: vec![0; 2 * SLOT],
            tile_cnt: vec![0; g.ntiles + 1],
            csc_cnt: vec![0; g.ncells()],
        }
    }

    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.rows, self.cols, self.values.len()).expect("HostTopk: layer too large")
    }

    /// The layer as a `SparseWeight` (arrays as they are, not rebuilt).
    pub fn weight(&self) -> SparseWeight {
        SparseWeight {
            rows: self.rows,
            cols: self.cols,
            row_ptr: self.row_ptr.clone(),
            col_idx: self.col_idx.clone(),
            values: self.values.clone(),
            col_ptr: self.col_ptr.clone(),
            csc_row: self.csc_row.clone(),
            csc_pos: self.csc_pos.clone(),
            plans: Default::default(),
        }
    }
}

/// Runs one step of a plan with the twins.
pub fn run_step(s: &Step, h: &mut HostTopk) {
    run_kernel(s.kernel.name, &s.params, h)
}

/// Runs the twin of the per-layer kernel `name` with `p` on `h`.
fn run_kernel(name: &str, p: &TopkParams, h: &mut HostTopk) {
    match name {
        "topk_clear_u32" => topk_clear_u32(p, &mut h.mark, &mut h.csc_cnt, &mut h.state),
        "topk_hist_f32" => topk_hist_f32(p, &h.values, &h.score, &h.mark, &mut h.state),
        "topk_prune_f32" => topk_prune_f32(
            p,
            &h.positions,
            &h.values,
            &h.momentum,
            &h.state,
            &mut h.mark,
            &mut h.old_values,
            &mut h.old_momentum,
        ),
        "topk_grow_f32" => topk_grow_f32(
            p,
            &h.score,
            &h.state,
            &mut h.mark,
            &mut h.tile_cnt,
            &mut h.csc_cnt,
        ),
        "topk_colscan_u32" => topk_colscan_u32(p, &mut h.csc_cnt, &mut h.col_ptr),
        "topk_scan_u32" => topk_scan_u32(p, &mut h.tile_cnt, &mut h.col_ptr),
        "topk_compact_f32" => topk_compact_f32(
            p,
            &h.tile_cnt,
            &h.old_values,
            &h.old_momentum,
            &mut h.mark,
            &mut h.positions,
            &mut h.values,
            &mut h.momentum,
            &mut h.col_idx,
            &mut h.row_ptr,
        ),
        "topk_csc_scatter_u32" => topk_csc_scatter_u32(
            p,
            &h.mark,
            &h.col_ptr,
            &h.csc_cnt,
            &mut h.csc_row,
            &mut h.csc_pos,
        ),
        other => panic!("no twin for kernel {other}"),
    }
}

/// Runs a whole plan with the twins.
pub fn run_plan(steps: &[Step], h: &mut HostTopk) {
    for s in steps {
        run_step(s, h);
    }
}

/// The twin of `gpu::kernels::topk::update_layer`: prunes and regrows `k` on the host mirror.
pub fn update_layer(h: &mut HostTopk, k: usize) {
    assert!(k <= h.values.len(), "topk twin: k exceeds nnz");
    if k == 0 {
        return;
    }
    let g = h.geometry();
    let steps = crate::device::gpu::kernels::topk::plan(&g, k, TopkParams::default());
    run_plan(&steps, h);
}

// ---------------------------------------------------------------------------------------------
// Batched kernels: each runs the per-layer twin on every layer of the table (`table[i]` is the
// record of `layers[i]`, addresses ignored).

/// The per-layer twin `name` on every layer.
fn each_layer(name: &str, p: &TopkBatchParams, table: &[TopkParams], layers: &mut [HostTopk]) {
    assert_eq!(table.len(), p.nlayers as usize, "topk twin: table length");
    assert_eq!(
        table.len(),
        layers.len(),
        "topk twin: one host layer per record"
    );
    for (q, h) in table.iter().zip(layers) {
        run_kernel(name, q, h);
    }
}

pub fn topk_clear_batched_u32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    each_layer("topk_clear_u32", p, table, l)
}

/// Pass `p.pass` of slot `p.slot`: each layer's own digit of that pass, if its key has one.
pub fn topk_hist_batched_f32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    assert_eq!(table.len(), l.len(), "topk twin: one host layer per record");
    for (q, h) in table.iter().zip(l) {
        let g = h.geometry();
        if let Some((word, shift, digit_bits)) = batch_digit(&g, p.slot, p.pass) {
            let q = TopkParams {
                slot: p.slot,
                word,
                shift,
                digit_bits,
                ..*q
            };
            run_kernel("topk_hist_f32", &q, h);
        }
    }
}

pub fn topk_prune_batched_f32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    each_layer("topk_prune_f32", p, table, l)
}

pub fn topk_grow_batched_f32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    each_layer("topk_grow_f32", p, table, l)
}

pub fn topk_colscan_batched_u32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    each_layer("topk_colscan_u32", p, table, l)
}

pub fn topk_scan_batched_u32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    each_layer("topk_scan_u32", p, table, l)
}

pub fn topk_compact_batched_f32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    each_layer("topk_compact_f32", p, table, l)
}

pub fn topk_csc_scatter_batched_u32(p: &TopkBatchParams, table: &[TopkParams], l: &mut [HostTopk]) {
    each_layer("topk_csc_scatter_u32", p, table, l)
}

/// Runs one step of a batched plan with the twins; `layers[i]` is the layer of `table[i]`.
pub fn run_batch_step(s: &BatchStep, table: &[TopkParams], layers: &mut [HostTopk]) {
    let p = &s.params;
    match s.kernel.name {
        "topk_clear_batched_u32" => topk_clear_batched_u32(p, table, layers),
        "topk_hist_batched_f32" => topk_hist_batched_f32(p, table, layers),
        "topk_prune_batched_f32" => topk_prune_batched_f32(p, table, layers),
        "topk_grow_batched_f32" => topk_grow_batched_f32(p, table, layers),
        "topk_colscan_batched_u32" => topk_colscan_batched_u32(p, table, layers),
        "topk_scan_batched_u32" => topk_scan_batched_u32(p, table, layers),
        "topk_compact_batched_f32" => topk_compact_batched_f32(p, table, layers),
        "topk_csc_scatter_batched_u32" => topk_csc_scatter_batched_u32(p, table, layers),
        other => panic!("no batched twin for kernel {other}"),
    }
}

/// The twin of `gpu::kernels::topk::update_layers`: every (layer, k) with k ≥ 1 updated by the
/// batched plan's steps; layers with k = 0 are left alone.
pub fn update_layers(layers: &mut [(&mut HostTopk, usize)]) {
    let mut hosts: Vec<&mut HostTopk> = Vec::new();
    let mut recs = Vec::new();
    for (h, k) in layers.iter_mut() {
        assert!(*k <= h.values.len(), "topk twin: k exceeds nnz");
        if *k > 0 {
            recs.push((h.geometry(), *k, TopkParams::default()));
            hosts.push(h);
        }
    }
    if hosts.is_empty() {
        return;
    }
    let plan = plan_batched(&recs, &TopkParams::default(), 0, 0);
    // The steps run on owned copies, written back at the end.
    let mut owned: Vec<HostTopk> = hosts.iter().map(|h| (**h).clone()).collect();
    for s in &plan.steps {
        run_batch_step(s, &plan.table, &mut owned);
    }
    for (h, o) in hosts.into_iter().zip(owned) {
        *h = o;
    }
}
