//! A Slurm array job for a grid: one array task per run, each running just its run into the
//! shared results folder (`rest reproduce … --task-index $SLURM_ARRAY_TASK_ID`).

use std::path::Path;

/// Quotes a word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The sbatch script. `reproduce_args` are the `rest reproduce` arguments that rebuild the same
/// grid (with `--results` already absolute); `sbatch` are extra `#SBATCH` options.
pub fn script(
    exe: &Path,
    reproduce_args: &[String],
    runs: usize,
    results: &Path,
    job_name: &str,
    sbatch: &[String],
) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("#SBATCH --job-name={job_name}\n");
    s += &format!("#SBATCH --array=0-{}\n", runs.saturating_sub(1));
    s += &format!("#SBATCH --output={}/slurm/%A_%a.out\n", results.display());
    for o in sbatch {
        s += &format!("#SBATCH {o}\n");
    }
    s += "# One array task per run of the grid; each writes <results>/runs/<key>/ and skips a\n";
    s += "# finished run, so resubmitting the script only runs what is missing.\n";
    s += &format!(
        "# Afterwards: rest reproduce <dataset> --collect {} (tables and plots)\n",
        shell_quote(&results.display().to_string())
    );
    s += "set -euo pipefail\n";
    let mut cmd = vec![shell_quote(&exe.display().to_string()), "reproduce".into()];
    cmd.extend(reproduce_args.iter().map(|a| shell_quote(a)));
    cmd.push("--task-index".into());
    cmd.push("\"$SLURM_ARRAY_TASK_ID\"".into());
    s += &format!("exec {}\n", cmd.join(" "));
    s
}
