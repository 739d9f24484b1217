//! Direct sparse convolution ("shift and add"): no im2col buffer.
//!
//! The zero-padded input of each channel is split once into its stride² phases
//! (phase (a, b) holds padded pixels (s·i + a, s·j + b)), each phase a plane of PH × PW with
//! PH = OH + ⌊(k−1)/s⌋ and PW = OW + ⌊(k−1)/s⌋, images one after another. Output pixel (i, j)
//! then reads, for weight (ci, kh, kw), phase (kh mod s, kw mod s) of channel ci at
//! (i + ⌊kh/s⌋, j + ⌊kw/s⌋): on planes of the same PH × PW layout, every active weight is one
//! contiguous axpy of the whole batch, shifted by ⌊kh/s⌋·PW + ⌊kw/s⌋. The output plane's
//! extra rows and columns hold junk and are dropped at the end. So forward is `gather_windows`
//! (spmm with shifted windows), the weight gradient `sddmm_windows` over the same windows against
//! the output gradient laid out on the padded plane with zeros in the junk positions, and the
//! input gradient the adjoint gather (shifts negated) followed by reassembling the phases.
//!
//! Work grows by PH·PW / (OH·OW) over the im2col path (more for tiny outputs), so `worthwhile`
//! keeps the im2col path for layers where that ratio is large.

use rayon::prelude::*;

use super::csr::{gather_windows, sddmm_windows, SparseWeight};
use crate::device::cpu::conv::ConvGeom;
use crate::tensor::{overwritten, pooled, Pooled};

/// Below this many floats, layout passes stay serial.
const PAR_MIN: usize = 1 << 15;

/// The padded-plane layout of one convolution.
#[derive(Clone, Copy, Debug)]
pub struct DirectGeom {
    pub g: ConvGeom,
    ph: usize,
    pw: usize,
    /// Columns of the computation: n·PH·PW.
    len: usize,
    /// Largest flat shift: q·PW + q.
    shift: usize,
}

impl DirectGeom {
    pub fn new(g: &ConvGeom) -> Self {
        let q = (g.k - 1) / g.stride;
        let (ph, pw) = (g.oh + q, g.ow + q);
        DirectGeom {
            g: *g,
            ph,
            pw,
            len: g.n * ph * pw,
            shift: q * pw + q,
        }
    }

    /// Whether the direct path is expected to beat im2col: the padded plane may be at most 2.5×
    /// the output plane (CMNIST CNN: 1.3× and 1.8×; ResNet-18 at 32 px: 1.3× at 8×8, 2.25× at 4×4,
    /// 4× at 2×2 where im2col stays).
    pub fn worthwhile(g: &ConvGeom) -> bool {
        let d = DirectGeom::new(g);
        2 * d.ph * d.pw <= 5 * g.oh * g.ow
    }

    /// Row length of the phase buffer: the plane plus a tail the largest shift may read.
    fn xrow(&self) -> usize {
        self.len + self.shift
    }

    /// Row length of the padded output gradient: a leading margin the negated shifts may read.
    fn dyrow(&self) -> usize {
        self.shift + self.len
    }

    /// Flat shift and phase row (ci·s² + phase) of column c = (ci, kh, kw) of the weight matrix.
    /// For each active weight (CSR order), where its shifted window starts in the phase buffer.
    fn window_offsets(&self, w: &SparseWeight) -> Vec<usize> {
        let xrow = self.xrow();
        w.col_idx
            .iter()
            .map(|&c| {
                let (sh, row) = self.tap(c as usize);
                row * xrow + sh
            })
            .collect()
    }

    fn tap(&self, c: usize) -> (usize, usize) {
        let (k, s) = (self.g.k, self.g.stride);
        let (ci, kh, kw) = (c / (k * k), (c / k) % k, c % k);
        let row = ci * s * s + (kh % s) * s + kw % s;
        ((kh / s) * self.pw + kw / s, row)
    }

    /// The phase buffer [cin·s², n·PH·PW + shift] of x [cin, n, h, w].
    pub fn split(&self, x: &[f32]) -> Pooled {
        let g = &self.g;
        assert_eq!(x.len(), g.cin * g.n * g.h * g.w, "direct conv: x length");
        let (s, xrow, ph, pw) = (g.stride, self.xrow(), self.ph, self.pw);
        let ss = s * s;
        // Per phase (a, b): phase rows i in [ilo, ihi) read input row s·i + a − pad; phase
        // columns j in [lo, hi) read input column s·j + b − pad; the rest is padding (0).
        let ranges: Vec<((usize, usize), (usize, usize))> = (0..ss)
            .map(|p| {
                let (a, b) = (p / s, p % s);
                (valid(ph, g.h, s, a, g.pad), valid(pw, g.w, s, b, g.pad))
            })
            .collect();
        // All s² phase rows of one channel together, image by image: each input image is read
        // once (from L1) instead of once per phase. Planes are small (8×8 for the CMNIST CNN's
        // conv2): one short zero-fill of the whole plane, then the valid block over it.
        let fill = |ci: usize, dst: &mut [f32]| {
            let mut rows: Vec<&mut [f32]> = dst.chunks_exact_mut(xrow).collect();
            for row in rows.iter_mut() {
                row[g.n * ph * pw..].fill(0.0);
            }
            for img in 0..g.n {
                let src = &x[(ci * g.n + img) * g.h * g.w..][..g.h * g.w];
                for (p, row) in rows.iter_mut().enumerate() {
                    let ((ilo, ihi), (lo, hi)) = ranges[p];
                    let dimg = &mut row[img * ph * pw..][..ph * pw];
                    dimg.fill(0.0);
                    if lo >= hi {
                        continue;
                    }
                    let start = s * lo + p % s - g.pad;
                    for i in ilo..ihi {
                        let ih = s * i + p / s - g.pad;
                        let srow = &src[ih * g.w + start..][..s * (hi - lo - 1) + 1];
                        copy_strided(&mut dimg[i * pw + lo..i * pw + hi], srow, s);
                    }
                }
            }
        };
        pooled(g.cin * ss * xrow, |xp| {
            if xp.len() >= PAR_MIN {
                xp.par_chunks_mut(ss * xrow)
                    .enumerate()
                    .for_each(|(ci, d)| fill(ci, d));
            } else {
                xp.chunks_mut(ss * xrow)
                    .enumerate()
                    .for_each(|(ci, d)| fill(ci, d));
            }
        })
    }

    /// y[cout, n·oh·ow] = W · x (+ bias), from the phase buffer.
    pub fn forward(&self, w: &SparseWeight, xp: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let g = &self.g;
        assert_eq!(w.rows, g.cout, "direct conv: weight rows");
        assert_eq!(w.cols, g.col_rows(), "direct conv: weight columns");
        let off = self.window_offsets(w);
        // gather_windows overwrites its output.
        let yp = pooled(g.cout * self.len, |yp| {
            gather_windows(&w.row_ptr, &off, &w.values, xp, self.len, yp)
        });
        // Drop the junk rows and columns of every plane, adding the bias: every output row of
        // every image is written once.
        let plane = g.n * g.oh * g.ow;
        let crop = |co: usize, dst: &mut [f32]| {
            let bv = bias.map_or(0.0, |b| b[co]);
            let src = &yp[co * self.len..][..self.len];
            for (simg, dimg) in src
                .chunks_exact(self.ph * self.pw)
                .zip(dst.chunks_exact_mut(g.oh * g.ow))
            {
                for (srow, drow) in simg.chunks_exact(self.pw).zip(dimg.chunks_exact_mut(g.ow)) {
                    for (o, &v) in drow.iter_mut().zip(&srow[..g.ow]) {
                        *o = v + bv;
                    }
                }
            }
        };
        overwritten(g.cout * plane, |y| {
            if y.len() >= PAR_MIN {
                y.par_chunks_mut(plane)
                    .enumerate()
                    .for_each(|(co, d)| crop(co, d));
            } else {
                y.chunks_mut(plane)
                    .enumerate()
                    .for_each(|(co, d)| crop(co, d));
            }
        })
    }

    /// dy [cout, n·oh·ow] on padded planes behind a leading margin, zero in the junk positions.
    pub fn pad_dy(&self, dy: &[f32]) -> Pooled {
        let g = &self.g;
        let plane = g.n * g.oh * g.ow;
        assert_eq!(dy.len(), g.cout * plane, "direct conv: dy length");
        let dyrow = self.dyrow();
        // Every element of each row (margin, planes, junk positions) is written once.
        let fill = |co: usize, dst: &mut [f32]| {
            let (margin, planes) = dst.split_at_mut(self.shift);
            margin.fill(0.0);
            let src = &dy[co * plane..][..plane];
            for (simg, dimg) in src
                .chunks_exact(g.oh * g.ow)
                .zip(planes.chunks_exact_mut(self.ph * self.pw))
            {
                // As in `split`: zero the small plane once, then copy the rows over it.
                dimg.fill(0.0);
                for (srow, drow) in simg.chunks_exact(g.ow).zip(dimg.chunks_exact_mut(self.pw)) {
                    drow[..g.ow].copy_from_slice(srow);
                }
            }
        };
        pooled(g.cout * dyrow, |out| {
            if out.len() >= PAR_MIN {
                out.par_chunks_mut(dyrow)
                    .enumerate()
                    .for_each(|(co, d)| fill(co, d));
            } else {
                out.chunks_mut(dyrow)
                    .enumerate()
                    .for_each(|(co, d)| fill(co, d));
            }
        })
    }

    /// Gradient at the active weights, from `pad_dy`'s buffer and the phase buffer.
    pub fn weight_grad(&self, w: &SparseWeight, dyp: &[f32], xp: &[f32]) -> Vec<f32> {
        let off = self.window_offsets(w);
        let mut gv = vec![0.0; w.nnz()];
        sddmm_windows(
            &w.row_ptr,
            &off,
            dyp,
            self.shift,
            self.dyrow(),
            xp,
            self.len,
            &mut gv,
        );
        gv
    }

    /// dx [cin, n, h, w] from `pad_dy`'s buffer.
    pub fn input_grad(&self, w: &SparseWeight, dyp: &[f32]) -> Vec<f32> {
        let g = &self.g;
        let (k, s) = (g.k, g.stride);
        let nrows = g.cin * s * s;
        let dyrow = self.dyrow();
        // Rows (ci, phase): the entries of every column (ci, kh, kw) of that phase, reading dy
        // shifted back by the column's shift.
        let mut ptr = Vec::with_capacity(nrows + 1);
        let mut off = Vec::with_capacity(w.nnz());
        let mut val = Vec::with_capacity(w.nnz());
        ptr.push(0u32);
        for ci in 0..g.cin {
            for a in 0..s {
                for b in 0..s {
                    for kh in (a..k).step_by(s) {
                        for kw in (b..k).step_by(s) {
                            let c = ci * k * k + kh * k + kw;
                            let (sh, _) = self.tap(c);
                            let (e0, e1) = (w.col_ptr[c] as usize, w.col_ptr[c + 1] as usize);
                            for t in e0..e1 {
                                off.push(w.csc_row[t] as usize * dyrow + self.shift - sh);
                                val.push(w.values[w.csc_pos[t] as usize]);
                            }
                        }
                    }
                    ptr.push(off.len() as u32);
                }
            }
        }
        let dxp = pooled(nrows * self.len, |dxp| {
            gather_windows(&ptr, &off, &val, dyp, self.len, dxp)
        });
        // Reassemble: dx pixel (r, c) is phase ((r+pad) mod s, (c+pad) mod s) at
        // ((r+pad) div s, (c+pad) div s); pixels no output reads are 0. Each image plane is zeroed
        // just before its scatter (while in cache) so dx comes from the buffer pool instead of
        // a fresh zero-filled allocation every step.
        let plane = g.n * g.h * g.w;
        let ranges: Vec<(usize, usize)> =
            (0..s).map(|b| valid(self.pw, g.w, s, b, g.pad)).collect();
        let gather = |ci: usize, dxc: &mut [f32]| {
            for (img, dimg) in dxc.chunks_exact_mut(g.h * g.w).enumerate() {
                // One zero-fill per image plane (not a memset call per short row).
                dimg.fill(0.0);
                for (r, drow) in dimg.chunks_exact_mut(g.w).enumerate() {
                    let (pr, i) = ((r + g.pad) % s, (r + g.pad) / s);
                    if i >= self.ph {
                        continue;
                    }
                    for (b, &(lo, hi)) in ranges.iter().enumerate() {
                        if lo >= hi {
                            continue;
                        }
                        let src = &dxp[(ci * s * s + pr * s + b) * self.len
                            + img * self.ph * self.pw
                            + i * self.pw..][lo..hi];
                        // Columns c with (c + pad) mod s = b: c = s·j + b − pad.
                        let start = s * lo + b - g.pad;
                        for (o, v) in drow[start..].iter_mut().step_by(s).zip(src) {
                            *o = *v;
                        }
                    }
                }
            }
        };
        overwritten(g.cin * plane, |dx| {
            if dx.len() >= PAR_MIN {
                dx.par_chunks_mut(plane)
                    .enumerate()
                    .for_each(|(ci, d)| gather(ci, d));
            } else {
                dx.chunks_mut(plane)
                    .enumerate()
                    .for_each(|(ci, d)| gather(ci, d));
            }
        })
    }
}

/// dst[t] = src[s·t] for every t < dst.len().
#[inline(always)]
fn copy_strided(dst: &mut [f32], src: &[f32], s: usize) {
    if s == 1 {
        dst.copy_from_slice(&src[..dst.len()]);
    } else if s == 2 {
        // chunks_exact with a constant width vectorises (chunks does not); the last element's
        // pair may run past src, so it is copied on its own.
        let Some((last, body)) = dst.split_last_mut() else {
            return;
        };
        for (o, p) in body.iter_mut().zip(src.chunks_exact(2)) {
            *o = p[0];
        }
        *last = src[2 * body.len()];
    } else {
        for (o, &v) in dst.iter_mut().zip(src.iter().step_by(s)) {
            *o = v;
        }
    }
}

/// The phase columns j in [lo, hi) (hi ≤ out) whose input column s·j + b − pad lies in [0, size).
fn valid(out: usize, size: usize, s: usize, b: usize, pad: usize) -> (usize, usize) {
    // s·j + b ≥ pad  ⇔  j ≥ ⌈(pad − b)/s⌉;  s·j + b − pad < size  ⇔  j < ⌈(size + pad − b)/s⌉.
    let lo = if b >= pad { 0 } else { (pad - b).div_ceil(s) };
    let hi = if size + pad <= b {
        0
    } else {
        (size + pad - b).div_ceil(s)
    };
    let hi = hi.min(out);
    (lo.min(hi), hi)
}
