//! `rest bench cpu`: the per-round speed-up statistic, and a small run end to end.

use rest::bench::speedup_spread;

mod common;

#[test]
fn speedup_is_taken_round_by_round() {
    // Round 2 ran in a slow spell that slowed both alike: its ratio is round 1's, 10. Round 3's
    // item step alone was slow (ratio 5). The ratio of the medians would be 10 / 2 = 5.
    let base = [10.0, 30.0, 10.0];
    let item = [1.0, 3.0, 2.0];
    let (median, lo, hi) = speedup_spread(&base, &item);
    assert_eq!((median, lo, hi), (10.0, 5.0, 10.0));
    let (median, lo, hi) = speedup_spread(&[4.0, 8.0], &[1.0, 2.0]);
    assert_eq!((median, lo, hi), (4.0, 4.0, 4.0));
    let (median, _, _) = speedup_spread(&[6.0, 6.0], &[1.0, 3.0]);
    assert_eq!(
        median, 4.0,
        "an even count takes the mean of the middle two"
    );
}

#[test]
fn bench_cpu_writes_ratios_with_their_range() {
    let json = std::env::temp_dir().join(format!("rest-bench-cpu-{}.json", std::process::id()));
    let out = common::command()
        .args([
            "bench",
            "cpu",
            "--models",
            "cnn",
            "--densities",
            "1,0.05",
            "--steps",
            "3",
            "--batch",
            "8",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("range"), "no range column: {text}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["train_speedup"], 1.0, "dense is its own baseline");
    for r in rows {
        for key in ["train", "infer"] {
            let x = r[format!("{key}_speedup")].as_f64().unwrap();
            let range = &r[format!("{key}_speedup_range")];
            let (lo, hi) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
            assert!(
                lo > 0.0 && lo <= x && x <= hi,
                "{key}: {lo} ≤ {x} ≤ {hi} fails"
            );
        }
        assert!(r["train_images_per_s"].as_f64().unwrap() > 0.0);
        // The machine is named, in the JSON and in the header.
        let cpu = r["cpu"].as_str().unwrap();
        assert!(cpu.ends_with(" kernels") && cpu.len() > 10, "cpu: {cpu:?}");
        assert!(text.contains(cpu), "the header names the CPU: {text}");
    }
    assert!(rows[1]["checkpoint_ratio"].as_f64().unwrap() < 1.0);
}
