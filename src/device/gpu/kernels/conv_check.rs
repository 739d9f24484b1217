//! `rest device --check` for the dense and sparse convolution kernels (`conv/` beside this file):
//! each kernel against its CPU twin (`device::cpu::twin::conv`) on random inputs; tolerances in
//! `device::gpu::check`.

use super::conv;
use crate::device::cpu::twin;
use crate::device::cpu::ConvGeom;
use crate::device::gpu::checker::{tol, Checker, Cmp};
use crate::device::gpu::LaunchCfg;
use crate::sparse::csr::SparseWeight;
use anyhow::Result;

/// Convolution tolerance for reduction length `l`: rel 1e-4, abs 1e-5·l.
fn conv_tol(l: usize) -> (f64, f64) {
    (1e-4, 1e-5 * l as f64)
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
        let (rel, abs) = conv_tol(g.col_rows());
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
            let r = Cmp::new().f32s(&c.read(&y, yl)?, &want, rel, abs).clone();
            c.row(k, &shape, tol(rel, abs), &r);
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
        let (rel, abs) = conv_tol(g.cout * g.k * g.k);
        let r = Cmp::new().f32s(&c.read(&dx, xl)?, &want, rel, abs).clone();
        c.row(&conv::conv_bwd_data_dense_f32, &shape, tol(rel, abs), &r);

        // Weight gradient: one split, and three (partials, then the reduction kernel).
        let pw = conv::ConvBwdWeightParams {
            s: cs,
            ..Default::default()
        };
        let mut want = vec![0.0; wl];
        tw::conv_bwd_weight_dense_f32(&pw, &x, &dy, &mut want);
        let (rel, abs) = conv_tol(g.col_cols());
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
            let r = Cmp::new().f32s(&c.read(&dw, wl)?, &want, rel, abs).clone();
            let sh = format!(
                "{shape}, {splits} split{}",
                if splits > 1 { "s" } else { "" }
            );
            c.row(&conv::conv_bwd_weight_dense_f32, sh, tol(rel, abs), &r);
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
        let (rel, abs) = conv_tol(cols);
        let r = Cmp::new()
            .f32s(&c.read(&db, g.cout)?, &want, rel, abs)
            .clone();
        c.row(&conv::conv_bwd_bias_f32, &shape, tol(rel, abs), &r);

        // Sparse, at density 0.3 (first shape) and 0.05 (second: rows and columns left empty).
        let density = if i == 0 { 0.3 } else { 0.05 };
        let (rows, kcols) = (g.cout, g.col_rows());
        let mask: Vec<bool> = (0..rows * kcols)
            .map(|_| c.rng.uniform_f64() < density)
            .collect();
        let sw = SparseWeight::from_dense_mask(rows, kcols, &w, &mask);
        let sb = conv::upload_sparse(c.gpu, &sw)?;
        let sp = conv::SparseBufs::from_uploaded(&sb, sw.nnz());
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
        let (rel, abs) = conv_tol(g.col_rows());
        let r = Cmp::new().f32s(&c.read(&y, yl)?, &want, rel, abs).clone();
        c.row(&conv::conv_fwd_sparse_f32, &shape, tol(rel, abs), &r);

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
        let (rel, abs) = conv_tol(g.cout * g.k * g.k);
        let r = Cmp::new().f32s(&c.read(&dx, xl)?, &want, rel, abs).clone();
        c.row(&conv::conv_bwd_data_sparse_f32, &shape, tol(rel, abs), &r);

        let p = conv::ConvSparseBwdWeightParams {
            s: cs,
            nnz,
            ..Default::default()
        };
        let mut want = vec![0.0; sw.nnz()];
        tw::conv_bwd_weight_sparse_f32(&p, &x, &dy, &sw.row_ptr, &sw.col_idx, &mut want);
        let mut dv = c.out::<f32>(sw.nnz())?;
        conv::conv_bwd_weight_sparse(gpu, &g, &bx, &bdy, &sp, &mut dv)?;
        let (rel, abs) = conv_tol(g.col_cols());
        let r = Cmp::new()
            .f32s(&c.read(&dv, sw.nnz())?, &want, rel, abs)
            .clone();
        c.row(&conv::conv_bwd_weight_sparse_f32, &shape, tol(rel, abs), &r);
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
    let (rel, abs) = conv_tol(splits);
    let r = Cmp::new()
        .f32s(&c.read(&out, len)?, &want, rel, abs)
        .clone();
    c.row(
        &conv::conv_bwd_weight_reduce_f32,
        format!("len {len}, {splits} splits"),
        tol(rel, abs),
        &r,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
