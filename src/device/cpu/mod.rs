//! CPU kernels: the reference math of every operation and the fast CPU backend.
//!
//! Layouts (see `tensor.rs`): convolution activations are [C, H, W, N] in the CPU engine
//! (`conv::Layout::Chwn`) and [C, N, H, W] in the CUDA kernels and their twins (`Layout::Cnhw`);
//! a convolution is `y[Cout, N·OH·OW] = W[Cout, Cin·k·k] · col[Cin·k·k, N·OH·OW]` over an
//! im2col buffer whose row r = (ci·k + kh)·k + kw and whose columns follow the layout
//! ((n·OH + oh)·OW + ow, or (oh·OW + ow)·N + n). Weights are [Cout, Cin, k, k] row-major
//! (PyTorch's order). A linear layer is the same GEMM with k = 1 on [F, N] features.
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

/// f(i, chunk i) over the `size`-float chunks of `data`, on rayon's threads when `parallel`.
pub(crate) fn for_each_chunk(
    data: &mut [f32],
    size: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    use rayon::prelude::*;
    if parallel {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}
