//! `rest device --check`: every kernel against its CPU twin on random inputs, on the device the
//! user chose (a real GPU, or the emulator). The compact self-check a user runs on a new machine;
//! the exhaustive edge cases stay in tests/gpu_*.rs.
//!
//! Each case uploads random inputs (a fixed seed per run), poisons every output buffer with 0xFF
//! bytes (NaN for f32, u32::MAX for indices) before the launch, runs the kernel through its launch
//! wrapper, runs the twin on the same inputs, and compares element-wise:
//! |kernel − twin| ≤ abs + rel·|twin|, NaN only where the twin has NaN. Tolerances are stated per
//! kernel and sized for a real GPU (f32 tree sums and fused multiply-adds against the twins' f64
//! sums, libdevice `expf`/`logf`), as in the family tests:
//! - elementwise, optim, max-pool, average-pool backward: exact (one correctly rounded f32
//!   operation per element, or comparisons and copies);
//! - convolutions: rel 1e-4, abs 1e-5·L, L the reduction length of the output;
//! - batch norm: rel 1e-4, abs 1e-5 (channel sums dγ, dβ: abs 1e-5 + 1e-6·Σ|term|);
//! - cross-entropy: rel 1e-4, abs 1e-5 (statistics sums: abs 1e-5·N);
//! - global average pool forward: rel 1e-5, abs 1e-6;
//! - topology update (topk): exact, every buffer, workspace included. Each launch of the update's
//!   plan is checked on its own: the twin starts from the device's state just before that launch.
//!   The batched update likewise, on three layers at once (each layer's workspace slice).
//!
//! Each family's check lives beside its launch wrappers (`kernels/NAME_check.rs` next to
//! `kernels/NAME.rs`); the checker they share is `checker.rs`.

pub use super::checker::CheckRow;
use super::checker::Checker;
use super::{kernels, Gpu};
use crate::rng::Rng;
use anyhow::{Context, Result};

/// Runs every kernel against its twin on `gpu` (inputs drawn from `seed`). One row per kernel and
/// shape; an `Err` only when the device itself fails (allocation, compilation, launch).
pub fn run(gpu: &Gpu, seed: u64) -> Result<Vec<CheckRow>> {
    let mut c = Checker {
        gpu,
        rng: Rng::new(seed),
        rows: Vec::new(),
    };
    kernels::elementwise_check::check(&mut c).context("checking the elementwise kernels")?;
    kernels::optim_check::check(&mut c).context("checking the SGD kernel")?;
    kernels::pool_check::check(&mut c).context("checking the pooling kernels")?;
    kernels::norm_check::check(&mut c).context("checking the batch-norm kernels")?;
    kernels::xent_check::check(&mut c).context("checking the cross-entropy kernels")?;
    kernels::conv_check::check(&mut c).context("checking the convolution kernels")?;
    kernels::topk_check::check(&mut c).context("checking the topology-update kernels")?;
    kernels::topk_check::check_batched(&mut c)
        .context("checking the batched topology-update kernels")?;
    Ok(c.rows)
}

/// Renders rows as a fixed-width table with a header.
pub fn render(rows: &[CheckRow]) -> String {
    let w = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let s = rows.iter().map(|r| r.shape.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<w$}  {:<s$}  {:>10}  {:>10}  {:<22}  pass\n",
        "kernel", "shape", "max abs", "max rel", "tolerance"
    );
    for r in rows {
        out += &format!(
            "{:<w$}  {:<s$}  {:>10.3e}  {:>10.3e}  {:<22}  {}\n",
            r.kernel,
            r.shape,
            r.max_abs,
            r.max_rel,
            r.tolerance,
            if r.pass { "ok" } else { "FAIL" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::gpu::checker::{Cmp, EXACT};

    #[test]
    fn comparison_applies_the_tolerance_and_catches_poison() {
        let want = [1.0f32, -2.0, 0.0, f32::NAN];
        assert!(Cmp::new().f32s(&want, &want, 0.0, 0.0).pass);
        let off = [1.0f32 + 1e-3, -2.0, 0.0, f32::NAN];
        let r = Cmp::new().f32s(&off, &want, 1e-2, 0.0).clone();
        assert!(r.pass && (r.max_rel - 1e-3).abs() < 1e-5, "{r:?}");
        assert!(!Cmp::new().f32s(&off, &want, 1e-4, 1e-4).pass);
        // An element the kernel never wrote (still poison) fails whatever the tolerance.
        let poisoned = [1.0f32, f32::from_bits(u32::MAX), 0.0, f32::NAN];
        let r = Cmp::new().f32s(&poisoned, &want, 1.0, 1.0).clone();
        assert!(!r.pass && r.max_abs.is_infinite());
        // A NaN where the twin has a number, and a number where the twin has NaN.
        assert!(
            !Cmp::new()
                .f32s(&[1.0, -2.0, 0.0, 0.0], &want, 1.0, 1.0)
                .pass
        );
        assert!(!Cmp::new().f32s(&want[..3], &want, 1.0, 1.0).pass, "length");
        assert!(!Cmp::new().u32s(&[1, 2, u32::MAX], &[1, 2, 3]).pass);
        assert!(!Cmp::new().bits(&[-0.0], &[0.0]).pass);
    }

    #[test]
    fn render_marks_failures() {
        let row = |pass| CheckRow {
            kernel: "k",
            shape: "s".into(),
            max_abs: 0.0,
            max_rel: 0.0,
            tolerance: EXACT.into(),
            pass,
        };
        let t = render(&[row(true), row(false)]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.contains(" ok") && t.contains("FAIL"), "{t}");
    }
}
