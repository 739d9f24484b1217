//! What the command-line tests share: running the built binary and reading its output.
#![allow(dead_code)] // each test binary uses a part of it

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh working directory for one run of the binary, holding what earlier commands leave in a
/// checkout: a `runs/` folder with the default run folders of `rest train` (a checkpoint in each,
/// not a valid one), and a `datasets/` folder whose MNIST and caches are junk. A test that reads
/// or writes the working directory's runs/ or datasets/ (instead of the folders it passes)
/// meets them and fails.
pub fn stale_cwd() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rest-test-cwd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    for run in [
        "synthetic-rest-r1-d0.05-s41",
        "synthetic-vanilla-r1-d1-s41",
        "cmnist-rest-r1-d0.05-s41",
    ] {
        let d = dir.join("runs").join(run);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("last.safetensors"), b"stale").unwrap();
        std::fs::write(d.join("config.json"), b"{}").unwrap();
    }
    for sub in [
        "mnist",
        "cmnist/cache/1pct-sev4-seed0",
        "cifar-10-batches-bin",
    ] {
        std::fs::create_dir_all(dir.join("datasets").join(sub)).unwrap();
    }
    std::fs::write(dir.join("datasets/mnist/train-images-idx3-ubyte"), b"stale").unwrap();
    std::fs::write(
        dir.join("datasets/cmnist/cache/1pct-sev4-seed0/train.bin"),
        b"x",
    )
    .unwrap();
    dir
}

/// The cache folder the tests' runs use (`REST_CACHE_DIR`): calibrations land here, not in the
/// user's ~/.cache.
pub fn cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("rest-test-cache-{}", std::process::id()))
}

/// The built `rest`, run in a fresh `stale_cwd()`, with REST_DEVICE and REST_DATA_DIR unset and
/// the cache folder in a temporary directory.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rest"));
    cmd.current_dir(stale_cwd())
        .env_remove("REST_DEVICE")
        .env_remove("REST_DATA_DIR")
        .env("REST_CACHE_DIR", cache_dir());
    cmd
}

/// Runs the built `rest` (see `command`) with `args` and then the variables of `env` set;
/// returns (exit code, stderr + stdout). A panic in the output fails the calling test.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    // The working directory was this command's alone: what it left there goes with it.
    if let Some(cwd) = cmd.get_current_dir() {
        let _ = std::fs::remove_dir_all(cwd);
    }
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("panicked"), "panic on {args:?}: {text}");
    (out.status.code().unwrap_or(-1), text)
}

/// `run` without environment changes: (success, stderr + stdout).
pub fn rest(args: &[&str]) -> (bool, String) {
    let (code, text) = run(args, &[]);
    (code == 0, text)
}

/// Asserts that `args` fail with a message containing `needle`.
pub fn fails_with(args: &[&str], needle: &str) {
    let (ok, text) = rest(args);
    assert!(!ok, "{args:?} should fail: {text}");
    assert!(
        text.contains(needle),
        "{args:?}: expected '{needle}' in: {text}"
    );
}

/// Where the tests on real data find MNIST and Colored MNIST: `$REST_TEST_DATA_DIR`, else the
/// checkout's `datasets/` (where `.ci/run` makes them). Passed explicitly, never taken from the
/// working directory.
pub fn real_data_dir() -> PathBuf {
    match std::env::var_os("REST_TEST_DATA_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets"),
    }
}

/// A fresh, empty temporary folder for one test (named by `tag`, the process and the time).
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("rest-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
