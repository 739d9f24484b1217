//! `rest reproduce --emit-slurm` against a real Slurm: scripts/slurm-test.sh starts slurmctld and
//! slurmd on this machine and runs this test with REST_SLURM_TEST=1; without it the test says so
//! and passes.

use std::path::PathBuf;
use std::process::Command;

mod common;

fn rest(args: &[&str]) -> String {
    let out = common::command().args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rest {args:?} failed: {text}");
    text
}

#[test]
fn slurm_array_runs_the_grid_and_collect_builds_the_table() {
    if std::env::var("REST_SLURM_TEST").as_deref() != Ok("1") {
        println!(
            "skipped: needs a running Slurm; run scripts/slurm-test.sh (sets REST_SLURM_TEST=1)"
        );
        return;
    }
    let dir = PathBuf::from(
        std::env::var("REST_SLURM_WORKDIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .join(format!("rest-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let results = dir.join("results");
    let script = dir.join("grid.sbatch");
    let grid = [
        "synthetic",
        "--methods",
        "vanilla,rest",
        "--ratios",
        "5",
        "--densities",
        "0.5,0.25",
        "--seeds",
        "41",
        "--epochs",
        "1",
        "--width",
        "8",
        "--synthetic-train",
        "500",
    ];
    let mut emit: Vec<&str> = vec!["reproduce"];
    emit.extend(grid);
    let (r, s) = (results.to_str().unwrap(), script.to_str().unwrap());
    emit.extend([
        "--results",
        r,
        "--emit-slurm",
        s,
        "--sbatch=--time=00:05:00",
    ]);
    rest(&emit);
    let body = std::fs::read_to_string(&script).unwrap();
    assert!(body.contains("#SBATCH --array=0-2"), "{body}");

    // Submit, then poll the array's tasks (`sbatch --wait` polls too slowly for a test).
    let out = Command::new("sbatch")
        .args(["--parsable", s])
        .current_dir(&dir)
        .output()
        .expect("sbatch not found: is Slurm installed?");
    assert!(
        out.status.success(),
        "sbatch failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let t0 = std::time::Instant::now();
    let states = loop {
        // One line per array task, with JobState=…; finished jobs stay listed (MinJobAge).
        let show = Command::new("scontrol")
            .args(["show", "job", &job, "--oneliner"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&show.stdout).to_string();
        let states: Vec<String> = text
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("JobState="))
            })
            .map(String::from)
            .collect();
        let active = ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"];
        if states.len() == 3 && states.iter().all(|s| !active.contains(&s.as_str())) {
            break states;
        }
        assert!(
            t0.elapsed().as_secs() < 180,
            "Slurm job {job} not finished after 180 s: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let logs = std::fs::read_dir(results.join("slurm"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    format!(
                        "== {}\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(
        states.iter().all(|s| s == "COMPLETED"),
        "array tasks ended {states:?}; task logs:\n{logs}"
    );
    println!(
        "Slurm job {job}: 3 tasks COMPLETED in {:.1} s; task logs:\n{logs}",
        t0.elapsed().as_secs_f64()
    );
    // Each array task wrote its own run.
    let grid_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("grid.json")).unwrap()).unwrap();
    for task in grid_json.as_array().unwrap() {
        let key = task["key"].as_str().unwrap();
        assert!(
            results
                .join("runs")
                .join(key)
                .join("summary.json")
                .is_file(),
            "task {} ({key}) wrote no summary.json; logs:\n{logs}",
            task["task"]
        );
    }
    assert_eq!(
        std::fs::read_dir(results.join("slurm")).unwrap().count(),
        3,
        "one log per array task"
    );

    // --collect builds the tables and plots from what the tasks wrote.
    let text = rest(&["reproduce", "synthetic", "--collect", r]);
    assert!(text.contains("3 finished runs (0 failed)"), "{text}");
    let md = std::fs::read_to_string(results.join("results.md")).unwrap();
    for row in [
        "| vanilla | 1 | 1 |",
        "| rest | 0.5 | 1 |",
        "| rest | 0.25 | 1 |",
    ] {
        assert!(md.contains(row), "{row} missing from:\n{md}");
    }
    let csv = std::fs::read_to_string(results.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let png = std::fs::read(results.join("conflicting-vs-density-synthetic-r5.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    println!("{md}");
}
