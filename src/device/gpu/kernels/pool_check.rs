//! `rest device --check` for the pooling kernels (`pool.rs` beside this file): each kernel against
//! its CPU twin (`device::cpu::twin::pool`) on random inputs; tolerances in `device::gpu::check`.

use super::pool;
use crate::device::cpu::twin;
use crate::device::gpu::checker::{tol, Checker, Cmp, EXACT};
use anyhow::Result;

pub(crate) fn check(c: &mut Checker) -> Result<()> {
    use twin::pool::*;
    let gpu = c.gpu;
    // (planes, h, w, k, stride, pad): the ResNet stem's 3×3/2 p1 on ragged planes; 2×2/2.
    for (planes, h, w, k, s, pad) in [
        (15usize, 7usize, 9usize, 3usize, 2usize, 1usize),
        (64, 8, 8, 2, 2, 0),
    ] {
        let shape = format!("{planes}×{h}×{w}, k{k} s{s} p{pad}");
        // Values on a coarse grid so windows hold ties (the first maximum must win).
        let x: Vec<f32> = (0..planes * h * w)
            .map(|_| (c.rng.normal() * 2.0).round() * 0.5)
            .collect();
        let mp = pool::max_pool_params(planes, h, w, k, s, pad)?;
        let no = planes * mp.oh as usize * mp.ow as usize;
        let bx = c.up(&x)?;
        let (y, am) = (c.out::<f32>(no)?, c.out::<u32>(no)?);
        pool::max_fwd(gpu, &bx, &y, &am, planes, h, w, k, s, pad)?;
        let (mut wy, mut wam) = (vec![0.0; no], vec![0u32; no]);
        pool_max_fwd_f32(&mp, &x, &mut wy, &mut wam);
        let mut r = Cmp::new();
        r.bits(&c.read(&y, no)?, &wy)
            .u32s(&c.read_u32(&am, no)?, &wam);
        c.row(&pool::pool_max_fwd_f32, &shape, EXACT.into(), &r);

        let dy = c.normal(no, 1.0, 0.0);
        let (bdy, bam) = (c.up(&dy)?, c.up(&wam)?);
        let dx = c.out::<f32>(planes * h * w)?;
        pool::max_bwd(gpu, &bdy, &bam, &dx, planes, h, w, k, s, pad)?;
        let mut wdx = vec![0.0; planes * h * w];
        pool_max_bwd_f32(&mp, &dy, &wam, &mut wdx);
        let r = Cmp::new().bits(&c.read(&dx, wdx.len())?, &wdx).clone();
        c.row(&pool::pool_max_bwd_f32, &shape, EXACT.into(), &r);
    }
    for (planes, hw) in [(70usize, 33usize), (512, 49)] {
        let shape = format!("{planes} planes × {hw}");
        let x = c.normal(planes * hw, 1.0, 0.5);
        let p = AvgPoolParams {
            planes: planes as u32,
            hw: hw as u32,
            inv_hw: 1.0 / hw as f32,
            ..Default::default()
        };
        let bx = c.up(&x)?;
        let y = c.out::<f32>(planes)?;
        pool::avg_fwd(gpu, &bx, &y, planes, hw)?;
        let mut wy = vec![0.0; planes];
        pool_avg_fwd_f32(&p, &x, &mut wy);
        let r = Cmp::new()
            .f32s(&c.read(&y, planes)?, &wy, 1e-5, 1e-6)
            .clone();
        c.row(&pool::pool_avg_fwd_f32, &shape, tol(1e-5, 1e-6), &r);

        let dy = c.normal(planes, 1.0, 0.0);
        let bdy = c.up(&dy)?;
        let dx = c.out::<f32>(planes * hw)?;
        pool::avg_bwd(gpu, &bdy, &dx, planes, hw)?;
        let mut wdx = vec![0.0; planes * hw];
        pool_avg_bwd_f32(&p, &dy, &mut wdx);
        let r = Cmp::new().bits(&c.read(&dx, wdx.len())?, &wdx).clone();
        c.row(&pool::pool_avg_bwd_f32, &shape, EXACT.into(), &r);
    }
    Ok(())
}
