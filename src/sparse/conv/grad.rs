//! The gradients of a direct convolution at the active weights: the weight gradient (by output
//! or by input pixel, optionally through a batch norm), and the fused backward that computes the
//! weight and the input gradient in one pass on AVX-512.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::passes::{prefetch_entries, SharedRows};
use super::passes::{run_variant, WeightGrad};
use super::plan::Plan;
#[cfg(target_arch = "x86_64")]
use super::PIXEL_TASK_LANES_BYTES;
use super::{tasks, DirectGeom, L1_WINDOW_BYTES};
#[cfg(target_arch = "x86_64")]
use crate::device::cpu::buffers::overwritten;
use crate::device::cpu::norm::DxCoefs;
use crate::sparse::csr::{Kernels, SparseWeight};
#[cfg(target_arch = "x86_64")]
use crate::sparse::simd::{gather_and_dots_avx512, ReluSums};
use crate::sparse::simd::{hsum, LANES};

impl DirectGeom {
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
