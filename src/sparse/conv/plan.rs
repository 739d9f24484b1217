//! The plans of a direct convolution: pixels grouped into classes by the taps of their window
//! that read the input, and per class the compressed entry lists of the active weights, for the
//! forward (output pixels) and for both gradients (input pixels).

use rayon::prelude::*;

use super::DirectGeom;
use crate::sparse::csr::SparseWeight;

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
pub(super) struct Lists {
    pub(super) ptr: Vec<usize>,
    pub(super) off: Vec<usize>,
    pub(super) slot: Vec<u32>,
}

impl Lists {
    pub(super) fn row(&self, r: usize) -> std::ops::Range<usize> {
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
    pub(super) fn csr_position(&self, w: &SparseWeight, slot: usize) -> usize {
        let p = self.used[slot];
        (if self.input { w.csc_pos[p as usize] } else { p }) as usize
    }

    /// The slots of the positions [t0, t1): a contiguous range, as `used` ascends.
    pub(super) fn slots_of(&self, (t0, t1): (usize, usize)) -> (usize, usize) {
        let at = |t: usize| self.used.partition_point(|&u| (u as usize) < t);
        (at(t0), at(t1))
    }

    /// Pixel p's class, its lists and its base offset.
    pub(super) fn at(&self, p: usize) -> (usize, &Lists, usize) {
        let c = self.class[p];
        (c, &self.lists[c], self.base[p])
    }

    /// The current values of `w` in the order of each class's lists.
    pub(super) fn values(&self, w: &SparseWeight) -> Vec<Vec<f32>> {
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
    /// Output pixels by the taps that read the input; per class, each output channel's entries
    /// at those taps (offset (ci·H + kh)·W + kw rows of N from the window's corner).
    pub(super) fn output_plan(&self, w: &SparseWeight) -> Plan {
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
    pub(super) fn input_plan(&self, w: &SparseWeight) -> Plan {
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
}
