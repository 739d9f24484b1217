//! `rest reproduce`: grid expansion, keys, resume-skip, failures, aggregation, plots, Slurm script.

use clap::Parser;
use rest::reproduce::aggregate::{self, mean_std};
use rest::reproduce::grid::{self, RunSpec};
use rest::reproduce::{runner, ReproduceArgs};
use rest::train::Summary;
use std::path::{Path, PathBuf};

mod common;
use common::rest;
use std::process::Command;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    a: ReproduceArgs,
}

fn args(line: &[&str]) -> ReproduceArgs {
    Wrap::try_parse_from(std::iter::once("reproduce").chain(line.iter().copied()))
        .unwrap()
        .a
}

fn specs(line: &[&str]) -> Vec<RunSpec> {
    args(line).grid().unwrap().expand().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rest-reproduce-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `rest reproduce DATASET --collect DIRS... --results OUT`.
fn collect(dataset: &str, dirs: &[&Path], out: &Path) -> (bool, String) {
    let mut cmd = vec!["reproduce", dataset, "--collect"];
    cmd.extend(dirs.iter().map(|d| d.to_str().unwrap()));
    cmd.extend(["--results", out.to_str().unwrap()]);
    rest(&cmd)
}

/// `rest reproduce` with the arguments `line`.
fn reproduce(line: &[String]) -> (bool, String) {
    let mut cmd = vec!["reproduce"];
    cmd.extend(line.iter().map(String::as_str));
    rest(&cmd)
}

/// A tiny synthetic grid (runs in well under a second each).
const TINY: [&str; 10] = [
    "synthetic",
    "--epochs",
    "1",
    "--width",
    "8",
    "--synthetic-train",
    "300",
    "--ratios",
    "5",
    "--quiet",
];

fn tiny(extra: &[&str]) -> Vec<String> {
    TINY.iter().chain(extra).map(|s| s.to_string()).collect()
}

#[test]
fn paper_grid_counts_and_dense_methods_only_at_density_one() {
    let s = specs(&["cmnist"]);
    // 4 ratios × (2 dense methods × 3 seeds + 2 sparse methods × 14 densities × 3 seeds).
    assert_eq!(s.len(), 4 * (2 * 3 + 2 * 14 * 3));
    for r in &s {
        if grid::is_sparse_method(&r.method) {
            assert!(r.density < 1.0, "{r:?}");
        } else {
            assert_eq!(r.density, 1.0, "{r:?}");
        }
        assert_eq!((r.model.as_str(), r.lr, r.width), ("cnn", 0.01, 64));
        assert_eq!(
            (r.batch_size, r.update_every, r.death_rate),
            (256, 1000, 0.5)
        );
        assert_eq!((r.momentum, r.weight_decay, r.epochs), (0.9, 0.0, 100));
    }
    assert_eq!(
        s.iter().filter(|r| r.method == "vanilla").count(),
        4 * 3,
        "vanilla once per ratio and seed"
    );
    let c = specs(&["cifar10c", "--ratios", "1", "--seeds", "41"]);
    assert_eq!(c.len(), 2 + 2 * 14);
    assert!(c
        .iter()
        .all(|r| r.model == "resnet18" && r.lr == 0.001 && r.width == 64));
    // BFFHQ has one ratio.
    assert_eq!(specs(&["bffhq"]).len(), 2 * 3 + 2 * 14 * 3);
    // A chosen subset.
    let sub = specs(&[
        "cmnist",
        "--methods",
        "rest,vanilla",
        "--densities",
        "0.01,0.1",
        "--seeds",
        "1,2",
        "--ratios",
        "0.5,2",
    ]);
    assert_eq!(sub.len(), 2 * (2 + 2 * 2));
    // Table order: vanilla before rest whatever the flag's order.
    assert_eq!(sub[0].method, "vanilla");
}

#[test]
fn upweight_is_paired_with_the_ratio() {
    for (ratio, lambda) in [(0.5, 10.0), (1.0, 30.0), (2.0, 50.0), (5.0, 80.0)] {
        assert_eq!(grid::paired_upweight(ratio), Some(lambda));
    }
    let s = specs(&["cmnist", "--seeds", "41"]);
    for r in &s {
        assert_eq!(Some(r.upweight), grid::paired_upweight(r.ratio), "{r:?}");
    }
    // An unpaired ratio needs --upweight; with it, λ is used for every ratio.
    assert!(args(&["cmnist", "--ratios", "3"]).grid().is_err());
    let s = specs(&["cmnist", "--ratios", "3,5", "--upweight", "20"]);
    assert!(s.iter().all(|r| r.upweight == 20.0));
}

#[test]
fn quick_grid_is_small_and_cmnist_only() {
    let s = specs(&["cmnist", "--quick"]);
    assert_eq!(s.len(), 2 + 2 * 2, "vanilla, reweight, sparse×2, rest×2");
    assert!(s
        .iter()
        .all(|r| r.ratio == 1.0 && r.seed == 41 && r.epochs == 2));
    assert!(s.iter().all(|r| r.upweight == 30.0));
    let mut d: Vec<f64> = s.iter().map(|r| r.density).collect();
    d.sort_by(f64::total_cmp);
    d.dedup();
    assert_eq!(d, vec![0.01, 0.05, 1.0]);
    assert!(args(&["cifar10c", "--quick"]).grid().is_err());
    // Explicit flags override the quick choices.
    assert_eq!(specs(&["cmnist", "--quick", "--seeds", "41,42"]).len(), 12);
    assert_eq!(
        args(&["cmnist", "--quick"]).results_dir(),
        PathBuf::from("results/cmnist-quick")
    );
}

#[test]
fn bad_grids_are_errors() {
    for line in [
        &["cmnist", "--methods", "vanilla,magic"][..],
        &["cmnist", "--densities", "1"],
        &["cmnist", "--densities", "0"],
        &["cmnist", "--seeds", "41,41"],
        &["imagenet"],
    ] {
        let a = Wrap::try_parse_from(std::iter::once("reproduce").chain(line.iter().copied()));
        let ok = a
            .map(|w| w.a.grid().and_then(|g| g.expand()))
            .map(|r| r.is_ok());
        assert!(!matches!(ok, Ok(true)), "{line:?} should be rejected");
    }
}

#[test]
fn keys_are_stable_readable_and_unique() {
    let s = specs(&["cmnist", "--quick"]);
    let rest = s
        .iter()
        .find(|r| r.method == "rest" && r.density == 0.05)
        .unwrap();
    let key = rest.key();
    assert!(key.starts_with("cmnist-rest-r1-d0.05-s41-"), "{key}");
    // The hash is of the canonical JSON: the same config gives the same key in any process.
    assert_eq!(key, rest.clone().key());
    let fnv = grid::fnv1a64(rest.canonical_json().as_bytes());
    assert_eq!(
        &key[key.len() - 8..],
        format!("{:08x}", (fnv >> 32) ^ (fnv & 0xffff_ffff))
    );
    // FNV-1a reference values.
    assert_eq!(grid::fnv1a64(b""), 0xcbf29ce484222325);
    assert_eq!(grid::fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    // Pinned: changing a key silently would orphan every finished run.
    assert_eq!(
        rest.canonical_json(),
        r#"{"dataset":"cmnist","method":"rest","ratio":1.0,"density":0.05,"upweight":30.0,"seed":41,"epochs":2,"model":"cnn","width":64,"lr":0.01,"batch_size":256,"momentum":0.9,"weight_decay":0.0,"update_every":100,"death_rate":0.5}"#
    );
    // Any change of configuration is another key.
    let mut other = rest.clone();
    other.lr = 0.02;
    assert_ne!(other.key(), key);
    let mut other = rest.clone();
    other.epochs = 3;
    assert_ne!(other.key(), key);
    // Unique over the whole paper grid.
    let all = specs(&["cmnist"]);
    let mut keys: Vec<String> = all.iter().map(RunSpec::key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), all.len());
}

#[test]
fn train_commands_carry_the_reference_settings() {
    let s = specs(&["cmnist", "--quick"]);
    let sparse = s
        .iter()
        .find(|r| r.method == "sparse" && r.density == 0.01)
        .unwrap();
    let a = sparse.train_args().join(" ");
    for want in [
        "train --method sparse --dataset cmnist --ratio 1 --density 0.01 --upweight 30 --seed 41 --epochs 2",
        "--model cnn --width 64 --lr 0.01 --batch-size 256 --momentum 0.9 --weight-decay 0 --update-every 100 --death-rate 0.5",
    ] {
        assert!(a.contains(want), "{a}");
    }
    let vanilla = s.iter().find(|r| r.method == "vanilla").unwrap();
    assert!(!vanilla.train_args().contains(&"--density".to_string()));
    // Every generated command parses as `rest train` flags (checked by the binary itself).
    let dir = tmp("dry");
    let (ok, text) = rest(&[
        "reproduce",
        "cmnist",
        "--quick",
        "--dry-run",
        "--results",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("6 runs"), "{text}");
    assert!(
        text.contains(&format!("--out {}/runs/cmnist-", dir.display())),
        "{text}"
    );
}

/// A summary.json as `rest train` writes it, with chosen test accuracies: `acc` is aligned,
/// conflicting, whole-split (unbiased) and worst group.
fn summary(spec: &RunSpec, acc: [f64; 4], flops: f64, wall: f64) -> Summary {
    // The configuration `rest train` builds from the run's command line.
    let config = spec.train_config().unwrap();
    let test = rest::metrics::GroupMetrics {
        samples: 100,
        loss: 1.0,
        metrics_version: rest::metrics::METRICS_VERSION,
        accuracy: acc[2],
        aligned_accuracy: acc[0],
        conflicting_accuracy: acc[1],
        group_balanced_accuracy: (acc[0] + acc[1]) / 2.0,
        worst_group_accuracy: acc[3],
        ..Default::default()
    };
    Summary {
        method: config.method().into(),
        config,
        best_epoch: 0,
        valid: test.clone(),
        test,
        density: spec.density,
        inference_flops_per_image: 1e6 * spec.density,
        dense_inference_flops_per_image: 1e6,
        train_flops_per_image: 3e6 * spec.density,
        dense_train_flops_per_image: 3e6,
        train_flops_total: flops,
        wall_seconds: wall,
        compute_paths: Default::default(),
        device: String::new(),
    }
}

fn write_summary(results: &Path, spec: &RunSpec, s: &Summary) {
    let dir = runner::run_dir(results, &spec.key());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("summary.json"), serde_json::to_string(s).unwrap()).unwrap();
}

#[test]
fn mean_and_sample_std() {
    assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    let (m, s) = mean_std(&[50.0, 60.0, 70.0]);
    assert!((m - 60.0).abs() < 1e-12 && (s - 10.0).abs() < 1e-12);
    let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
    // var = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    assert!((m - 2.5).abs() < 1e-12 && (s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
}

/// Fabricated results in two folders (as from two machines); `--collect` unites them.
#[test]
fn collect_aggregates_over_seeds_across_folders() {
    let a = tmp("collect-a");
    let b = tmp("collect-b");
    let out = tmp("collect-out");
    let s = specs(&[
        "cmnist",
        "--ratios",
        "1",
        "--methods",
        "vanilla,rest",
        "--densities",
        "0.05",
        "--seeds",
        "41,42,43",
        "--epochs",
        "2",
    ]);
    assert_eq!(s.len(), 6);
    let rest_acc = [
        [0.90, 0.50, 0.70, 0.40],
        [0.92, 0.60, 0.76, 0.45],
        [0.94, 0.70, 0.82, 0.50],
    ];
    for (i, spec) in s.iter().enumerate() {
        let seed_i = (spec.seed - 41) as usize;
        let (acc, flops, wall) = if spec.method == "rest" {
            (
                rest_acc[seed_i],
                1e12 + 1e11 * seed_i as f64,
                10.0 + seed_i as f64,
            )
        } else {
            ([0.99, 0.10, 0.545, 0.05], 2e13, 100.0)
        };
        // Seed 41 in folder a, the others in b.
        let dir = if spec.seed == 41 { &a } else { &b };
        write_summary(dir, spec, &summary(spec, acc, flops, wall));
        let _ = i;
    }
    let (ok, text) = collect("cmnist", &[&a, &b], &out);
    assert!(ok, "{text}");
    assert!(text.contains("6 finished runs"), "{text}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    // rest: unbiased 70, 76, 82 → 76 ± 6; aligned 90, 92, 94 → 92 ± 2; conflicting 50, 60, 70
    // → 60 ± 10; worst 40, 45, 50 → 45 ± 5; train FLOPs mean 1.1e12; wall mean 11 s.
    assert!(
        md.contains("| rest | 0.05 | 3 | 76.00 ± 6.00 | 92.00 ± 2.00 | 60.00 ± 10.00 | 45.00 ± 5.00 | n/a | 0.050 | 1.100e12 | 11.0 |"),
        "{md}"
    );
    assert!(
        md.contains("| vanilla | 1 | 3 | 54.50 ± 0.00 | 99.00 ± 0.00 | 10.00 ± 0.00 | 5.00 ± 0.00 | n/a | 1.000 | 2.000e13 | 100.0 |"),
        "{md}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], aggregate::CSV_HEADER);
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with(
            "cmnist,vanilla,1,1,2,41 42 43,54.5000,0.0000,99.0000,0.0000,10.0000,0.0000"
        ),
        "{csv}"
    );
    assert!(
        lines[2].starts_with("cmnist,rest,1,0.05,2,41 42 43,76.0000,6.0000,92.0000,2.0000,60.0000,10.0000,45.0000,5.0000,,,5.000000e4,1.100000e12,11.00,2"),
        "{csv}"
    );
    // The plots are real PNGs.
    for name in [
        "conflicting-vs-density-cmnist-r1.png",
        "accuracy-vs-train-flops-cmnist-r1.png",
    ] {
        check_png(&out.join(name));
        assert!(md.contains(name));
    }
}

fn check_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (820, 560));
    // Something was drawn in the colour of REST's series, and the labels are black.
    let rest_red = image::Rgb([200, 30, 40]);
    assert!(
        img.pixels().any(|p| *p == rest_red),
        "{}: no REST series",
        path.display()
    );
    assert!(img.pixels().filter(|p| p.0 == [0, 0, 0]).count() > 500);
}

#[test]
fn plots_render_without_sparse_runs_or_with_many_densities() {
    use rest::reproduce::plot;
    let dir = tmp("plots");
    let base = aggregate::Row {
        dataset: "cmnist".into(),
        method: "vanilla".into(),
        ratio: 1.0,
        density: 1.0,
        epochs: 1,
        seeds: vec![41],
        accuracy: (60.0, 0.0),
        aligned: (99.0, 0.0),
        conflicting: (20.0, 0.0),
        worst_group: (10.0, 0.0),
        label_bias_worst: None,
        metrics_version: rest::metrics::METRICS_VERSION,
        inference_flops: 1e6,
        train_flops: 1e13,
        wall_seconds: 1.0,
    };
    // Only a dense baseline: still a valid plot.
    let png = plot::render(&plot::conflicting_vs_density(
        std::slice::from_ref(&base),
        "cmnist",
        1.0,
    ))
    .unwrap();
    std::fs::write(dir.join("dense.png"), &png).unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (820, 560));
    // The paper's 14 densities.
    let mut rows = vec![base];
    for (i, d) in grid::PAPER_DENSITIES.iter().enumerate() {
        rows.push(aggregate::Row {
            method: "rest".into(),
            density: *d,
            conflicting: (30.0 + 3.0 * i as f64, 1.0),
            train_flops: 1e13 * d,
            ..rows[0].clone()
        });
    }
    for (name, fig) in [
        ("a.png", plot::conflicting_vs_density(&rows, "cmnist", 1.0)),
        ("b.png", plot::accuracy_vs_flops(&rows, "cmnist", 1.0)),
    ] {
        std::fs::write(dir.join(name), plot::render(&fig).unwrap()).unwrap();
        check_png(&dir.join(name));
    }
}

#[test]
fn finished_runs_are_skipped_and_checkpointed_ones_resumed() {
    let dir = tmp("skip");
    let line = tiny(&[
        "--methods",
        "vanilla,rest",
        "--densities",
        "0.5",
        "--seeds",
        "41,42",
        "--results",
        dir.to_str().unwrap(),
    ]);
    let refs: Vec<&str> = line.iter().map(String::as_str).collect();
    let s = specs(&refs);
    assert_eq!(s.len(), 4);
    // Fabricated results for three runs: they must not be run again.
    for spec in &s[..3] {
        write_summary(
            &dir,
            spec,
            &summary(spec, [0.5, 0.25, 0.375, 0.125], 1.0, 1.0),
        );
    }
    let mut cmd = vec!["reproduce"];
    cmd.extend(&refs);
    let (ok, text) = rest(&cmd);
    assert!(ok, "{text}");
    assert!(text.contains("1 trained, 0 resumed, 3 skipped"), "{text}");
    for spec in &s[..3] {
        let d = runner::run_dir(&dir, &spec.key());
        assert!(!d.join("stderr.log").exists(), "{} was rerun", spec.key());
        let back: Summary =
            serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(back.test.conflicting_accuracy, 0.25);
    }
    let trained = runner::run_dir(&dir, &s[3].key());
    assert!(trained.join("summary.json").is_file());
    assert!(trained.join("last.safetensors").is_file());
    // A checkpoint without a summary is continued with --resume, not started over.
    std::fs::remove_file(trained.join("summary.json")).unwrap();
    let (ok, text) = rest(&cmd);
    assert!(ok, "{text}");
    assert!(text.contains("0 trained, 1 resumed, 3 skipped"), "{text}");
    assert!(trained.join("summary.json").is_file());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index.as_array().unwrap().len(), 4);
    assert_eq!(index[3]["outcome"], "resumed");
    // Tables include the fabricated and the real runs.
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(
        md.contains("| vanilla | 1 | 2 | 37.50 ± 0.00 | 50.00 ± 0.00 | 25.00 ± 0.00"),
        "{md}"
    );
}

#[test]
fn a_failing_run_is_recorded_and_does_not_stop_the_grid() {
    let dir = tmp("fail");
    let line = tiny(&[
        "--methods",
        "vanilla,sparse",
        "--densities",
        "0.5",
        "--seeds",
        "41",
        "--workers",
        "2",
        "--results",
        dir.to_str().unwrap(),
    ]);
    let refs: Vec<&str> = line.iter().map(String::as_str).collect();
    let s = specs(&refs);
    assert_eq!(s.len(), 2);
    // A corrupt checkpoint: the first run is resumed from it, and fails.
    let bad = runner::run_dir(&dir, &s[0].key());
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("last.safetensors"), b"not a checkpoint").unwrap();
    let mut cmd = vec!["reproduce"];
    cmd.extend(&refs);
    let (ok, text) = rest(&cmd);
    assert!(!ok, "a failed run makes the exit status non-zero: {text}");
    assert!(
        text.contains("1 trained, 0 resumed, 0 skipped (already done), 1 failed"),
        "{text}"
    );
    assert!(text.contains("1 of 2 runs failed"), "{text}");
    // The final message says where to look.
    assert!(
        error_line(&text).contains(&bad.join("failed.json").display().to_string()),
        "{text}"
    );
    let f: runner::Failure =
        serde_json::from_str(&std::fs::read_to_string(bad.join("failed.json")).unwrap()).unwrap();
    assert_eq!(f.key, s[0].key());
    assert_ne!(f.exit_code, Some(0));
    assert!(
        f.command.contains(&"--resume".to_string()),
        "{:?}",
        f.command
    );
    assert!(f.stderr_tail.contains("error"), "{}", f.stderr_tail);
    // The other run finished and the tables were still written.
    assert!(runner::run_dir(&dir, &s[1].key())
        .join("summary.json")
        .is_file());
    let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(md.contains("| sparse | 0.5 | 1 |"), "{md}");
    assert!(md.contains("Failed runs (1)"), "{md}");
    assert!(md.contains(&s[0].key()), "{md}");
}

#[test]
fn slurm_script_runs_one_task_per_run() {
    let dir = tmp("slurm");
    let results = dir.join("results");
    let script = dir.join("grid.sbatch");
    let line = tiny(&[
        "--methods",
        "vanilla,rest",
        "--densities",
        "0.5,0.25",
        "--seeds",
        "41",
        "--results",
        results.to_str().unwrap(),
        "--emit-slurm",
        script.to_str().unwrap(),
        "--sbatch=--time=00:10:00",
    ]);
    let (ok, text) = reproduce(&line);
    assert!(ok, "{text}");
    let body = std::fs::read_to_string(&script).unwrap();
    assert!(body.starts_with("#!/bin/bash\n"), "{body}");
    assert!(body.contains("\n#SBATCH --array=0-2\n"), "{body}");
    assert!(body.contains("\n#SBATCH --time=00:10:00\n"), "{body}");
    assert!(
        body.contains(&format!(
            "#SBATCH --output={}/slurm/%A_%a.out",
            results.display()
        )),
        "{body}"
    );
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_rest")).unwrap();
    let exec_line = body.lines().find(|l| l.starts_with("exec ")).unwrap();
    assert!(
        exec_line.starts_with(&format!("exec {} reproduce synthetic ", exe.display()))
            || exec_line.starts_with(&format!(
                "exec {} reproduce synthetic ",
                env!("CARGO_BIN_EXE_rest")
            )),
        "{exec_line}"
    );
    for want in [
        "--methods vanilla,rest",
        "--densities 0.5,0.25",
        "--seeds 41",
        "--epochs 1",
        "--synthetic-train 300",
        &format!("--results {}", results.display()),
        "--task-index \"$SLURM_ARRAY_TASK_ID\"",
    ] {
        assert!(exec_line.contains(want), "{want} not in {exec_line}");
    }
    assert!(
        results.join("slurm").is_dir(),
        "the log folder exists before sbatch"
    );
    let grid: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("grid.json")).unwrap()).unwrap();
    assert_eq!(grid.as_array().unwrap().len(), 3);
    // What one array task does (run here without Slurm): just its own run.
    let out = Command::new("bash")
        .arg(&script)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = grid[2]["key"].as_str().unwrap();
    assert!(results
        .join("runs")
        .join(key)
        .join("summary.json")
        .is_file());
    assert_eq!(std::fs::read_dir(results.join("runs")).unwrap().count(), 1);
    // An index past the grid is an error.
    let out = Command::new("bash")
        .arg(&script)
        .env("SLURM_ARRAY_TASK_ID", "3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the grid of 3 runs"));
}

/// The `error: …` line of a command's output.
fn error_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {text}"))
}

#[test]
fn collect_skips_unreadable_summaries_and_diverged_runs() {
    let dir = tmp("collect-bad");
    let out = tmp("collect-bad-out");
    let s = specs(&[
        "cmnist",
        "--ratios",
        "1",
        "--methods",
        "vanilla",
        "--seeds",
        "41,42,43",
    ]);
    for spec in &s {
        write_summary(&dir, spec, &summary(spec, [0.9, 0.5, 0.7, 0.4], 1.0, 1.0));
    }
    // Seed 42 diverged: serde_json wrote its NaN test loss as null.
    let diverged = runner::run_dir(&dir, &s[1].key()).join("summary.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&diverged).unwrap()).unwrap();
    v["test"]["loss"] = serde_json::Value::Null;
    std::fs::write(&diverged, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    // Seed 43's summary was cut short.
    let cut = runner::run_dir(&dir, &s[2].key()).join("summary.json");
    std::fs::write(&cut, "{\"method\": ").unwrap();
    let (ok, text) = collect("cmnist", &[&dir], &out);
    assert!(ok, "unreadable summaries are skipped, not fatal: {text}");
    assert!(
        text.contains(&format!(
            "skipped {}: its test loss is not finite",
            diverged.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("skipped {}: not JSON", cut.display())),
        "{text}"
    );
    assert!(
        text.contains("1 finished run (0 failed; 2 unreadable file(s) skipped, see above)"),
        "{text}"
    );
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| vanilla | 1 | 1 | 70.00 ± 0.00 | 90.00 ± 0.00 |"),
        "{md}"
    );
    // With nothing readable left, there is nothing to collect.
    std::fs::remove_dir_all(runner::run_dir(&dir, &s[0].key())).unwrap();
    let (ok, text) = rest(&["reproduce", "cmnist", "--collect", dir.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(error_line(&text).contains("no finished runs"), "{text}");
    assert!(error_line(&text).contains("2 unreadable file(s)"), "{text}");
}

#[test]
fn collect_without_finished_runs_is_an_error_and_writes_nothing() {
    let a = tmp("collect-empty-a");
    let b = tmp("collect-empty-b");
    let out = tmp("collect-empty-out");
    std::fs::create_dir_all(b.join("runs").join("some-run")).unwrap();
    let (ok, text) = collect("synthetic", &[&a, &b], &out);
    assert!(!ok, "{text}");
    let e = error_line(&text);
    assert!(
        e.contains(&format!(
            "no finished runs in {}, {}",
            a.display(),
            b.display()
        )),
        "{e}"
    );
    assert!(e.contains("runs/<key>/summary.json"), "{e}");
    for d in [&a, &b, &out] {
        assert!(!d.join("results.md").exists() && !d.join("results.csv").exists());
    }
}

#[test]
fn training_options_are_checked_before_any_run() {
    for (bad, problem) in [
        (&["--width", "0"][..], "--width must be at least 1"),
        (&["--batch-size", "1"], "--batch-size must be at least 2"),
        (&["--lr", "0"], "--lr must be a positive number, got 0"),
        (
            &["--lr", "-0.1"],
            "--lr must be a positive number, got -0.1",
        ),
        (&["--update-every", "0"], "--update-every"),
        (&["--upweight", "-1"], "--upweight (λ) must be ≥ 0, got -1"),
        (&["--upweight=-1"], "--upweight (λ) must be ≥ 0, got -1"),
        (
            &["--upweight", "NaN"],
            "--upweight (λ) must be ≥ 0, got NaN",
        ),
        (
            &["--synthetic-train", "0"],
            "--synthetic-train must be at least 1",
        ),
        (&["--workers", "0"], "--workers must be at least 1"),
    ] {
        let dir = tmp("bad-options");
        let script = dir.join("grid.sbatch");
        let results = dir.join("results");
        let line: Vec<String> = [
            "reproduce",
            "synthetic",
            "--epochs",
            "1",
            "--ratios",
            "5",
            "--methods",
            "vanilla,sparse",
            "--densities",
            "0.5",
            "--seeds",
            "41",
            "--quiet",
            "--results",
            results.to_str().unwrap(),
        ]
        .iter()
        .chain(bad)
        .map(|s| s.to_string())
        .collect();
        for mode in [
            &[][..],
            &["--dry-run"],
            &["--emit-slurm", script.to_str().unwrap()],
        ] {
            let cmd: Vec<&str> = line
                .iter()
                .map(String::as_str)
                .chain(mode.iter().copied())
                .collect();
            let (ok, text) = rest(&cmd);
            assert!(!ok, "{bad:?} {mode:?} should be refused: {text}");
            assert!(
                error_line(&text).contains(problem),
                "{bad:?} {mode:?}: {text}"
            );
            assert!(!results.exists(), "{bad:?} {mode:?}: something was run");
            assert!(!script.exists(), "{bad:?} {mode:?}: a script was written");
        }
    }
    // A negative value reaches `rest train` as one word, which clap reads as a value.
    let mut spec = specs(&["cmnist", "--quick"])[0].clone();
    spec.upweight = -1.0;
    assert!(spec.train_args().contains(&"--upweight=-1".to_string()));
}

#[test]
fn emit_slurm_into_a_directory_is_refused_and_leaves_no_file() {
    let dir = tmp("slurm-dir");
    let target = dir.join("scripts");
    std::fs::create_dir_all(&target).unwrap();
    let results = dir.join("results");
    let (ok, text) = rest(&[
        "reproduce",
        "synthetic",
        "--results",
        results.to_str().unwrap(),
        "--emit-slurm",
        target.to_str().unwrap(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        error_line(&text).contains(&format!("--emit-slurm {} is a directory", target.display())),
        "{text}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, vec!["scripts"], "stray files or folders");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

/// The tiny grid's line with another width and extra flags.
fn tiny_width(width: usize, extra: &[&str]) -> Vec<String> {
    let mut line = tiny(extra);
    let i = line.iter().position(|a| a == "--width").unwrap();
    line[i + 1] = width.to_string();
    line
}

/// The specs of the tiny grid with a width and extra flags.
fn tiny_specs(width: usize, extra: &[&str]) -> Vec<RunSpec> {
    let line = tiny_width(width, extra);
    let refs: Vec<&str> = line.iter().map(String::as_str).collect();
    specs(&refs)
}

#[test]
fn collect_refuses_to_average_runs_of_different_settings() {
    let w8 = tmp("width-8");
    let w16 = tmp("width-16");
    let out = tmp("width-out");
    let grid = ["--methods", "rest", "--densities", "0.05", "--seeds", "41"];
    let s8 = &tiny_specs(8, &grid)[0];
    let s16 = &tiny_specs(16, &grid)[0];
    assert_eq!((s8.width, s16.width), (8, 16));
    write_summary(&w8, s8, &summary(s8, [0.9, 0.5, 0.7, 0.4], 1.0, 1.0));
    write_summary(&w16, s16, &summary(s16, [0.9, 0.7, 0.8, 0.6], 2.0, 1.0));
    let (ok, text) = collect("synthetic", &[&w8, &w16], &out);
    assert!(!ok, "{text}");
    let e = error_line(&text);
    for want in [
        runner::run_dir(&w8, &s8.key()).display().to_string(),
        runner::run_dir(&w16, &s16.key()).display().to_string(),
        "model.width: 8 vs 16".into(),
        "synthetic rest, ratio 5 %, density 0.05, 1 epoch)".into(),
        "Collect the folders of one grid at a time".into(),
    ] {
        assert!(e.contains(&want), "{want:?} not in {e}");
    }
    assert!(!out.join("results.md").exists() && !out.join("results.csv").exists());
    // One grid at a time is fine; the heading says "1 epoch".
    let (ok, text) = collect("synthetic", &[&w16], &out);
    assert!(ok, "{text}");
    assert!(
        text.contains("1 finished run (0 failed) from 1 folder"),
        "{text}"
    );
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("## synthetic, 5 % bias-conflicting, 1 epoch\n"),
        "{md}"
    );
    assert!(
        md.contains("| rest | 0.05 | 1 | 80.00 ± 0.00 | 90.00 ± 0.00 | 70.00 ± 0.00"),
        "{md}"
    );
}

#[test]
fn config_differences_name_every_field_but_the_seed() {
    let a = tiny_specs(
        8,
        &["--methods", "rest", "--densities", "0.05", "--seeds", "41"],
    )[0]
    .train_config()
    .unwrap();
    let mut b = a.clone();
    b.seed = 7;
    assert!(aggregate::config_differences(&a, &b).is_empty());
    b.model.width = 16;
    b.lr = 0.02;
    b.synthetic_train = None;
    let d = aggregate::config_differences(&a, &b);
    assert_eq!(
        d,
        [
            "lr: 0.01 vs 0.02",
            "model.width: 8 vs 16",
            "synthetic_train: 300 vs not set"
        ],
        "{d:?}"
    );
    b = a.clone();
    b.sparse.as_mut().unwrap().death_rate = 0.3;
    assert_eq!(
        aggregate::config_differences(&a, &b),
        ["sparse.death_rate: 0.5 vs 0.3"]
    );
}

#[test]
fn a_run_found_twice_is_counted_once_or_refused() {
    let a = tmp("twice-a");
    let b = tmp("twice-b");
    let out = tmp("twice-out");
    let s = tiny_specs(8, &["--methods", "vanilla", "--seeds", "41,42"]);
    write_summary(&a, &s[0], &summary(&s[0], [0.9, 0.2, 0.55, 0.1], 1.0, 1.0));
    write_summary(&a, &s[1], &summary(&s[1], [0.9, 0.4, 0.65, 0.3], 1.0, 1.0));
    // The same run (same key) in both folders, as from a copied folder: taken once, from the
    // first folder.
    write_summary(&b, &s[0], &summary(&s[0], [0.9, 0.9, 0.9, 0.9], 1.0, 1.0));
    let (ok, text) = collect("synthetic", &[&a, &b], &out);
    assert!(ok, "{text}");
    assert!(text.contains("2 finished runs"), "{text}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| vanilla | 1 | 2 | 60.00 ± 7.07 | 90.00 ± 0.00 | 30.00 ± 14.14"),
        "{md}"
    );
    // The same configuration and seed under another folder name would count seed 41 twice.
    let renamed = b.join("runs").join("renamed-copy");
    std::fs::rename(runner::run_dir(&b, &s[0].key()), &renamed).unwrap();
    let (ok, text) = collect("synthetic", &[&a, &b], &out);
    assert!(!ok, "{text}");
    let e = error_line(&text);
    assert!(e.contains("are the same run"), "{e}");
    assert!(e.contains("seed 41"), "{e}");
    assert!(e.contains(&renamed.display().to_string()), "{e}");
    assert!(
        e.contains(&runner::run_dir(&a, &s[0].key()).display().to_string()),
        "{e}"
    );
}

#[test]
fn a_grid_with_other_settings_than_the_results_folder_holds_is_refused_before_running() {
    let dir = tmp("other-settings");
    let old = &tiny_specs(8, &["--methods", "vanilla", "--seeds", "41"])[0];
    write_summary(&dir, old, &summary(old, [0.9, 0.2, 0.55, 0.1], 1.0, 1.0));
    let line = tiny_width(
        16,
        &[
            "--methods",
            "vanilla",
            "--seeds",
            "42",
            "--results",
            dir.to_str().unwrap(),
        ],
    );
    let (ok, text) = reproduce(&line);
    assert!(!ok, "{text}");
    let e = error_line(&text);
    assert!(e.contains("model.width: 8 vs 16"), "{e}");
    assert!(e.contains("its own --results folder"), "{e}");
    assert!(
        e.contains(&runner::run_dir(&dir, &old.key()).display().to_string()),
        "{e}"
    );
    // Nothing ran.
    let runs = std::fs::read_dir(dir.join("runs")).unwrap().count();
    assert_eq!(runs, 1);
    // --dry-run says so too.
    let (ok, text) = reproduce(&[&line[..], &["--dry-run".to_string()]].concat());
    assert!(
        !ok && error_line(&text).contains("model.width: 8 vs 16"),
        "{text}"
    );
    // The same settings (another seed) go into that folder.
    let line = tiny(&[
        "--methods",
        "vanilla",
        "--seeds",
        "42",
        "--results",
        dir.to_str().unwrap(),
        "--dry-run",
    ]);
    let (ok, text) = reproduce(&line);
    assert!(ok, "{text}");
    assert!(text.contains("1 run\n"), "{text}");
}

#[cfg(unix)]
#[test]
fn a_failure_says_how_the_child_ended() {
    let f = |exit_code, signal| runner::Failure {
        key: "k".into(),
        exit_code,
        signal,
        command: vec![],
        stderr_tail: String::new(),
    };
    for (sig, name) in [
        (9, "SIGKILL"),
        (15, "SIGTERM"),
        (2, "SIGINT"),
        (11, "SIGSEGV"),
        (6, "SIGABRT"),
    ] {
        assert_eq!(
            f(None, Some(sig)).how(),
            format!("killed by signal {sig} ({name})")
        );
    }
    assert_eq!(f(None, Some(60)).how(), "killed by signal 60");
    assert_eq!(f(Some(1), None).how(), "exit code 1");
    assert_eq!(f(Some(0), None).how(), "exit code 0 but no summary.json");
    // A failed.json written before the signal was recorded still reads.
    let old: runner::Failure = serde_json::from_str(
        r#"{"key": "k", "exit_code": null, "command": ["rest"], "stderr_tail": ""}"#,
    )
    .unwrap();
    assert_eq!(old.signal, None);
    assert_eq!(old.how(), "no exit code");
    // results.md lists how each run ended, and the end of its stderr when there is one.
    let mut with_tail = f(Some(1), None);
    with_tail.key = "k2".into();
    with_tail.stderr_tail = "training...\nerror: out of | memory\n".into();
    let md = aggregate::render_markdown(&[], &[f(None, Some(9)), with_tail], &[]);
    assert!(md.contains("- `k`: killed by signal 9 (SIGKILL)\n"), "{md}");
    assert!(
        md.contains("- `k2`: exit code 1 — error: out of \\| memory\n"),
        "{md}"
    );
}
