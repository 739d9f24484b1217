//! Bad input on the command line gives a clear error and a non-zero exit, never a panic.

mod common;
use common::{fails_with, rest};

#[test]
fn unknown_flag_is_an_error() {
    fails_with(&["train", "--no-such-flag"], "--no-such-flag");
}

#[test]
fn zero_batch_size_is_an_error() {
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--batch-size",
            "0",
            "--quiet",
        ],
        "batch-size",
    );
}

#[test]
fn bad_density_upweight_and_interval_are_errors() {
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--density",
            "0",
            "--quiet",
        ],
        "density",
    );
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--density",
            "1.5",
            "--quiet",
        ],
        "density",
    );
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--upweight=-1",
            "--quiet",
        ],
        "upweight",
    );
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--update-every",
            "0",
            "--quiet",
        ],
        "update-every",
    );
    fails_with(
        &[
            "train",
            "--method",
            "vanilla",
            "--dataset",
            "synthetic",
            "--density",
            "0.1",
            "--quiet",
        ],
        "--density",
    );
}

#[test]
fn impossible_model_shape_is_an_error() {
    fails_with(
        &["train", "--dataset", "synthetic", "--width", "0", "--quiet"],
        "width",
    );
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--ratio",
            "150",
            "--quiet",
        ],
        "ratio",
    );
}

#[test]
fn cuda_without_a_backend_is_an_error_not_a_fallback() {
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--device",
            "cuda",
            "--quiet",
        ],
        "cuda",
    );
    fails_with(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--device",
            "tpu",
            "--quiet",
        ],
        "unknown device",
    );
}

#[test]
fn help_teaches_every_subcommand() {
    for sub in ["train", "eval", "data", "device", "bench", "reproduce"] {
        let (ok, text) = rest(&[sub, "--help"]);
        assert!(ok && text.contains("Usage"), "{sub} --help: {text}");
    }
    let (_, text) = rest(&["train", "--help"]);
    for flag in [
        "--method",
        "--density",
        "--upweight",
        "--update-every",
        "--resume",
        "--device",
    ] {
        assert!(text.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn truncated_checkpoint_is_an_error() {
    let p = std::env::temp_dir().join(format!("rest-trunc-{}.safetensors", std::process::id()));
    std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    fails_with(&["eval", "--checkpoint", p.to_str().unwrap()], "truncated");
    let _ = std::fs::remove_file(p);
}
