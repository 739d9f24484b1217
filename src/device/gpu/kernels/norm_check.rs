//! `rest device --check` for the batch-norm kernels (`norm.rs` beside this file): each kernel
//! against its CPU twin (`device::cpu::twin::norm`) on random inputs; tolerances in
//! `device::gpu::check`.

use super::norm;
use crate::device::cpu::twin;
use crate::device::gpu::checker::{tol, Checker, Cmp};
use anyhow::Result;

pub(crate) fn check(c: &mut Checker) -> Result<()> {
    use twin::norm::*;
    let gpu = c.gpu;
    let (eps, momentum) = (crate::nn::ops::BN_EPS, crate::nn::ops::BN_MOMENTUM);
    // C 3 × M 315 (ragged against 256 threads); C 2 × M 70001 (1024-thread blocks).
    for (ch, m) in [(3usize, 5 * 7 * 9), (2, 70_001usize)] {
        let shape = format!("C {ch}, M {m}");
        let mut x = Vec::with_capacity(ch * m);
        for ci in 0..ch {
            x.extend(c.normal(m, 1.5 + ci as f32, ci as f32 - 1.0));
        }
        let gamma = c.normal(ch, 0.2, 1.0);
        let beta = c.normal(ch, 0.3, 0.0);
        let rm0 = c.normal(ch, 0.1, 0.0);
        let rv0: Vec<f32> = (0..ch).map(|_| 0.5 + c.rng.uniform()).collect();
        let p = NormParams {
            c: ch as u32,
            m: m as u32,
            eps,
            momentum,
            ..Default::default()
        };
        let (bx, bg, bb) = (c.up(&x)?, c.up(&gamma)?, c.up(&beta)?);
        let (rel, abs) = (1e-4, 1e-5);
        for relu in [false, true] {
            // Training forward.
            let (brm, brv) = (c.up(&rm0)?, c.up(&rv0)?);
            let (y, sm, si) = (c.out::<f32>(ch * m)?, c.out::<f32>(ch)?, c.out::<f32>(ch)?);
            let bufs = norm::BnTrainFwd {
                x: &bx,
                gamma: &bg,
                beta: &bb,
                running_mean: &brm,
                running_var: &brv,
                y: &y,
                save_mean: &sm,
                save_invstd: &si,
            };
            norm::train_fwd(gpu, &bufs, ch, m, eps, momentum, relu)?;
            let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
            let (mut wy, mut wsm, mut wsi) = (vec![0.0; ch * m], vec![0.0; ch], vec![0.0; ch]);
            let o = TrainFwdOut {
                running_mean: &mut rm,
                running_var: &mut rv,
                y: &mut wy,
                save_mean: &mut wsm,
                save_invstd: &mut wsi,
            };
            let k = if relu {
                norm_fwd_train_relu_f32(&p, &x, &gamma, &beta, o);
                &norm::norm_fwd_train_relu_f32
            } else {
                norm_fwd_train_f32(&p, &x, &gamma, &beta, o);
                &norm::norm_fwd_train_f32
            };
            let mut r = Cmp::new();
            r.f32s(&c.read(&y, ch * m)?, &wy, rel, abs)
                .f32s(&c.read(&sm, ch)?, &wsm, rel, abs)
                .f32s(&c.read(&si, ch)?, &wsi, rel, abs)
                .f32s(&c.read(&brm, ch)?, &rm, rel, abs)
                .f32s(&c.read(&brv, ch)?, &rv, rel, abs);
            c.row(k, &shape, tol(rel, abs), &r);

            // Backward, from the twin's saved statistics on both sides.
            let dy = c.normal(ch * m, 1.0, 0.0);
            let (bdy, bsm, bsi) = (c.up(&dy)?, c.up(&wsm)?, c.up(&wsi)?);
            let (dx, dg, db) = (c.out::<f32>(ch * m)?, c.out::<f32>(ch)?, c.out::<f32>(ch)?);
            let bufs = norm::BnBwd {
                x: &bx,
                gamma: &bg,
                beta: &bb,
                save_mean: &bsm,
                save_invstd: &bsi,
                dy: &bdy,
                dx: &dx,
                dgamma: &dg,
                dbeta: &db,
            };
            norm::bwd(gpu, &bufs, ch, m, relu)?;
            let (mut wdx, mut wdg, mut wdb) = (vec![0.0; ch * m], vec![0.0; ch], vec![0.0; ch]);
            let o = BwdOut {
                dx: &mut wdx,
                dgamma: &mut wdg,
                dbeta: &mut wdb,
            };
            let k = if relu {
                norm_bwd_relu_f32(&p, &x, &gamma, &beta, &wsm, &wsi, &dy, o);
                &norm::norm_bwd_relu_f32
            } else {
                norm_bwd_f32(&p, &x, &gamma, &wsm, &wsi, &dy, o);
                &norm::norm_bwd_f32
            };
            // Σ|term| over the whole tensor bounds the f32 accumulation error of a channel sum.
            let mass: f64 = (0..ch * m)
                .map(|j| {
                    let xh = (x[j] - wsm[j / m]).abs() * wsi[j / m];
                    (dy[j].abs() * (1.0 + xh)) as f64
                })
                .sum();
            let sum_abs = abs + 1e-6 * mass;
            let mut r = Cmp::new();
            r.f32s(&c.read(&dx, ch * m)?, &wdx, rel, abs)
                .f32s(&c.read(&dg, ch)?, &wdg, rel, sum_abs)
                .f32s(&c.read(&db, ch)?, &wdb, rel, sum_abs);
            let t = format!("{}; dγ,dβ abs {sum_abs:.1e}", tol(rel, abs));
            c.row(k, &shape, t, &r);
        }

        // Evaluation forward.
        let (brm, brv) = (c.up(&rm0)?, c.up(&rv0)?);
        let y = c.out::<f32>(ch * m)?;
        norm::eval_fwd(gpu, &bx, &bg, &bb, &brm, &brv, &y, ch, m, eps)?;
        let mut wy = vec![0.0; ch * m];
        norm_fwd_eval_f32(&p, &x, &gamma, &beta, &rm0, &rv0, &mut wy);
        let r = Cmp::new().f32s(&c.read(&y, ch * m)?, &wy, rel, abs).clone();
        c.row(&norm::norm_fwd_eval_f32, &shape, tol(rel, abs), &r);
    }
    Ok(())
}
