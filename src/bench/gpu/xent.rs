//! `rest bench gpu`, xent section: the fused cross-entropy's bandwidth against a plain copy
//! kernel's (`elementwise_scale_f32`) over the same number of logits.

use super::timing::{uniform, Plan, Timer};
use crate::device::gpu::kernels::{elementwise as ew, xent};
use crate::rng::Rng;
use anyhow::Result;

#[derive(Clone, Debug, serde::Serialize)]
pub struct XentRow {
    pub n: usize,
    pub k: usize,
    pub xent_ms: f64,
    /// Bytes the fused kernel and its reduction touch (logits and dlogits, labels, weights,
    /// groups, losses, partials), per second, in 10⁹.
    pub xent_gbs: f64,
    /// y = α·x over N·K floats (8 bytes per float).
    pub copy_ms: f64,
    pub copy_gbs: f64,
    /// xent_gbs / copy_gbs.
    pub ratio: f64,
}

pub(super) fn section(timer: &Timer, plan: &Plan, rng: &mut Rng) -> Result<Vec<XentRow>> {
    let gpu = timer.gpu;
    println!("\n== fused cross-entropy against a copy of the same logits ==");
    println!(
        "{:>8} {:>4} | {:>9} {:>8} | {:>9} {:>8} | {:>6}",
        "N", "K", "xent ms", "GB/s", "copy ms", "GB/s", "ratio"
    );
    let mut rows = Vec::new();
    for &(n, k) in &plan.xent {
        let logits = gpu.upload(&uniform(rng, n * k))?;
        let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| if i % 50 == 0 { 80.0 } else { 1.0 })
            .collect();
        let groups: Vec<u32> = (0..n).map(|i| (i % 50 == 0) as u32).collect();
        let inv_wsum = (1.0 / weights.iter().map(|&w| w as f64).sum::<f64>()) as f32;
        let (bl, bw, bg) = (
            gpu.upload(&labels)?,
            gpu.upload(&weights)?,
            gpu.upload(&groups)?,
        );
        let losses = gpu.zeros::<f32>(n)?;
        let dlogits = gpu.zeros::<f32>(n * k)?;
        let partials = gpu.zeros::<f32>(xent::partials_len(n))?;
        let stats = gpu.zeros::<f32>(xent::XENT_STATS)?;
        let bufs = xent::XentBufs {
            logits: &logits,
            labels: &bl,
            weights: &bw,
            groups: Some(&bg),
            losses: &losses,
            dlogits: &dlogits,
            partials: &partials,
            stats: &stats,
        };
        let t_x = timer.time(|| xent::fused(gpu, &bufs, n, k, 2, inv_wsum))?;
        // logits in, dlogits out; labels, weights, groups in, losses out; partials out and in.
        let xbytes = (2 * n * k + 4 * n + 2 * xent::partials_len(n)) as f64 * 4.0;
        let out = gpu.zeros::<f32>(n * k)?;
        let t_c = timer.time(|| ew::scale(gpu, &logits, &out, 1.0, n * k))?;
        let cbytes = (2 * n * k) as f64 * 4.0;
        let (xg, cg) = (xbytes / t_x / 1e9, cbytes / t_c / 1e9);
        println!(
            "{:>8} {:>4} | {:>9.4} {:>8.1} | {:>9.4} {:>8.1} | {:>6.2}",
            n,
            k,
            t_x * 1e3,
            xg,
            t_c * 1e3,
            cg,
            xg / cg
        );
        rows.push(XentRow {
            n,
            k,
            xent_ms: t_x * 1e3,
            xent_gbs: xg,
            copy_ms: t_c * 1e3,
            copy_gbs: cg,
            ratio: xg / cg,
        });
    }
    Ok(rows)
}
