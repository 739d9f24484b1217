//! `rest reproduce` and signals (Linux): its child `rest train` processes die with it, and a
//! child killed by a signal is recorded as such.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rest-repro-sig-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `rest reproduce` on synthetic runs that take far longer than the test (about half a
/// second per epoch), into `results`.
fn start(results: &Path, methods: &str, workers: &str) -> Child {
    common::command()
        .args([
            "reproduce",
            "synthetic",
            "--methods",
            methods,
            "--densities",
            "0.05",
            "--seeds",
            "41",
            "--ratios",
            "5",
            "--epochs",
            "100",
            "--synthetic-train",
            "20000",
            "--width",
            "16",
            "--workers",
            workers,
            "--quiet",
            "--results",
            results.to_str().unwrap(),
        ])
        .env("REST_DEVICE", "cpu")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The live `rest train` processes writing under `results` (from /proc/*/cmdline; a zombie's
/// is empty).
fn trainers(results: &Path) -> Vec<i32> {
    let needle = results.display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).is_some_and(|a| a == "train") && args.iter().any(|a| a.contains(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `ok` every 50 ms for up to `secs` seconds.
fn wait_for(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok()
}

/// How many runs have started training (written their config.json).
fn started(results: &Path) -> usize {
    std::fs::read_dir(results.join("runs")).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().join("config.json").is_file())
            .count()
    })
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[test]
fn children_die_with_reproduce() {
    let results = tmp("orphans");
    let mut reproduce = start(&results, "vanilla,rest", "2");
    let both = wait_for(20, || {
        started(&results) == 2 && trainers(&results).len() == 2
    });
    let before = trainers(&results);
    // SIGKILL: reproduce gets no chance to clean up; only the kernel can end its children.
    reproduce.kill().unwrap();
    reproduce.wait().unwrap();
    let gone = wait_for(5, || trainers(&results).is_empty());
    let left = trainers(&results);
    for &pid in &left {
        kill(pid, libc::SIGKILL);
    }
    assert!(both, "the two runs did not start: {before:?}");
    assert!(
        gone,
        "rest train processes {left:?} outlived their rest reproduce (of {before:?})"
    );
}

#[test]
fn a_child_killed_by_a_signal_is_recorded_as_such() {
    let results = tmp("killed");
    let reproduce = start(&results, "vanilla", "1");
    let running = wait_for(20, || {
        started(&results) == 1 && trainers(&results).len() == 1
    });
    let child = trainers(&results);
    for &pid in &child {
        kill(pid, libc::SIGKILL);
    }
    let out = reproduce.wait_with_output().unwrap();
    assert!(running, "the run did not start");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let error = text
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {text}"));
    assert!(
        error.contains("failed.json: killed by signal 9 (SIGKILL)"),
        "{error}"
    );
    let run = std::fs::read_dir(results.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let f: rest::reproduce::runner::Failure =
        serde_json::from_str(&std::fs::read_to_string(run.join("failed.json")).unwrap()).unwrap();
    assert_eq!((f.exit_code, f.signal), (None, Some(9)));
    let md = std::fs::read_to_string(results.join("results.md")).unwrap();
    assert!(md.contains("killed by signal 9 (SIGKILL)"), "{md}");
}
