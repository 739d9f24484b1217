//! Finding NVRTC of CUDA 12 or 13, and `rest device` on a machine without a GPU. No NVRTC or GPU
//! needed: discovery is checked on fake library files (they are found, not compiled with).

mod common;

use rest::device::gpu::nvrtc::{find_in_dirs, Found};
use std::path::PathBuf;

fn dir_with(tag: &str, files: &[&str]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rest-nvrtc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in files {
        std::fs::write(d.join(f), b"not a library").unwrap();
    }
    d
}

#[test]
fn finds_nvrtc_12_and_13_in_folders() {
    let cu12 = dir_with("cu12", &["libnvrtc.so.12", "libnvrtc-builtins.so.12.8"]);
    let cu13 = dir_with("cu13", &["libnvrtc.so.13"]);
    let both = dir_with("both", &["libnvrtc.so.12", "libnvrtc.so.13"]);
    let empty = dir_with("none", &["libnvrtc.so", "libnvrtc.so.11.2"]);
    let found =
        |dirs: &[&PathBuf]| find_in_dirs(&dirs.iter().map(|d| d.to_path_buf()).collect::<Vec<_>>());
    assert_eq!(
        found(&[&cu12]),
        Some(Found {
            path: cu12.join("libnvrtc.so.12"),
            major: 12
        })
    );
    assert_eq!(found(&[&cu13]).unwrap().major, 13);
    // Folders are searched in order; within one, 13 before 12.
    assert_eq!(found(&[&empty, &cu12, &cu13]).unwrap().major, 12);
    assert_eq!(found(&[&cu13, &cu12]).unwrap().major, 13);
    assert_eq!(found(&[&both]).unwrap().major, 13);
    // Neither an unversioned name nor another major counts.
    assert_eq!(found(&[&empty]), None);
}

#[test]
fn a_broken_nvrtc_in_rest_nvrtc_dir_is_named_not_a_panic() {
    let fake = dir_with("fake12", &["libnvrtc.so.12"]);
    let (code, text) = common::run(
        &["device", "--device", "cpu"],
        &[("REST_NVRTC_DIR", fake.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("NVRTC: not found")
            && text.contains("libnvrtc.so.12")
            && text.contains("does not load"),
        "{text}"
    );
    // Exporting needs a working NVRTC: an error naming it, not a panic.
    let out = std::env::temp_dir().join(format!("rest-nvrtc-out-{}", std::process::id()));
    let (code, text) = common::run(
        &["device", "--export-kernels", out.to_str().unwrap()],
        &[("REST_NVRTC_DIR", fake.to_str().unwrap())],
    );
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("needed") && text.contains("libnvrtc.so.12"),
        "{text}"
    );
}

fn no_driver() -> bool {
    rest::device::gpu::driver::probe().is_err()
}

#[test]
fn without_a_gpu_rest_device_says_so_and_cuda_is_an_error() {
    if !no_driver() {
        eprintln!("SKIPPED: this machine has a CUDA driver");
        return;
    }
    let (code, text) = common::run(&["device"], &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no GPU"), "{text}");
    assert!(text.contains("backend: cpu"), "{text}");
    for dev in ["cuda", "cuda:1"] {
        let (code, text) = common::run(&["device", "--device", dev], &[]);
        assert_ne!(code, 0, "{text}");
        assert!(
            text.contains("--device cuda") && text.contains("libcuda"),
            "{dev}: {text}"
        );
    }
    // A kernel folder does not stand in for a GPU either.
    let (code, text) = common::run(
        &["device", "--device", "cuda", "--check"],
        &[("REST_KERNEL_DIR", "/nonexistent")],
    );
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("libcuda"), "{text}");
}

/// The PyPI wheels' folders come from asking `python3` where the `nvidia` package lives: a fake
/// `python3` first on PATH points at a folder laid out like the CUDA 12 wheel (PyTorch's) or the
/// CUDA 13 wheel, and `rest device` names the (fake, so unloadable) library it found there.
#[test]
fn finds_the_cuda12_and_cuda13_wheel_folders_through_python() {
    if std::path::Path::new("/usr/local/cuda/lib64").exists() {
        eprintln!("SKIPPED: /usr/local/cuda/lib64 exists and is searched before the wheels");
        return;
    }
    for (tag, sub, lib) in [
        ("wheel12", "cuda_nvrtc/lib", "libnvrtc.so.12"),
        ("wheel13", "cu13/lib", "libnvrtc.so.13"),
    ] {
        let root = dir_with(tag, &[]);
        let libdir = root.join("site/nvidia").join(sub);
        std::fs::create_dir_all(&libdir).unwrap();
        std::fs::write(libdir.join(lib), b"not a library").unwrap();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let py = bin.join("python3");
        std::fs::write(
            &py,
            format!("#!/bin/sh\necho {}\n", root.join("site/nvidia").display()),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&py)
            .status()
            .unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rest"))
            .args(["device", "--device", "cpu"])
            .env("PATH", path)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("REST_NVRTC_DIR")
            .env_remove("CUDA_HOME")
            .env_remove("CUDA_PATH")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains("panicked"), "{text}");
        let expected = libdir.join(lib).display().to_string();
        assert!(
            text.contains(&expected) && text.contains("does not load"),
            "{tag}: expected {expected} in: {text}"
        );
    }
}
