//! What one launch of each kernel costs, per family: the cost model's statements
//! ([`KernelCost`], `device::gpu::cost`), from each parameter struct and launch configuration.
//! tests/gpu_cost.rs checks them against the bytes the emulator sees the kernels touch.
//!
//! Counting conventions: `read`/`written` are unique bytes; `requested` every load issued;
//! FLOPs count a multiply-add as two. Tiled kernels re-read their operands once per tile of the
//! other dimension (grid.x column tiles, grid.y row tiles); gathers that fall into padding load
//! nothing, which the formulas ignore (they overstate requests by the padding's share).

use super::conv::{self, *};
use super::elementwise::{self, ElementwiseParams};
use super::norm::{self, NormParams};
use super::optim::{sgd_cost, SgdParams};
use super::pool::{self, AvgPoolParams, MaxPoolParams};
use super::topk::{TopkBatchParams, TopkParams};
use super::xent::{self, XentParams, XENT_STATS};
use crate::device::gpu::cost::{blocks, f32s, Cost, KernelCost};
use crate::device::gpu::{KernelDef, LaunchCfg};

// ---- conv.cu -----------------------------------------------------------------------------
/// Elements of x a convolution reads: all of it, unless the kernel is smaller than the stride
/// (a 1×1, stride-2 shortcut reads one pixel in four).
fn x_touched(s: &ConvShape) -> usize {
    if s.k < s.stride {
        s.cin as usize * s.cols() * (s.k * s.k) as usize
    } else {
        s.x_len()
    }
}

/// Pairs (output pixel, tap) of one image whose input pixel lies inside the input (not in the
/// padding): the loads of an im2col gather per input channel, and of the col2im gather (the same
/// pairs seen from the input) per output channel.
fn taps_inside(s: &ConvShape) -> usize {
    let axis = |outs: u32, size: u32| -> usize {
        (0..s.k)
            .map(|t| {
                (0..outs)
                    .filter(|&o| {
                        let i = (o * s.stride + t) as i64 - s.pad as i64;
                        (0..size as i64).contains(&i)
                    })
                    .count()
            })
            .sum()
    };
    axis(s.oh, s.h) * axis(s.ow, s.w)
}

fn bias_len(bias: u64, s: &ConvShape) -> usize {
    if bias != 0 {
        s.cout as usize
    } else {
        0
    }
}

impl KernelCost for ConvFwdParams {
    fn cost(&self, kernel: &KernelDef, cfg: &LaunchCfg) -> Cost {
        let s = &self.s;
        let (m, n, k) = (s.cout as usize, s.cols(), s.k_len());
        let read = f32s(x_touched(s) + s.w_len() + bias_len(self.bias, s));
        let flops = 2 * (m * n * k) as u64;
        // The im2col gather loads Cin · (the taps inside the input) per image.
        let gathers = s.cin as usize * taps_inside(s) * s.n as usize;
        let requested = if kernel.name == conv::conv_fwd_dense_simple_f32.name {
            // Every output element reads its K weights and its inputs.
            f32s(m * n * k) + f32s(m * gathers)
        } else {
            // The tile's store reads the bias once per thread and row.
            f32s(s.w_len() + 16 * bias_len(self.bias, s)) * cfg.grid.x as u64
                + f32s(gathers) * cfg.grid.y as u64
        };
        Cost::streaming(read, f32s(s.y_len()), flops).with_requests(requested)
    }
}

impl KernelCost for ConvBwdDataParams {
    fn cost(&self, _: &KernelDef, cfg: &LaunchCfg) -> Cost {
        let s = &self.s;
        let (m, n) = (s.cin as usize, s.n as usize * (s.h * s.w) as usize);
        let r = s.cout as usize * (s.k * s.k) as usize;
        // The col2im gather loads dY for the (input pixel, tap) pairs that meet an output pixel:
        // the pairs (output pixel, tap) inside the input, per output channel.
        let gathers = s.cout as usize * taps_inside(s) * s.n as usize;
        let requested = f32s(s.w_len()) * cfg.grid.x as u64 + f32s(gathers) * cfg.grid.y as u64;
        Cost::streaming(
            f32s(s.y_len() + s.w_len()),
            f32s(s.x_len()),
            2 * (m * n * r) as u64,
        )
        .with_requests(requested)
    }
}

impl KernelCost for ConvBwdWeightParams {
    fn cost(&self, _: &KernelDef, cfg: &LaunchCfg) -> Cost {
        let s = &self.s;
        let (m, k, p) = (s.cout as usize, s.k_len(), s.cols());
        let gathers = s.cin as usize * taps_inside(s) * s.n as usize;
        let requested = f32s(m * p) * cfg.grid.x as u64 + f32s(gathers) * cfg.grid.y as u64;
        Cost::streaming(
            f32s(s.y_len() + x_touched(s)),
            f32s(self.splits.max(1) as usize * m * k),
            2 * (m * k * p) as u64,
        )
        .with_requests(requested)
    }
}

impl KernelCost for ConvReduceParams {
    fn cost(&self, _: &KernelDef, _: &LaunchCfg) -> Cost {
        let (len, splits) = (self.len as usize, self.splits as usize);
        Cost::streaming(f32s(len * splits), f32s(len), (len * splits) as u64)
    }
}

/// Bytes one block of the sparse forward or weight gradient loads into its staged input windows
/// for one tile: the window (rows of `images` images) once per input channel its group of
/// `SPF_G` rows uses — for a uniformly random mask, with probability 1 − (1 − density)^(SPF_G·k²).
fn sparse_window(s: &ConvShape, rows: u32, images: u32, nnz: usize) -> f64 {
    let (kk, cin) = ((s.k * s.k) as f64, s.cin as f64);
    let density = nnz as f64 / (s.cout as usize * s.k_len()).max(1) as f64;
    let used = cin * (1.0 - (1.0 - density).powf(conv::SPF_G as f64 * kk));
    let rows = (rows as usize).clamp(1, s.oh as usize);
    let rows_in = ((rows - 1) * s.stride as usize + s.k as usize).min(s.h as usize);
    let window = (images as usize).clamp(1, s.n as usize) * rows_in * s.w as usize;
    f32s(window) as f64 * used
}

impl KernelCost for ConvSparseFwdParams {
    fn cost(&self, _: &KernelDef, cfg: &LaunchCfg) -> Cost {
        let s = &self.s;
        let (nnz, p, cout) = (self.nnz as usize, s.cols(), s.cout as usize);
        let index = f32s(cout + 1 + 2 * nnz);
        // Each block reads its rows' entries and stages its tile's input window.
        let requested = index * cfg.grid.x as u64
            + (sparse_window(s, self.rows, self.images, nnz) * blocks(cfg) as f64) as u64;
        Cost::streaming(
            f32s(x_touched(s) + bias_len(self.bias, s)) + index,
            f32s(s.y_len()),
            2 * (nnz * p) as u64,
        )
        .with_requests(requested)
    }
}

impl KernelCost for ConvSparseBwdDataParams {
    fn cost(&self, _: &KernelDef, cfg: &LaunchCfg) -> Cost {
        let s = &self.s;
        let (nnz, p, cin) = (self.nnz as usize, s.cols(), s.cin as usize);
        let index = f32s(s.k_len() + 1 + 3 * nnz);
        // Each block walks its group's columns of the CSC index (a SPB_G/Cin share; the row is
        // read twice), and stages dY's window once per output channel the columns use: for a
        // uniformly random mask, with probability 1 − (1 − density)^(SPB_G·k²). Only the
        // window's positions a stride maps to an output pixel are loaded.
        let kk = (s.k * s.k) as usize;
        let density = nnz as f64 / (s.cout as usize * s.k_len()).max(1) as f64;
        let used = s.cout as f64 * (1.0 - (1.0 - density).powf((conv::SPB_G * kk) as f64));
        let st = s.stride.max(1) as usize;
        let rows = (self.rows as usize).clamp(1, s.h as usize);
        let win_rows = (rows + s.k as usize - 1).div_ceil(st).min(s.oh as usize);
        let win_cols = (s.w as usize + s.k as usize - 1)
            .div_ceil(st)
            .min(s.ow as usize);
        let window = (self.images as usize).clamp(1, s.n as usize) * win_rows * win_cols;
        let share = (conv::SPB_G.min(cin) as f64 / cin as f64).min(1.0);
        let per_block = f32s(4 * nnz) as f64 * share + f32s(window) as f64 * used;
        let requested = (per_block * blocks(cfg) as f64) as u64;
        // Every active weight meets every dx pixel of the tile (zeros where the stride maps
        // none: s² times the useful work of a strided layer).
        let dx_px = s.x_len() / cin.max(1);
        Cost::streaming(
            f32s(s.y_len()) + index,
            f32s(s.x_len()),
            2 * (nnz * dx_px) as u64,
        )
        .with_requests(requested.max(f32s(p.min(1))))
    }
}

impl KernelCost for ConvSparseBwdWeightParams {
    fn cost(&self, _: &KernelDef, cfg: &LaunchCfg) -> Cost {
        let s = &self.s;
        let (nnz, p, cout) = (self.nnz as usize, s.cols(), s.cout as usize);
        let index = f32s(cout + 1 + nnz);
        // dY is read once (each tile's pixels of each channel group), the entries once per
        // tile, and each tile's input window once per input channel its group uses, as the
        // forward's.
        let tiles = (s.n as usize).div_ceil(self.images.max(1) as usize)
            * (s.oh as usize).div_ceil(self.rows.max(1) as usize);
        let window =
            sparse_window(s, self.rows, self.images, nnz) * (tiles * cfg.grid.y as usize) as f64;
        let requested = index * tiles as u64 + f32s(s.y_len()) + window as u64;
        Cost::streaming(
            f32s(s.y_len() + x_touched(s)) + index,
            f32s(self.splits.max(1) as usize * nnz),
            2 * (nnz * p) as u64,
        )
        .with_requests(requested)
    }
}

impl KernelCost for ConvBwdBiasParams {
    fn cost(&self, _: &KernelDef, _: &LaunchCfg) -> Cost {
        let n = self.cout as usize * self.cols as usize;
        Cost::streaming(f32s(n), f32s(self.cout as usize), n as u64)
    }
}

// ---- elementwise.cu ------------------------------------------------------------------------

impl KernelCost for ElementwiseParams {
    fn cost(&self, kernel: &KernelDef, _: &LaunchCfg) -> Cost {
        let n = self.n as usize;
        // (arrays read, flops per element)
        let (inputs, flops) = match kernel.name {
            k if k == elementwise::elementwise_fill_f32.name => (0, 0),
            k if k == elementwise::elementwise_relu_fwd_f32.name => (1, 1),
            k if k == elementwise::elementwise_scale_f32.name => (1, 1),
            k if k == elementwise::elementwise_add_relu_f32.name => (2, 2),
            _ => (2, 1), // relu_bwd, add, acc (acc reads its output)
        };
        Cost::streaming(f32s(inputs * n), f32s(n), (flops * n) as u64)
    }
}

// ---- norm.cu -------------------------------------------------------------------------------

impl KernelCost for NormParams {
    fn cost(&self, kernel: &KernelDef, _: &LaunchCfg) -> Cost {
        let (c, cm) = (self.c as usize, self.c as usize * self.m as usize);
        match kernel.name {
            // One block per channel, three passes over x (sum, squared deviations, normalise);
            // reads γ, β and the running statistics, writes the saved and running statistics.
            k if k == norm::norm_fwd_train_f32.name || k == norm::norm_fwd_train_relu_f32.name => {
                Cost::streaming(f32s(cm + 4 * c), f32s(cm + 4 * c), 7 * cm as u64)
                    .with_requests(f32s(3 * cm + 4 * c))
            }
            k if k == norm::norm_fwd_eval_f32.name => {
                Cost::streaming(f32s(cm + 4 * c), f32s(cm), 2 * cm as u64)
            }
            // Backward: two passes over x and dY (sums, then dx); reads the saved statistics.
            _ => Cost::streaming(f32s(2 * cm + 4 * c), f32s(cm + 2 * c), 10 * cm as u64)
                .with_requests(f32s(4 * cm + 4 * c)),
        }
    }
}

// ---- pool.cu -------------------------------------------------------------------------------

impl KernelCost for MaxPoolParams {
    fn cost(&self, kernel: &KernelDef, _: &LaunchCfg) -> Cost {
        let input = self.planes as usize * (self.h * self.w) as usize;
        let out = self.planes as usize * (self.oh * self.ow) as usize;
        // (output, input pixel) pairs inside the input: per plane, the product of each axis'
        // window overlaps.
        let axis = |outs: u32, size: u32| -> usize {
            (0..outs)
                .map(|o| {
                    let lo = (o * self.stride) as i64 - self.pad as i64;
                    let hi = (lo + self.k as i64).min(size as i64);
                    (hi - lo.max(0)).max(0) as usize
                })
                .sum()
        };
        let pairs = self.planes as usize * axis(self.oh, self.h) * axis(self.ow, self.w);
        if kernel.name == pool::pool_max_fwd_f32.name {
            // Each output scans its window; writes the maximum and its index.
            Cost::streaming(f32s(input), f32s(2 * out), pairs as u64).with_requests(f32s(pairs))
        } else {
            // Each input pixel reads the argmax of every output whose window holds it, and dY
            // where it is that maximum (once per output).
            Cost::streaming(f32s(2 * out), f32s(input), pairs as u64)
                .with_requests(f32s(pairs + out))
        }
    }
}

impl KernelCost for AvgPoolParams {
    fn cost(&self, kernel: &KernelDef, _: &LaunchCfg) -> Cost {
        let (planes, all) = (
            self.planes as usize,
            self.planes as usize * self.hw as usize,
        );
        if kernel.name == pool::pool_avg_fwd_f32.name {
            Cost::streaming(f32s(all), f32s(planes), all as u64)
        } else {
            Cost::streaming(f32s(planes), f32s(all), all as u64).with_requests(f32s(all))
        }
    }
}

// ---- xent.cu -------------------------------------------------------------------------------

impl KernelCost for XentParams {
    fn cost(&self, kernel: &KernelDef, _: &LaunchCfg) -> Cost {
        let (n, k, blocks) = (self.n as usize, self.k as usize, self.blocks as usize);
        let partials = f32s(blocks * XENT_STATS);
        if kernel.name == xent::xent_fused_f32.name {
            // Three passes over each sample's logits (max, sum of exponentials, gradient);
            // labels, weights and groups once; losses, dlogits and the block partials out.
            let groups = if self.groups != 0 { n } else { 0 };
            Cost::streaming(
                f32s(k * n + 2 * n + groups),
                f32s(k * n + n) + partials,
                (8 * k * n) as u64,
            )
            .with_requests(f32s(3 * k * n + 2 * n + groups))
        } else {
            Cost::streaming(partials, f32s(XENT_STATS), (blocks * XENT_STATS) as u64)
        }
    }
}

// ---- optim.cu ------------------------------------------------------------------------------

impl KernelCost for SgdParams {
    fn cost(&self, _: &KernelDef, _: &LaunchCfg) -> Cost {
        sgd_cost(self.n as usize)
    }
}

// ---- topk.cu -------------------------------------------------------------------------------
// The topology update's passes (once per ΔT steps) are not modelled yet: counted as launches.

impl KernelCost for TopkParams {
    fn cost(&self, _: &KernelDef, _: &LaunchCfg) -> Cost {
        Cost::UNMODELLED
    }
}

impl KernelCost for TopkBatchParams {
    fn cost(&self, _: &KernelDef, _: &LaunchCfg) -> Cost {
        Cost::UNMODELLED
    }
}
