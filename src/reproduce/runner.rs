//! Runs the grid: each run a child `rest train` process into `<results>/runs/<key>/`, skipped when
//! its summary.json exists, resumed when it has a checkpoint, recorded (not fatal) when it fails.

use super::grid::RunSpec;
use crate::checkpoint::{write_atomic, LAST};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub const SPEC: &str = "spec.json";
pub const SUMMARY: &str = "summary.json";
pub const FAILED: &str = "failed.json";
pub const STDERR: &str = "stderr.log";
pub const INDEX: &str = "index.json";

/// Where a run stands before it is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// summary.json exists: nothing to do.
    Done,
    /// A checkpoint but no summary: continue with `--resume`.
    Resumable,
    /// Nothing yet.
    Fresh,
}

pub fn run_dir(results: &Path, key: &str) -> PathBuf {
    results.join("runs").join(key)
}

pub fn state(dir: &Path) -> RunState {
    if dir.join(SUMMARY).is_file() {
        RunState::Done
    } else if dir.join(LAST).is_file() {
        RunState::Resumable
    } else {
        RunState::Fresh
    }
}

/// What happened to a run in this call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Skipped,
    Trained,
    Resumed,
    Failed,
}

/// failed.json: why a run did not finish.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub key: String,
    pub exit_code: Option<i32>,
    pub command: Vec<String>,
    /// The last lines of the child's standard error.
    pub stderr_tail: String,
}

/// Options that do not change a run's result.
#[derive(Clone, Debug)]
pub struct Exec {
    /// The `rest` executable to run children with.
    pub exe: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub workers: usize,
    pub progress: bool,
}

/// The last `max` bytes of a text, starting at a line boundary when one is near.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let t = &text[start..];
    match t.find('\n') {
        Some(i) if i + 1 < t.len() => t[i + 1..].to_string(),
        _ => t.to_string(),
    }
}

/// The full command line of a run in `dir`, given its state.
pub fn command_for(spec: &RunSpec, dir: &Path, st: RunState, exec: &Exec) -> Vec<String> {
    let mut a = vec![exec.exe.display().to_string()];
    if st == RunState::Resumable {
        a.extend(["train".into(), "--resume".into(), dir.display().to_string()]);
        if let Some(n) = spec.synthetic_train {
            a.extend(["--synthetic-train".into(), n.to_string()]);
        }
    } else {
        a.extend(spec.train_args());
        a.extend(["--out".into(), dir.display().to_string()]);
    }
    if let Some(d) = &exec.data_dir {
        a.extend(["--data-dir".into(), d.display().to_string()]);
    }
    a.push("--quiet".into());
    a
}

/// Runs one grid entry to completion (or failure). Errors are only for the harness itself
/// (cannot write the results folder); a failing child is an `Outcome::Failed`.
pub fn run_one(spec: &RunSpec, results: &Path, exec: &Exec) -> Result<Outcome> {
    let key = spec.key();
    let dir = run_dir(results, &key);
    let st = state(&dir);
    if st == RunState::Done {
        return Ok(Outcome::Skipped);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(
        &dir.join(SPEC),
        serde_json::to_string_pretty(spec)?.as_bytes(),
    )?;
    let cmd = command_for(spec, &dir, st, exec);
    let stderr_path = dir.join(STDERR);
    let stderr = std::fs::File::create(&stderr_path)
        .with_context(|| format!("cannot write {}", stderr_path.display()))?;
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .status();
    let (ok, code, extra) = match status {
        Ok(s) => (s.success(), s.code(), String::new()),
        Err(e) => (false, None, format!("cannot start {}: {e}\n", cmd[0])),
    };
    if ok && dir.join(SUMMARY).is_file() {
        let _ = std::fs::remove_file(dir.join(FAILED));
        return Ok(if st == RunState::Resumable {
            Outcome::Resumed
        } else {
            Outcome::Trained
        });
    }
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default() + &extra;
    let mut stderr_tail = tail(&text, 4000);
    if ok {
        stderr_tail += "\n(the child exited 0 but wrote no summary.json)";
    }
    let failure = Failure {
        key,
        exit_code: code,
        command: cmd,
        stderr_tail,
    };
    write_atomic(
        &dir.join(FAILED),
        serde_json::to_string_pretty(&failure)?.as_bytes(),
    )?;
    Ok(Outcome::Failed)
}

/// One line of index.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexEntry {
    pub key: String,
    pub spec: RunSpec,
    pub outcome: Outcome,
}

/// Runs every spec, up to `exec.workers` at once, with a progress bar over runs; writes
/// `<results>/index.json`. Returns the outcome of each spec, in order.
pub fn run_grid(specs: &[RunSpec], results: &Path, exec: &Exec) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(results.join("runs"))
        .with_context(|| format!("cannot create {}", results.display()))?;
    let bar = if exec.progress {
        let b = indicatif::ProgressBar::new(specs.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "runs [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; specs.len()]);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let failed = AtomicUsize::new(0);
    let workers = exec.workers.clamp(1, specs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= specs.len() || first_error.lock().unwrap().is_some() {
                    break;
                }
                let key = specs[i].key();
                bar.set_message(key.clone());
                let t0 = Instant::now();
                match run_one(&specs[i], results, exec) {
                    Ok(o) => {
                        if o == Outcome::Failed {
                            failed.fetch_add(1, Ordering::SeqCst);
                            bar.suspend(|| {
                                eprintln!(
                                    "run {key} failed: see {}",
                                    run_dir(results, &key).join(FAILED).display()
                                )
                            });
                        } else if o != Outcome::Skipped && !exec.progress {
                            // Without a bar, say something per finished run (logs, Slurm).
                            eprintln!("run {key}: {o:?} in {:.0} s", t0.elapsed().as_secs_f64());
                        }
                        outcomes.lock().unwrap()[i] = Some(o);
                    }
                    Err(e) => {
                        first_error.lock().unwrap().get_or_insert(e);
                    }
                }
                bar.set_prefix(format!("{} failed", failed.load(Ordering::SeqCst)));
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    let outcomes: Vec<Outcome> = outcomes
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|o| o.expect("every run was visited"))
        .collect();
    let index: Vec<IndexEntry> = specs
        .iter()
        .zip(&outcomes)
        .map(|(s, o)| IndexEntry {
            key: s.key(),
            spec: s.clone(),
            outcome: o.clone(),
        })
        .collect();
    write_atomic(
        &results.join(INDEX),
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )?;
    Ok(outcomes)
}
