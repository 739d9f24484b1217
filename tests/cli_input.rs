//! More bad input: sizes that cannot fit, options that conflict or would be ignored, forged
//! checkpoints, and what a run keeps so that `eval` and `--resume` see the same data.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::{fails_with, rest};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rest-cli-input-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny synthetic training run (a second or two) into `out`; returns its output.
fn tiny_run(out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--dataset",
        "synthetic",
        "--synthetic-train",
        "300",
        "--width",
        "4",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, text) = rest(&args);
    assert!(ok, "{args:?}: {text}");
    text
}

const SYNTH: [&str; 5] = ["train", "--dataset", "synthetic", "--epochs", "1"];

fn synth<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&'a str> = SYNTH.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn sizes_that_cannot_fit_are_errors_not_aborts() {
    fails_with(&synth(&["--width", "18446744073709551615"]), "overflows");
    fails_with(&synth(&["--width", "100000"]), "need at least");
    fails_with(
        &synth(&["--synthetic-train", "100000000000"]),
        "--synthetic-train 100000000000 is too large",
    );
}

#[test]
fn conflicting_options_are_errors() {
    fails_with(
        &synth(&["--paper"]),
        "'--epochs <EPOCHS>' cannot be used with '--paper'",
    );
    fails_with(
        &["train", "--resume", "somewhere", "--density", "0.5"],
        "'--resume <DIR>' cannot be used with '--density",
    );
}

#[test]
fn negative_numbers_reach_the_range_checks() {
    fails_with(
        &synth(&["--density", "-0.1"]),
        "--density must be in (0, 1]",
    );
    fails_with(&synth(&["--upweight", "-3"]), "--upweight");
}

#[test]
fn a_density_that_empties_a_layer_is_an_error() {
    fails_with(&synth(&["--density", "1e-9"]), "with no active weight");
}

#[test]
fn options_a_method_does_not_use_are_named() {
    let d = scratch("ignored");
    let text = tiny_run(
        &d.join("run"),
        &["--method", "vanilla", "--fix", "--death-rate", "0.9"],
    );
    assert!(
        text.contains("warning: --death-rate, --fix have no effect on a vanilla run"),
        "{text}"
    );
    let text = tiny_run(
        &d.join("run3"),
        &["--fix", "--update-every", "10", "--grow", "random"],
    );
    assert!(
        text.contains("warning: --update-every, --grow have no effect on a rest run"),
        "{text}"
    );
    let text = tiny_run(&d.join("run2"), &["--method", "sparse", "--upweight", "50"]);
    assert!(
        text.contains("warning: --upweight has no effect on a sparse run"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn empty_environment_variables_mean_unset() {
    let (code, text) = common::run(&["device"], &[("REST_DEVICE", ""), ("REST_DATA_DIR", "")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("backend: cpu"), "{text}");
}

#[test]
fn a_run_that_diverges_on_held_out_data_fails() {
    let d = scratch("diverge");
    let out = d.join("run");
    let mut args = synth(&["--width", "8", "--synthetic-train", "500", "--lr", "1e10"]);
    args.extend(["--out", out.to_str().unwrap()]);
    let (ok, text) = rest(&args);
    assert!(!ok && text.contains("diverged"), "{text}");
    assert!(!out.join("summary.json").exists());
    let _ = std::fs::remove_dir_all(d);
}

/// The test row of `rest eval`'s table: (aligned, conflicting) as printed.
fn eval_test_row(text: &str) -> Vec<String> {
    let row = text
        .lines()
        .find(|l| l.starts_with("| test |"))
        .unwrap_or_else(|| panic!("no test row in: {text}"));
    row.split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn eval_and_resume_rebuild_the_synthetic_data_of_the_run() {
    let d = scratch("synthetic-size");
    let run = d.join("run");
    let text = tiny_run(&run, &[]);
    // The summary row: | rest | 0.0500 | unbiased | aligned | conflicting | worst | label × bias | …
    let summary_row: Vec<String> = text
        .lines()
        .find(|l| l.starts_with("| rest |"))
        .unwrap_or_else(|| panic!("{text}"))
        .split('|')
        .map(|c| c.trim().to_string())
        .collect();
    let best = run.join("best.safetensors");
    let (ok, text) = rest(&["eval", "--checkpoint", best.to_str().unwrap()]);
    assert!(ok, "{text}");
    let row = eval_test_row(&text);
    // eval: | test | samples | accuracy | aligned | conflicting | worst | label × bias |; the
    // synthetic test split is unbiased, so its accuracy is the summary's unbiased column.
    assert_eq!(
        &row[3..8],
        &summary_row[3..8],
        "eval reproduces other test numbers than training:\n{text}"
    );
    let (ok, text) = rest(&["train", "--resume", run.to_str().unwrap()]);
    assert!(
        ok && text.contains("has finished: its summary follows"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn resuming_without_a_checkpoint_or_into_a_file_says_what_to_do() {
    let d = scratch("no-checkpoint");
    // What a run killed during its first epoch leaves.
    std::fs::write(d.join("config.json"), "{}").unwrap();
    std::fs::write(d.join("metrics.jsonl"), "").unwrap();
    fails_with(
        &["train", "--resume", d.to_str().unwrap()],
        "start it again with its original command",
    );
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails_with(
        &synth(&["--out", file.to_str().unwrap()]),
        "the output folder",
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_finished_run_resumed_writes_nothing() {
    let d = scratch("finished");
    let run = d.join("run");
    tiny_run(&run, &[]);
    let before: Vec<_> = ["config.json", "summary.json", "metrics.jsonl"]
        .iter()
        .map(|f| std::fs::metadata(run.join(f)).unwrap().modified().unwrap())
        .collect();
    let (ok, text) = rest(&["train", "--resume", run.to_str().unwrap()]);
    assert!(ok && text.contains("| rest |"), "{text}");
    let after: Vec<_> = ["config.json", "summary.json", "metrics.jsonl"]
        .iter()
        .map(|f| std::fs::metadata(run.join(f)).unwrap().modified().unwrap())
        .collect();
    assert_eq!(before, after);
    let _ = std::fs::remove_dir_all(d);
}

/// Rewrites checkpoint `src` into `dst` with tensor `name` replaced by (dtype, bytes).
fn forge(src: &Path, dst: &Path, name: &str, edit: impl Fn(Dtype, &[u8]) -> (Dtype, Vec<u8>)) {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, v) in st.tensors() {
        let (dtype, data) = if n == name {
            edit(v.dtype(), v.data())
        } else {
            (v.dtype(), v.data().to_vec())
        };
        owned.push((n, dtype, v.shape().to_vec(), data));
    }
    assert!(owned.iter().any(|t| t.0 == name), "no tensor {name}");
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    // The forger records the checksum of what it wrote, so the checks of the values are reached.
    let mut info: HashMap<String, String> = header.metadata().clone().unwrap();
    let sum = rest::checkpoint::checksum(
        owned
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice())),
    );
    info.insert("checksum".into(), sum);
    std::fs::write(dst, safetensors::serialize(views, Some(info)).unwrap()).unwrap();
}

/// Flips one bit of a byte inside the data of tensor `name` of the checkpoint at `path`.
fn flip_a_byte(path: &Path, name: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let info = header.tensors()[name].clone();
    let at = 8 + header_len + info.data_offsets.0 + 1;
    bytes[at] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_a_weight_is_refused_by_eval_and_resume() {
    let d = scratch("flipped");
    let run = d.join("run");
    tiny_run(&run, &[]);
    let (best, last) = (run.join("best.safetensors"), run.join("last.safetensors"));
    let (ok, text) = rest(&["eval", "--checkpoint", best.to_str().unwrap()]);
    assert!(ok, "{text}");
    flip_a_byte(&best, "param.conv1.weight");
    let (ok, text) = rest(&["eval", "--checkpoint", best.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(best.to_str().unwrap()) && text.contains("damaged"),
        "{text}"
    );
    // --resume reads last.safetensors: a run without summary.json is resumed from it.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    flip_a_byte(&last, "momentum.fc.weight");
    let (ok, text) = rest(&["train", "--resume", run.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(last.to_str().unwrap()) && text.contains("damaged"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_checkpoint_without_a_checksum_still_loads() {
    let d = scratch("no-checksum");
    let run = d.join("run");
    tiny_run(&run, &[]);
    let bytes = std::fs::read(run.join("best.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut info: HashMap<String, String> = header.metadata().clone().unwrap();
    assert!(info.remove("checksum").is_some(), "no checksum recorded");
    let old = d.join("old.safetensors");
    std::fs::write(
        &old,
        safetensors::serialize(st.tensors(), Some(info)).unwrap(),
    )
    .unwrap();
    let (ok, text) = rest(&["eval", "--checkpoint", old.to_str().unwrap()]);
    assert!(ok, "{text}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn forged_checkpoint_values_are_errors() {
    let d = scratch("forged");
    let run = d.join("run");
    tiny_run(&run, &[]);
    let best = run.join("best.safetensors");
    let forged = d.join("forged.safetensors");
    let eval =
        |needle: &str| fails_with(&["eval", "--checkpoint", forged.to_str().unwrap()], needle);

    forge(&best, &forged, "param.fc.bias", |_, b| {
        (Dtype::I32, b.to_vec())
    });
    eval("tensor param.fc.bias is I32, a rest checkpoint stores it as F32");

    forge(&best, &forged, "param.fc.bias", |d, b| {
        let mut b = b.to_vec();
        b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        (d, b)
    });
    eval("param.fc.bias holds a value that is not finite");

    forge(&best, &forged, "bn.0.running_var", |d, b| {
        let mut b = b.to_vec();
        b[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
        (d, b)
    });
    eval("bn.0.running_var holds a negative variance");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_closed_output_pipe_ends_quietly() {
    let mut child = common::command()
        .args(["reproduce", "synthetic", "--dry-run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the listing is written, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn two_runs_never_write_one_folder() {
    let d = scratch("locked");
    let out = d.join("run");
    // A run of many seconds (it is killed once the second one has been refused).
    let mut first = common::command()
        .args(&SYNTH[..3])
        .args([
            "--epochs",
            "50",
            "--width",
            "32",
            "--synthetic-train",
            "20000",
        ])
        .args(["--quiet", "--out", out.to_str().unwrap()])
        .env_remove("REST_DEVICE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // config.json is written once the first run holds the folder.
    let t0 = std::time::Instant::now();
    while !out.join("config.json").exists() && t0.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (ok, text) = rest(&synth(&["--out", out.to_str().unwrap()]));
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().ok();
    first.wait().unwrap();
    assert!(still_running, "the first run ended early");
    assert!(!ok && text.contains("is in use"), "{text}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn labels_without_a_conflicting_sample_are_named() {
    let d = scratch("no-conflicting");
    // 1 % of 40 samples rounds to none.
    let mut args = synth(&["--synthetic-train", "40", "--width", "4"]);
    let out = d.join("run");
    args.extend(["--out", out.to_str().unwrap()]);
    let (ok, text) = rest(&args);
    assert!(ok, "{text}");
    assert!(
        text.contains("hold no bias-conflicting one: --reweight labels has nothing to upweight"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_batch_of_one_is_refused() {
    fails_with(
        &synth(&["--batch-size", "1"]),
        "--batch-size must be at least 2",
    );
}

#[test]
fn gpu_runs_refuse_cpu_only_rules_up_front_and_name_ignored_paths() {
    let d = scratch("emu");
    let out = d.join("refused");
    let mut args = synth(&["--device", "emu", "--prune", "set"]);
    args.extend(["--out", out.to_str().unwrap()]);
    fails_with(&args, "--prune set has no GPU kernels");
    assert!(!out.exists(), "the refused run made its folder");
    let text = tiny_run(
        &d.join("run"),
        &["--device", "emu", "--sparse-compute", "dense-masked"],
    );
    assert!(
        text.contains("warning: --sparse-compute (the GPU runs sparse layers on sparse kernels)"),
        "{text}"
    );
    let summary = std::fs::read_to_string(d.join("run").join("summary.json")).unwrap();
    assert!(summary.contains("\"device\": \"emu\""), "{summary}");
    let _ = std::fs::remove_dir_all(d);
}
