//! `rest device --check` for the dense and sparse convolution kernels (`conv/` beside this file):
//! each kernel against its CPU twin (`device::cpu::twin::conv`) on random inputs; tolerances in
//! `device::gpu::check`.

use super::conv;
use crate::device::cpu::twin;
use crate::device::cpu::ConvGeom;
use crate::device::gpu::checker::{tol, Checker, Cmp};
use crate::device::gpu::sparse_weight::DeviceSparseWeight;
use crate::device::gpu::{Buf, KernelDef, LaunchCfg};
use crate::sparse::csr::SparseWeight;
use anyhow::Result;

/// Convolution tolerance for reduction length `l`: rel 1e-4, abs 1e-5·l.
fn conv_tol(l: usize) -> (f64, f64) {
    (1e-4, 1e-5 * l as f64)
}

/// One row: the first `want.len()` floats of `got` against `want`, at the convolution tolerance
/// for reduction length `l`.
fn compare(
    c: &mut Checker,
    kernel: &KernelDef,
    shape: impl Into<String>,
    got: &Buf,
    want: &[f32],
    l: usize,
) -> Result<()> {
    let (rel, abs) = conv_tol(l);
    let r = Cmp::new()
        .f32s(&c.read(got, want.len())?, want, rel, abs)
        .clone();
    c.row(kernel, shape, tol(rel, abs), &r);
    Ok(())
}

pub(crate) fn check(c: &mut Checker) -> Result<()> {
    use twin::conv as tw;
    let gpu = c.gpu;
    // (name, n, cin, h, w, cout, k, stride, pad): a ragged 3×3 with two 64-row output tiles, and
    // the 7×7/2 stem on a ragged plane.
    let shapes = [
        (
            "k3 s1 p1",
            (
                4usize, 37usize, 9usize, 11usize, 67usize, 3usize, 1usize, 1usize,
            ),
        ),
        ("k7 s2 p3", (1, 3, 19, 17, 8, 7, 2, 3)),
    ];
    for (i, (name, s)) in shapes.into_iter().enumerate() {
        let g = ConvGeom::new(s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7)?;
        let shape = format!("{name} N{} {}→{} {}×{}", g.n, g.cin, g.cout, g.h, g.w);
        let cs = conv::ConvShape::new(&g)?;
        let (xl, yl, wl) = (cs.x_len(), cs.y_len(), cs.w_len());
        let x = c.uniform(xl);
        let w = c.uniform(wl);
        let b = c.uniform(g.cout);
        let dy = c.uniform(yl);
        let (bx, bw, bb, bdy) = (c.up(&x)?, c.up(&w)?, c.up(&b)?, c.up(&dy)?);
        let with_bias = i == 0;
        let bias = with_bias.then_some(&b[..]);
        let bias_buf = with_bias.then_some(&bb);

        // Forward, tiled and simple.
        let pf = conv::ConvFwdParams {
            s: cs,
            ..Default::default()
        };
        let mut want = vec![0.0; yl];
        tw::conv_fwd_dense_f32(&pf, &x, &w, bias, &mut want);
        for (k, simple) in [
            (&conv::conv_fwd_dense_f32, false),
            (&conv::conv_fwd_dense_simple_f32, true),
        ] {
            let mut y = c.out::<f32>(yl)?;
            if simple {
                conv::conv_fwd_dense_simple(gpu, &g, &bx, &bw, bias_buf, &mut y)?;
            } else {
                conv::conv_fwd_dense(gpu, &g, &bx, &bw, bias_buf, &mut y)?;
            }
            compare(c, k, &shape, &y, &want, g.col_rows())?;
        }

        // Input gradient.
        let pd = conv::ConvBwdDataParams {
            s: cs,
            ..Default::default()
        };
        let mut want = vec![0.0; xl];
        tw::conv_bwd_data_dense_f32(&pd, &dy, &w, &mut want);
        let mut dx = c.out::<f32>(xl)?;
        conv::conv_bwd_data_dense(gpu, &g, &bdy, &bw, &mut dx)?;
        compare(
            c,
            &conv::conv_bwd_data_dense_f32,
            &shape,
            &dx,
            &want,
            g.cout * g.k * g.k,
        )?;

        // Weight gradient: one split, and three (partials, then the reduction kernel).
        let pw = conv::ConvBwdWeightParams {
            s: cs,
            ..Default::default()
        };
        let mut want = vec![0.0; wl];
        tw::conv_bwd_weight_dense_f32(&pw, &x, &dy, &mut want);
        for splits in [1usize, 3] {
            let mut dw = c.out::<f32>(wl)?;
            let mut work = c.out::<f32>(conv::conv_bwd_weight_dense_workspace(&g, splits))?;
            conv::conv_bwd_weight_dense_split(
                gpu,
                &g,
                &bx,
                &bdy,
                &mut dw,
                splits,
                Some(&mut work),
            )?;
            let sh = format!(
                "{shape}, {splits} split{}",
                if splits > 1 { "s" } else { "" }
            );
            compare(
                c,
                &conv::conv_bwd_weight_dense_f32,
                sh,
                &dw,
                &want,
                g.col_cols(),
            )?;
        }

        // Bias gradient.
        let cols = g.col_cols();
        let pb = conv::ConvBwdBiasParams {
            cout: g.cout as u32,
            cols: cols as u32,
            ..Default::default()
        };
        let mut want = vec![0.0; g.cout];
        tw::conv_bwd_bias_f32(&pb, &dy, &mut want);
        let mut db = c.out::<f32>(g.cout)?;
        conv::conv_bwd_bias(gpu, g.cout, cols, &bdy, &mut db)?;
        compare(c, &conv::conv_bwd_bias_f32, &shape, &db, &want, cols)?;

        // Sparse, at density 0.3 (first shape) and 0.05 (second: rows and columns left empty).
        let density = if i == 0 { 0.3 } else { 0.05 };
        let (rows, kcols) = (g.cout, g.col_rows());
        let mask: Vec<bool> = (0..rows * kcols)
            .map(|_| c.rng.uniform_f64() < density)
            .collect();
        let sw = SparseWeight::from_dense_mask(rows, kcols, &w, &mask);
        let (dsw, values) = DeviceSparseWeight::upload_with_values(c.gpu, &sw)?;
        let sp = dsw.bufs(&values);
        let shape = format!("{shape}, density {density}, nnz {}", sw.nnz());
        let nnz = sw.nnz() as u32;

        let p = conv::ConvSparseFwdParams {
            s: cs,
            nnz,
            ..Default::default()
        };
        let mut want = vec![0.0; yl];
        tw::conv_fwd_sparse_f32(
            &p,
            &x,
            &sw.row_ptr,
            &sw.col_idx,
            &sw.values,
            bias,
            &mut want,
        );
        let mut y = c.out::<f32>(yl)?;
        conv::conv_fwd_sparse(gpu, &g, &bx, &sp, bias_buf, &mut y)?;
        compare(
            c,
            &conv::conv_fwd_sparse_f32,
            &shape,
            &y,
            &want,
            g.col_rows(),
        )?;

        let p = conv::ConvSparseBwdDataParams {
            s: cs,
            nnz,
            ..Default::default()
        };
        let mut want = vec![0.0; xl];
        tw::conv_bwd_data_sparse_f32(
            &p,
            &dy,
            &sw.col_ptr,
            &sw.csc_row,
            &sw.csc_pos,
            &sw.values,
            &mut want,
        );
        let mut dx = c.out::<f32>(xl)?;
        conv::conv_bwd_data_sparse(gpu, &g, &bdy, &sp, &mut dx)?;
        compare(
            c,
            &conv::conv_bwd_data_sparse_f32,
            &shape,
            &dx,
            &want,
            g.cout * g.k * g.k,
        )?;

        let p = conv::ConvSparseBwdWeightParams {
            s: cs,
            nnz,
            ..Default::default()
        };
        let mut want = vec![0.0; sw.nnz()];
        tw::conv_bwd_weight_sparse_f32(&p, &x, &dy, &sw.row_ptr, &sw.col_idx, &mut want);
        let mut dv = c.out::<f32>(sw.nnz())?;
        conv::conv_bwd_weight_sparse(gpu, &g, &bx, &bdy, &sp, &mut dv, None)?;
        compare(
            c,
            &conv::conv_bwd_weight_sparse_f32,
            &shape,
            &dv,
            &want,
            g.col_cols(),
        )?;
    }

    // The split reduction on its own: out[i] = Σ_z partial[z·len + i].
    let (len, splits) = (1000usize, 5usize);
    let partial = c.uniform(len * splits);
    let p = conv::ConvReduceParams {
        len: len as u32,
        splits: splits as u32,
        ..Default::default()
    };
    let mut want = vec![0.0; len];
    tw::conv_bwd_weight_reduce_f32(&p, &partial, &mut want);
    let pb = c.up(&partial)?;
    let out = c.out::<f32>(len)?;
    let kp = conv::ConvReduceParams {
        partial: pb.addr(),
        out: out.addr(),
        ..p
    };
    gpu.launch(
        &conv::conv_bwd_weight_reduce_f32,
        LaunchCfg::linear(len, 256),
        &kp,
    )?;
    compare(
        c,
        &conv::conv_bwd_weight_reduce_f32,
        format!("len {len}, {splits} splits"),
        &out,
        &want,
        splits,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
