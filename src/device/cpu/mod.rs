//! CPU kernels: the reference math of every operation and the fast CPU backend.
//!
//! Layouts (see `tensor.rs`): convolution activations are [C, N, H, W]; a convolution is
//! `y[Cout, N·OH·OW] = W[Cout, Cin·k·k] · col[Cin·k·k, N·OH·OW]` over an im2col buffer whose row
//! r = (ci·k + kh)·k + kw and column j = (n·OH + oh)·OW + ow. Weights are [Cout, Cin, k, k]
//! row-major (PyTorch's order). A linear layer is the same GEMM with k = 1 on [F, N] features.
//!
//! Every function overwrites its outputs (no accumulation) unless it says otherwise, and
//! parallelises with rayon where the work is large.

pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod twin;
pub mod xent;

pub use conv::ConvGeom;
