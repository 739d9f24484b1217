//! Direct sparse convolution over batch-innermost activations [C, H, W, N]: no im2col buffer,
//! no layout passes.
//!
//! With the batch innermost, active weight (co; ci, kh, kw) contributes to output pixel (i, j)
//! one contiguous row of N inputs, x[ci, s·i + kh − pad, s·j + kw − pad, :]. So for each output
//! pixel and output channel the forward sums the scaled input rows of that channel's active
//! weights, N at a time in registers (256 for the CMNIST CNN: 16 AVX-512 registers), and stores
//! the result once. The input gradient is the same gather over the transpose index (for each
//! input pixel and channel, the active weights whose tap lands on it), and the weight gradient is
//! a dot product of an output-gradient row with an input row per active weight and pixel; on
//! AVX-512 the two gradients can share one pass (`DirectGeom::backward`).
//!
//! Pixels differ only in which taps of their window read the input rather than the zero padding
//! (all of them, inside). Pixels are grouped into classes by that set, and each class gets its own
//! compressed entry lists holding exactly those taps, with offsets relative to a per-pixel base,
//! so no pass tests a tap or pads a buffer.
//!
//! Loops run over pixels outermost and channels inside, so the rows one pixel's window reads
//! (every channel's k² taps) stay in cache while every channel reuses them. The plans depend on
//! the positions only and are kept with the layer's index (`SparseWeight::plans`).
//!
//! This file holds the convolution ([`DirectGeom`]), its forward and input gradient; the plans
//! (pixel classes and their entry lists) are in `plan.rs`, the weight gradient and the fused
//! backward in `grad.rs`, the passes they run over threads in `passes.rs`. The SIMD blocks the
//! passes run are in `sparse::simd`.

mod grad;
mod passes;
mod plan;

pub use plan::Plan;

use passes::{run_variant, Gather, SharedRows};
use rayon::prelude::*;

use super::csr::{Kernels, SparseWeight};
use crate::device::cpu::buffers::overwritten;
use crate::device::cpu::conv::{ConvGeom, Layout};

/// Below this many multiply-adds a pass runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;
/// Up to this size of one output pixel's input window the weight gradient walks output pixels
/// (see `DirectGeom::weight_grad`): about L1.
const L1_WINDOW_BYTES: usize = 48 << 10;
/// Tasks per thread, for load balance.
const TASKS_PER_THREAD: usize = 2;
/// The fused backward splits pixels among tasks while each task's lanes (one per active
/// weight) take at most this much memory: they are read and written at random, and must stay in
/// L2 beside the rows (at 1 MiB of L2, 256 KiB was fastest on the CMNIST CNN's conv2; the
/// channel split was faster than 600 KiB).
#[cfg(target_arch = "x86_64")]
const PIXEL_TASK_LANES_BYTES: usize = 256 << 10;
/// From this size of its input the forward splits pixels among tasks, each running every
/// output channel: a channel task streams the whole input from L3 or memory, a pixel task only
/// the windows of its pixels (CMNIST CNN conv2 and conv3, inputs of 12.8 and 6.4 MB: step at 0.01
/// 6.8× → 7.35× dense, medians of 14 alternated runs on a 2-vCPU Xeon; ResNet-18's inputs at
/// 32 px, 1 MB at most, stay in L2 and gained nothing).
const PIXEL_SPLIT_INPUT_BYTES: usize = 4 << 20;

/// One convolution over [C, H, W, N] activations.
#[derive(Clone, Copy, Debug)]
pub struct DirectGeom {
    pub g: ConvGeom,
    /// The build of the passes to run (the best this CPU has, unless chosen).
    kernels: Kernels,
}

impl DirectGeom {
    pub fn new(g: &ConvGeom) -> Self {
        assert!(g.k <= 64, "direct conv: kernel {} exceeds 64", g.k);
        DirectGeom {
            g: g.with_layout(Layout::Chwn),
            kernels: Kernels::detect(),
        }
    }

    /// The same convolution run with the `k` build of the passes (lowered to what this CPU
    /// supports), so tests can check every build against the same reference.
    pub fn with_kernels(self, k: Kernels) -> Self {
        DirectGeom {
            kernels: k.resolve(),
            ..self
        }
    }

    /// Panics unless `w`, and x and dy where given, fit this geometry.
    fn checks(&self, w: &SparseWeight, x: Option<&[f32]>, dy: Option<&[f32]>) {
        let g = &self.g;
        assert_eq!(w.rows, g.cout, "direct conv: weight rows");
        assert_eq!(w.cols, g.col_rows(), "direct conv: weight columns");
        if let Some(x) = x {
            assert_eq!(x.len(), g.cin * g.h * g.w * g.n, "direct conv: x length");
        }
        if let Some(dy) = dy {
            let len = g.cout * g.oh * g.ow * g.n;
            assert_eq!(dy.len(), len, "direct conv: dy length");
        }
    }

    /// Whether a pass over `w` is too small to share out over threads.
    fn serial(&self, w: &SparseWeight) -> bool {
        w.nnz() * self.g.oh * self.g.ow * self.g.n < SERIAL_WORK
    }

    /// y [cout, oh, ow, n] = W ∗ x (+ bias) for x [cin, h, w, n].
    pub fn forward(&self, w: &SparseWeight, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        self.checks(w, Some(x), None);
        let g = &self.g;
        if let Some(b) = bias {
            assert_eq!(b.len(), g.cout, "direct conv: bias length");
        }
        let plan = w.plans.get(self.g, false, || self.output_plan(w));
        let vals = plan.values(w);
        let (plan, vals) = (&*plan, &vals[..]);
        let plane = g.oh * g.ow * g.n;
        let k = self.kernels;
        overwritten(g.cout * plane, |y| {
            let npix = g.oh * g.ow;
            let out = SharedRows::new(y);
            let run = |rows: (usize, usize), pixels: (usize, usize)| {
                let mut pass = Gather {
                    n: g.n,
                    npix,
                    plan,
                    vals,
                    src: x,
                    bias,
                    rows,
                    pixels,
                    out,
                };
                run_variant(k, &mut pass);
            };
            let want = tasks();
            if self.serial(w) || plane == 0 {
                run((0, g.cout), (0, npix));
            } else if npix >= want
                && (self.walks_output_pixels()
                    || std::mem::size_of_val(x) >= PIXEL_SPLIT_INPUT_BYTES)
            {
                // Each task takes every channel over a range of pixels: on a first layer, the
                // window of a pixel (in L1) then serves all channels, not a quarter of them
                // (CMNIST conv1 at 0.01, in isolation: 0.56 → 0.46 ms); on a large input, each
                // task reads only its pixels' windows (`PIXEL_SPLIT_INPUT_BYTES`).
                (0..want)
                    .into_par_iter()
                    .for_each(|t| run((0, g.cout), (t * npix / want, (t + 1) * npix / want)));
            } else {
                let per = g.cout.div_ceil(want).max(1);
                (0..g.cout.div_ceil(per))
                    .into_par_iter()
                    .for_each(|t| run((t * per, ((t + 1) * per).min(g.cout)), (0, npix)));
            }
        })
    }

    /// dx [cin, h, w, n] from dy [cout, oh, ow, n]: for each input pixel and channel, the sum
    /// over the active weights whose tap lands on it.
    pub fn input_grad(&self, w: &SparseWeight, dy: &[f32]) -> Vec<f32> {
        self.checks(w, None, Some(dy));
        let plan = w.plans.get(self.g, true, || self.input_plan(w));
        let vals = plan.values(w);
        let (plan, vals) = (&*plan, &vals[..]);
        let g = &self.g;
        let plane = g.h * g.w * g.n;
        let k = self.kernels;
        overwritten(g.cin * plane, |dx| {
            let npix = g.h * g.w;
            let out = SharedRows::new(dx);
            let chans = |c0: usize, c1: usize| {
                let mut pass = Gather {
                    n: g.n,
                    npix,
                    plan,
                    vals,
                    src: dy,
                    bias: None,
                    rows: (c0, c1),
                    pixels: (0, npix),
                    out,
                };
                run_variant(k, &mut pass);
            };
            if self.serial(w) || plane == 0 {
                chans(0, g.cin);
            } else {
                let per = g.cin.div_ceil(tasks()).max(1);
                (0..g.cin.div_ceil(per))
                    .into_par_iter()
                    .for_each(|t| chans(t * per, ((t + 1) * per).min(g.cin)));
            }
        })
    }
}

fn tasks() -> usize {
    TASKS_PER_THREAD * rayon::current_num_threads().max(1)
}
