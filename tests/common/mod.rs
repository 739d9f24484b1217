//! What the command-line tests share: running the built binary and reading its output.
#![allow(dead_code)] // each test binary uses a part of it

use std::process::Command;

/// Runs the built `rest` with `args`, REST_DEVICE unset and then the variables of `env` set;
/// returns (exit code, stderr + stdout). A panic in the output fails the calling test.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rest"));
    cmd.args(args).env_remove("REST_DEVICE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
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
