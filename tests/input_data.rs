//! Bad input to `rest data` and to the datasets `rest train` opens: each is refused up front
//! with an error (exit code 1, never a panic) that names the problem.

use rest::data::gen::{self, GenConfig};
use rest::data::{cmnist, folder, idx, registry};
use std::path::{Path, PathBuf};

mod common;

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("rest-input-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary with `data_dir` as REST_DATA_DIR and no `npm` on the PATH (nothing is
/// downloaded even where a check is missing); returns (exit code, stderr + stdout).
fn rest(args: &[&str], data_dir: &Path) -> (i32, String) {
    let dir = data_dir.to_str().unwrap();
    common::run(args, &[("REST_DATA_DIR", dir), ("PATH", "/nonexistent")])
}

/// Asserts `args` fail with exit code 1 and a message holding every word of `words`.
fn fails_with(args: &[&str], data_dir: &Path, words: &[&str]) -> String {
    let (code, text) = rest(args, data_dir);
    assert_eq!(code, 1, "{args:?} should fail with exit code 1: {text}");
    for w in words {
        assert!(text.contains(w), "{args:?}: expected {w:?} in: {text}");
    }
    text
}

/// A data directory holding a small fake MNIST (1000 training, 200 test digits): 900 training
/// samples once the validation split is carved out.
fn fake_mnist_data_dir(tag: &str) -> PathBuf {
    let dd = temp_dir(tag);
    let m = dd.join("mnist");
    std::fs::create_dir_all(&m).unwrap();
    for (n, img, lab) in [
        (1000, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        (200, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let pixels: Vec<u8> = (0..n * 784).map(|p| ((p % 28) * 9) as u8).collect();
        idx::write_idx(&m.join(img), &[n, 28, 28], &pixels).unwrap();
        idx::write_idx(&m.join(lab), &[n], &labels).unwrap();
    }
    dd
}

#[test]
fn ratio_giving_no_conflicting_training_sample_is_an_error() {
    let dd = fake_mnist_data_dir("tiny-ratio");
    // 0.05 % of 900 is 0.45 samples: rounds to none.
    let words = ["0.05", "900", "too small"];
    fails_with(&["data", "make", "cmnist", "--ratio", "0.05"], &dd, &words);
    fails_with(
        &[
            "train",
            "--dataset",
            "cmnist",
            "--ratio",
            "0.05",
            "--epochs",
            "1",
            "--quiet",
        ],
        &dd,
        &words,
    );
    assert!(!dd.join("cmnist/cache/0.05pct-sev4-seed0").exists());
    // One sample is enough.
    let (code, text) = rest(&["data", "make", "cmnist", "--ratio", "0.1"], &dd);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("train 900 (1 conflicting)"), "{text}");
    std::fs::remove_dir_all(&dd).unwrap();
}

#[test]
fn cache_without_conflicting_training_sample_is_refused() {
    // A cache written before the rule (by hand here): opening it is the same error.
    let dd = fake_mnist_data_dir("tiny-cache");
    let (train, test) = idx::load_mnist(&dd.join("mnist")).unwrap();
    let splits = cmnist::generate(&train, &test, &GenConfig::new(1.0, 4, 0)).unwrap();
    let mut splits = splits;
    splits.train.bias = splits.train.labels.clone();
    let cfg = GenConfig::new(0.05, 4, 0);
    gen::write_cache(&gen::cache_dir(&dd, "cmnist", &cfg), &splits, &cfg).unwrap();
    let err = format!("{:#}", registry::open("cmnist", 0.05, &dd).unwrap_err());
    for w in ["0.05", "900", "too small"] {
        assert!(err.contains(w), "expected {w:?} in: {err}");
    }
    std::fs::remove_dir_all(&dd).unwrap();
}

#[test]
fn data_make_and_show_take_ratios_in_0_100_like_train() {
    let dd = fake_mnist_data_dir("ratio-range");
    let out = dd.join("g.png");
    for r in ["0", "100", "150"] {
        fails_with(
            &["data", "make", "cmnist", "--ratio", r],
            &dd,
            &["--ratio", "(0, 100)", r],
        );
        fails_with(
            &["data", "show", "--ratio", r, "--out", out.to_str().unwrap()],
            &dd,
            &["--ratio", "(0, 100)", r],
        );
    }
    // Every ratio is checked before any is made.
    fails_with(
        &["data", "make", "cmnist", "--ratio", "1,0"],
        &dd,
        &["--ratio", "(0, 100)"],
    );
    assert!(
        !dd.join("cmnist").exists(),
        "no cache is built for a refused ratio"
    );
    std::fs::remove_dir_all(&dd).unwrap();
}

#[test]
fn data_show_per_group_must_be_1_to_the_maximum() {
    let dd = fake_mnist_data_dir("per-group");
    let out = dd.join("g.png");
    let o = out.to_str().unwrap();
    for n in ["0", "65", "100000"] {
        fails_with(
            &["data", "show", "--per-group", n, "--out", o],
            &dd,
            &["--per-group", "64", n],
        );
    }
    assert!(!out.exists());
    let (code, text) = rest(&["data", "show", "--per-group", "64", "--out", o], &dd);
    assert_eq!(code, 0, "{text}");
    assert!(out.is_file());
    std::fs::remove_dir_all(&dd).unwrap();
}

#[test]
fn data_show_synthetic_says_what_to_do_instead() {
    let dd = temp_dir("show-synthetic");
    let text = fails_with(
        &["data", "show", "--dataset", "synthetic"],
        &dd,
        &["rest train --dataset synthetic", "folder:DIR"],
    );
    assert!(!text.contains("rest::"), "internal module path in: {text}");
    std::fs::remove_dir_all(&dd).unwrap();
}

#[test]
fn data_show_out_must_be_a_png_file_name() {
    let dd = fake_mnist_data_dir("show-out");
    for name in ["g.jpg", "g", "g.png.txt"] {
        let out = dd.join(name);
        fails_with(
            &["data", "show", "--out", out.to_str().unwrap()],
            &dd,
            &[name, ".png"],
        );
        assert!(!out.exists(), "{name} was written");
    }
    // Any case, and a missing folder is created.
    let out = dd.join("new/G.PNG");
    let (code, text) = rest(&["data", "show", "--out", out.to_str().unwrap()], &dd);
    assert_eq!(code, 0, "{text}");
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x89PNG"));
    std::fs::remove_dir_all(&dd).unwrap();
}

#[test]
fn data_dir_that_is_a_file_is_an_error_before_any_download() {
    let d = temp_dir("data-dir-file");
    let file = d.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    for args in [
        vec!["train", "--dataset", "cmnist", "--data-dir", f, "--quiet"],
        vec!["train", "--dataset", "bffhq", "--data-dir", f, "--quiet"],
        vec!["data", "fetch", "mnist", "--data-dir", f],
        vec!["data", "fetch", "cifar10", "--data-dir", f],
        vec!["data", "fetch", "frost", "--data-dir", f],
        vec!["data", "import", "bffhq", ".", "--data-dir", f],
        vec!["data", "make", "cmnist", "--data-dir", f],
        vec!["data", "show", "--data-dir", f],
    ] {
        let text = fails_with(&args, &d, &[f, "not a directory"]);
        assert!(
            !text.contains("npm") && !text.contains("downloading"),
            "{args:?} tried to download: {text}"
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn cifar10c_severity_5_is_refused_before_reading_cifar() {
    let d = temp_dir("cifar10c-sev5");
    let dd = d.to_str().unwrap();
    let text = fails_with(
        &[
            "data",
            "make",
            "cifar10c",
            "--severity",
            "5",
            "--data-dir",
            dd,
        ],
        &d,
        &["severity 5", "1..4", "row"],
    );
    assert!(!text.contains("cifar-10-batches-bin"), "{text}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn corrupt_png_error_says_it_once() {
    let root = temp_dir("corrupt-png");
    for sub in ["1pct/align/0", "valid/0", "test/0"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        std::fs::write(root.join(sub).join("a_0_0.png"), b"not a png").unwrap();
    }
    let err = format!(
        "{:#}",
        folder::read_folder(&root, 1.0, None, None).unwrap_err()
    );
    assert!(err.contains("a_0_0.png"), "{err}");
    assert_eq!(
        err.matches("Invalid PNG signature").count(),
        1,
        "repeated: {err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_corrupt_cache_is_rebuilt_with_a_warning() {
    let dd = fake_mnist_data_dir("cache-rebuilt");
    let show = [
        "data",
        "show",
        "--dataset",
        "cmnist",
        "--ratio",
        "1",
        "--out",
    ];
    let out = dd.join("g.png");
    let args: Vec<&str> = show
        .iter()
        .copied()
        .chain([out.to_str().unwrap()])
        .collect();
    let (code, text) = rest(&args, &dd);
    assert_eq!(code, 0, "{text}");
    let cache = std::fs::read_dir(dd.join("cmnist/cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("train.bin");
    let good = std::fs::read(&cache).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    std::fs::write(&cache, &bad).unwrap();
    let (code, text) = rest(&args, &dd);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning") && text.contains("checksum") && text.contains("building it again"),
        "{text}"
    );
    // Rebuilt from the same seed: the same bytes as before the damage.
    assert_eq!(std::fs::read(&cache).unwrap(), good);
    std::fs::remove_dir_all(&dd).unwrap();
}
