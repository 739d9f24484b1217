//! Option checks that `rest bench cpu`, `memory` and `gpu` share, run before anything is measured.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

/// Checks the options `bench cpu` and `bench memory` share, before anything runs.
pub fn check_run(densities: &[f64], steps: usize, batch: usize) -> Result<()> {
    ensure!(steps > 0, "--steps must be ≥ 1, got {steps}");
    ensure!(batch > 1, "--batch must be ≥ 2, got {batch}");
    if let Some(d) = densities.iter().find(|&&d| !(d > 0.0 && d <= 1.0)) {
        bail!("--densities must be in (0, 1], got {d}");
    }
    Ok(())
}

/// Checks a `--json` path before a bench runs, so a bad one fails at once rather than after
/// the measurements: it must not be a directory, and its folder must exist (it is created
/// here when missing).
pub fn check_json_path(path: &Path) -> Result<()> {
    ensure!(
        !path.is_dir(),
        "--json {}: is a directory; give a file name",
        path.display()
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure!(
            !dir.exists() || dir.is_dir(),
            "--json {}: {} is not a directory",
            path.display(),
            dir.display()
        );
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--json {}: cannot create its folder", path.display()))?;
    }
    // The file is written atomically through its temporary name at the end: try that now.
    let probe = crate::checkpoint::temp_path(path)?;
    std::fs::File::create(&probe)
        .with_context(|| format!("--json {}: cannot write there", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
