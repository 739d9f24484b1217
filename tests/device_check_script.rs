//! `scripts/device-check.sh --dry-run` on a machine without a GPU: it lists its stages with their
//! time limits (within the 8-minute budget) and checks that the kit (binary, kernel export, data)
//! and PyTorch are present, naming whatever is missing and how to make it.

use rest::device::gpu::kernel_store::source_hash;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script(kit: &Path, python: &Path) -> (i32, String) {
    let out = Command::new("bash")
        .arg("scripts/device-check.sh")
        .arg("--dry-run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("REST_DEVICE_KIT", kit)
        .env("PYTHON", python)
        .output()
        .expect("bash runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rest-dcs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `python` that answers `import torch` with a version when `torch` is true, else fails it.
fn fake_python(dir: &Path, torch: bool) -> PathBuf {
    let p = dir.join(if torch { "py-torch" } else { "py-none" });
    let body = if torch {
        "echo 2.9.0+fake"
    } else {
        "echo 'No module named torch' >&2; exit 1"
    };
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    p
}

/// A kit like device-prep.sh's: the built binary, a kernel manifest with `hash`, MNIST files.
fn fake_kit(dir: &Path, hash: &str) -> PathBuf {
    let kit = dir.join("kit");
    std::fs::create_dir_all(kit.join("kernels")).unwrap();
    std::fs::create_dir_all(kit.join("data/mnist")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_rest"), kit.join("rest")).unwrap();
    std::fs::write(
        kit.join("kernels/manifest.json"),
        format!(
            "{{\n  \"format\": \"rest-kernels/1\",\n  \"source_hash\": \"{hash}\",\n  \
             \"rest_version\": \"0\",\n  \"entries\": []\n}}"
        ),
    )
    .unwrap();
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(kit.join(format!("data/mnist/{f}.gz")), b"").unwrap();
    }
    std::fs::write(
        kit.join("kit.json"),
        "{\"commit\": \"test\", \"glibc_min\": \"2.34\"}",
    )
    .unwrap();
    kit
}

#[test]
fn lists_stages_with_limits_within_eight_minutes() {
    let d = temp("stages");
    let (code, text) = script(&d.join("no-kit"), &fake_python(&d, true));
    for stage in [
        "preflight",
        "device",
        "nvrtc",
        "check",
        "data",
        "epoch-gpu",
        "epoch-cpu",
        "bench",
        "torch",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("stage {stage} not listed: {text}"));
        let secs: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(secs > 0, "{line}");
    }
    let total: u32 = text
        .split("limits add up to ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total: {text}"));
    assert!(
        total <= 450,
        "stage limits {total} s leave no margin under 8 minutes"
    );
    // With no kit, it names each missing part and how to make it, and fails.
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("rest binary") && text.contains("device-prep.sh"),
        "{text}"
    );
    assert!(text.contains("kernel export"), "{text}");
    assert!(text.contains("MNIST"), "{text}");
}

#[test]
fn a_complete_kit_passes_the_dry_run() {
    let d = temp("complete");
    let kit = fake_kit(&d, &source_hash());
    let (code, text) = script(&kit, &fake_python(&d, true));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("PyTorch 2.9.0+fake: present"), "{text}");
    assert!(text.contains("dry run, nothing started"), "{text}");
}

#[test]
fn a_foreign_export_or_missing_torch_is_named() {
    let d = temp("foreign");
    let kit = fake_kit(&d, "0123456789abcdef");
    let (code, text) = script(&kit, &fake_python(&d, false));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("other kernel sources"), "{text}");
    assert!(text.contains("PyTorch"), "{text}");
    assert!(!text.contains("rest binary"), "the binary is there: {text}");
}
