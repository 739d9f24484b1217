//! `rest device --check` for the fused cross-entropy kernels (`xent.rs` beside this file): each
//! kernel against its CPU twin (`device::cpu::twin::xent`) on random inputs; tolerances in
//! `device::gpu::check`.

use super::xent;
use crate::device::cpu::twin;
use crate::device::gpu::checker::{tol, Checker, Cmp};
use anyhow::Result;

pub(crate) fn check(c: &mut Checker) -> Result<()> {
    use twin::xent::*;
    // (N, K, groups): CMNIST's 10 classes with 3 groups over a ragged batch; 37 classes, 8 groups.
    for (n, k, ng) in [(300usize, 10usize, 3usize), (513, 37, 8)] {
        let shape = format!("N {n}, K {k}, {ng} groups");
        // Logits with a large per-sample offset (the log-sum-exp must be shifted).
        let offs = c.normal(n, 30.0, 0.0);
        let logits: Vec<f32> = (0..k * n)
            .map(|j| c.rng.normal() * 3.0 + offs[j % n])
            .collect();
        let labels: Vec<u32> = (0..n).map(|_| c.rng.below(k) as u32).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| {
                if i % 4 == 1 {
                    0.0
                } else {
                    0.25 + c.rng.uniform() * 3.0
                }
            })
            .collect();
        let groups: Vec<u32> = (0..n).map(|_| c.rng.below(ng) as u32).collect();
        let inv_wsum = (1.0 / weights.iter().map(|&w| w as f64).sum::<f64>()) as f32;
        let (bl, blab, bw, bgrp) = (
            c.up(&logits)?,
            c.up(&labels)?,
            c.up(&weights)?,
            c.up(&groups)?,
        );
        let blocks = n.div_ceil(xent::XENT_THREADS as usize);
        let (losses, dlogits, partials, stats) = (
            c.out::<f32>(n)?,
            c.out::<f32>(n * k)?,
            c.out::<f32>(xent::partials_len(n))?,
            c.out::<f32>(XENT_STATS)?,
        );
        let bufs = xent::XentBufs {
            logits: &bl,
            labels: &blab,
            weights: &bw,
            groups: Some(&bgrp),
            losses: &losses,
            dlogits: &dlogits,
            partials: &partials,
            stats: &stats,
        };
        xent::fused(c.gpu, &bufs, n, k, ng, inv_wsum)?;
        let p = XentParams {
            n: n as u32,
            k: k as u32,
            inv_wsum,
            num_groups: ng as u32,
            blocks: blocks as u32,
            per_block: xent::XENT_THREADS,
            ..Default::default()
        };
        let (mut wl, mut wd, mut wp) = (
            vec![0.0; n],
            vec![0.0; n * k],
            vec![0.0; blocks * XENT_STATS],
        );
        xent_fused_f32(
            &p,
            &logits,
            &labels,
            &weights,
            Some(&groups),
            &mut wl,
            &mut wd,
            &mut wp,
        );
        let (rel, abs, sum_abs) = (1e-4, 1e-5, 1e-5 * n as f64);
        let got_p = c.read(&partials, blocks * XENT_STATS)?;
        let mut r = Cmp::new();
        r.f32s(&c.read(&losses, n)?, &wl, rel, abs)
            .f32s(&c.read(&dlogits, n * k)?, &wd, rel, abs)
            .f32s(&got_p, &wp, rel, sum_abs);
        let t = format!("{}; sums abs {sum_abs:.1e}", tol(rel, abs));
        c.row(&xent::xent_fused_f32, &shape, t, &r);

        // The reduction, on the device's own partials (so it is checked on its own).
        let mut ws = vec![0.0; XENT_STATS];
        xent_reduce_f32(&p, &got_p, &mut ws);
        let r = Cmp::new()
            .f32s(&c.read(&stats, XENT_STATS)?, &ws, rel, sum_abs)
            .clone();
        c.row(&xent::xent_reduce_f32, &shape, tol(rel, sum_abs), &r);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
