//! A sparse weight matrix W[rows, cols]: CSR over rows (forward, backward-weight) plus a CSC
//! index into the same values (backward-data), and the CPU kernels over it.

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
    pub fn from_positions(rows: usize, cols: usize, positions: &[u32], values: Vec<f32>) -> Self {
        let _ = (rows, cols, positions, values);
        todo!("sparse helper")
    }
    /// Keeps `dense[p]` at every p where `mask[p]`.
    pub fn from_dense_mask(rows: usize, cols: usize, dense: &[f32], mask: &[bool]) -> Self {
        let _ = (rows, cols, dense, mask);
        todo!("sparse helper")
    }
    pub fn nnz(&self) -> usize {
        self.values.len()
    }
    /// Flat positions r·cols + c of the entries, in `values` order (ascending).
    pub fn positions(&self) -> Vec<u32> {
        todo!("sparse helper")
    }
    /// Writes the dense matrix (zeros where inactive) into `out` [rows·cols].
    pub fn to_dense(&self, out: &mut [f32]) {
        let _ = out;
        todo!("sparse helper")
    }
    /// `values[e] = dense[position(e)]` for every entry.
    pub fn gather_from_dense(&self, dense: &[f32], values: &mut [f32]) {
        let _ = (dense, values);
        todo!("sparse helper")
    }
}

/// c[rows, n] = W · b[cols, n] (overwrites c).
pub fn spmm(w: &SparseWeight, b: &[f32], n: usize, c: &mut [f32]) {
    let _ = (w, b, n, c);
    todo!("sparse helper")
}

/// db[cols, n] = Wᵀ · dc[rows, n] (overwrites db).
pub fn spmm_t(w: &SparseWeight, dc: &[f32], n: usize, db: &mut [f32]) {
    let _ = (w, dc, n, db);
    todo!("sparse helper")
}

/// dvalues[e] = Σ_j dc[r_e, j] · b[c_e, j]: the weight gradient at active positions only.
pub fn sddmm(w: &SparseWeight, dc: &[f32], b: &[f32], n: usize, dvalues: &mut [f32]) {
    let _ = (w, dc, b, n, dvalues);
    todo!("sparse helper")
}
