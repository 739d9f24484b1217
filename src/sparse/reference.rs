//! The reference sparse kernels over an im2col matrix, which the engine no longer runs (the
//! linear layer is a 1×1 direct convolution): the tests' reference beside the direct convolution
//! (`sparse::conv`).
//!
//! `spmm` and `spmm_t` compute each output row as a sum of scaled rows of the dense operand,
//! summed in registers a chunk of columns at a time over all the row's entries (the next
//! entries' sources prefetched, `simd::acc_vec`), over tiles of (output rows) × (a block of n).
//! `sddmm` computes eight dot products at a time against one row of the output gradient, block
//! by block of n. Tiles run in parallel with rayon; small problems run serially. The slice-code
//! loops are compiled three times (portable, AVX2+FMA, AVX-512) and chosen at run time
//! (`Kernels::preferred`).

use rayon::prelude::*;

use super::csr::{Kernels, SparseWeight};
use super::simd::{acc_vec, fmadd, hsum, LANES};

/// Below this many multiply-adds a kernel runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;
/// Tiles per thread, for load balance.
const TILES_PER_THREAD: usize = 4;
/// Width of one block of the n dimension (floats): 4 KiB of output per row stays in L1 while the
/// entries stream. Measured on a 2-core AVX-512 EPYC (1 MiB L2, 32 MiB L3), full-width blocks beat
/// narrower ones sized to keep the dense operand's panel in L2 (up to 2× on a [512, 4608] layer).
const BLOCK: usize = 1024;

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// A compressed row structure: output row i is Σ_{e ∈ ptr[i]..ptr[i+1]} val[e] · src[off[e]..][..n]
/// (for a matrix operand, off[e] = column index · n; the direct convolution shifts the rows).
struct Gather<'a> {
    ptr: &'a [u32],
    off: &'a [usize],
    val: &'a [f32],
    src: &'a [f32],
    n: usize,
}

/// One output tile: rows `row0..row0 + outs.len()`, columns `j0..j0 + width` (`outs[i]` is that
/// piece of output row `row0 + i`).
struct Tile<'a> {
    row0: usize,
    j0: usize,
    outs: Vec<&'a mut [f32]>,
}

/// Computes one tile of a `Gather`: each output row's piece summed over all its entries in
/// registers, CH columns at a time (`acc_vec`).
#[inline(always)]
fn gather_tile<const FMA: bool, const CH: usize>(g: &Gather, tile: &mut Tile) {
    for (i, o) in tile.outs.iter_mut().enumerate() {
        let r = tile.row0 + i;
        let (s, e) = (g.ptr[r] as usize, g.ptr[r + 1] as usize);
        acc_vec::<FMA, CH>(&g.off[s..e], &g.val[s..e], g.src, tile.j0, o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gather_tile_avx2(g: &Gather, tile: &mut Tile) {
    gather_tile::<true, 128>(g, tile)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gather_tile_avx512(g: &Gather, tile: &mut Tile) {
    gather_tile::<true, 256>(g, tile)
}

/// `k` must come from `Kernels::resolve`.
fn run_gather_tile(k: Kernels, g: &Gather, tile: &mut Tile) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX-512F, AVX2 and FMA.
        Kernels::Avx512 => unsafe { gather_tile_avx512(g, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX2 and FMA.
        Kernels::Avx2 => unsafe { gather_tile_avx2(g, tile) },
        _ => gather_tile::<false, 64>(g, tile),
    }
}

/// Runs a `Gather` into `out` [out_rows, n], tiled over (groups of rows) × (blocks of n); rows
/// are grouped only when there are too few blocks of n to keep every thread busy.
fn run_gather(k: Kernels, g: &Gather, out_rows: usize, out: &mut [f32]) {
    let n = g.n;
    assert_eq!(out.len(), out_rows * n);
    if n == 0 || out_rows == 0 {
        return;
    }
    let serial = g.val.len() * n < SERIAL_WORK || threads() <= 1;
    let w = BLOCK.min(n);
    let nblocks = n.div_ceil(w);
    let want = if serial {
        1
    } else {
        TILES_PER_THREAD * threads()
    };
    let groups = want.div_ceil(nblocks).min(out_rows);
    let rb = out_rows.div_ceil(groups);
    let groups = out_rows.div_ceil(rb);
    let mut tiles: Vec<Tile> = (0..groups * nblocks)
        .map(|t| Tile {
            row0: (t / nblocks) * rb,
            j0: (t % nblocks) * w,
            outs: Vec::with_capacity(rb),
        })
        .collect();
    for (r, row) in out.chunks_mut(n).enumerate() {
        for (j, piece) in row.chunks_mut(w).enumerate() {
            tiles[(r / rb) * nblocks + j].outs.push(piece);
        }
    }
    if serial {
        tiles.iter_mut().for_each(|t| run_gather_tile(k, g, t));
    } else {
        tiles.par_iter_mut().for_each(|t| run_gather_tile(k, g, t));
    }
}

/// c[rows, n] = W · b[cols, n] (overwrites c).
pub fn spmm(w: &SparseWeight, b: &[f32], n: usize, c: &mut [f32]) {
    spmm_with(Kernels::preferred(), w, b, n, c)
}

/// `spmm` with a chosen kernel variant (lowered to what the CPU supports).
pub fn spmm_with(k: Kernels, w: &SparseWeight, b: &[f32], n: usize, c: &mut [f32]) {
    assert_eq!(b.len(), w.cols * n, "spmm: b must be [cols, n]");
    assert_eq!(c.len(), w.rows * n, "spmm: c must be [rows, n]");
    let off: Vec<usize> = w.col_idx.iter().map(|&c| c as usize * n).collect();
    let g = Gather {
        ptr: &w.row_ptr,
        off: &off,
        val: &w.values,
        src: b,
        n,
    };
    run_gather(k.resolve(), &g, w.rows, c);
}

/// db[cols, n] = Wᵀ · dc[rows, n] (overwrites db).
pub fn spmm_t(w: &SparseWeight, dc: &[f32], n: usize, db: &mut [f32]) {
    spmm_t_with(Kernels::preferred(), w, dc, n, db)
}

/// `spmm_t` with a chosen kernel variant (lowered to what the CPU supports).
pub fn spmm_t_with(k: Kernels, w: &SparseWeight, dc: &[f32], n: usize, db: &mut [f32]) {
    assert_eq!(dc.len(), w.rows * n, "spmm_t: dc must be [rows, n]");
    assert_eq!(db.len(), w.cols * n, "spmm_t: db must be [cols, n]");
    let val_t: Vec<f32> = w.csc_pos.iter().map(|&e| w.values[e as usize]).collect();
    let off: Vec<usize> = w.csc_row.iter().map(|&r| r as usize * n).collect();
    let g = Gather {
        ptr: &w.col_ptr,
        off: &off,
        val: &val_t,
        src: dc,
        n,
    };
    run_gather(k.resolve(), &g, w.cols, db);
}

/// `M` dot products of `a` against `b[0..M]` (all the same length), added to `out`.
#[inline(always)]
fn dot_many<const FMA: bool, const M: usize>(a: &[f32], b: [&[f32]; M], out: &mut [f32]) {
    let mut acc = [[0f32; LANES]; M];
    let len = a.len() / LANES * LANES;
    let mut t = 0;
    while t < len {
        let x: &[f32; LANES] = a[t..t + LANES].try_into().unwrap();
        for (acc, y) in acc.iter_mut().zip(&b) {
            let y: &[f32; LANES] = y[t..t + LANES].try_into().unwrap();
            for l in 0..LANES {
                acc[l] = fmadd::<FMA>(x[l], y[l], acc[l]);
            }
        }
        t += LANES;
    }
    for ((o, acc), y) in out.iter_mut().zip(acc).zip(&b) {
        let mut s = hsum(acc);
        for (&x, &y) in a[len..].iter().zip(&y[len..]) {
            s = fmadd::<FMA>(x, y, s);
        }
        *o += s;
    }
}

/// The operands of one sddmm: entry e of row r is the dot product of `a[r·n..][..n]` with
/// `b[off[e]..][..n]`.
struct Sddmm<'a> {
    row_ptr: &'a [u32],
    off: &'a [usize],
    a: &'a [f32],
    b: &'a [f32],
    n: usize,
}

/// Adds to `dv` (the entries of rows `task.rows`) the partial dot products over columns
/// `task.cols` of n, walking those columns in blocks of `task.width` so each block of `b` stays in cache across rows.
#[inline(always)]
fn sddmm_tile<const FMA: bool>(m: &Sddmm, task: SddmmTask, dv: &mut [f32]) {
    let (rows, cols, width) = (task.rows, task.cols, task.width);
    let base = m.row_ptr[rows.0] as usize;
    let mut j0 = cols.0;
    while j0 < cols.1 {
        let wd = width.min(cols.1 - j0);
        for r in rows.0..rows.1 {
            let a = &m.a[r * m.n + j0..][..wd];
            let (s, end) = (m.row_ptr[r] as usize, m.row_ptr[r + 1] as usize);
            let brow = |e: usize| &m.b[m.off[e] + j0..][..wd];
            let mut e = s;
            while e + 8 <= end {
                let bs = [
                    brow(e),
                    brow(e + 1),
                    brow(e + 2),
                    brow(e + 3),
                    brow(e + 4),
                    brow(e + 5),
                    brow(e + 6),
                    brow(e + 7),
                ];
                dot_many::<FMA, 8>(a, bs, &mut dv[e - base..e - base + 8]);
                e += 8;
            }
            if e + 4 <= end {
                dot_many::<FMA, 4>(
                    a,
                    [brow(e), brow(e + 1), brow(e + 2), brow(e + 3)],
                    &mut dv[e - base..e - base + 4],
                );
                e += 4;
            }
            while e < end {
                dot_many::<FMA, 1>(a, [brow(e)], &mut dv[e - base..e - base + 1]);
                e += 1;
            }
        }
        j0 += wd;
    }
}

/// The rows, columns and entries one `sddmm` task covers.
#[derive(Clone, Copy)]
struct SddmmTask {
    rows: (usize, usize),
    cols: (usize, usize),
    width: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sddmm_tile_avx2(m: &Sddmm, t: SddmmTask, dv: &mut [f32]) {
    sddmm_tile::<true>(m, t, dv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sddmm_tile_avx512(m: &Sddmm, t: SddmmTask, dv: &mut [f32]) {
    sddmm_tile::<true>(m, t, dv)
}

/// `k` must come from `Kernels::resolve`. Adds into `dv`.
fn run_sddmm_tile(k: Kernels, m: &Sddmm, t: SddmmTask, dv: &mut [f32]) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX-512F, AVX2 and FMA.
        Kernels::Avx512 => unsafe { sddmm_tile_avx512(m, t, dv) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `k` was resolved against `Kernels::detect`, so the CPU has AVX2 and FMA.
        Kernels::Avx2 => unsafe { sddmm_tile_avx2(m, t, dv) },
        _ => sddmm_tile::<false>(m, t, dv),
    }
}

/// dvalues[e] = Σ_j dc[r_e, j] · b[c_e, j]: the weight gradient at active positions only.
pub fn sddmm(w: &SparseWeight, dc: &[f32], b: &[f32], n: usize, dvalues: &mut [f32]) {
    sddmm_with(Kernels::preferred(), w, dc, b, n, dvalues)
}

/// `sddmm` with a chosen kernel variant (lowered to what the CPU supports).
///
/// Parallel over ranges of n (each task sums into its own buffer, reduced at the end) and, when
/// n has too few blocks for the threads, over groups of rows of roughly equal entry counts.
pub fn sddmm_with(
    k: Kernels,
    w: &SparseWeight,
    dc: &[f32],
    b: &[f32],
    n: usize,
    dvalues: &mut [f32],
) {
    assert_eq!(dc.len(), w.rows * n, "sddmm: dc must be [rows, n]");
    assert_eq!(b.len(), w.cols * n, "sddmm: b must be [cols, n]");
    assert_eq!(
        dvalues.len(),
        w.nnz(),
        "sddmm: dvalues must have nnz entries"
    );
    let off: Vec<usize> = w.col_idx.iter().map(|&c| c as usize * n).collect();
    let m = Sddmm {
        row_ptr: &w.row_ptr,
        off: &off,
        a: dc,
        b,
        n,
    };
    run_sddmm(k.resolve(), &m, dvalues)
}

/// `k` must come from `Kernels::resolve`; overwrites `dvalues`.
fn run_sddmm(k: Kernels, m: &Sddmm, dvalues: &mut [f32]) {
    let (n, nrows) = (m.n, m.row_ptr.len() - 1);
    let nnz = dvalues.len();
    dvalues.fill(0.0);
    if nnz == 0 || n == 0 {
        return;
    }
    let width = BLOCK.min(n);
    if nnz * n < SERIAL_WORK || threads() <= 1 {
        let t = SddmmTask {
            rows: (0, nrows),
            cols: (0, n),
            width,
        };
        run_sddmm_tile(k, m, t, dvalues);
        return;
    }
    let want = TILES_PER_THREAD * threads();
    let nblocks = n.div_ceil(width);
    // Ranges of n: as many as useful, up to `want`; each costs a buffer of nnz partial sums.
    let nranges = nblocks.min(want);
    let ngroups = want.div_ceil(nranges).min(nrows);
    // Row groups at row boundaries, roughly equal entry counts.
    let target = nnz.div_ceil(ngroups);
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut row0 = 0;
    while row0 < nrows {
        let start = m.row_ptr[row0] as usize;
        let mut r = row0 + 1;
        while r < nrows && (m.row_ptr[r] as usize - start) < target {
            r += 1;
        }
        groups.push((row0, r));
        row0 = r;
    }
    let col_range = |t: usize| {
        let (c0, c1) = (t * nblocks / nranges, (t + 1) * nblocks / nranges);
        (c0 * width, (c1 * width).min(n))
    };
    if nranges == 1 {
        let mut blocks: Vec<(SddmmTask, &mut [f32])> = Vec::new();
        let mut rest = dvalues;
        for &(r0, r1) in &groups {
            let len = (m.row_ptr[r1] - m.row_ptr[r0]) as usize;
            let (head, tail) = rest.split_at_mut(len);
            blocks.push((
                SddmmTask {
                    rows: (r0, r1),
                    cols: (0, n),
                    width,
                },
                head,
            ));
            rest = tail;
        }
        blocks
            .into_par_iter()
            .for_each(|(t, dv)| run_sddmm_tile(k, m, t, dv));
        return;
    }
    let tasks: Vec<SddmmTask> = groups
        .iter()
        .flat_map(|&rows| (0..nranges).map(move |t| (rows, t)))
        .map(|(rows, t)| SddmmTask {
            rows,
            cols: col_range(t),
            width,
        })
        .collect();
    let partial: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&t| {
            let mut buf = vec![0f32; (m.row_ptr[t.rows.1] - m.row_ptr[t.rows.0]) as usize];
            run_sddmm_tile(k, m, t, &mut buf);
            buf
        })
        .collect();
    for (t, buf) in tasks.iter().zip(&partial) {
        let e0 = m.row_ptr[t.rows.0] as usize;
        for (d, &p) in dvalues[e0..e0 + buf.len()].iter_mut().zip(buf) {
            *d += p;
        }
    }
}
