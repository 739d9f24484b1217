//! A sparse weight matrix W[rows, cols]: CSR over rows (forward, backward-weight) plus a CSC
//! index into the same values (backward-data), and the CPU kernels over it.
//!
//! Kernels: `spmm` and `spmm_t` compute each output row as a sum of scaled rows of the dense
//! operand, summed in registers a chunk of columns at a time over all the row's entries (the
//! next entries' sources prefetched), over tiles of (output rows) × (a block of n). `sddmm`
//! computes eight dot products at a time against one row of the output gradient, block by block
//! of n. Tiles run in parallel with rayon; small problems run serially. These three work over an
//! im2col matrix: the tests' reference beside the direct convolution (`sparse::conv`), which the
//! engine runs and which shares the building blocks below (`acc_vec`, `dot_lanes`, and the
//! AVX-512 kernels `dots_into_avx512` and `gather_and_dots_avx512`).
//!
//! The slice-code loops are compiled three times (portable, AVX2+FMA, AVX-512) and chosen at run
//! time (`Kernels::preferred`); the two AVX-512 kernels use intrinsics, where the compiler's code
//! for the slice form kept bounds checks in the loop and spilled its sums.

use rayon::prelude::*;

/// The kernels' build variants; re-exported here, where most of them are chosen.
pub use crate::device::cpu::isa::Kernels;

/// Active weights of one layer. `values[e]` sits at row r, column `col_idx[e]` for
/// `row_ptr[r] ≤ e < row_ptr[r+1]`; columns ascend within a row. The transpose index lists, for
/// each column c, the entries `csc_pos[col_ptr[c]..col_ptr[c+1]]` (positions into `values`) and
/// their rows `csc_row[..]`, rows ascending.
///
/// The index is built once (`from_positions`); a topology update builds a new `SparseWeight`.
/// Only `values` changes in place (the optimiser), so whatever depends on the positions alone can
/// be cached with it (`plans`).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseWeight {
    pub rows: usize,
    pub cols: usize,
    pub row_ptr: Vec<u32>,
    pub col_idx: Vec<u32>,
    pub values: Vec<f32>,
    pub col_ptr: Vec<u32>,
    pub csc_row: Vec<u32>,
    pub csc_pos: Vec<u32>,
    /// The direct convolution's entry lists for this topology (`sparse::conv`).
    pub plans: PlanCache,
}

/// The direct convolution's plans (`sparse::conv::Plan`) for the geometries a layer has run at,
/// built once per topology instead of at every pass (they cost about as much as a sparse
/// pass at 0.01 density). A clone starts empty, and the cache takes no part in equality.
#[derive(Default)]
pub struct PlanCache(std::sync::Mutex<Vec<PlanEntry>>);

/// (geometry, input plan?, plan).
type PlanEntry = (
    crate::device::cpu::conv::ConvGeom,
    bool,
    std::sync::Arc<crate::sparse::conv::Plan>,
);

/// At most this many geometries are kept per layer (training, the last short batch,
/// evaluation: two plans each).
const PLANS_KEPT: usize = 8;

impl PlanCache {
    /// The plan (input plan when `input`) for `geom`, built by `build` when absent.
    pub fn get(
        &self,
        geom: crate::device::cpu::conv::ConvGeom,
        input: bool,
        build: impl FnOnce() -> crate::sparse::conv::Plan,
    ) -> std::sync::Arc<crate::sparse::conv::Plan> {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, p)) = list.iter().find(|(g, i, _)| *g == geom && *i == input) {
            return p.clone();
        }
        let plan = std::sync::Arc::new(build());
        if list.len() >= PLANS_KEPT {
            list.remove(0);
        }
        list.push((geom, input, plan.clone()));
        plan
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Clone for PlanCache {
    fn clone(&self) -> Self {
        PlanCache::default()
    }
}

impl PartialEq for PlanCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |l| l.len());
        write!(f, "PlanCache({n} plans)")
    }
}

impl SparseWeight {
    /// From sorted, unique flat positions r·cols + c and their values.
    ///
    /// Panics if the positions are not strictly ascending, lie outside rows·cols, or their count
    /// differs from the number of values, or if rows·cols does not fit the u32 index.
    pub fn from_positions(rows: usize, cols: usize, positions: &[u32], values: Vec<f32>) -> Self {
        assert_eq!(
            positions.len(),
            values.len(),
            "from_positions: {} positions but {} values",
            positions.len(),
            values.len()
        );
        let size = rows
            .checked_mul(cols)
            .expect("from_positions: rows·cols overflows");
        assert!(
            size as u64 <= 1u64 << 32,
            "from_positions: {rows}×{cols} exceeds the u32 index"
        );
        let mut row_ptr = vec![0u32; rows + 1];
        let mut col_idx = Vec::with_capacity(positions.len());
        let mut prev: Option<u32> = None;
        for &p in positions {
            assert!(
                (p as usize) < size,
                "from_positions: position {p} outside {rows}×{cols}"
            );
            if let Some(q) = prev {
                assert!(
                    p > q,
                    "from_positions: positions not strictly ascending ({q} then {p})"
                );
            }
            prev = Some(p);
            let (r, c) = (p as usize / cols, p as usize % cols);
            row_ptr[r + 1] += 1;
            col_idx.push(c as u32);
        }
        for r in 0..rows {
            row_ptr[r + 1] += row_ptr[r];
        }
        let mut w = SparseWeight {
            rows,
            cols,
            row_ptr,
            col_idx,
            values,
            col_ptr: Vec::new(),
            csc_row: Vec::new(),
            csc_pos: Vec::new(),
            plans: PlanCache::default(),
        };
        w.rebuild_csc();
        w
    }

    /// Keeps `dense[p]` at every p where `mask[p]`.
    pub fn from_dense_mask(rows: usize, cols: usize, dense: &[f32], mask: &[bool]) -> Self {
        assert_eq!(
            dense.len(),
            rows * cols,
            "from_dense_mask: dense has the wrong length"
        );
        assert_eq!(
            mask.len(),
            rows * cols,
            "from_dense_mask: mask has the wrong length"
        );
        let positions: Vec<u32> = mask
            .iter()
            .enumerate()
            .filter(|(_, &m)| m)
            .map(|(p, _)| p as u32)
            .collect();
        let values = positions.iter().map(|&p| dense[p as usize]).collect();
        Self::from_positions(rows, cols, &positions, values)
    }

    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Density nnz / (rows·cols).
    pub fn density(&self) -> f64 {
        self.nnz() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// Flat positions r·cols + c of the entries, in `values` order (ascending).
    pub fn positions(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.nnz());
        for r in 0..self.rows {
            let base = (r * self.cols) as u32;
            let (s, e) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
            out.extend(self.col_idx[s..e].iter().map(|&c| base + c));
        }
        out
    }

    /// Writes the dense matrix (zeros where inactive) into `out` [rows·cols].
    pub fn to_dense(&self, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.rows * self.cols,
            "to_dense: output has the wrong length"
        );
        out.fill(0.0);
        for r in 0..self.rows {
            let row = &mut out[r * self.cols..(r + 1) * self.cols];
            let (s, e) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
            for (&c, &v) in self.col_idx[s..e].iter().zip(&self.values[s..e]) {
                row[c as usize] = v;
            }
        }
    }

    /// `values[e] = dense[position(e)]` for every entry.
    pub fn gather_from_dense(&self, dense: &[f32], values: &mut [f32]) {
        assert_eq!(
            dense.len(),
            self.rows * self.cols,
            "gather_from_dense: dense has the wrong length"
        );
        assert_eq!(
            values.len(),
            self.nnz(),
            "gather_from_dense: values has the wrong length"
        );
        for r in 0..self.rows {
            let row = &dense[r * self.cols..(r + 1) * self.cols];
            let (s, e) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
            for (&c, v) in self.col_idx[s..e].iter().zip(&mut values[s..e]) {
                *v = row[c as usize];
            }
        }
    }

    /// Rebuilds the transpose index (`col_ptr`, `csc_row`, `csc_pos`) from the CSR arrays.
    pub fn rebuild_csc(&mut self) {
        self.plans.clear();
        let nnz = self.nnz();
        let mut col_ptr = vec![0u32; self.cols + 1];
        for &c in &self.col_idx {
            col_ptr[c as usize + 1] += 1;
        }
        for c in 0..self.cols {
            col_ptr[c + 1] += col_ptr[c];
        }
        let mut next: Vec<u32> = col_ptr[..self.cols].to_vec();
        let mut csc_row = vec![0u32; nnz];
        let mut csc_pos = vec![0u32; nnz];
        for r in 0..self.rows {
            for e in self.row_ptr[r] as usize..self.row_ptr[r + 1] as usize {
                let c = self.col_idx[e] as usize;
                let k = next[c] as usize;
                csc_row[k] = r as u32;
                csc_pos[k] = e as u32;
                next[c] += 1;
            }
        }
        self.col_ptr = col_ptr;
        self.csc_row = csc_row;
        self.csc_pos = csc_pos;
    }

    /// Checks every structural invariant (sizes, ascending indices, CSC consistent with CSR);
    /// returns a description of the first violation.
    pub fn validate(&self) -> Result<(), String> {
        let nnz = self.nnz();
        if self.row_ptr.len() != self.rows + 1
            || self.row_ptr[0] != 0
            || self.row_ptr[self.rows] as usize != nnz
        {
            return Err("row_ptr malformed".into());
        }
        if self.col_idx.len() != nnz || self.csc_row.len() != nnz || self.csc_pos.len() != nnz {
            return Err("index lengths differ from nnz".into());
        }
        for r in 0..self.rows {
            let (s, e) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
            if s > e {
                return Err(format!("row_ptr decreases at row {r}"));
            }
            let cols = &self.col_idx[s..e];
            if cols.iter().any(|&c| c as usize >= self.cols)
                || cols.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(format!("row {r}: columns out of range or not ascending"));
            }
        }
        let mut check = self.clone();
        check.rebuild_csc();
        if check.col_ptr != self.col_ptr
            || check.csc_row != self.csc_row
            || check.csc_pos != self.csc_pos
        {
            return Err("CSC index does not match the CSR arrays".into());
        }
        Ok(())
    }
}

/// Below this many multiply-adds a kernel runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;
/// Tiles per thread, for load balance.
const TILES_PER_THREAD: usize = 4;
/// Width of one block of the n dimension (floats): 4 KiB of output per row stays in L1 while the
/// entries stream. Measured on a 2-core AVX-512 EPYC (1 MiB L2, 32 MiB L3), full-width blocks beat
/// narrower ones sized to keep the dense operand's panel in L2 (up to 2× on a [512, 4608] layer).
const BLOCK: usize = 1024;

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// A compressed row structure: output row i is Σ_{e ∈ ptr[i]..ptr[i+1]} val[e] · src[off[e]..][..n]
/// (for a matrix operand, off[e] = column index · n; the direct convolution shifts the rows).
struct Gather<'a> {
    ptr: &'a [u32],
    off: &'a [usize],
    val: &'a [f32],
    src: &'a [f32],
    n: usize,
}

/// One output tile: rows `row0..row0 + outs.len()`, columns `j0..j0 + width` (`outs[i]` is that
/// piece of output row `row0 + i`).
struct Tile<'a> {
    row0: usize,
    j0: usize,
    outs: Vec<&'a mut [f32]>,
}

/// Computes one tile of a `Gather`: each output row's piece summed over all its entries in
/// registers, CH columns at a time (`acc_vec`).
#[inline(always)]
fn gather_tile<const FMA: bool, const CH: usize>(g: &Gather, tile: &mut Tile) {
    for (i, o) in tile.outs.iter_mut().enumerate() {
        let r = tile.row0 + i;
        let (s, e) = (g.ptr[r] as usize, g.ptr[r + 1] as usize);
        acc_vec::<FMA, CH>(&g.off[s..e], &g.val[s..e], g.src, tile.j0, o);
    }
}

/// Entries ahead whose source chunk is prefetched: the sources are scattered windows that the
/// hardware prefetcher cannot predict.
pub(crate) const PREFETCH_AHEAD: usize = 4;

/// out = Σ_q val[q] · src[idx[q] + at..][..out.len()] (idx[q] + at wrapping, so offsets may be
/// relative to a base on either side): CH columns at a time summed in registers
/// over every entry and stored once (CH = 256 fills 16 AVX-512 registers), the narrower rest in
/// chunks of 128, 64, 32 and 16, then one by one.
#[inline(always)]
pub(crate) fn acc_vec<const FMA: bool, const CH: usize>(
    idx: &[usize],
    val: &[f32],
    src: &[f32],
    at: usize,
    out: &mut [f32],
) {
    let w = out.len();
    let mut c = 0;
    while c + CH <= w {
        acc_chunk::<FMA, CH>(idx, val, src, at.wrapping_add(c), &mut out[c..c + CH]);
        c += CH;
    }
    // The rest in halving chunks (a batch of 64 is one 64-wide chunk: four independent sums
    // per entry, where 16-wide chunks would be four passes of one dependent chain each).
    macro_rules! tier {
        ($wd:literal) => {
            if $wd < CH && c + $wd <= w {
                acc_chunk::<FMA, $wd>(idx, val, src, at.wrapping_add(c), &mut out[c..c + $wd]);
                c += $wd;
            }
        };
    }
    tier!(128);
    tier!(64);
    tier!(32);
    tier!(16);
    while c < w {
        let mut a = 0.0;
        for (&ix, &v) in idx.iter().zip(val) {
            a = fmadd::<FMA>(v, src[ix.wrapping_add(at) + c], a);
        }
        out[c] = a;
        c += 1;
    }
}

/// out[..W] = Σ_q val[q] · src[idx[q] + at..][..W] (wrapping sum), summed in registers.
#[inline(always)]
fn acc_chunk<const FMA: bool, const W: usize>(
    idx: &[usize],
    val: &[f32],
    src: &[f32],
    at: usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; W];
    for (q, (&ix, &v)) in idx.iter().zip(val).enumerate() {
        if let Some(&ahead) = idx.get(q + PREFETCH_AHEAD) {
            prefetch_window::<W>(src, ahead.wrapping_add(at));
        }
        let i = ix.wrapping_add(at);
        let x: &[f32; W] = src[i..i + W].try_into().unwrap();
        for l in 0..W {
            acc[l] = fmadd::<FMA>(v, x[l], acc[l]);
        }
    }
    out[..W].copy_from_slice(&acc);
}

/// Hints that the `W` floats at `src[at..]` will be read soon: one hint per 64-byte line, a
/// fixed count so the compiler unrolls it.
#[inline(always)]
pub(crate) fn prefetch_window<const W: usize>(src: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = src.as_ptr().wrapping_add(at);
        for l in 0..W.div_ceil(16) {
            // SAFETY: a prefetch is only a hint: it never faults and has no architectural
            // effect, whatever the address (wrapping_add computes it without UB).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(16 * l) as *const i8,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, at);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gather_tile_avx2(g: &Gather, tile: &mut Tile) {
    gather_tile::<true, 128>(g, tile)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gather_tile_avx512(g: &Gather, tile: &mut Tile) {
    gather_tile::<true, 256>(g, tile)
}

/// `k` must come from `Kernels::resolve`.
fn run_gather_tile(k: Kernels, g: &Gather, tile: &mut Tile) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX-512F, AVX2 and FMA.
        Kernels::Avx512 => unsafe { gather_tile_avx512(g, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX2 and FMA.
        Kernels::Avx2 => unsafe { gather_tile_avx2(g, tile) },
        _ => gather_tile::<false, 64>(g, tile),
    }
}

/// Runs a `Gather` into `out` [out_rows, n], tiled over (groups of rows) × (blocks of n); rows
/// are grouped only when there are too few blocks of n to keep every thread busy.
fn run_gather(k: Kernels, g: &Gather, out_rows: usize, out: &mut [f32]) {
    let n = g.n;
    assert_eq!(out.len(), out_rows * n);
    if n == 0 || out_rows == 0 {
        return;
    }
    let serial = g.val.len() * n < SERIAL_WORK || threads() <= 1;
    let w = BLOCK.min(n);
    let nblocks = n.div_ceil(w);
    let want = if serial {
        1
    } else {
        TILES_PER_THREAD * threads()
    };
    let groups = want.div_ceil(nblocks).min(out_rows);
    let rb = out_rows.div_ceil(groups);
    let groups = out_rows.div_ceil(rb);
    let mut tiles: Vec<Tile> = (0..groups * nblocks)
        .map(|t| Tile {
            row0: (t / nblocks) * rb,
            j0: (t % nblocks) * w,
            outs: Vec::with_capacity(rb),
        })
        .collect();
    for (r, row) in out.chunks_mut(n).enumerate() {
        for (j, piece) in row.chunks_mut(w).enumerate() {
            tiles[(r / rb) * nblocks + j].outs.push(piece);
        }
    }
    if serial {
        tiles.iter_mut().for_each(|t| run_gather_tile(k, g, t));
    } else {
        tiles.par_iter_mut().for_each(|t| run_gather_tile(k, g, t));
    }
}

/// c[rows, n] = W · b[cols, n] (overwrites c).
pub fn spmm(w: &SparseWeight, b: &[f32], n: usize, c: &mut [f32]) {
    spmm_with(Kernels::preferred(), w, b, n, c)
}

/// `spmm` with a chosen kernel variant (lowered to what the CPU supports).
pub fn spmm_with(k: Kernels, w: &SparseWeight, b: &[f32], n: usize, c: &mut [f32]) {
    assert_eq!(b.len(), w.cols * n, "spmm: b must be [cols, n]");
    assert_eq!(c.len(), w.rows * n, "spmm: c must be [rows, n]");
    let off: Vec<usize> = w.col_idx.iter().map(|&c| c as usize * n).collect();
    let g = Gather {
        ptr: &w.row_ptr,
        off: &off,
        val: &w.values,
        src: b,
        n,
    };
    run_gather(k.resolve(), &g, w.rows, c);
}

/// db[cols, n] = Wᵀ · dc[rows, n] (overwrites db).
pub fn spmm_t(w: &SparseWeight, dc: &[f32], n: usize, db: &mut [f32]) {
    spmm_t_with(Kernels::preferred(), w, dc, n, db)
}

/// `spmm_t` with a chosen kernel variant (lowered to what the CPU supports).
pub fn spmm_t_with(k: Kernels, w: &SparseWeight, dc: &[f32], n: usize, db: &mut [f32]) {
    assert_eq!(dc.len(), w.rows * n, "spmm_t: dc must be [rows, n]");
    assert_eq!(db.len(), w.cols * n, "spmm_t: db must be [cols, n]");
    let val_t: Vec<f32> = w.csc_pos.iter().map(|&e| w.values[e as usize]).collect();
    let off: Vec<usize> = w.csc_row.iter().map(|&r| r as usize * n).collect();
    let g = Gather {
        ptr: &w.col_ptr,
        off: &off,
        val: &val_t,
        src: dc,
        n,
    };
    run_gather(k.resolve(), &g, w.cols, db);
}

/// Lanes per accumulator in the dot products.
pub(crate) const LANES: usize = 16;

/// Pairwise sum of 16 lanes (vectorises, unlike a sequential sum).
#[inline(always)]
pub(crate) fn hsum(mut a: [f32; LANES]) -> f32 {
    let mut h = LANES / 2;
    while h > 0 {
        for i in 0..h {
            a[i] += a[i + h];
        }
        h /= 2;
    }
    a[0]
}

/// `M` dot products of `a` against `b[0..M]` (all the same length), added to `out`.
#[inline(always)]
fn dot_many<const FMA: bool, const M: usize>(a: &[f32], b: [&[f32]; M], out: &mut [f32]) {
    let mut acc = [[0f32; LANES]; M];
    let len = a.len() / LANES * LANES;
    let mut t = 0;
    while t < len {
        let x: &[f32; LANES] = a[t..t + LANES].try_into().unwrap();
        for (acc, y) in acc.iter_mut().zip(&b) {
            let y: &[f32; LANES] = y[t..t + LANES].try_into().unwrap();
            for l in 0..LANES {
                acc[l] = fmadd::<FMA>(x[l], y[l], acc[l]);
            }
        }
        t += LANES;
    }
    for ((o, acc), y) in out.iter_mut().zip(acc).zip(&b) {
        let mut s = hsum(acc);
        for (&x, &y) in a[len..].iter().zip(&y[len..]) {
            s = fmadd::<FMA>(x, y, s);
        }
        *o += s;
    }
}

/// acc[q] += the lane-wise products of `a` with `b[q]` (all the same length): `M` dot products
/// left unreduced, so a caller summing over many pieces reduces each once at the end.
#[inline(always)]
pub(crate) fn dot_lanes<const FMA: bool, const M: usize>(
    a: &[f32],
    b: [&[f32]; M],
    acc: &mut [[f32; LANES]; M],
) {
    let (ac, at) = a.as_chunks::<LANES>();
    let b: [&[f32]; M] = b.map(|y| &y[..a.len()]);
    let bc: [&[[f32; LANES]]; M] = b.map(|y| y.as_chunks::<LANES>().0);
    // A local copy, so the sums live in registers.
    let mut loc = *acc;
    for (t, x) in ac.iter().enumerate() {
        for (acc, y) in loc.iter_mut().zip(&bc) {
            let y = &y[t];
            for l in 0..LANES {
                acc[l] = fmadd::<FMA>(x[l], y[l], acc[l]);
            }
        }
    }
    let len = ac.len() * LANES;
    for (acc, y) in loc.iter_mut().zip(&b) {
        for (l, (&x, &y)) in at.iter().zip(&y[len..]).enumerate() {
            acc[l] = fmadd::<FMA>(x, y, acc[l]);
        }
    }
    *acc = loc;
}

/// For each entry q: part[slots[q] − e0] += the lanes of a · x[offs[q] + at..][..a.len()]
/// (offs[q] + at wrapping), with AVX-512 instructions: eight entries at a time against one load
/// of `a`, their sums in registers. The compiler's code for the generic form (`dot_lanes`) kept
/// a bounds check per entry and chunk and spilled the sums, which made the weight gradient of the
/// direct convolution its slowest pass.
///
/// Panics if a row leaves `x` or a slot leaves `part`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn dots_into_avx512(
    a: &[f32],
    x: &[f32],
    offs: &[usize],
    at: usize,
    slots: &[u32],
    e0: usize,
    part: &mut [[f32; LANES]],
) {
    use std::arch::x86_64::*;
    let n = a.len();
    let full = n / LANES * LANES;
    assert_eq!(
        offs.len(),
        slots.len(),
        "dots_into: offsets and slots differ"
    );
    // The checked row start and part index of entry q.
    let row = |q: usize| {
        let i = offs[q].wrapping_add(at);
        x[i..i + n].as_ptr()
    };
    let plen = part.len();
    let dst = |q: usize| {
        let d = slots[q] as usize - e0;
        assert!(d < plen, "dots_into: slot outside part");
        d
    };
    /// M entries against one load of a per chunk.
    #[inline(always)]
    unsafe fn group<const M: usize>(
        a: &[f32],
        full: usize,
        rows: [*const f32; M],
        dst: [usize; M],
        part: &mut [[f32; LANES]],
    ) {
        // SAFETY (caller): every row pointer has a.len() ≥ full readable floats, every dst
        // index is inside part; the unaligned loads and stores need no alignment.
        unsafe {
            let mut s: [__m512; M] =
                std::array::from_fn(|q| _mm512_loadu_ps(part[dst[q]].as_ptr()));
            let mut t = 0;
            while t < full {
                let v = _mm512_loadu_ps(a.as_ptr().add(t));
                for q in 0..M {
                    s[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(rows[q].add(t)), s[q]);
                }
                t += LANES;
            }
            for q in 0..M {
                _mm512_storeu_ps(part[dst[q]].as_mut_ptr(), s[q]);
            }
        }
    }
    let len = offs.len();
    let mut q = 0;
    // SAFETY: `row` hands out pointers to slices of n ≥ full floats of x, and `dst` indices
    // checked against part.
    unsafe {
        // Groups of eight entries, then of four, then one by one.
        macro_rules! groups {
            ($m:literal) => {
                while len - q >= $m {
                    let rows = std::array::from_fn(|t| row(q + t));
                    group::<$m>(a, full, rows, std::array::from_fn(|t| dst(q + t)), part);
                    q += $m;
                }
            };
        }
        groups!(8);
        groups!(4);
        groups!(1);
    }
    // The tail columns (n not a multiple of 16) lane by lane.
    if full < n {
        for (q, &o) in offs.iter().enumerate() {
            let (i, d) = (o.wrapping_add(at), dst(q));
            for (l, (&u, &v)) in a[full..].iter().zip(&x[i + full..i + n]).enumerate() {
                part[d][l] = u.mul_add(v, part[d][l]);
            }
        }
    }
}

/// One input pixel and channel of the direct convolution's backward, both gradients in one
/// read of each output-gradient row (AVX-512): out[..n] = Σ_q vals[q] · dy[offs[q] + at..][..n]
/// (the input gradient) and part[slots[q] − t0] += the lanes of x · dy[offs[q] + at..][..n] (the
/// weight gradient), with n = out.len() = x.len() and offs[q] + at wrapping. The two separate
/// passes read every row twice; they run at L2 bandwidth, so sharing the read is what saves time.
///
/// With `relu`, where x = relu(batchnorm(·)) with shift β = `relu.beta`, also adds to `relu.s1`
/// the lanes of Σ out' and to `relu.s2` those of Σ out'·(x − β), with out' = out where x > 0,
/// else 0: what batch norm's backward sums over its output gradient, here while both rows are
/// in registers (no extra read).
///
/// Panics if a row leaves `dy` or a slot leaves `part`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_and_dots_avx512(
    x: &[f32],
    dy: &[f32],
    offs: &[usize],
    vals: &[f32],
    at: usize,
    slots: &[u32],
    t0: usize,
    part: &mut [[f32; LANES]],
    out: &mut [f32],
    mut relu: Option<&mut ReluSums>,
) {
    use std::arch::x86_64::*;
    let n = out.len();
    assert_eq!(x.len(), n, "gather_and_dots: x and out differ");
    assert!(
        offs.len() == vals.len() && offs.len() == slots.len(),
        "gather_and_dots: entry lists differ"
    );
    for (&o, &sl) in offs.iter().zip(slots) {
        let i = o.wrapping_add(at);
        assert!(
            i <= dy.len() && dy.len() - i >= n,
            "gather_and_dots: a row leaves dy"
        );
        assert!(
            (sl as usize).wrapping_sub(t0) < part.len(),
            "gather_and_dots: slot outside part"
        );
    }
    let full = n / LANES * LANES;
    /// The operands every chunk reads.
    struct Rows<'a> {
        x: &'a [f32],
        dy: &'a [f32],
        offs: &'a [usize],
        vals: &'a [f32],
        slots: &'a [u32],
        at: usize,
        t0: usize,
    }
    /// Columns c..c + 16·M of every entry.
    #[inline(always)]
    unsafe fn chunk<const M: usize>(
        r: &Rows,
        c: usize,
        part: &mut [[f32; LANES]],
        out: &mut [f32],
        relu: Option<&mut ReluSums>,
    ) {
        // SAFETY (caller): c + 16·M ≤ n; every row offs[q] + at has n floats in dy and every
        // slot − t0 indexes part (checked above); `relu`'s lanes are LANES = 16 floats, one
        // vector each; the unaligned forms need no alignment.
        unsafe {
            let xs: [__m512; M] =
                std::array::from_fn(|k| _mm512_loadu_ps(r.x.as_ptr().add(c + 16 * k)));
            let mut acc: [__m512; M] = [_mm512_setzero_ps(); M];
            let base = r.dy.as_ptr();
            for (q, ((&o, &v), &sl)) in r.offs.iter().zip(r.vals).zip(r.slots).enumerate() {
                if let Some(&ahead) = r.offs.get(q + PREFETCH_AHEAD) {
                    for k in 0..M {
                        prefetch_window::<LANES>(r.dy, ahead.wrapping_add(r.at) + c + 16 * k);
                    }
                }
                let p = base.add(o.wrapping_add(r.at) + c);
                let vv = _mm512_set1_ps(v);
                let mut s = _mm512_setzero_ps();
                for k in 0..M {
                    let d = _mm512_loadu_ps(p.add(16 * k));
                    acc[k] = _mm512_fmadd_ps(vv, d, acc[k]);
                    s = _mm512_fmadd_ps(xs[k], d, s);
                }
                let pp = part.as_mut_ptr().add(sl as usize - r.t0) as *mut f32;
                _mm512_storeu_ps(pp, _mm512_add_ps(_mm512_loadu_ps(pp), s));
            }
            for (k, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * k), *a);
            }
            if let Some(b) = relu {
                let (mut s1, mut s2) = (
                    _mm512_loadu_ps(b.s1.as_ptr()),
                    _mm512_loadu_ps(b.s2.as_ptr()),
                );
                let beta = _mm512_set1_ps(b.beta);
                for k in 0..M {
                    let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(xs[k], _mm512_setzero_ps());
                    let t = _mm512_sub_ps(xs[k], beta);
                    s1 = _mm512_mask_add_ps(s1, keep, s1, acc[k]);
                    s2 = _mm512_mask_add_ps(s2, keep, s2, _mm512_mul_ps(acc[k], t));
                }
                _mm512_storeu_ps(b.s1.as_mut_ptr(), s1);
                _mm512_storeu_ps(b.s2.as_mut_ptr(), s2);
            }
        }
    }
    let r = Rows {
        x,
        dy,
        offs,
        vals,
        slots,
        at,
        t0,
    };
    let mut c = 0;
    // SAFETY: each call covers columns below `full` ≤ n; rows and slots were checked above.
    unsafe {
        while c + 128 <= full {
            chunk::<8>(&r, c, part, out, relu.as_deref_mut());
            c += 128;
        }
        if c + 64 <= full {
            chunk::<4>(&r, c, part, out, relu.as_deref_mut());
            c += 64;
        }
        if c + 32 <= full {
            chunk::<2>(&r, c, part, out, relu.as_deref_mut());
            c += 32;
        }
        if c + 16 <= full {
            chunk::<1>(&r, c, part, out, relu.as_deref_mut());
        }
    }
    // The tail columns (n not a multiple of 16) one by one.
    for col in full..n {
        let mut a = 0.0f32;
        for ((&o, &v), &sl) in offs.iter().zip(vals).zip(slots) {
            let d = dy[o.wrapping_add(at) + col];
            a = v.mul_add(d, a);
            let lane = &mut part[sl as usize - t0][col - full];
            *lane = x[col].mul_add(d, *lane);
        }
        out[col] = a;
        if let Some(b) = relu.as_deref_mut() {
            if x[col] > 0.0 {
                b.s1[col - full] += a;
                b.s2[col - full] += a * (x[col] - b.beta);
            }
        }
    }
}

/// Where the convolution's input is x = relu(batchnorm(·)): the channel's batch-norm shift β,
/// and the lanes of the two sums `gather_and_dots_avx512` adds for batch norm's backward.
#[derive(Debug)]
pub(crate) struct ReluSums {
    pub beta: f32,
    pub s1: [f32; LANES],
    pub s2: [f32; LANES],
}

/// The operands of one sddmm: entry e of row r is the dot product of `a[r·n..][..n]` with
/// `b[off[e]..][..n]`.
struct Sddmm<'a> {
    row_ptr: &'a [u32],
    off: &'a [usize],
    a: &'a [f32],
    b: &'a [f32],
    n: usize,
}

/// Adds to `dv` (the entries of rows `task.rows`) the partial dot products over columns
/// `task.cols` of n, walking those columns in blocks of `task.width` so each block of `b` stays in cache across rows.
#[inline(always)]
fn sddmm_tile<const FMA: bool>(m: &Sddmm, task: SddmmTask, dv: &mut [f32]) {
    let (rows, cols, width) = (task.rows, task.cols, task.width);
    let base = m.row_ptr[rows.0] as usize;
    let mut j0 = cols.0;
    while j0 < cols.1 {
        let wd = width.min(cols.1 - j0);
        for r in rows.0..rows.1 {
            let a = &m.a[r * m.n + j0..][..wd];
            let (s, end) = (m.row_ptr[r] as usize, m.row_ptr[r + 1] as usize);
            let brow = |e: usize| &m.b[m.off[e] + j0..][..wd];
            let mut e = s;
            while e + 8 <= end {
                let bs = [
                    brow(e),
                    brow(e + 1),
                    brow(e + 2),
                    brow(e + 3),
                    brow(e + 4),
                    brow(e + 5),
                    brow(e + 6),
                    brow(e + 7),
                ];
                dot_many::<FMA, 8>(a, bs, &mut dv[e - base..e - base + 8]);
                e += 8;
            }
            if e + 4 <= end {
                dot_many::<FMA, 4>(
                    a,
                    [brow(e), brow(e + 1), brow(e + 2), brow(e + 3)],
                    &mut dv[e - base..e - base + 4],
                );
                e += 4;
            }
            while e < end {
                dot_many::<FMA, 1>(a, [brow(e)], &mut dv[e - base..e - base + 1]);
                e += 1;
            }
        }
        j0 += wd;
    }
}

/// The rows, columns and entries one `sddmm` task covers.
#[derive(Clone, Copy)]
struct SddmmTask {
    rows: (usize, usize),
    cols: (usize, usize),
    width: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sddmm_tile_avx2(m: &Sddmm, t: SddmmTask, dv: &mut [f32]) {
    sddmm_tile::<true>(m, t, dv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sddmm_tile_avx512(m: &Sddmm, t: SddmmTask, dv: &mut [f32]) {
    sddmm_tile::<true>(m, t, dv)
}

/// `k` must come from `Kernels::resolve`. Adds into `dv`.
fn run_sddmm_tile(k: Kernels, m: &Sddmm, t: SddmmTask, dv: &mut [f32]) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX-512F, AVX2 and FMA.
        Kernels::Avx512 => unsafe { sddmm_tile_avx512(m, t, dv) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX2 and FMA.
        Kernels::Avx2 => unsafe { sddmm_tile_avx2(m, t, dv) },
        _ => sddmm_tile::<false>(m, t, dv),
    }
}

/// dvalues[e] = Σ_j dc[r_e, j] · b[c_e, j]: the weight gradient at active positions only.
pub fn sddmm(w: &SparseWeight, dc: &[f32], b: &[f32], n: usize, dvalues: &mut [f32]) {
    sddmm_with(Kernels::preferred(), w, dc, b, n, dvalues)
}

/// `sddmm` with a chosen kernel variant (lowered to what the CPU supports).
///
/// Parallel over ranges of n (each task sums into its own buffer, reduced at the end) and, when
/// n has too few blocks for the threads, over groups of rows of roughly equal entry counts.
pub fn sddmm_with(
    k: Kernels,
    w: &SparseWeight,
    dc: &[f32],
    b: &[f32],
    n: usize,
    dvalues: &mut [f32],
) {
    assert_eq!(dc.len(), w.rows * n, "sddmm: dc must be [rows, n]");
    assert_eq!(b.len(), w.cols * n, "sddmm: b must be [cols, n]");
    assert_eq!(
        dvalues.len(),
        w.nnz(),
        "sddmm: dvalues must have nnz entries"
    );
    let off: Vec<usize> = w.col_idx.iter().map(|&c| c as usize * n).collect();
    let m = Sddmm {
        row_ptr: &w.row_ptr,
        off: &off,
        a: dc,
        b,
        n,
    };
    run_sddmm(k.resolve(), &m, dvalues)
}

/// `k` must come from `Kernels::resolve`; overwrites `dvalues`.
fn run_sddmm(k: Kernels, m: &Sddmm, dvalues: &mut [f32]) {
    let (n, nrows) = (m.n, m.row_ptr.len() - 1);
    let nnz = dvalues.len();
    dvalues.fill(0.0);
    if nnz == 0 || n == 0 {
        return;
    }
    let width = BLOCK.min(n);
    if nnz * n < SERIAL_WORK || threads() <= 1 {
        let t = SddmmTask {
            rows: (0, nrows),
            cols: (0, n),
            width,
        };
        run_sddmm_tile(k, m, t, dvalues);
        return;
    }
    let want = TILES_PER_THREAD * threads();
    let nblocks = n.div_ceil(width);
    // Ranges of n: as many as useful, up to `want`; each costs a buffer of nnz partial sums.
    let nranges = nblocks.min(want);
    let ngroups = want.div_ceil(nranges).min(nrows);
    // Row groups at row boundaries, roughly equal entry counts.
    let target = nnz.div_ceil(ngroups);
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut row0 = 0;
    while row0 < nrows {
        let start = m.row_ptr[row0] as usize;
        let mut r = row0 + 1;
        while r < nrows && (m.row_ptr[r] as usize - start) < target {
            r += 1;
        }
        groups.push((row0, r));
        row0 = r;
    }
    let col_range = |t: usize| {
        let (c0, c1) = (t * nblocks / nranges, (t + 1) * nblocks / nranges);
        (c0 * width, (c1 * width).min(n))
    };
    if nranges == 1 {
        let mut blocks: Vec<(SddmmTask, &mut [f32])> = Vec::new();
        let mut rest = dvalues;
        for &(r0, r1) in &groups {
            let len = (m.row_ptr[r1] - m.row_ptr[r0]) as usize;
            let (head, tail) = rest.split_at_mut(len);
            blocks.push((
                SddmmTask {
                    rows: (r0, r1),
                    cols: (0, n),
                    width,
                },
                head,
            ));
            rest = tail;
        }
        blocks
            .into_par_iter()
            .for_each(|(t, dv)| run_sddmm_tile(k, m, t, dv));
        return;
    }
    let tasks: Vec<SddmmTask> = groups
        .iter()
        .flat_map(|&rows| (0..nranges).map(move |t| (rows, t)))
        .map(|(rows, t)| SddmmTask {
            rows,
            cols: col_range(t),
            width,
        })
        .collect();
    let partial: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&t| {
            let mut buf = vec![0f32; (m.row_ptr[t.rows.1] - m.row_ptr[t.rows.0]) as usize];
            run_sddmm_tile(k, m, t, &mut buf);
            buf
        })
        .collect();
    for (t, buf) in tasks.iter().zip(&partial) {
        let e0 = m.row_ptr[t.rows.0] as usize;
        for (d, &p) in dvalues[e0..e0 + buf.len()].iter_mut().zip(buf) {
            *d += p;
        }
    }
}
