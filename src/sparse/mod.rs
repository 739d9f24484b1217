//! Sparse topology and sparse compute: layer densities, masks as a compact index, pruning and
//! regrowth schedules, and the CPU kernels that compute only over active weights.
//!
//! A masked layer's weight is a matrix W[rows, cols] (conv: rows = cout, cols = cin·k·k; linear:
//! rows = out, cols = in), the same matrix the dense GEMM multiplies. Its active weights are
//! stored as `csr::SparseWeight` (CSR over rows, plus the transpose index for backward-data);
//! optimiser state for the layer is kept per active weight, in the same order as `values`.
//!
//! `csr` is the format, `simd` the register building blocks, `conv` the direct convolution the
//! engine runs, `reference` the im2col kernels (spmm, spmm_t, sddmm) the tests compare against.

pub mod conv;
pub mod csr;
pub mod density;
pub mod reference;
pub mod schedule;
pub mod simd;
pub mod topology;
