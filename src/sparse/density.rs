//! Layer densities: ERK (default), ER and uniform, with the global density met exactly.

use anyhow::{bail, Result};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum DensityRule {
    /// Erdős–Rényi-Kernel: p_l ∝ (sum of the weight's dimensions) / (product of them).
    Erk,
    /// Erdős–Rényi: like ERK over the first two dimensions only.
    Er,
    /// The same density in every layer.
    Uniform,
}

/// The unnormalised ERK/ER score of one shape: (Σ dims) / (Π dims), over all dimensions (ERK)
/// or the first two (ER; a 1-d shape uses its only dimension).
fn raw_score(shape: &[usize], rule: DensityRule) -> f64 {
    let dims = match rule {
        DensityRule::Er => &shape[..shape.len().min(2)],
        _ => shape,
    };
    let sum: f64 = dims.iter().map(|&d| d as f64).sum();
    let prod: f64 = dims.iter().map(|&d| d as f64).product();
    sum / prod
}

/// Per-layer densities p_l before rounding (dense layers get exactly 1). ERK/ER follow the
/// reference: ε = (D·Σn − Σ_dense n) / Σ_sparse raw_l·n_l; while the largest ε·raw_l exceeds 1,
/// the layer(s) with the largest raw score are made dense and ε is solved again.
pub fn layer_densities(shapes: &[Vec<usize>], density: f64, rule: DensityRule) -> Result<Vec<f64>> {
    validate(shapes, density)?;
    let numel: Vec<f64> = shapes
        .iter()
        .map(|s| s.iter().product::<usize>() as f64)
        .collect();
    if density == 1.0 {
        return Ok(vec![1.0; shapes.len()]);
    }
    if rule == DensityRule::Uniform {
        return Ok(vec![density; shapes.len()]);
    }
    let raw: Vec<f64> = shapes.iter().map(|s| raw_score(s, rule)).collect();
    let total: f64 = numel.iter().sum();
    let mut dense = vec![false; shapes.len()];
    loop {
        let dense_n: f64 = (0..shapes.len())
            .filter(|&l| dense[l])
            .map(|l| numel[l])
            .sum();
        let divisor: f64 = (0..shapes.len())
            .filter(|&l| !dense[l])
            .map(|l| raw[l] * numel[l])
            .sum();
        if divisor <= 0.0 {
            // Every layer dense: only possible through rounding at densities next to 1.
            return Ok(vec![1.0; shapes.len()]);
        }
        let eps = (density * total - dense_n) / divisor;
        let max_raw = (0..shapes.len())
            .filter(|&l| !dense[l])
            .map(|l| raw[l])
            .fold(f64::MIN, f64::max);
        if max_raw * eps > 1.0 {
            for l in 0..shapes.len() {
                if !dense[l] && raw[l] == max_raw {
                    dense[l] = true;
                }
            }
            continue;
        }
        return Ok((0..shapes.len())
            .map(|l| {
                if dense[l] {
                    1.0
                } else {
                    (eps * raw[l]).max(0.0)
                }
            })
            .collect());
    }
}

fn validate(shapes: &[Vec<usize>], density: f64) -> Result<()> {
    if density.is_nan() {
        bail!("density is NaN; it must lie in (0, 1]");
    }
    if density <= 0.0 || density > 1.0 {
        bail!("density {density} is outside (0, 1]");
    }
    if shapes.is_empty() {
        bail!("no layers: the list of weight shapes is empty");
    }
    for (l, s) in shapes.iter().enumerate() {
        if s.is_empty() || s.contains(&0) {
            bail!("layer {l} has a zero-size weight shape {s:?}");
        }
        if s.iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none()
        {
            bail!("layer {l}: the weight shape {s:?} overflows usize");
        }
    }
    Ok(())
}

/// Number of active weights per layer for weight shapes `shapes` ([cout, cin, k, k] or
/// [out, in]) at global density `density` ∈ (0, 1]. Σ result = round(density · Σ numel) exactly;
/// no layer exceeds its size (ERK/ER layers whose density would exceed 1 are made dense and ε is
/// solved again). Errors name the problem for a density outside (0, 1] or an empty shape list.
///
/// Rounding: each layer gets ⌊p_l·n_l⌋, and the remaining count goes one by one to the layers
/// of largest fractional remainder (ties: the earlier layer), skipping full layers.
pub fn layer_nnz(shapes: &[Vec<usize>], density: f64, rule: DensityRule) -> Result<Vec<usize>> {
    let p = layer_densities(shapes, density, rule)?;
    let numel: Vec<usize> = shapes.iter().map(|s| s.iter().product::<usize>()).collect();
    let total_numel: usize = numel.iter().sum();
    let target = ((density * total_numel as f64).round() as usize).min(total_numel);
    let exact: Vec<f64> = p
        .iter()
        .zip(&numel)
        .map(|(&p, &n)| (p * n as f64).clamp(0.0, n as f64))
        .collect();
    let mut nnz: Vec<usize> = exact
        .iter()
        .zip(&numel)
        .map(|(&x, &n)| (x.floor() as usize).min(n))
        .collect();
    let mut sum: usize = nnz.iter().sum();
    // Order for adding: largest remainder first; for removing (only after float error): smallest.
    let mut order: Vec<usize> = (0..shapes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    while sum < target {
        let before = sum;
        for &l in &order {
            if sum == target {
                break;
            }
            if nnz[l] < numel[l] {
                nnz[l] += 1;
                sum += 1;
            }
        }
        debug_assert!(sum > before, "target ≤ Σ numel, so some layer has room");
    }
    while sum > target {
        for &l in order.iter().rev() {
            if sum == target {
                break;
            }
            if nnz[l] > 0 {
                nnz[l] -= 1;
                sum -= 1;
            }
        }
    }
    Ok(nnz)
}
