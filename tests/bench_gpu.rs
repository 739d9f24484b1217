//! `rest bench gpu` end to end on the emulator (`--quick`): it runs, says its numbers are
//! emulated, and its JSON has every section with plausible contents.

mod common;

#[test]
fn quick_gpu_bench_on_the_emulator_writes_every_section() {
    let dir = std::env::temp_dir().join(format!("rest-bench-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = common::command()
        .args(["bench", "gpu", "--device", "emu", "--quick", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {text}");
    assert!(text.contains("say nothing about a GPU"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["emulated"], true);
    assert_eq!(v["quick"], true);

    let conv = &v["conv"];
    let layers = conv["layers"].as_array().expect("conv.layers");
    // ResNet-18's distinct convolution shapes: stem, stage 1, and three per later stage.
    assert_eq!(layers.len(), 11, "{layers:#?}");
    let counts: u64 = layers.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(counts, 20, "ResNet-18 has 20 convolutions");
    for l in layers {
        assert!(l["dense"]["fwd"]["ms"].as_f64().unwrap() > 0.0);
        let sparse = l["sparse"].as_array().unwrap();
        assert!(sparse.len() >= 2);
        for s in sparse {
            for (pass, x) in ["fwd", "bwd_data", "bwd_weight"].iter().zip(0..) {
                assert!(s["passes"][pass]["ms"].as_f64().unwrap() > 0.0);
                assert!(s["passes"][pass]["gflops"].as_f64().unwrap() > 0.0);
                assert!(s["passes"][pass]["gbs"].as_f64().unwrap() > 0.0);
                assert!(s["speedup"][x].as_f64().unwrap() > 0.0);
            }
        }
    }
    assert!(!conv["network"].as_array().unwrap().is_empty());

    let xent = v["xent"].as_array().expect("xent");
    assert!(!xent.is_empty());
    for r in xent {
        assert!(r["xent_gbs"].as_f64().unwrap() > 0.0 && r["copy_gbs"].as_f64().unwrap() > 0.0);
    }

    let topo = &v["topology_update"];
    assert!(topo["ms"].as_f64().unwrap() > 0.0);
    assert!(topo["batched_ms"].as_f64().unwrap() > 0.0);
    // Batched: each pass launched once for all layers, not once per layer.
    let (per, batched) = (
        topo["launches"].as_u64().unwrap(),
        topo["batched_launches"].as_u64().unwrap(),
    );
    assert!(
        batched > 0 && batched <= 20 && per >= 14 * 21,
        "{per} vs {batched}"
    );
    assert_eq!(topo["layers"], 21, "20 convolutions and the linear layer");
    assert!(topo["pruned"].as_u64().unwrap() > 0);

    let steps = v["train_step"].as_array().expect("train_step");
    let models: Vec<&str> = steps.iter().map(|s| s["model"].as_str().unwrap()).collect();
    assert!(
        models.contains(&"cnn") && models.contains(&"resnet18"),
        "{models:?}"
    );
    for s in steps {
        assert!(s["images_per_s"].as_f64().unwrap() > 0.0);
        assert!(s["launches"].as_u64().unwrap() > 0, "{s}");
        // What a step asks of the device beside its kernels: the batch's images, labels,
        // weights and groups go up; nothing comes back (the loss statistics stay on the device)
        // and no memset runs (outputs are overwritten in full); the bench's timer syncs once.
        let t = &s["traffic"];
        assert_eq!(t["to_device"].as_u64().unwrap(), 4, "{s}");
        assert_eq!(t["to_host"].as_u64().unwrap(), 0, "{s}");
        assert_eq!(t["fills"].as_u64().unwrap(), 0, "{s}");
        assert_eq!(t["syncs"].as_u64().unwrap(), 1, "{s}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gpu_bench_refuses_the_cpu() {
    let out = common::command()
        .args(["bench", "gpu", "--device", "cpu", "--quick"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cuda") && err.contains("emu"), "{err}");
}
