//! `rest device --check` for the SGD kernels (`optim.rs` beside this file): each kernel against its
//! CPU twin (`device::cpu::twin::optim`) on random inputs; tolerances in `device::gpu::check`.

use super::optim;
use crate::device::cpu::twin;
use crate::device::gpu::checker::{Checker, Cmp, EXACT};
use anyhow::Result;

pub(crate) fn check(c: &mut Checker) -> Result<()> {
    for n in [777usize, 70_001] {
        let mut w = c.normal(n, 1.0, 0.0);
        let g = c.normal(n, 0.1, 0.0);
        let mut m = c.normal(n, 0.1, 0.0);
        let p = twin::optim::SgdParams {
            n: n as u32,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..Default::default()
        };
        // In place: the inputs are the outputs, so they cannot be poisoned.
        let (bw, bg, bm) = (c.up(&w)?, c.up(&g)?, c.up(&m)?);
        optim::sgd(c.gpu, &bw, &bg, &bm, n, p.lr, p.momentum, p.weight_decay)?;
        twin::optim::optim_sgd_f32(&p, &mut w, &g, &mut m);
        let mut r = Cmp::new();
        r.bits(&c.read(&bw, n)?, &w).bits(&c.read(&bm, n)?, &m);
        c.row(&optim::optim_sgd_f32, format!("n {n}"), EXACT.into(), &r);
    }
    // Many tensors in one launch, ragged sizes (an empty one and a single value included).
    let sizes = [3000usize, 0, 1, 2048, 2049, 777];
    let mut host: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = sizes
        .iter()
        .map(|&n| {
            (
                c.normal(n, 1.0, 0.0),
                c.normal(n, 0.1, 0.0),
                c.normal(n, 0.1, 0.0),
            )
        })
        .collect();
    let dev = host
        .iter()
        .map(|(w, g, m)| Ok((c.up(w)?, c.up(g)?, c.up(m)?)))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = dev
        .iter()
        .zip(&sizes)
        .map(|((w, g, m), &n)| (w, g, m, n))
        .collect();
    let table = optim::SgdTable::new(c.gpu, &refs)?;
    let p = twin::optim::SgdMultiParams {
        ntensors: sizes.len() as u32,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Default::default()
    };
    optim::sgd_multi(c.gpu, &table, p.lr, p.momentum, p.weight_decay)?;
    let mut tensors: Vec<twin::optim::SgdTensor> = host
        .iter_mut()
        .map(|(w, g, m)| (&mut w[..], &g[..], &mut m[..]))
        .collect();
    twin::optim::optim_sgd_multi_f32(&p, &mut tensors);
    let mut r = Cmp::new();
    for ((w, _, m), (bw, _, bm)) in host.iter().zip(&dev) {
        r.bits(&c.read(bw, w.len())?, w)
            .bits(&c.read(bm, m.len())?, m);
    }
    c.row(
        &optim::optim_sgd_multi_f32,
        format!("{} tensors, n {sizes:?}", sizes.len()),
        EXACT.into(),
        &r,
    );
    Ok(())
}
