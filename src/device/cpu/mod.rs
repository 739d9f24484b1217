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

use crate::sparse::csr::Kernels;

/// Runs `f` as code built for this CPU's widest vectors: `f`, and the `#[inline(always)]` loops
/// it calls, are inlined into a copy compiled with AVX-512 (or AVX2 + FMA) where the CPU has it.
/// The crate targets baseline x86-64, which gives loops SSE2 only; the memory-bound passes of
/// batch norm, pooling and the elementwise ops ran twice as long that way. The loops use no
/// fused multiply-add and keep their own lane order, so every build gives the same bits.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match Kernels::detect() {
        // SAFETY: `detect` saw AVX-512F, AVX2 and FMA on this CPU.
        Kernels::Avx512 => return unsafe { with_avx512(f) },
        // SAFETY: `detect` saw AVX2 and FMA on this CPU.
        Kernels::Avx2 => return unsafe { with_avx2(f) },
        Kernels::Portable => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

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
