//! The passes of a direct convolution, one build per instruction set: the gathering pass of the
//! forward and the input gradient ([`Gather`]), the weight gradient's dot products
//! ([`WeightGrad`]), and the output rows that parallel tasks share ([`SharedRows`]).

use super::plan::Plan;
use crate::device::cpu::norm::DxCoefs;
use crate::sparse::csr::Kernels;
#[cfg(target_arch = "x86_64")]
use crate::sparse::simd::dots_into_avx512;
use crate::sparse::simd::{acc_vec, dot_lanes, prefetch_window, LANES, PREFETCH_AHEAD};

/// Rows of one output buffer that parallel tasks write, each task its own rows.
#[derive(Clone, Copy)]
pub(super) struct SharedRows<'a>(*mut f32, usize, std::marker::PhantomData<&'a mut [f32]>);

// SAFETY: `SharedRows` only hands out rows through `row`, whose callers guarantee that no two
// tasks take the same row; the pointer itself is plain data.
unsafe impl Send for SharedRows<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedRows<'_> {}

impl<'a> SharedRows<'a> {
    pub(super) fn new(buf: &'a mut [f32]) -> Self {
        SharedRows(buf.as_mut_ptr(), buf.len(), std::marker::PhantomData)
    }

    /// The `len` floats at `at`.
    ///
    /// # Safety
    /// No other live reference may cover these floats.
    pub(super) unsafe fn row(self, at: usize, len: usize) -> &'a mut [f32] {
        assert!(at + len <= self.1, "shared rows: out of bounds");
        // SAFETY: in bounds (checked) of a buffer borrowed for 'a; exclusive by the caller's
        // guarantee.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// Hints that the rows of the first `PREFETCH_AHEAD` entries of a list (n floats at
/// `off + at`, wrapping) will be read soon.
#[inline(always)]
pub(super) fn prefetch_entries(src: &[f32], off: &[usize], at: usize, n: usize) {
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

/// One pass over a slice of the output, built for each instruction set: `CH` is how many
/// columns `acc_vec` sums in registers (256 = 16 AVX-512 registers, 128 = 16 AVX2 ones).
pub(super) trait Pass {
    fn run<const FMA: bool, const CH: usize, const AVX512: bool>(&mut self);
}

/// Runs the AVX-512, AVX2 or portable build of `p`; `k` is at most what `Kernels::detect` found.
pub(super) fn run_variant(k: Kernels, p: &mut impl Pass) {
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
pub(super) struct Gather<'a> {
    pub(super) n: usize,
    pub(super) npix: usize,
    pub(super) plan: &'a Plan,
    pub(super) vals: &'a [Vec<f32>],
    pub(super) src: &'a [f32],
    pub(super) bias: Option<&'a [f32]>,
    pub(super) rows: (usize, usize),
    pub(super) pixels: (usize, usize),
    pub(super) out: SharedRows<'a>,
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
pub(super) struct WeightGrad<'a> {
    pub(super) n: usize,
    pub(super) plan: &'a Plan,
    /// The operand read once per (row, pixel): x for input-pixel lists, dy for output-pixel ones.
    pub(super) a: &'a [f32],
    /// The operand the lists gather from.
    pub(super) b: &'a [f32],
    /// Pixels of the plan.
    pub(super) npix: usize,
    pub(super) rows: (usize, usize),
    pub(super) pixels: (usize, usize),
    pub(super) t0: usize,
    pub(super) part: Vec<[f32; LANES]>,
    /// With output-pixel lists, where `a` is the gradient of a batch norm's output: that batch
    /// norm's backward coefficients and the forward's values, from which each row of y (the
    /// batch norm's input) and then of the gradient are computed into `row` as needed.
    pub(super) bn: Option<(&'a [DxCoefs], &'a [Vec<f32>])>,
    /// Two rows of scratch: y, then the gradient.
    pub(super) row: Vec<f32>,
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
