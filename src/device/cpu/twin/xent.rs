//! CPU twins of kernels/xent.cu: the cross-entropy of `device::cpu::xent` on class-major logits
//! [K, N], with the kernel's per-block partial statistics and their reduction.

pub use crate::device::gpu::kernels::xent::{XentParams, XENT_MAX_GROUPS, XENT_STATS};

/// Per-sample losses, dlogits [K, N] and one partial statistics row per block of
/// `p.per_block` samples (f64 sums). `groups` None: every sample in group 0.
#[allow(clippy::too_many_arguments)]
pub fn xent_fused_f32(
    p: &XentParams,
    logits: &[f32],
    labels: &[u32],
    weights: &[f32],
    groups: Option<&[u32]>,
    losses: &mut [f32],
    dlogits: &mut [f32],
    partials: &mut [f32],
) {
    let (n, k) = (p.n as usize, p.k as usize);
    let per_block = p.per_block as usize;
    let ng = (p.num_groups as usize).min(XENT_MAX_GROUPS);
    assert_eq!(logits.len(), n * k, "xent twin: logits length");
    assert_eq!(dlogits.len(), n * k, "xent twin: dlogits length");
    let blocks = n.div_ceil(per_block);
    assert!(partials.len() >= blocks * XENT_STATS, "xent twin: partials");
    let mut rows = vec![[0f64; XENT_STATS]; blocks];
    for i in 0..n {
        let x = |c: usize| logits[c * n + i];
        // argmax_rows: the first strict maximum.
        let (mut mx, mut pred) = (f32::NEG_INFINITY, 0usize);
        for c in 0..k {
            if x(c) > mx {
                (mx, pred) = (x(c), c);
            }
        }
        let sum: f64 = (0..k).map(|c| ((x(c) - mx).exp()) as f64).sum();
        let label = labels[i] as usize;
        let xl = if label < k { x(label) as f64 } else { f64::NAN };
        let loss = mx as f64 + sum.ln() - xl;
        losses[i] = loss as f32;
        let scale = weights[i] as f64 * p.inv_wsum as f64;
        let norm = (scale / sum) as f32;
        for c in 0..k {
            let mut d = (x(c) - mx).exp() * norm;
            if c == label {
                d -= scale as f32;
            }
            dlogits[c * n + i] = d;
        }
        let row = &mut rows[i / per_block];
        row[0] += weights[i] as f64 * loss;
        let g = groups.map_or(0, |g| g[i] as usize);
        if g < ng {
            row[1 + 3 * g] += loss;
            row[2 + 3 * g] += (pred == label) as u32 as f64;
            row[3 + 3 * g] += 1.0;
        }
    }
    for (b, row) in rows.iter().enumerate() {
        for (o, &v) in partials[b * XENT_STATS..][..XENT_STATS].iter_mut().zip(row) {
            *o = v as f32;
        }
    }
}

/// stats[s] = Σ over the `p.blocks` partial rows (f64), stats[0] scaled by inv_wsum.
pub fn xent_reduce_f32(p: &XentParams, partials: &[f32], stats: &mut [f32]) {
    for (s, o) in stats.iter_mut().enumerate().take(XENT_STATS) {
        let t: f64 = (0..p.blocks as usize)
            .map(|b| partials[b * XENT_STATS + s] as f64)
            .sum();
        *o = if s == 0 { t * p.inv_wsum as f64 } else { t } as f32;
    }
}
