//! A sparse weight matrix W[rows, cols]: CSR over rows (forward, backward-weight) plus a CSC
//! index into the same values (backward-data), and the cache of the direct convolution's plans
//! that depends on its positions. The kernels over it: the direct convolution (`sparse::conv`,
//! what the engine runs) built from the register blocks of `sparse::simd`; the im2col reference
//! kernels `spmm`, `spmm_t`, `sddmm` (`sparse::reference`, the tests' reference).

/// The kernels' build variants; re-exported here, where callers of the sparse kernels choose them.
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

/// (geometry, input plan?, plan). The plan's type is the direct convolution's
/// (`sparse::conv::Plan`), held as `Any` so that the weight format does not depend on its kernels.
type PlanEntry = (
    crate::device::cpu::conv::ConvGeom,
    bool,
    std::sync::Arc<dyn std::any::Any + Send + Sync>,
);

/// At most this many geometries are kept per layer (training, the last short batch,
/// evaluation: two plans each).
const PLANS_KEPT: usize = 8;

impl PlanCache {
    /// The plan (input plan when `input`) for `geom`, built by `build` when absent.
    pub fn get<P: std::any::Any + Send + Sync>(
        &self,
        geom: crate::device::cpu::conv::ConvGeom,
        input: bool,
        build: impl FnOnce() -> P,
    ) -> std::sync::Arc<P> {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let cached = list
            .iter()
            .find(|(g, i, p)| *g == geom && *i == input && p.is::<P>())
            .and_then(|(_, _, p)| p.clone().downcast::<P>().ok());
        if let Some(p) = cached {
            return p;
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
