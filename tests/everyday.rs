//! Everyday use: a second run of the same command, one spelling across subcommands' --help,
//! stored compute-path calibrations, `rest predict` against `rest eval`, and the PyTorch export
//! against the checkpoint's own tensors.

use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rest-everyday-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary in `cwd` with `env` set; returns (success, stderr + stdout).
fn rest_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = common::command();
    if let Some(fresh) = cmd.get_current_dir() {
        let _ = std::fs::remove_dir_all(fresh);
    }
    cmd.current_dir(cwd).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("panicked"), "panic on {args:?}: {text}");
    (out.status.success(), text)
}

fn ok_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let (ok, text) = rest_in(cwd, args, env);
    assert!(ok, "{args:?} failed: {text}");
    text
}

// The README's main command trains 4 epochs on Colored MNIST (half a minute and a download);
// the same command on the built-in synthetic set, one small epoch, meets the same run folders.
const MAIN: [&str; 9] = [
    "train",
    "--dataset",
    "synthetic",
    "--epochs",
    "1",
    "--width",
    "4",
    "--synthetic-train",
    "300",
];

#[test]
fn the_main_command_twice_makes_two_run_folders() {
    let cwd = scratch("twice");
    let first = ok_in(&cwd, &MAIN, &[]);
    let second = ok_in(&cwd, &MAIN, &[]);
    let a = cwd.join("runs/synthetic-rest-r1-d0.05-s41");
    let b = cwd.join("runs/synthetic-rest-r1-d0.05-s41-2");
    assert!(a.join("summary.json").is_file(), "{first}");
    assert!(b.join("summary.json").is_file(), "{second}");
    assert!(!first.contains("goes to"), "{first}");
    assert!(
        second.contains("this run goes to runs/synthetic-rest-r1-d0.05-s41-2"),
        "{second}"
    );
    // An explicit --out that holds a run stays an error that suggests --resume.
    let mut again = MAIN.to_vec();
    again.extend(["--out", a.to_str().unwrap()]);
    let (ok, text) = rest_in(&cwd, &again, &[]);
    assert!(
        !ok && text.contains("already holds a run") && text.contains("--resume"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(cwd);
}

#[test]
fn binary_tests_run_beside_stale_runs_and_datasets() {
    // What every binary-driven test gets: a working directory holding a stale run folder where
    // the main command writes and junk where the default data directory is.
    let cwd = common::stale_cwd();
    assert!(cwd
        .join("runs/synthetic-rest-r1-d0.05-s41/last.safetensors")
        .is_file());
    assert!(cwd.join("datasets/mnist").is_dir());
    let text = ok_in(&cwd, &MAIN, &[]);
    assert!(
        text.contains("goes to runs/synthetic-rest-r1-d0.05-s41-2"),
        "{text}"
    );
    // The stale data directory is only read when no other is given: then its junk is named.
    let (ok, text) = rest_in(
        &cwd,
        &["data", "show", "--dataset", "cmnist"],
        &[("PATH", "/nonexistent")],
    );
    assert!(!ok && text.contains("datasets"), "{text}");
}

#[test]
fn every_subcommand_names_datasets_ratios_and_data_dirs_alike() {
    let help = |args: &[&str]| {
        let (ok, text) = common::rest(args);
        assert!(ok, "{args:?}: {text}");
        text
    };
    let listing = "synthetic | cmnist | cifar10c | bffhq | folder:DIR";
    for cmd in [
        &["train", "--help"][..],
        &["eval", "--help"],
        &["data", "show", "--help"],
    ] {
        let text = help(cmd);
        assert!(text.contains("--dataset"), "{cmd:?}: {text}");
        assert!(
            text.contains(listing),
            "{cmd:?} lists datasets otherwise: {text}"
        );
        assert!(
            text.contains("--ratio") && text.contains("Percentage of bias-conflicting training"),
            "{cmd:?}: {text}"
        );
    }
    for (cmd, values) in [
        (
            &["data", "make", "-h"][..],
            "[possible values: cmnist, cifar10c]",
        ),
        (
            &["data", "fetch", "-h"],
            "[possible values: mnist, cifar10, frost]",
        ),
    ] {
        let text = help(cmd);
        assert!(text.contains("--dataset <DATASET>"), "{cmd:?}: {text}");
        assert!(text.contains(values), "{cmd:?}: {text}");
    }
    for cmd in [
        &["train", "--help"][..],
        &["eval", "--help"],
        &["data", "show", "--help"],
        &["data", "make", "--help"],
        &["data", "fetch", "--help"],
        &["data", "import", "--help"],
    ] {
        let text = help(cmd);
        assert!(
            text.contains("--data-dir <DIR>")
                && text.contains("Where datasets are fetched and generated")
                && text.contains("[env: REST_DATA_DIR=]")
                && text.contains("[default: datasets]"),
            "{cmd:?}: {text}"
        );
    }
    // `rest reproduce` takes its dataset as `--dataset` too (its positional short form stays).
    let reproduce = help(&["reproduce", "--help"]);
    assert!(reproduce.contains("--dataset <DATASET>"), "{reproduce}");
    let (ok, text) = common::rest(&["reproduce", "--dataset", "synthetic", "--dry-run"]);
    assert!(ok && text.contains("--dataset synthetic"), "{text}");
    // The examples use the one spelling.
    let make = help(&["data", "make", "--help"]);
    assert!(make.contains("rest data make --dataset cmnist"), "{make}");
}

fn summary_paths(run: &Path) -> BTreeMap<String, String> {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    s["compute_paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn auto_compute_paths_come_from_the_stored_calibration() {
    let d = scratch("calibration");
    let cache = d.join("cache");
    let env = [("REST_CACHE_DIR", cache.to_str().unwrap())];
    let run = |name: &str, extra: &[&str]| {
        let out = d.join(name);
        let mut args = vec![
            "train",
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
            "--width",
            "8",
            "--synthetic-train",
            "300",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let text = ok_in(&d, &args, &env);
        (summary_paths(&out), text)
    };
    let (first, text) = run("a", &[]);
    assert!(text.contains("calibration"), "{text}");
    let file = cache.join("calibration.json");
    let stored: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        stored.len(),
        first.len(),
        "one entry per sparse layer: {stored:?}"
    );
    let (second, _) = run("b", &[]);
    assert_eq!(first, second);
    // The stored choice is what a run takes: flip every entry, and the next run follows.
    let flip = |p: &str| {
        if p == "Sparse" {
            "DenseMasked"
        } else {
            "Sparse"
        }
    };
    let flipped: BTreeMap<String, serde_json::Value> = stored
        .iter()
        .map(|(k, v)| {
            let p = flip(v["path"].as_str().unwrap());
            (
                k.clone(),
                serde_json::json!({"path": p, "sparse_s": -1.0, "dense_s": -1.0}),
            )
        })
        .collect();
    std::fs::write(&file, serde_json::to_string(&flipped).unwrap()).unwrap();
    let (third, _) = run("c", &[]);
    let want: BTreeMap<String, String> = first
        .iter()
        .map(|(k, v)| (k.clone(), flip(v).to_string()))
        .collect();
    assert_eq!(third, want);
    // --sparse-compute calibrate times every layer again and stores the result.
    run("d", &["--sparse-compute", "calibrate"]);
    let redone: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(redone.len(), stored.len());
    assert!(
        redone
            .values()
            .all(|e| e["sparse_s"].as_f64().unwrap() > 0.0),
        "{redone:?}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// A data directory holding a small fake MNIST (1000 training, 200 test digits).
fn fake_mnist(dd: &Path) {
    let m = dd.join("mnist");
    std::fs::create_dir_all(&m).unwrap();
    for (n, img, lab) in [
        (1000, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        (200, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        let labels: Vec<u8> = (0..n).map(|i| (i * 7 % 10) as u8).collect();
        let mut pixels = vec![0u8; n * 784];
        for (i, &l) in labels.iter().enumerate() {
            for y in 4..24 {
                for x in 0..3 {
                    pixels[i * 784 + y * 28 + 2 + 2 * l as usize + x] = 250 - (i % 5) as u8;
                }
            }
        }
        rest::data::idx::write_idx(&m.join(img), &[n, 28, 28], &pixels).unwrap();
        rest::data::idx::write_idx(&m.join(lab), &[n], &labels).unwrap();
    }
}

#[test]
fn predict_on_exported_test_images_agrees_with_eval() {
    let d = scratch("predict");
    let dd = d.join("data");
    fake_mnist(&dd);
    let (dd_s, ex) = (dd.to_str().unwrap(), d.join("export"));
    let env = [("PATH", "/nonexistent")];
    ok_in(
        &d,
        &[
            "data",
            "make",
            "--dataset",
            "cmnist",
            "--ratio",
            "1",
            "--data-dir",
            dd_s,
            "--export-folder",
            ex.to_str().unwrap(),
        ],
        &env,
    );
    let run = d.join("run");
    ok_in(
        &d,
        &[
            "train",
            "--dataset",
            "cmnist",
            "--data-dir",
            dd_s,
            "--epochs",
            "1",
            "--width",
            "8",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--out",
            run.to_str().unwrap(),
        ],
        &env,
    );
    let ck = run.join("best.safetensors");
    let eval = ok_in(
        &d,
        &[
            "eval",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--data-dir",
            dd_s,
            "--device",
            "cpu",
        ],
        &env,
    );
    let test_row: Vec<&str> = eval
        .lines()
        .find(|l| l.starts_with("| test |"))
        .unwrap()
        .split('|')
        .map(str::trim)
        .collect();
    let (samples, accuracy): (usize, f64) =
        (test_row[2].parse().unwrap(), test_row[3].parse().unwrap());
    let csv = ok_in(
        &d,
        &[
            "predict",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--csv",
            "--batch-size",
            "512",
            ex.join("test").to_str().unwrap(),
        ],
        &env,
    );
    let mut lines = csv.lines().skip_while(|l| !l.starts_with("image,class"));
    assert_eq!(
        lines.next().unwrap(),
        "image,class,p0,p1,p2,p3,p4,p5,p6,p7,p8,p9"
    );
    let (mut n, mut hits) = (0, 0);
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 12, "{line}");
        let name = Path::new(f[0])
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let label: usize = name.split('_').nth(1).unwrap().parse().unwrap();
        let class: usize = f[1].parse().unwrap();
        let p: Vec<f64> = f[2..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{line}");
        let best = (0..10).fold(0, |b, i| if p[i] > p[b] { i } else { b });
        assert_eq!(class, best, "{line}");
        n += 1;
        hits += usize::from(class == label);
    }
    assert_eq!(n, samples);
    assert_eq!(
        format!("{:.2}", 100.0 * hits as f64 / n as f64),
        format!("{accuracy:.2}")
    );
    // The table form names the same classes.
    let table = ok_in(
        &d,
        &[
            "predict",
            "--checkpoint",
            ck.to_str().unwrap(),
            ex.join("test").to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains(".png"))
            .count(),
        n
    );
    let _ = std::fs::remove_dir_all(d);
}

/// Every tensor of a safetensors file: name → (dtype, shape, bytes).
fn tensors(path: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn the_torch_export_holds_the_checkpoints_weights_dense_under_pytorch_names() {
    let d = scratch("export");
    let run = d.join("run");
    ok_in(
        &d,
        &[
            "train",
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
            "--width",
            "4",
            "--synthetic-train",
            "300",
            "--out",
            run.to_str().unwrap(),
        ],
        &[],
    );
    let ck = run.join("best.safetensors");
    let out = d.join("torch.safetensors");
    ok_in(
        &d,
        &[
            "export",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--format",
            "torch",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let exported = tensors(&out);
    // The reference CNN's state dict, width 4: names and shapes as PyTorch has them.
    let mut want: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (cin, cout)) in [(3, 4), (4, 8), (8, 16)].into_iter().enumerate() {
        want.insert(format!("conv{}.weight", i + 1), vec![cout, cin, 4, 4]);
        for s in ["weight", "bias", "running_mean", "running_var"] {
            want.insert(format!("bn{}.{s}", i + 1), vec![cout]);
        }
        want.insert(format!("bn{}.num_batches_tracked", i + 1), vec![]);
    }
    want.insert("fc.weight".into(), vec![10, 16]);
    want.insert("fc.bias".into(), vec![10]);
    let got: BTreeMap<String, Vec<usize>> = exported
        .iter()
        .map(|(n, t)| (n.clone(), t.1.clone()))
        .collect();
    assert_eq!(got, want);
    // The values, rebuilt from the checkpoint's own tensors as its format describes them:
    // sparse weights as flat row-major positions (index.NAME) and values (param.NAME), bn.I the
    // I-th batch norm.
    let raw = tensors(&ck);
    let mut sparse_layers = 0;
    for (name, (dtype, shape, bytes)) in &exported {
        if name.ends_with("num_batches_tracked") {
            assert_eq!(*dtype, Dtype::I64);
            assert!(i64::from_le_bytes(bytes[..8].try_into().unwrap()) > 0);
            continue;
        }
        assert_eq!(*dtype, Dtype::F32, "{name}");
        let values = f32s(bytes);
        let expect = if let Some(stat) = name
            .strip_suffix(".running_mean")
            .map(|p| (p, "running_mean"))
            .or_else(|| {
                name.strip_suffix(".running_var")
                    .map(|p| (p, "running_var"))
            }) {
            let i: usize = stat.0.strip_prefix("bn").unwrap().parse::<usize>().unwrap() - 1;
            f32s(&raw[&format!("bn.{i}.{}", stat.1)].2)
        } else {
            let vals = f32s(&raw[&format!("param.{name}")].2);
            match raw.get(&format!("index.{name}")) {
                None => vals,
                Some((_, _, idx)) => {
                    sparse_layers += 1;
                    let mut dense = vec![0.0; shape.iter().product()];
                    for (pos, v) in idx.chunks_exact(4).zip(vals) {
                        dense[u32::from_le_bytes(pos.try_into().unwrap()) as usize] = v;
                    }
                    dense
                }
            }
        };
        assert_eq!(values, expect, "{name}");
    }
    assert!(sparse_layers > 0, "the run had no sparse layer to rebuild");
    // The facts PyTorch needs are in the metadata.
    let bytes = std::fs::read(&out).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["bn_eps"].parse::<f32>().unwrap(), 1e-5);
    assert_eq!(meta["input_size"], "16x16");
    assert!(meta["input_scaling"].contains("/ 255"), "{meta:?}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn the_resnet_state_dict_has_torchvisions_names_and_shapes() {
    use rest::nn::{Arch, Model, ModelConfig};
    let w = 8;
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        width: w,
        in_channels: 3,
        num_classes: 10,
    };
    let model = Model::new(&cfg, 1).unwrap();
    let got: BTreeMap<String, Vec<usize>> = rest::export::state_dict(&model, 5)
        .unwrap()
        .into_iter()
        .map(|(n, _, s, _)| (n, s))
        .collect();
    // torchvision.models.resnet18(num_classes=10)'s state dict, with 64 channels scaled to w.
    let mut want: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let bn = |want: &mut BTreeMap<String, Vec<usize>>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            want.insert(format!("{p}.{s}"), vec![c]);
        }
        want.insert(format!("{p}.num_batches_tracked"), vec![]);
    };
    want.insert("conv1.weight".into(), vec![w, 3, 7, 7]);
    bn(&mut want, "bn1", w);
    let mut cin = w;
    for (s, mult) in [1, 2, 4, 8].into_iter().enumerate() {
        let cout = w * mult;
        for b in 0..2 {
            let p = format!("layer{}.{b}", s + 1);
            want.insert(format!("{p}.conv1.weight"), vec![cout, cin, 3, 3]);
            bn(&mut want, &format!("{p}.bn1"), cout);
            want.insert(format!("{p}.conv2.weight"), vec![cout, cout, 3, 3]);
            bn(&mut want, &format!("{p}.bn2"), cout);
            if s > 0 && b == 0 {
                want.insert(format!("{p}.downsample.0.weight"), vec![cout, cin, 1, 1]);
                bn(&mut want, &format!("{p}.downsample.1"), cout);
            }
            cin = cout;
        }
    }
    want.insert("fc.weight".into(), vec![10, 8 * w]);
    want.insert("fc.bias".into(), vec![10]);
    assert_eq!(got, want);
}
