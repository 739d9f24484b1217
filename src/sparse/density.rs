//! Layer densities: ERK (default), ER and uniform, with the global density met exactly.

use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum DensityRule {
    /// Erdős–Rényi-Kernel: p_l ∝ (sum of the weight's dimensions) / (product of them).
    Erk,
    /// Erdős–Rényi: like ERK over the first two dimensions only.
    Er,
    /// The same density in every layer.
    Uniform,
}

/// Number of active weights per layer for weight shapes `shapes` ([cout, cin, k, k] or
/// [out, in]) at global density `density` ∈ (0, 1]. Σ result = round(density · Σ numel) exactly;
/// no layer exceeds its size (ERK/ER layers whose density would exceed 1 are made dense and ε is
/// solved again). Errors name the problem for a density outside (0, 1] or an empty shape list.
pub fn layer_nnz(shapes: &[Vec<usize>], density: f64, rule: DensityRule) -> Result<Vec<usize>> {
    let _ = (shapes, density, rule);
    todo!("sparse helper")
}
