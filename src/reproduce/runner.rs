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
    /// The signal that killed the child (Unix), e.g. 9 when the out-of-memory killer or a
    /// SIGKILL ended it. Absent in files written before it was recorded.
    #[serde(default)]
    pub signal: Option<i32>,
    pub command: Vec<String>,
    /// The last lines of the child's standard error.
    pub stderr_tail: String,
}

impl Failure {
    /// How the child ended: "killed by signal 9 (SIGKILL)", "exit code 1", ...
    pub fn how(&self) -> String {
        match (self.signal, self.exit_code) {
            (Some(sig), _) => match signal_name(sig) {
                Some(name) => format!("killed by signal {sig} ({name})"),
                None => format!("killed by signal {sig}"),
            },
            (None, Some(0)) => "exit code 0 but no summary.json".into(),
            (None, Some(code)) => format!("exit code {code}"),
            (None, None) => "no exit code".into(),
        }
    }
}

/// The name of a common signal ("SIGKILL"), None for others.
#[cfg(unix)]
pub fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => return None,
    })
}

#[cfg(not(unix))]
pub fn signal_name(_sig: i32) -> Option<&'static str> {
    None
}

/// The signal that ended a child, if one did.
fn exit_signal(status: &std::process::ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal()
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

/// How the run in `dir` failed, from its failed.json ("killed by signal 9 (SIGKILL)"); None when
/// there is no readable record.
pub fn failure_how(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(FAILED)).ok()?;
    let f: Failure = serde_json::from_str(&text).ok()?;
    Some(f.how())
}

/// On Linux, makes the child get SIGTERM when this process dies (killed, timed out, cancelled by
/// Slurm) instead of training on as an orphan into a folder that a rerun would start over in.
/// The kernel sends it when the *thread* that started the child ends: `run_one` starts and
/// waits for its child on one thread, which so outlives the child.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: prctl, getppid and _exit are plain system calls that take no lock and
    // allocate nothing, `last_os_error` only reads errno, and the closure owns a copied integer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: no signal will come, so stop now.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

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
    let mut child = Command::new(&cmd[0]);
    child
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    die_with_parent(&mut child);
    // Started and waited for on this thread (see `die_with_parent`).
    let status = child.status();
    let (ok, code, signal, extra) = match status {
        Ok(s) => (s.success(), s.code(), exit_signal(&s), String::new()),
        Err(e) => (false, None, None, format!("cannot start {}: {e}\n", cmd[0])),
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
        signal,
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
                            let dir = run_dir(results, &key);
                            let how = failure_how(&dir).map_or(String::new(), |h| format!(", {h}"));
                            bar.suspend(|| {
                                eprintln!(
                                    "run {key} failed{how}: see {}",
                                    dir.join(FAILED).display()
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
