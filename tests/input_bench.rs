//! Bad options of `rest bench` are refused before anything is measured, with an error (exit
//! code 1, never a panic) that names the option.

mod common;

/// Asserts `args` fail with exit code 1, naming `needle`, before any measurement was printed
/// (`started` is the first line a bench prints).
fn refused(args: &[&str], needle: &str, started: &str) {
    let (code, text) = common::run(args, &[]);
    assert_eq!(code, 1, "{args:?} should fail with exit code 1: {text}");
    assert!(
        text.contains(needle),
        "{args:?}: expected {needle:?} in: {text}"
    );
    assert!(
        !text.contains(started),
        "{args:?} ran before failing: {text}"
    );
}

const MEMORY: &str = "peak resident memory";
const CPU: &str = "rest bench cpu:";
const GPU: &str = "bench gpu on";

#[test]
fn bench_memory_checks_its_options_like_bench_cpu() {
    let m = ["bench", "memory", "--model", "cnn"];
    let c = ["bench", "cpu", "--models", "cnn"];
    for (base, started) in [(&m, MEMORY), (&c, CPU)] {
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        refused(&with(&["--densities", "2"]), "--densities", started);
        refused(&with(&["--densities", "1,0"]), "--densities", started);
        refused(&with(&["--steps", "0"]), "--steps", started);
        refused(&with(&["--batch", "0"]), "--batch", started);
        refused(&with(&["--batch", "1"]), "--batch", started);
        refused(&with(&["--batch", "100000000"]), "need at least", started);
    }
}

#[test]
fn bench_json_path_is_checked_before_the_bench_runs() {
    let d = std::env::temp_dir().join(format!("rest-input-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let file = d.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("x.json");
    let cpu = [
        "bench",
        "cpu",
        "--models",
        "cnn",
        "--densities",
        "1",
        "--steps",
        "1",
        "--batch",
        "2",
        "--json",
    ];
    let gpu = ["bench", "gpu", "--device", "emu", "--quick", "--json"];
    for (base, started) in [(&cpu[..], CPU), (&gpu[..], GPU)] {
        for (json, needle) in [(&d, "directory"), (&under_file, "not a directory")] {
            let p = json.to_str().unwrap();
            refused(&[base, &[p]].concat(), needle, started);
        }
    }
    // A folder where no file can be made (/proc takes none, even from root).
    if cfg!(target_os = "linux") {
        for (base, started) in [(&cpu[..], CPU), (&gpu[..], GPU)] {
            refused(
                &[base, &["/proc/rest-bench.json"]].concat(),
                "cannot write there",
                started,
            );
        }
    }
    // A missing folder is created.
    let json = d.join("new/folder/cpu.json");
    let (code, text) = common::run(&[&cpu[..], &[json.to_str().unwrap()]].concat(), &[]);
    assert_eq!(code, 0, "{text}");
    assert!(json.is_file());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_gpu_reps_must_be_at_least_1() {
    refused(
        &["bench", "gpu", "--device", "emu", "--quick", "--reps", "0"],
        "--reps",
        GPU,
    );
}
