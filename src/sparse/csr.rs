//! A sparse weight matrix W[rows, cols]: CSR over rows (forward, backward-weight) plus a CSC
//! index into the same values (backward-data), and the CPU kernels over it.
//!
//! Kernels: `spmm` and `spmm_t` compute each output row as a sum of scaled rows of the dense
//! operand (an axpy per active weight, four weights at a time so each output load/store feeds four
//! FMAs), with the n dimension blocked so the output chunk stays in L1 while the entries stream.
//! `sddmm` computes four dot products at a time against one row of the output gradient. Work is
//! split over blocks of output rows with rayon; small problems run serially. The inner loops are
//! plain slice code that LLVM vectorises; they are compiled three times (portable, AVX2+FMA,
//! AVX-512) and the best one the CPU supports is chosen at run time.

use rayon::prelude::*;

/// Active weights of one layer. `values[e]` sits at row r, column `col_idx[e]` for
/// `row_ptr[r] ≤ e < row_ptr[r+1]`; columns ascend within a row. The transpose index lists, for
/// each column c, the entries `csc_pos[col_ptr[c]..col_ptr[c+1]]` (positions into `values`) and
/// their rows `csc_row[..]`, rows ascending.
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

/// Which compiled variant of the kernels to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Baseline instructions only.
    Portable,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512F, AVX2 and FMA (x86-64).
    Avx512,
}

impl Kernels {
    /// The best variant this CPU supports.
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Kernels::Avx512;
            }
            if avx2 {
                return Kernels::Avx2;
            }
        }
        Kernels::Portable
    }

    /// `self`, lowered to what the CPU supports (so any value is safe to request).
    fn resolve(self) -> Kernels {
        match (self, Kernels::detect()) {
            (Kernels::Portable, _) | (_, Kernels::Portable) => Kernels::Portable,
            (Kernels::Avx2, _) | (_, Kernels::Avx2) => Kernels::Avx2,
            _ => Kernels::Avx512,
        }
    }
}

/// Below this many multiply-adds a kernel runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;
/// Width of one block of the n dimension in `spmm`/`spmm_t` (floats): 2 KiB of output per row.
const N_BLOCK: usize = 512;

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// A compressed row structure: output row i is Σ_{e ∈ ptr[i]..ptr[i+1]} val[e] · src[idx[e], :].
struct Gather<'a> {
    ptr: &'a [u32],
    idx: &'a [u32],
    val: &'a [f32],
    src: &'a [f32],
    n: usize,
}

/// Computes the output rows `row0..row0 + out.len()/n` of a `Gather` into `out`.
#[inline(always)]
fn gather_block<const FMA: bool>(g: &Gather, row0: usize, out: &mut [f32]) {
    let n = g.n;
    let nrows = out.len() / n;
    let mut j0 = 0;
    while j0 < n {
        let w = N_BLOCK.min(n - j0);
        for i in 0..nrows {
            let o = &mut out[i * n + j0..i * n + j0 + w];
            o.fill(0.0);
            let (s, e) = (g.ptr[row0 + i] as usize, g.ptr[row0 + i + 1] as usize);
            let idx = &g.idx[s..e];
            let val = &g.val[s..e];
            let src = |q: usize| &g.src[idx[q] as usize * n + j0..][..w];
            let mut q = 0;
            while q + 4 <= idx.len() {
                let (b0, b1, b2, b3) = (src(q), src(q + 1), src(q + 2), src(q + 3));
                let (v0, v1, v2, v3) = (val[q], val[q + 1], val[q + 2], val[q + 3]);
                for ((((o, &x0), &x1), &x2), &x3) in o.iter_mut().zip(b0).zip(b1).zip(b2).zip(b3) {
                    *o = fmadd::<FMA>(
                        v3,
                        x3,
                        fmadd::<FMA>(v2, x2, fmadd::<FMA>(v1, x1, fmadd::<FMA>(v0, x0, *o))),
                    );
                }
                q += 4;
            }
            while q < idx.len() {
                let (b0, v0) = (src(q), val[q]);
                for (o, &x0) in o.iter_mut().zip(b0) {
                    *o = fmadd::<FMA>(v0, x0, *o);
                }
                q += 1;
            }
        }
        j0 += w;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gather_block_avx2(g: &Gather, row0: usize, out: &mut [f32]) {
    gather_block::<true>(g, row0, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gather_block_avx512(g: &Gather, row0: usize, out: &mut [f32]) {
    gather_block::<true>(g, row0, out)
}

/// `k` must come from `Kernels::resolve`.
fn run_gather_block(k: Kernels, g: &Gather, row0: usize, out: &mut [f32]) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX-512F, AVX2 and FMA.
        Kernels::Avx512 => unsafe { gather_block_avx512(g, row0, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX2 and FMA.
        Kernels::Avx2 => unsafe { gather_block_avx2(g, row0, out) },
        _ => gather_block::<false>(g, row0, out),
    }
}

/// Rows per parallel block: about four blocks per thread, at least `SERIAL_WORK` work each.
fn rows_per_block(rows: usize, nnz: usize, n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let per_row = (nnz * n / rows.max(1)).max(1);
    let by_balance = rows.div_ceil(4 * threads);
    let by_work = (SERIAL_WORK / 4).div_ceil(per_row);
    by_balance.max(by_work).max(1)
}

fn run_gather(k: Kernels, g: &Gather, out_rows: usize, out: &mut [f32]) {
    let n = g.n;
    assert_eq!(out.len(), out_rows * n);
    if n == 0 || out_rows == 0 {
        return;
    }
    let nnz = g.val.len();
    if nnz * n < SERIAL_WORK || rayon::current_num_threads() <= 1 {
        run_gather_block(k, g, 0, out);
        return;
    }
    let rb = rows_per_block(out_rows, nnz, n);
    out.par_chunks_mut(rb * n)
        .enumerate()
        .for_each(|(b, chunk)| run_gather_block(k, g, b * rb, chunk));
}

/// c[rows, n] = W · b[cols, n] (overwrites c).
pub fn spmm(w: &SparseWeight, b: &[f32], n: usize, c: &mut [f32]) {
    spmm_with(Kernels::detect(), w, b, n, c)
}

/// `spmm` with a chosen kernel variant (lowered to what the CPU supports).
pub fn spmm_with(k: Kernels, w: &SparseWeight, b: &[f32], n: usize, c: &mut [f32]) {
    assert_eq!(b.len(), w.cols * n, "spmm: b must be [cols, n]");
    assert_eq!(c.len(), w.rows * n, "spmm: c must be [rows, n]");
    let g = Gather {
        ptr: &w.row_ptr,
        idx: &w.col_idx,
        val: &w.values,
        src: b,
        n,
    };
    run_gather(k.resolve(), &g, w.rows, c);
}

/// db[cols, n] = Wᵀ · dc[rows, n] (overwrites db).
pub fn spmm_t(w: &SparseWeight, dc: &[f32], n: usize, db: &mut [f32]) {
    spmm_t_with(Kernels::detect(), w, dc, n, db)
}

/// `spmm_t` with a chosen kernel variant (lowered to what the CPU supports).
pub fn spmm_t_with(k: Kernels, w: &SparseWeight, dc: &[f32], n: usize, db: &mut [f32]) {
    assert_eq!(dc.len(), w.rows * n, "spmm_t: dc must be [rows, n]");
    assert_eq!(db.len(), w.cols * n, "spmm_t: db must be [cols, n]");
    let val_t: Vec<f32> = w.csc_pos.iter().map(|&e| w.values[e as usize]).collect();
    let g = Gather {
        ptr: &w.col_ptr,
        idx: &w.csc_row,
        val: &val_t,
        src: dc,
        n,
    };
    run_gather(k.resolve(), &g, w.cols, db);
}

/// Lanes per accumulator in the dot products.
const DOT_LANES: usize = 16;

/// Four dot products of `a` against `b0..b3` (all the same length).
#[inline(always)]
fn dot4<const FMA: bool>(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    let mut acc = [[0f32; DOT_LANES]; 4];
    let ca = a.chunks_exact(DOT_LANES);
    let tail = ca.remainder().len();
    let it = ca
        .zip(b[0].chunks_exact(DOT_LANES))
        .zip(b[1].chunks_exact(DOT_LANES));
    let it = it
        .zip(b[2].chunks_exact(DOT_LANES))
        .zip(b[3].chunks_exact(DOT_LANES));
    for ((((x, y0), y1), y2), y3) in it {
        let x: &[f32; DOT_LANES] = x.try_into().unwrap();
        let ys: [&[f32; DOT_LANES]; 4] = [
            y0.try_into().unwrap(),
            y1.try_into().unwrap(),
            y2.try_into().unwrap(),
            y3.try_into().unwrap(),
        ];
        for (acc, y) in acc.iter_mut().zip(ys) {
            for t in 0..DOT_LANES {
                acc[t] = fmadd::<FMA>(x[t], y[t], acc[t]);
            }
        }
    }
    let start = a.len() - tail;
    let mut out = [0f32; 4];
    for (j, o) in out.iter_mut().enumerate() {
        let mut s: f32 = acc[j].iter().sum();
        for (&x, &y) in a[start..].iter().zip(&b[j][start..]) {
            s = fmadd::<FMA>(x, y, s);
        }
        *o = s;
    }
    out
}

#[inline(always)]
fn dot1<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 2 * DOT_LANES];
    let ca = a.chunks_exact(2 * DOT_LANES);
    let start = a.len() - ca.remainder().len();
    for (x, y) in ca.zip(b.chunks_exact(2 * DOT_LANES)) {
        let x: &[f32; 2 * DOT_LANES] = x.try_into().unwrap();
        let y: &[f32; 2 * DOT_LANES] = y.try_into().unwrap();
        for t in 0..2 * DOT_LANES {
            acc[t] = fmadd::<FMA>(x[t], y[t], acc[t]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (&x, &y) in a[start..].iter().zip(&b[start..]) {
        s = fmadd::<FMA>(x, y, s);
    }
    s
}

/// `sddmm` over rows `row0..` of W; `dv` holds exactly those rows' entries.
#[inline(always)]
fn sddmm_block<const FMA: bool>(
    w: &SparseWeight,
    dc: &[f32],
    b: &[f32],
    n: usize,
    row0: usize,
    dv: &mut [f32],
) {
    let base = w.row_ptr[row0] as usize;
    let mut r = row0;
    let mut e = base;
    while e < base + dv.len() {
        let end = w.row_ptr[r + 1] as usize;
        let a = &dc[r * n..(r + 1) * n];
        let brow = |e: usize| &b[w.col_idx[e] as usize * n..][..n];
        while e + 4 <= end {
            let d = dot4::<FMA>(a, [brow(e), brow(e + 1), brow(e + 2), brow(e + 3)]);
            dv[e - base..e - base + 4].copy_from_slice(&d);
            e += 4;
        }
        while e < end {
            dv[e - base] = dot1::<FMA>(a, brow(e));
            e += 1;
        }
        r += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sddmm_block_avx2(
    w: &SparseWeight,
    dc: &[f32],
    b: &[f32],
    n: usize,
    row0: usize,
    dv: &mut [f32],
) {
    sddmm_block::<true>(w, dc, b, n, row0, dv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sddmm_block_avx512(
    w: &SparseWeight,
    dc: &[f32],
    b: &[f32],
    n: usize,
    row0: usize,
    dv: &mut [f32],
) {
    sddmm_block::<true>(w, dc, b, n, row0, dv)
}

/// `k` must come from `Kernels::resolve`.
fn run_sddmm_block(
    k: Kernels,
    w: &SparseWeight,
    dc: &[f32],
    b: &[f32],
    n: usize,
    row0: usize,
    dv: &mut [f32],
) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX-512F, AVX2 and FMA.
        Kernels::Avx512 => unsafe { sddmm_block_avx512(w, dc, b, n, row0, dv) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX2 and FMA.
        Kernels::Avx2 => unsafe { sddmm_block_avx2(w, dc, b, n, row0, dv) },
        _ => sddmm_block::<false>(w, dc, b, n, row0, dv),
    }
}

/// dvalues[e] = Σ_j dc[r_e, j] · b[c_e, j]: the weight gradient at active positions only.
pub fn sddmm(w: &SparseWeight, dc: &[f32], b: &[f32], n: usize, dvalues: &mut [f32]) {
    sddmm_with(Kernels::detect(), w, dc, b, n, dvalues)
}

/// `sddmm` with a chosen kernel variant (lowered to what the CPU supports).
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
    let k = k.resolve();
    let nnz = w.nnz();
    if nnz * n < SERIAL_WORK || rayon::current_num_threads() <= 1 || w.rows <= 1 {
        run_sddmm_block(k, w, dc, b, n, 0, dvalues);
        return;
    }
    // Split the entries at row boundaries into blocks of roughly equal entry counts.
    let threads = rayon::current_num_threads();
    let target = nnz
        .div_ceil(4 * threads)
        .max(SERIAL_WORK.div_ceil(n.max(1)));
    let mut blocks: Vec<(usize, &mut [f32])> = Vec::new();
    let mut rest = dvalues;
    let mut row0 = 0;
    while row0 < w.rows {
        let start = w.row_ptr[row0] as usize;
        let mut r = row0 + 1;
        while r < w.rows && (w.row_ptr[r] as usize - start) < target {
            r += 1;
        }
        let len = w.row_ptr[r] as usize - start;
        let (head, tail) = rest.split_at_mut(len);
        blocks.push((row0, head));
        rest = tail;
        row0 = r;
    }
    blocks
        .into_par_iter()
        .for_each(|(row0, dv)| run_sddmm_block(k, w, dc, b, n, row0, dv));
}
