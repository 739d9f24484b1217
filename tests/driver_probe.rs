//! The driver probe against fake `libcuda.so.1` libraries (built here with the C compiler): a
//! driver too old, or one missing symbols cudarc would call, is named with the fix — never a
//! panic — and `--device auto` falls back to the CPU saying why.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds a fake driver library in its own folder: `cuDriverGetVersion` reporting `version`,
/// plus `cuInit` when `with_init`.
fn fake_driver(tag: &str, version: i32, with_init: bool) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rest-fakecuda-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut src = format!("int cuDriverGetVersion(int *v) {{ *v = {version}; return 0; }}\n");
    if with_init {
        src.push_str("int cuInit(unsigned flags) { (void)flags; return 0; }\n");
    }
    std::fs::write(dir.join("fake.c"), src).unwrap();
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libcuda.so.1"))
        .arg(dir.join("fake.c"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: no C compiler (cc) to build a fake libcuda.so.1");
        return None;
    }
    Some(dir)
}

fn with_driver(dir: &Path, args: &[&str]) -> (i32, String) {
    common::run(args, &[("LD_LIBRARY_PATH", dir.to_str().unwrap())])
}

#[test]
fn a_driver_missing_symbols_is_named_not_a_panic() {
    let Some(dir) = fake_driver("nosyms", 13000, true) else {
        return;
    };
    let (code, text) = with_driver(&dir, &["device"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("lacks") && text.contains("cuDeviceGetCount") && text.contains("update"),
        "{text}"
    );
    assert!(!text.contains("lacks cuInit"), "cuInit exists: {text}");
    assert!(
        text.contains("backend: cpu"),
        "auto falls back to the CPU: {text}"
    );
    let (code, text) = with_driver(&dir, &["device", "--device", "cuda"]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("--device cuda:0") && text.contains("lacks"),
        "{text}"
    );
}

#[test]
fn a_driver_older_than_cuda_12_is_named_with_the_fix() {
    let Some(dir) = fake_driver("old", 11080, false) else {
        return;
    };
    let (code, text) = with_driver(&dir, &["device", "--device", "cuda", "--check"]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("supports CUDA 11.8") && text.contains("update the driver"),
        "{text}"
    );
}
