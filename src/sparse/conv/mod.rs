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
//! About 900 lines: the plans, the passes and their task splits share private state (entry lists,
//! slots, lanes, the pixel classes); splitting the plans out would open their fields to the passes'
//! file. The SIMD blocks it runs are in `sparse::simd`.

use rayon::prelude::*;

use super::csr::{Kernels, SparseWeight};
use super::simd::{acc_vec, dot_lanes, hsum, prefetch_window, LANES, PREFETCH_AHEAD};
#[cfg(target_arch = "x86_64")]
use super::simd::{dots_into_avx512, gather_and_dots_avx512, ReluSums};
use crate::device::cpu::buffers::overwritten;
use crate::device::cpu::conv::{ConvGeom, Layout};
use crate::device::cpu::norm::DxCoefs;

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

/// Rows of one output buffer that parallel tasks write, each task its own rows.
#[derive(Clone, Copy)]
struct SharedRows<'a>(*mut f32, usize, std::marker::PhantomData<&'a mut [f32]>);

// SAFETY: `SharedRows` only hands out rows through `row`, whose callers guarantee that no two
// tasks take the same row; the pointer itself is plain data.
unsafe impl Send for SharedRows<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedRows<'_> {}

impl<'a> SharedRows<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        SharedRows(buf.as_mut_ptr(), buf.len(), std::marker::PhantomData)
    }

    /// The `len` floats at `at`.
    ///
    /// # Safety
    /// No other live reference may cover these floats.
    unsafe fn row(self, at: usize, len: usize) -> &'a mut [f32] {
        assert!(at + len <= self.1, "shared rows: out of bounds");
        // SAFETY: in bounds (checked) of a buffer borrowed for 'a; exclusive by the caller's
        // guarantee.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// One convolution over [C, H, W, N] activations.
#[derive(Clone, Copy, Debug)]
pub struct DirectGeom {
    pub g: ConvGeom,
    /// The build of the passes to run (the best this CPU has, unless chosen).
    kernels: Kernels,
}

/// Which taps of the k×k window read an input pixel: one bit per kernel row and per column.
#[derive(Clone, Copy, PartialEq, Eq)]
struct TapMask {
    rows: u64,
    cols: u64,
}

impl TapMask {
    fn has(&self, kh: usize, kw: usize) -> bool {
        self.rows >> kh & 1 == 1 && self.cols >> kw & 1 == 1
    }
}

/// The active weights that one class of pixels uses, compressed by row (output channel for the
/// forward, input channel for both gradients). `off` is relative to the pixel's base and wraps
/// (only base + off is an index); `slot` indexes the plan's `used` positions. Values are not
/// kept: they change every step (`Plan::values`).
#[derive(Default)]
struct Lists {
    ptr: Vec<usize>,
    off: Vec<usize>,
    slot: Vec<u32>,
}

impl Lists {
    fn row(&self, r: usize) -> std::ops::Range<usize> {
        self.ptr[r]..self.ptr[r + 1]
    }
}

/// Pixels grouped by their `TapMask`: pixel p uses `lists[class[p]]` from base offset `base[p]`.
/// A plan depends only on the geometry and the positions of the active weights, so each layer
/// keeps its plans with its index (`SparseWeight::plans`) until the next topology update; the
/// input plan serves both gradients.
pub struct Plan {
    class: Vec<usize>,
    base: Vec<usize>,
    lists: Vec<Lists>,
    /// The positions (CSR order for output plans, CSC for input ones, ascending) that some
    /// pixel uses; list slots index this. The weight gradient keeps 16 lanes per slot, so
    /// weights no pixel reaches (the outer taps of a 3×3 kernel on ResNet-18's 1×1 last maps,
    /// 8 in 9) cost nothing.
    used: Vec<u32>,
    /// Whether `used` holds CSC positions (input plans) rather than CSR ones.
    input: bool,
}

impl Plan {
    fn new(
        input: bool,
        npix: usize,
        mask: impl Fn(usize) -> TapMask,
        base: impl Fn(usize) -> usize,
        lists: impl Fn(TapMask) -> Lists + Sync + Send,
    ) -> Plan {
        let mut masks: Vec<TapMask> = Vec::new();
        let class = (0..npix)
            .map(|p| {
                let m = mask(p);
                masks.iter().position(|&q| q == m).unwrap_or_else(|| {
                    masks.push(m);
                    masks.len() - 1
                })
            })
            .collect();
        let mut lists: Vec<Lists> = masks.into_par_iter().map(lists).collect();
        // Renumber the slots from positions to indices of the positions in use.
        let mut used: Vec<u32> = lists.iter().flat_map(|l| l.slot.iter().copied()).collect();
        used.sort_unstable();
        used.dedup();
        let mut index = vec![u32::MAX; used.last().map_or(0, |&u| u as usize + 1)];
        for (i, &u) in used.iter().enumerate() {
            index[u as usize] = i as u32;
        }
        for l in &mut lists {
            l.slot.iter_mut().for_each(|s| *s = index[*s as usize]);
        }
        Plan {
            class,
            base: (0..npix).map(base).collect(),
            lists,
            used,
            input,
        }
    }

    /// The CSR position in `w` of the weight at `slot`.
    fn csr_position(&self, w: &SparseWeight, slot: usize) -> usize {
        let p = self.used[slot];
        (if self.input { w.csc_pos[p as usize] } else { p }) as usize
    }

    /// The slots of the positions [t0, t1): a contiguous range, as `used` ascends.
    fn slots_of(&self, (t0, t1): (usize, usize)) -> (usize, usize) {
        let at = |t: usize| self.used.partition_point(|&u| (u as usize) < t);
        (at(t0), at(t1))
    }

    /// Pixel p's class, its lists and its base offset.
    fn at(&self, p: usize) -> (usize, &Lists, usize) {
        let c = self.class[p];
        (c, &self.lists[c], self.base[p])
    }

    /// The current values of `w` in the order of each class's lists.
    fn values(&self, w: &SparseWeight) -> Vec<Vec<f32>> {
        self.lists
            .iter()
            .map(|l| {
                l.slot
                    .iter()
                    .map(|&s| w.values[self.csr_position(w, s as usize)])
                    .collect()
            })
            .collect()
    }
}

/// The bits t < k for which `ok(t)` holds.
fn bits(k: usize, ok: impl Fn(usize) -> bool) -> u64 {
    (0..k).filter(|&t| ok(t)).fold(0, |m, t| m | 1 << t)
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

    /// Output pixels by the taps that read the input; per class, each output channel's entries
    /// at those taps (offset (ci·H + kh)·W + kw rows of N from the window's corner).
    fn output_plan(&self, w: &SparseWeight) -> Plan {
        let g = &self.g;
        let (n, s, pad) = (g.n as isize, g.stride as isize, g.pad as isize);
        let inside = |o: usize, t: usize, size: usize| {
            let v = s * o as isize - pad + t as isize;
            v >= 0 && v < size as isize
        };
        // Each entry's offset and tap, computed once for all classes.
        let kk = g.k * g.k;
        let ents: Vec<(usize, u8, u8)> = w
            .col_idx
            .iter()
            .map(|&c| {
                let c = c as usize;
                let (ci, kh, kw) = (c / kk, (c / g.k) % g.k, c % g.k);
                (((ci * g.h + kh) * g.w + kw) * g.n, kh as u8, kw as u8)
            })
            .collect();
        Plan::new(
            false,
            g.oh * g.ow,
            |p| TapMask {
                rows: bits(g.k, |kh| inside(p / g.ow, kh, g.h)),
                cols: bits(g.k, |kw| inside(p % g.ow, kw, g.w)),
            },
            |p| {
                let (r0, c0) = (s * (p / g.ow) as isize - pad, s * (p % g.ow) as isize - pad);
                ((r0 * g.w as isize + c0) * n) as usize
            },
            |m| {
                let mut l = Lists {
                    ptr: Vec::with_capacity(g.cout + 1),
                    ..Lists::default()
                };
                l.ptr.push(0);
                for r in 0..g.cout {
                    let row = w.row_ptr[r] as usize..w.row_ptr[r + 1] as usize;
                    for (e, &(off, kh, kw)) in row.clone().zip(&ents[row]) {
                        if m.has(kh as usize, kw as usize) {
                            l.off.push(off);
                            l.slot.push(e as u32);
                        }
                    }
                    l.ptr.push(l.off.len());
                }
                l
            },
        )
    }

    /// Input pixels by the taps whose output pixel exists: input row r is read by tap kh of
    /// output row (r + pad − kh)/s when that divides and lies in [0, OH). Per class, each input
    /// channel's entries (the CSC index) with offsets from the output pixel of the class's
    /// first tap.
    fn input_plan(&self, w: &SparseWeight) -> Plan {
        let g = &self.g;
        let (s, n) = (g.stride, g.n);
        let reads = |x: usize, t: usize, o_n: usize| {
            let v = x + g.pad;
            v >= t && (v - t).is_multiple_of(s) && (v - t) / s < o_n
        };
        let opix = g.oh * g.ow * n;
        Plan::new(
            true,
            g.h * g.w,
            |p| TapMask {
                rows: bits(g.k, |kh| reads(p / g.w, kh, g.oh)),
                cols: bits(g.k, |kw| reads(p % g.w, kw, g.ow)),
            },
            |p| {
                // Output pixel of the taps kh ≡ (r + pad) mod s, less (kh − that)/s rows.
                let (r, c) = ((p / g.w + g.pad) / s, (p % g.w + g.pad) / s);
                (r * g.ow + c) * n
            },
            |m| {
                let (ph, pw) = (
                    m.rows.trailing_zeros() as usize % s,
                    m.cols.trailing_zeros() as usize % s,
                );
                let mut l = Lists::default();
                l.ptr.push(0);
                for ci in 0..g.cin {
                    for kh in (0..g.k).filter(|&kh| m.rows >> kh & 1 == 1) {
                        for kw in (0..g.k).filter(|&kw| m.cols >> kw & 1 == 1) {
                            let col = (ci * g.k + kh) * g.k + kw;
                            let back = (((kh - ph) / s) * g.ow + (kw - pw) / s) * n;
                            for t in w.col_ptr[col] as usize..w.col_ptr[col + 1] as usize {
                                l.off
                                    .push((w.csc_row[t] as usize * opix).wrapping_sub(back));
                                l.slot.push(t as u32);
                            }
                        }
                    }
                    l.ptr.push(l.off.len());
                }
                l
            },
        )
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

    /// Gradient at the active weights (CSR order) from dy [cout, oh, ow, n] and x [cin, h, w, n]:
    /// per entry, the sum over pixels of an input row dotted with an output-gradient row, eight
    /// entries against one load of the row they share. Two walks, chosen by where the rows the
    /// inner loop gathers stay in cache:
    /// - by output pixel and output channel (the forward's lists), when one output pixel's
    ///   input window (cin·k²·N floats) fits in L1 (a first layer: 3·16·256 floats for the
    ///   CMNIST CNN): the gathered input rows then come from L1;
    /// - otherwise by input pixel and input channel (the input gradient's lists): each input
    ///   row is read once, the gathered dy rows (four output pixels' worth for a 4×4/2 kernel)
    ///   stay in L2.
    pub fn weight_grad(&self, w: &SparseWeight, dy: &[f32], x: &[f32]) -> Vec<f32> {
        self.weight_grad_impl(w, dy, x, None)
    }

    /// Whether the weight gradient walks output pixels (see `weight_grad`).
    pub fn walks_output_pixels(&self) -> bool {
        let g = &self.g;
        g.cin * g.k * g.k * g.n * std::mem::size_of::<f32>() <= L1_WINDOW_BYTES
    }

    /// `weight_grad` where this convolution's output y (without bias) feeds a batch norm whose
    /// backward is given by `coefs` (`norm::batchnorm_backward_coefs`, one per output channel)
    /// and the gradient of that batch norm's output is `dy_bn`: each output-gradient row is
    /// computed (`DxCoefs::apply`) as the walk needs it, so the batch norm never writes it and
    /// this pass never reads it back; the row of y it needs is computed again from the input
    /// window the walk holds in L1 (the forward's arithmetic, so the same bits), not read from
    /// memory. Only when the walk is by output pixel (a first layer); None otherwise.
    pub fn weight_grad_through_bn(
        &self,
        w: &SparseWeight,
        dy_bn: &[f32],
        coefs: &[DxCoefs],
        x: &[f32],
    ) -> Option<Vec<f32>> {
        if !self.walks_output_pixels() {
            return None;
        }
        assert_eq!(coefs.len(), self.g.cout, "direct conv: coefficients");
        Some(self.weight_grad_impl(w, dy_bn, x, Some(coefs)))
    }

    fn weight_grad_impl(
        &self,
        w: &SparseWeight,
        dy: &[f32],
        x: &[f32],
        bn: Option<&[DxCoefs]>,
    ) -> Vec<f32> {
        self.checks(w, Some(x), Some(dy));
        let g = &self.g;
        let by_output = self.walks_output_pixels();
        assert!(
            by_output || bn.is_none(),
            "direct conv: batch norm rows need the output walk"
        );
        let plan = if by_output {
            w.plans.get(self.g, false, || self.output_plan(w))
        } else {
            w.plans.get(self.g, true, || self.input_plan(w))
        };
        let plan = &*plan;
        // Through batch norm, the forward's values to compute rows of y again.
        let vals = bn.map(|_| plan.values(w));
        let bn = bn.zip(vals.as_deref());
        let k = self.kernels;
        let kk = g.k * g.k;
        // Tasks over rows (output or input channels; a row range owns a contiguous range of CSR
        // or CSC positions [t0, t1)) and, when there are fewer rows than tasks (a first layer's
        // 3 input channels), over ranges of pixels as well; each task sums into its own lanes.
        let (rows, npix, a, b) = if by_output {
            (g.cout, g.oh * g.ow, dy, x)
        } else {
            (g.cin, g.h * g.w, x, dy)
        };
        let pos = |r: usize| {
            if by_output {
                w.row_ptr[r] as usize
            } else {
                w.col_ptr[r * kk] as usize
            }
        };
        let want = if self.serial(w) { 1 } else { tasks() };
        let per = rows.div_ceil(want).max(1);
        let nrow = rows.div_ceil(per);
        let npx = want.div_ceil(nrow).min(npix).max(1);
        let parts: Vec<(usize, Vec<f32>)> = (0..nrow * npx)
            .into_par_iter()
            .map(|t| {
                let (tr, tp) = (t / npx, t % npx);
                let (r0, r1) = (tr * per, ((tr + 1) * per).min(rows));
                let (t0, t1) = plan.slots_of((pos(r0), pos(r1)));
                let mut pass = WeightGrad {
                    n: g.n,
                    plan,
                    a,
                    b,
                    npix,
                    rows: (r0, r1),
                    pixels: (tp * npix / npx, (tp + 1) * npix / npx),
                    t0,
                    part: vec![[0f32; LANES]; t1 - t0],
                    bn,
                    row: vec![0.0; if bn.is_some() { 2 * g.n } else { 0 }],
                };
                run_variant(k, &mut pass);
                (t0, reduce_lanes(pass.part))
            })
            .collect();
        gradient_in_csr_order(w, plan, parts)
    }

    /// Both gradients of a step: (gradient at the active weights, dx), as `weight_grad` and
    /// `input_grad` compute them. On AVX-512 one pass computes both, each output-gradient row
    /// read once for the two (the passes run at L2 bandwidth); elsewhere the two passes.
    /// Measured on the CMNIST CNN (`cargo bench --bench sparse_conv`): conv2 at 0.05 3.6–4.0 ms
    /// against 4.9 as two passes, conv3 at 0.05 1.1 against 1.6, conv3 at 0.01 0.34 against
    /// 0.48, conv2 at 0.01 the same. (Chunks of 256 columns, the input row then read from L1
    /// instead of held in registers, were slower.)
    pub fn backward(&self, w: &SparseWeight, dy: &[f32], x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if self.kernels == Kernels::Avx512 {
            let (gv, dx, _) = self.backward_fused(w, dy, x, None);
            return (gv, dx);
        }
        (self.weight_grad(w, dy, x), self.input_grad(w, dy))
    }

    /// `backward` where the input is x = relu(batchnorm(·)) and `beta` is that batch norm's
    /// shift (one per input channel): also, per input channel, (Σ dx', Σ dx'·(x − β)) with
    /// dx' = dx where x > 0, else 0, taken in the same pass from rows already in registers.
    /// Batch norm's backward turns them into its two reductions
    /// (`norm::batchnorm_backward_with`), so it reads its input once instead of twice.
    /// None where the fused pass does not run (no AVX-512).
    #[allow(clippy::type_complexity)]
    pub fn backward_with_relu_sums(
        &self,
        w: &SparseWeight,
        dy: &[f32],
        x: &[f32],
        beta: &[f32],
    ) -> Option<(Vec<f32>, Vec<f32>, Vec<(f64, f64)>)> {
        #[cfg(target_arch = "x86_64")]
        if self.kernels == Kernels::Avx512 {
            assert_eq!(beta.len(), self.g.cin, "direct conv: beta length");
            return Some(self.backward_fused(w, dy, x, Some(beta)));
        }
        let _ = (w, dy, x, beta);
        None
    }

    /// The fused backward; with `relu` = β per input channel, also the sums of
    /// `backward_with_relu_sums` (else an empty vector).
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::type_complexity)]
    fn backward_fused(
        &self,
        w: &SparseWeight,
        dy: &[f32],
        x: &[f32],
        relu: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>, Vec<(f64, f64)>) {
        self.checks(w, Some(x), Some(dy));
        let g = &self.g;
        let plan = w.plans.get(self.g, true, || self.input_plan(w));
        let vals = plan.values(w);
        let (plan, vals) = (&*plan, &vals[..]);
        let (n, npix, kk) = (g.n, g.h * g.w, g.k * g.k);
        // Tasks over input channels, or over ranges of input pixels: each channel task reads
        // nearly all of dy (every output channel has entries at most input channels), so on a
        // layer with more pixels than tasks, pixel ranges read each dy row about once (plus the
        // rows at their edges); each such task then keeps lanes for every active weight.
        let want = if self.serial(w) { 1 } else { tasks() };
        let by_pixels =
            want > 1 && npix >= 2 * want && w.nnz() * LANES * 4 <= PIXEL_TASK_LANES_BYTES;
        let (nc, np) = if by_pixels {
            (1, want)
        } else {
            (want.min(g.cin).max(1), 1)
        };
        let per_c = g.cin.div_ceil(nc);
        let nc = g.cin.div_ceil(per_c).max(1);
        let mut parts: Vec<(usize, usize, Vec<f32>, Vec<(f64, f64)>)> = Vec::new();
        let dx = overwritten(g.cin * npix * n, |dx| {
            let out_rows = SharedRows::new(dx);
            // Task (tc, tp): input channels [c0, c1) at input pixels [p0, p1). It writes those
            // dx rows, keeps lanes for the CSC positions [t0, t1) of its channels, and the
            // relu sums of its channels over its pixels.
            let task = |t: usize| {
                let (tc, tp) = (t / np, t % np);
                let (c0, c1) = (tc * per_c, ((tc + 1) * per_c).min(g.cin));
                let (p0, p1) = (tp * npix / np, (tp + 1) * npix / np);
                let (t0, t1) =
                    plan.slots_of((w.col_ptr[c0 * kk] as usize, w.col_ptr[c1 * kk] as usize));
                let mut part = vec![[0f32; LANES]; t1 - t0];
                let mut sums = vec![(0f64, 0f64); if relu.is_some() { c1 - c0 } else { 0 }];
                for px in p0..p1 {
                    let (c, l, at) = plan.at(px);
                    for ci in c0..c1 {
                        let e = l.row(ci);
                        // SAFETY: the tasks partition (channel, pixel) pairs, so this row of
                        // dx is written by this task alone.
                        let out = unsafe { out_rows.row((ci * npix + px) * n, n) };
                        let xr = &x[(ci * npix + px) * n..][..n];
                        if ci + 1 < c1 {
                            prefetch_entries(dy, &l.off[l.row(ci + 1)], at, n);
                        }
                        let mut rs = relu.map(|beta| ReluSums {
                            beta: beta[ci],
                            s1: [0.0; LANES],
                            s2: [0.0; LANES],
                        });
                        // SAFETY: this runs only with `Kernels::Avx512`, which `with_kernels`
                        // and `new` set only where the CPU has AVX-512F.
                        unsafe {
                            gather_and_dots_avx512(
                                xr,
                                dy,
                                &l.off[e.clone()],
                                &vals[c][e.clone()],
                                at,
                                &l.slot[e],
                                t0,
                                &mut part,
                                out,
                                rs.as_mut(),
                            )
                        };
                        if let Some(r) = rs {
                            let s = &mut sums[ci - c0];
                            s.0 += hsum64(r.s1);
                            s.1 += hsum64(r.s2);
                        }
                    }
                }
                (c0, t0, reduce_lanes(part), sums)
            };
            parts = (0..nc * np).into_par_iter().map(task).collect();
        });
        // Each channel's sums over the pixel tasks, in task order.
        let mut sums = vec![(0f64, 0f64); if relu.is_some() { g.cin } else { 0 }];
        let lanes = parts
            .into_iter()
            .map(|(c0, t0, part, s)| {
                let mine = if s.is_empty() {
                    &mut [][..]
                } else {
                    &mut sums[c0..]
                };
                for (acc, v) in mine.iter_mut().zip(s) {
                    acc.0 += v.0;
                    acc.1 += v.1;
                }
                (t0, part)
            })
            .collect();
        (gradient_in_csr_order(w, plan, lanes), dx, sums)
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

/// Hints that the rows of the first `PREFETCH_AHEAD` entries of a list (n floats at
/// `off + at`, wrapping) will be read soon.
#[inline(always)]
fn prefetch_entries(src: &[f32], off: &[usize], at: usize, n: usize) {
    for &o in off.iter().take(PREFETCH_AHEAD) {
        prefetch_row(src, o.wrapping_add(at), n);
    }
}

/// Hints that the n floats at `v[at..]` will be read soon (a hint: any `at` is fine).
#[inline(always)]
fn prefetch_row(v: &[f32], at: usize, n: usize) {
    let mut c = 0;
    while c < n {
        prefetch_window::<LANES>(v, at + c);
        c += LANES;
    }
}

/// The lanes' sum in f64 (the sums of batch norm's backward are f64 across rows).
#[cfg(target_arch = "x86_64")]
fn hsum64(l: [f32; LANES]) -> f64 {
    l.iter().map(|&v| v as f64).sum()
}

/// A task's lanes reduced to one value per position, inside the task (so on its own thread,
/// while the lanes are in its cache).
fn reduce_lanes(part: Vec<[f32; LANES]>) -> Vec<f32> {
    part.into_iter().map(hsum).collect()
}

/// The weight gradient in CSR order from per-task values (task parts start at slot t0 of
/// `plan`; parts of the same slots add up, in task order; weights no slot reaches get 0). The
/// lanes are reduced by the tasks: merging them here, on one thread, cost 64 bytes per active
/// weight (a 512→512 layer of ResNet-18's last stage, at density 0.025: 0.9 ms for a weight
/// gradient whose pass took 0.3, in isolation).
fn gradient_in_csr_order(w: &SparseWeight, plan: &Plan, parts: Vec<(usize, Vec<f32>)>) -> Vec<f32> {
    let mut gv = vec![0f32; w.nnz()];
    for (t0, part) in parts {
        for (slot, v) in (t0..).zip(part) {
            gv[plan.csr_position(w, slot)] += v;
        }
    }
    gv
}

fn tasks() -> usize {
    TASKS_PER_THREAD * rayon::current_num_threads().max(1)
}

/// One pass over a slice of the output, built for each instruction set: `CH` is how many
/// columns `acc_vec` sums in registers (256 = 16 AVX-512 registers, 128 = 16 AVX2 ones).
trait Pass {
    fn run<const FMA: bool, const CH: usize, const AVX512: bool>(&mut self);
}

/// Runs the AVX-512, AVX2 or portable build of `p`; `k` is at most what `Kernels::detect` found.
fn run_variant(k: Kernels, p: &mut impl Pass) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` is at most `Kernels::detect`'s answer, so the CPU has AVX-512F, AVX2, FMA.
        Kernels::Avx512 => unsafe { run_avx512(p) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, the CPU has AVX2 and FMA.
        Kernels::Avx2 => unsafe { run_avx2(p) },
        _ => p.run::<false, 64, false>(),
    }
}

// `Pass::run` bodies are `#[inline(always)]`, so they compile into these with their features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn run_avx512(p: &mut impl Pass) {
    p.run::<true, 256, true>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2(p: &mut impl Pass) {
    p.run::<true, 128, false>()
}

/// The gathering pass: for rows `rows` of a plan (output channels for the forward, input
/// channels for the input gradient) and pixels `pixels`, out[row, pixel, :] = the sum of the
/// rows of `src` its entries gather, weighted by their values (+ the row's bias). Tasks write
/// disjoint (row, pixel) ranges of `out` ([rows of the plan, npix, n]).
struct Gather<'a> {
    n: usize,
    npix: usize,
    plan: &'a Plan,
    vals: &'a [Vec<f32>],
    src: &'a [f32],
    bias: Option<&'a [f32]>,
    rows: (usize, usize),
    pixels: (usize, usize),
    out: SharedRows<'a>,
}

impl Pass for Gather<'_> {
    #[inline(always)]
    fn run<const FMA: bool, const CH: usize, const AVX512: bool>(&mut self) {
        let (n, npix) = (self.n, self.npix);
        let (r0, r1) = self.rows;
        for px in self.pixels.0..self.pixels.1 {
            let (c, l, at) = self.plan.at(px);
            for r in r0..r1 {
                let e = l.row(r);
                // The row's list prefetches its own entries a few ahead; start the next row's
                // first ones now, or they would all wait on memory.
                if r + 1 < r1 {
                    prefetch_entries(self.src, &l.off[l.row(r + 1)], at, n);
                }
                // SAFETY: the callers give each task its own (row, pixel) ranges.
                let out = unsafe { self.out.row((r * npix + px) * n, n) };
                acc_vec::<FMA, CH>(&l.off[e.clone()], &self.vals[c][e], self.src, at, out);
                if let Some(bias) = self.bias {
                    out.iter_mut().for_each(|o| *o += bias[r]);
                }
            }
        }
    }
}

/// Weight gradient of the entries of rows `rows` of a plan (positions t0.., lanes in `part`),
/// pixel by pixel: each row's operand `a` at the pixel against the rows of `b` its entries
/// gather, eight entries against one load of `a`, reduced at the end.
struct WeightGrad<'a> {
    n: usize,
    plan: &'a Plan,
    /// The operand read once per (row, pixel): x for input-pixel lists, dy for output-pixel ones.
    a: &'a [f32],
    /// The operand the lists gather from.
    b: &'a [f32],
    /// Pixels of the plan.
    npix: usize,
    rows: (usize, usize),
    pixels: (usize, usize),
    t0: usize,
    part: Vec<[f32; LANES]>,
    /// With output-pixel lists, where `a` is the gradient of a batch norm's output: that batch
    /// norm's backward coefficients and the forward's values, from which each row of y (the
    /// batch norm's input) and then of the gradient are computed into `row` as needed.
    bn: Option<(&'a [DxCoefs], &'a [Vec<f32>])>,
    /// Two rows of scratch: y, then the gradient.
    row: Vec<f32>,
}

impl Pass for WeightGrad<'_> {
    #[inline(always)]
    fn run<const FMA: bool, const CH: usize, const AVX512: bool>(&mut self) {
        let (n, npix) = (self.n, self.npix);
        for px in self.pixels.0..self.pixels.1 {
            let (class, l, at) = self.plan.at(px);
            for r in self.rows.0..self.rows.1 {
                let at_row = (r * npix + px) * n;
                // Consecutive rows are a channel plane apart, from memory: start this
                // channel's row at the next pixel, read a pass over the rows later (measured
                // better than the next row's: that one is too close to hide the latency).
                let next = at_row + n;
                prefetch_row(self.a, next, n);
                let a = match self.bn {
                    Some((coefs, vals)) => {
                        let (yr, dr) = self.row.split_at_mut(n);
                        let e = l.row(r);
                        acc_vec::<FMA, CH>(&l.off[e.clone()], &vals[class][e], self.b, at, yr);
                        coefs[r].apply(&self.a[at_row..][..n], yr, dr);
                        &self.row[n..]
                    }
                    None => &self.a[at_row..][..n],
                };
                let e = l.row(r);
                let (offs, slots) = (&l.off[e.clone()], &l.slot[e]);
                #[cfg(target_arch = "x86_64")]
                if AVX512 {
                    // SAFETY: only the AVX-512 build (`run_avx512`) has AVX512 set, and it
                    // runs only where the CPU has AVX-512F.
                    unsafe {
                        dots_into_avx512(a, self.b, offs, at, slots, self.t0, &mut self.part)
                    };
                    continue;
                }
                let src = |q: usize| &self.b[offs[q].wrapping_add(at)..][..n];
                let mut q = 0;
                while q < offs.len() {
                    let m = (offs.len() - q).min(8);
                    let mut acc = [[0f32; LANES]; 8];
                    if m == 8 {
                        dot_lanes::<FMA, 8>(a, std::array::from_fn(|t| src(q + t)), &mut acc);
                    } else {
                        for (t, acc) in acc[..m].iter_mut().enumerate() {
                            let one: &mut [[f32; LANES]; 1] = std::slice::from_mut(acc)
                                .try_into()
                                .expect("one accumulator");
                            dot_lanes::<FMA, 1>(a, [src(q + t)], one);
                        }
                    }
                    for (&slot, acc) in slots[q..q + m].iter().zip(&acc) {
                        for (o, v) in self.part[slot as usize - self.t0].iter_mut().zip(acc) {
                            *o += v;
                        }
                    }
                    q += m;
                }
            }
        }
    }
}
