//! The SIMD building blocks of the sparse kernels: register-accumulated gathers of scaled rows
//! (`acc_vec`, `prefetch_window`) and lane-wise dot products (`dot_lanes`, and the AVX-512
//! intrinsics kernels `dots_into_avx512` and `gather_and_dots_avx512`, where the compiler's code
//! for the slice form kept bounds checks in the loop and spilled its sums). The direct
//! convolution (`sparse::conv`) runs them; the reference kernels (`sparse::reference`) share
//! `acc_vec`. The slice-code loops are compiled per variant (portable, AVX2+FMA, AVX-512) by
//! their callers and chosen at run time (`Kernels`).

#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Entries ahead whose source chunk is prefetched: the sources are scattered windows that the
/// hardware prefetcher cannot predict.
pub(crate) const PREFETCH_AHEAD: usize = 4;

/// out = Σ_q val[q] · src[idx[q] + at..][..out.len()] (idx[q] + at wrapping, so offsets may be
/// relative to a base on either side): CH columns at a time summed in registers
/// over every entry and stored once (CH = 256 fills 16 AVX-512 registers), the narrower rest in
/// chunks of 128, 64, 32 and 16, then one by one.
#[inline(always)]
pub(crate) fn acc_vec<const FMA: bool, const CH: usize>(
    idx: &[usize],
    val: &[f32],
    src: &[f32],
    at: usize,
    out: &mut [f32],
) {
    let w = out.len();
    let mut c = 0;
    while c + CH <= w {
        acc_chunk::<FMA, CH>(idx, val, src, at.wrapping_add(c), &mut out[c..c + CH]);
        c += CH;
    }
    // The rest in halving chunks (a batch of 64 is one 64-wide chunk: four independent sums
    // per entry, where 16-wide chunks would be four passes of one dependent chain each).
    macro_rules! tier {
        ($wd:literal) => {
            if $wd < CH && c + $wd <= w {
                acc_chunk::<FMA, $wd>(idx, val, src, at.wrapping_add(c), &mut out[c..c + $wd]);
                c += $wd;
            }
        };
    }
    tier!(128);
    tier!(64);
    tier!(32);
    tier!(16);
    while c < w {
        let mut a = 0.0;
        for (&ix, &v) in idx.iter().zip(val) {
            a = fmadd::<FMA>(v, src[ix.wrapping_add(at) + c], a);
        }
        out[c] = a;
        c += 1;
    }
}

/// out[..W] = Σ_q val[q] · src[idx[q] + at..][..W] (wrapping sum), summed in registers.
#[inline(always)]
fn acc_chunk<const FMA: bool, const W: usize>(
    idx: &[usize],
    val: &[f32],
    src: &[f32],
    at: usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; W];
    for (q, (&ix, &v)) in idx.iter().zip(val).enumerate() {
        if let Some(&ahead) = idx.get(q + PREFETCH_AHEAD) {
            prefetch_window::<W>(src, ahead.wrapping_add(at));
        }
        let i = ix.wrapping_add(at);
        let x: &[f32; W] = src[i..i + W].try_into().unwrap();
        for l in 0..W {
            acc[l] = fmadd::<FMA>(v, x[l], acc[l]);
        }
    }
    out[..W].copy_from_slice(&acc);
}

/// Hints that the `W` floats at `src[at..]` will be read soon: one hint per 64-byte line, a
/// fixed count so the compiler unrolls it.
#[inline(always)]
pub(crate) fn prefetch_window<const W: usize>(src: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = src.as_ptr().wrapping_add(at);
        for l in 0..W.div_ceil(16) {
            // SAFETY: a prefetch is only a hint: it never faults and has no architectural
            // effect, whatever the address (wrapping_add computes it without UB).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(16 * l) as *const i8,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, at);
}

/// Lanes per accumulator in the dot products.
pub(crate) const LANES: usize = 16;

/// Pairwise sum of 16 lanes (vectorises, unlike a sequential sum).
#[inline(always)]
pub(crate) fn hsum(mut a: [f32; LANES]) -> f32 {
    let mut h = LANES / 2;
    while h > 0 {
        for i in 0..h {
            a[i] += a[i + h];
        }
        h /= 2;
    }
    a[0]
}

/// acc[q] += the lane-wise products of `a` with `b[q]` (all the same length): `M` dot products
/// left unreduced, so a caller summing over many pieces reduces each once at the end.
#[inline(always)]
pub(crate) fn dot_lanes<const FMA: bool, const M: usize>(
    a: &[f32],
    b: [&[f32]; M],
    acc: &mut [[f32; LANES]; M],
) {
    let (ac, at) = a.as_chunks::<LANES>();
    let b: [&[f32]; M] = b.map(|y| &y[..a.len()]);
    let bc: [&[[f32; LANES]]; M] = b.map(|y| y.as_chunks::<LANES>().0);
    // A local copy, so the sums live in registers.
    let mut loc = *acc;
    for (t, x) in ac.iter().enumerate() {
        for (acc, y) in loc.iter_mut().zip(&bc) {
            let y = &y[t];
            for l in 0..LANES {
                acc[l] = fmadd::<FMA>(x[l], y[l], acc[l]);
            }
        }
    }
    let len = ac.len() * LANES;
    for (acc, y) in loc.iter_mut().zip(&b) {
        for (l, (&x, &y)) in at.iter().zip(&y[len..]).enumerate() {
            acc[l] = fmadd::<FMA>(x, y, acc[l]);
        }
    }
    *acc = loc;
}

/// For each entry q: part[slots[q] − e0] += the lanes of a · x[offs[q] + at..][..a.len()]
/// (offs[q] + at wrapping), with AVX-512 instructions: eight entries at a time against one load
/// of `a`, their sums in registers. The compiler's code for the generic form (`dot_lanes`) kept
/// a bounds check per entry and chunk and spilled the sums, which made the weight gradient of the
/// direct convolution its slowest pass.
///
/// Panics if a row leaves `x` or a slot leaves `part`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn dots_into_avx512(
    a: &[f32],
    x: &[f32],
    offs: &[usize],
    at: usize,
    slots: &[u32],
    e0: usize,
    part: &mut [[f32; LANES]],
) {
    use std::arch::x86_64::*;
    let n = a.len();
    let full = n / LANES * LANES;
    assert_eq!(
        offs.len(),
        slots.len(),
        "dots_into: offsets and slots differ"
    );
    // The checked row start and part index of entry q.
    let row = |q: usize| {
        let i = offs[q].wrapping_add(at);
        x[i..i + n].as_ptr()
    };
    let plen = part.len();
    let dst = |q: usize| {
        let d = slots[q] as usize - e0;
        assert!(d < plen, "dots_into: slot outside part");
        d
    };
    /// M entries against one load of a per chunk.
    #[inline(always)]
    unsafe fn group<const M: usize>(
        a: &[f32],
        full: usize,
        rows: [*const f32; M],
        dst: [usize; M],
        part: &mut [[f32; LANES]],
    ) {
        // SAFETY (caller): every row pointer has a.len() ≥ full readable floats, every dst
        // index is inside part; the unaligned loads and stores need no alignment.
        unsafe {
            let mut s: [__m512; M] =
                std::array::from_fn(|q| _mm512_loadu_ps(part[dst[q]].as_ptr()));
            let mut t = 0;
            while t < full {
                let v = _mm512_loadu_ps(a.as_ptr().add(t));
                for q in 0..M {
                    s[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(rows[q].add(t)), s[q]);
                }
                t += LANES;
            }
            for q in 0..M {
                _mm512_storeu_ps(part[dst[q]].as_mut_ptr(), s[q]);
            }
        }
    }
    let len = offs.len();
    let mut q = 0;
    // SAFETY: `row` hands out pointers to slices of n ≥ full floats of x, and `dst` indices
    // checked against part.
    unsafe {
        // Groups of eight entries, then of four, then one by one.
        macro_rules! groups {
            ($m:literal) => {
                while len - q >= $m {
                    let rows = std::array::from_fn(|t| row(q + t));
                    group::<$m>(a, full, rows, std::array::from_fn(|t| dst(q + t)), part);
                    q += $m;
                }
            };
        }
        groups!(8);
        groups!(4);
        groups!(1);
    }
    // The tail columns (n not a multiple of 16) lane by lane.
    if full < n {
        for (q, &o) in offs.iter().enumerate() {
            let (i, d) = (o.wrapping_add(at), dst(q));
            for (l, (&u, &v)) in a[full..].iter().zip(&x[i + full..i + n]).enumerate() {
                part[d][l] = u.mul_add(v, part[d][l]);
            }
        }
    }
}

/// One input pixel and channel of the direct convolution's backward, both gradients in one
/// read of each output-gradient row (AVX-512): out[..n] = Σ_q vals[q] · dy[offs[q] + at..][..n]
/// (the input gradient) and part[slots[q] − t0] += the lanes of x · dy[offs[q] + at..][..n] (the
/// weight gradient), with n = out.len() = x.len() and offs[q] + at wrapping. The two separate
/// passes read every row twice; they run at L2 bandwidth, so sharing the read is what saves time.
///
/// With `relu`, where x = relu(batchnorm(·)) with shift β = `relu.beta`, also adds to `relu.s1`
/// the lanes of Σ out' and to `relu.s2` those of Σ out'·(x − β), with out' = out where x > 0,
/// else 0: what batch norm's backward sums over its output gradient, here while both rows are
/// in registers (no extra read).
///
/// Panics if a row leaves `dy` or a slot leaves `part`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_and_dots_avx512(
    x: &[f32],
    dy: &[f32],
    offs: &[usize],
    vals: &[f32],
    at: usize,
    slots: &[u32],
    t0: usize,
    part: &mut [[f32; LANES]],
    out: &mut [f32],
    mut relu: Option<&mut ReluSums>,
) {
    use std::arch::x86_64::*;
    let n = out.len();
    assert_eq!(x.len(), n, "gather_and_dots: x and out differ");
    assert!(
        offs.len() == vals.len() && offs.len() == slots.len(),
        "gather_and_dots: entry lists differ"
    );
    for (&o, &sl) in offs.iter().zip(slots) {
        let i = o.wrapping_add(at);
        assert!(
            i <= dy.len() && dy.len() - i >= n,
            "gather_and_dots: a row leaves dy"
        );
        assert!(
            (sl as usize).wrapping_sub(t0) < part.len(),
            "gather_and_dots: slot outside part"
        );
    }
    let full = n / LANES * LANES;
    /// The operands every chunk reads.
    struct Rows<'a> {
        x: &'a [f32],
        dy: &'a [f32],
        offs: &'a [usize],
        vals: &'a [f32],
        slots: &'a [u32],
        at: usize,
        t0: usize,
    }
    /// Columns c..c + 16·M of every entry.
    #[inline(always)]
    unsafe fn chunk<const M: usize>(
        r: &Rows,
        c: usize,
        part: &mut [[f32; LANES]],
        out: &mut [f32],
        relu: Option<&mut ReluSums>,
    ) {
        // SAFETY (caller): c + 16·M ≤ n; every row offs[q] + at has n floats in dy and every
        // slot − t0 indexes part (checked above); `relu`'s lanes are LANES = 16 floats, one
        // vector each; the unaligned forms need no alignment.
        unsafe {
            let xs: [__m512; M] =
                std::array::from_fn(|k| _mm512_loadu_ps(r.x.as_ptr().add(c + 16 * k)));
            let mut acc: [__m512; M] = [_mm512_setzero_ps(); M];
            let base = r.dy.as_ptr();
            for (q, ((&o, &v), &sl)) in r.offs.iter().zip(r.vals).zip(r.slots).enumerate() {
                if let Some(&ahead) = r.offs.get(q + PREFETCH_AHEAD) {
                    for k in 0..M {
                        prefetch_window::<LANES>(r.dy, ahead.wrapping_add(r.at) + c + 16 * k);
                    }
                }
                let p = base.add(o.wrapping_add(r.at) + c);
                let vv = _mm512_set1_ps(v);
                let mut s = _mm512_setzero_ps();
                for k in 0..M {
                    let d = _mm512_loadu_ps(p.add(16 * k));
                    acc[k] = _mm512_fmadd_ps(vv, d, acc[k]);
                    s = _mm512_fmadd_ps(xs[k], d, s);
                }
                let pp = part.as_mut_ptr().add(sl as usize - r.t0) as *mut f32;
                _mm512_storeu_ps(pp, _mm512_add_ps(_mm512_loadu_ps(pp), s));
            }
            for (k, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(c + 16 * k), *a);
            }
            if let Some(b) = relu {
                let (mut s1, mut s2) = (
                    _mm512_loadu_ps(b.s1.as_ptr()),
                    _mm512_loadu_ps(b.s2.as_ptr()),
                );
                let beta = _mm512_set1_ps(b.beta);
                for k in 0..M {
                    let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(xs[k], _mm512_setzero_ps());
                    let t = _mm512_sub_ps(xs[k], beta);
                    s1 = _mm512_mask_add_ps(s1, keep, s1, acc[k]);
                    s2 = _mm512_mask_add_ps(s2, keep, s2, _mm512_mul_ps(acc[k], t));
                }
                _mm512_storeu_ps(b.s1.as_mut_ptr(), s1);
                _mm512_storeu_ps(b.s2.as_mut_ptr(), s2);
            }
        }
    }
    let r = Rows {
        x,
        dy,
        offs,
        vals,
        slots,
        at,
        t0,
    };
    let mut c = 0;
    // SAFETY: each call covers columns below `full` ≤ n; rows and slots were checked above.
    unsafe {
        while c + 128 <= full {
            chunk::<8>(&r, c, part, out, relu.as_deref_mut());
            c += 128;
        }
        if c + 64 <= full {
            chunk::<4>(&r, c, part, out, relu.as_deref_mut());
            c += 64;
        }
        if c + 32 <= full {
            chunk::<2>(&r, c, part, out, relu.as_deref_mut());
            c += 32;
        }
        if c + 16 <= full {
            chunk::<1>(&r, c, part, out, relu.as_deref_mut());
        }
    }
    // The tail columns (n not a multiple of 16) one by one.
    for col in full..n {
        let mut a = 0.0f32;
        for ((&o, &v), &sl) in offs.iter().zip(vals).zip(slots) {
            let d = dy[o.wrapping_add(at) + col];
            a = v.mul_add(d, a);
            let lane = &mut part[sl as usize - t0][col - full];
            *lane = x[col].mul_add(d, *lane);
        }
        out[col] = a;
        if let Some(b) = relu.as_deref_mut() {
            if x[col] > 0.0 {
                b.s1[col - full] += a;
                b.s2[col - full] += a * (x[col] - b.beta);
            }
        }
    }
}

/// Where the convolution's input is x = relu(batchnorm(·)): the channel's batch-norm shift β,
/// and the lanes of the two sums `gather_and_dots_avx512` adds for batch norm's backward.
#[derive(Debug)]
pub(crate) struct ReluSums {
    pub beta: f32,
    pub s1: [f32; LANES],
    pub s2: [f32; LANES],
}
