//! Generated datasets: Colored MNIST and Corrupted CIFAR-10 from small fake sources — exact
//! conflict ratios, byte-identical caches for the same seed, colours following labels, the
//! unbiased test split, export to the folder layout, and `open` building the cache.

use rest::data::gen::{self, GenConfig};
use rest::data::{cmnist, corrupt, folder, idx, registry, Dataset, Normalize, OpenOptions};
use std::path::{Path, PathBuf};

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("rest-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Fake grey digits: class k is a bar at a class-dependent place; stroke 255, background 0.
fn fake_digits(n: usize, name: &str) -> Dataset {
    let mut pixels = vec![0u8; n * 784];
    let labels: Vec<u8> = (0..n).map(|i| ((i * 7 + i / 10) % 10) as u8).collect();
    for (i, &l) in labels.iter().enumerate() {
        for y in 4..24 {
            for x in 0..4 {
                pixels[i * 784 + y * 28 + 2 + 2 * l as usize + x] = 255 - (i % 3) as u8;
            }
        }
    }
    Dataset {
        name: name.into(),
        channels: 1,
        height: 28,
        width: 28,
        num_classes: 10,
        pixels,
        bias: labels.clone(),
        labels,
        normalize: Normalize::identity(1),
    }
}

fn write_mnist_dir(dir: &Path, train: &Dataset, test: &Dataset) {
    for (ds, img, lab) in [
        (
            train,
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
        ),
        (test, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        idx::write_idx(&dir.join(img), &[ds.len(), 28, 28], &ds.pixels).unwrap();
        idx::write_idx(&dir.join(lab), &[ds.len()], &ds.labels).unwrap();
    }
}

#[test]
fn cmnist_ratio_colours_and_splits() {
    let (train_src, test_src) = (fake_digits(2000, "tr"), fake_digits(400, "te"));
    for ratio in gen::RATIOS {
        let s = cmnist::generate(&train_src, &test_src, &GenConfig::new(ratio, 4, 7)).unwrap();
        // 10 % carved out for validation.
        assert_eq!(
            (s.train.len(), s.valid.len(), s.test.len()),
            (1800, 200, 400)
        );
        let want = (ratio / 100.0 * 1800.0).round() as usize;
        assert_eq!(s.train.num_conflicting(), want, "ratio {ratio}");
        assert_eq!(
            s.valid.num_conflicting(),
            (ratio / 100.0 * 200.0).round() as usize
        );
        assert_eq!(
            (s.train.channels, s.train.height, s.train.width),
            (3, 28, 28)
        );
        assert_eq!(s.train.normalize, Normalize::identity(3));
        for ds in [&s.train, &s.valid, &s.test] {
            ds.validate().unwrap();
            let hw = 784;
            for i in 0..ds.len() {
                let img = ds.image(i);
                // Background black; the stroke's colour is the bias attribute's colour, which
                // for aligned samples is the label's.
                assert_eq!(img[0], 0);
                let stroke = (0..hw)
                    .find(|&p| img[p] as u32 + img[hw + p] as u32 + img[2 * hw + p] as u32 > 0)
                    .expect("a coloured stroke pixel");
                let col = cmnist::class_colour(ds.bias[i] as usize);
                for c in 0..3 {
                    let got = img[c * hw + stroke] as f32 / 255.0;
                    assert!(
                        (got - col[c]).abs() < 0.05,
                        "{} sample {i}: channel {c} is {got}, colour {:?}",
                        ds.name,
                        col
                    );
                }
                if ds.is_aligned(i) {
                    assert_eq!(ds.bias[i], ds.labels[i]);
                }
            }
        }
        // The test split is unbiased: about 90 % conflicting.
        let frac = s.test.num_conflicting() as f64 / 400.0;
        assert!(
            (0.8..0.97).contains(&frac),
            "test conflicting fraction {frac}"
        );
    }
}

#[test]
fn cmnist_severity_sets_colour_jitter() {
    let (tr, te) = (fake_digits(500, "tr"), fake_digits(50, "te"));
    let spread = |sev: u32| {
        let s = cmnist::generate(&tr, &te, &GenConfig::new(5.0, sev, 1)).unwrap();
        // Green channel of class 3's colour (0.83 in LfF's palette): not clamped at 0 or 1.
        let green: Vec<f32> = (0..s.train.len())
            .filter(|&i| s.train.bias[i] == 3)
            .map(|i| {
                let img = s.train.image(i);
                let p = (0..784).find(|&p| img[784 + p] > 0).unwrap();
                img[784 + p] as f32
            })
            .collect();
        let m = green.iter().sum::<f32>() / green.len() as f32;
        (green.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / green.len() as f32).sqrt()
    };
    let (s1, s5) = (spread(1), spread(5));
    assert!(
        s1 > 3.0 * s5.max(0.1),
        "severity 1 jitter {s1} should exceed severity 5 jitter {s5}"
    );
    assert_eq!(cmnist::colour_std(4), 0.005);
}

#[test]
fn same_seed_byte_identical_caches_and_open_builds_the_cache() {
    let src = temp_dir("gen-src");
    write_mnist_dir(&src, &fake_digits(1000, "tr"), &fake_digits(100, "te"));
    let (d1, d2) = (temp_dir("gen-a"), temp_dir("gen-b"));
    let opts = |seed| OpenOptions {
        seed,
        severity: None,
        source: Some(src.clone()),
        progress: false,
    };
    let (_, c1) = registry::make("cmnist", 2.0, &d1, &opts(3)).unwrap();
    let (_, c2) = registry::make("cmnist", 2.0, &d2, &opts(3)).unwrap();
    for s in gen::SPLIT_NAMES {
        let a = std::fs::read(c1.join(format!("{s}.bin"))).unwrap();
        let b = std::fs::read(c2.join(format!("{s}.bin"))).unwrap();
        assert!(a == b, "{s}: same seed, different cache bytes");
    }
    let (_, c3) = registry::make("cmnist", 2.0, &d2, &opts(4)).unwrap();
    assert_ne!(
        std::fs::read(c1.join("train.bin")).unwrap(),
        std::fs::read(c3.join("train.bin")).unwrap()
    );
    // The test split does not depend on the ratio.
    let (_, c4) = registry::make("cmnist", 5.0, &d1, &opts(3)).unwrap();
    let t2 = rest::data::cache::read(&c1.join("test.bin")).unwrap().0;
    let t5 = rest::data::cache::read(&c4.join("test.bin")).unwrap().0;
    assert_eq!((t2.pixels, t2.bias), (t5.pixels, t5.bias));

    // open() reads the cache when present …
    let s = registry::open_with("cmnist", 2.0, &d1, &opts(3)).unwrap();
    assert_eq!(s.train.num_conflicting(), 18);
    // … and builds it when missing, from the source directory.
    let d3 = temp_dir("gen-c");
    let s3 = registry::open_with("cmnist", 2.0, &d3, &opts(3)).unwrap();
    assert_eq!(s3.train, s.train);
    assert!(gen::cache_exists(&gen::cache_dir(
        &d3,
        "cmnist",
        &GenConfig::new(2.0, 4, 3)
    )));
    // A cache made with other parameters is not silently used: it is built again (derived data)
    // with the parameters asked for.
    let good = std::fs::read(c1.join("train.bin")).unwrap();
    std::fs::copy(c3.join("train.bin"), c1.join("train.bin")).unwrap();
    let again = registry::open_with("cmnist", 2.0, &d1, &opts(3)).unwrap();
    assert_eq!(again.train, s.train);
    assert_eq!(std::fs::read(c1.join("train.bin")).unwrap(), good);
    for d in [src, d1, d2, d3] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn open_cmnist_from_data_dir_mnist() {
    // DATA_DIR/mnist present (as after `rest data fetch mnist`): open builds the cache from it.
    let dd = temp_dir("gen-dd");
    std::fs::create_dir_all(dd.join("mnist")).unwrap();
    write_mnist_dir(
        &dd.join("mnist"),
        &fake_digits(300, "tr"),
        &fake_digits(30, "te"),
    );
    let s = rest::data::open("cmnist", 1.0, &dd).unwrap();
    assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (270, 30, 30));
    assert_eq!(s.train.num_conflicting(), 3);
    std::fs::remove_dir_all(&dd).unwrap();
}

/// Colourful fake "CIFAR" images of 16x16.
fn fake_rgb(n: usize) -> Dataset {
    let (h, w) = (16, 16);
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let mut pixels = vec![0u8; n * 3 * h * w];
    for i in 0..n {
        for c in 0..3 {
            for p in 0..h * w {
                pixels[(i * 3 + c) * h * w + p] =
                    ((p * (c + 1) * 3 + i * 11 + (p % 2) * 90) % 256) as u8;
            }
        }
    }
    Dataset {
        name: "rgb".into(),
        channels: 3,
        height: h,
        width: w,
        num_classes: 10,
        pixels,
        bias: labels.clone(),
        labels,
        normalize: Normalize::identity(3),
    }
}

#[test]
fn cifar10c_from_generated_images() {
    let (tr, te) = (fake_rgb(1000), fake_rgb(200));
    let cfg = GenConfig::new(5.0, 3, 11);
    let rgb: Vec<u8> = (0..3 * 40 * 40).map(|i| (i % 251) as u8).collect();
    let frost =
        corrupt::FrostPhotos::from_photos(vec![corrupt::Photo { h: 40, w: 40, rgb }]).unwrap();
    let s = corrupt::generate(&tr, &te, &cfg, &frost).unwrap();
    assert_eq!(s.train.len(), 900);
    assert_eq!(s.train.num_conflicting(), 45);
    assert_eq!(s.train.normalize.std, vec![0.2470, 0.2435, 0.2616]);
    // Each sample is its source image with corruption `bias` applied (same random stream).
    let again = corrupt::generate(&tr, &te, &cfg, &frost).unwrap();
    assert_eq!(s.train, again.train);
    // Corruption k is what brightness (3) does: brighter than the source, on average.
    let mean = |x: &[u8]| x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let (tr_idx, _) = gen::carve_valid(1000, 0.1, 11);
    for (j, &i) in tr_idx.iter().enumerate() {
        if s.train.bias[j] == 3 {
            assert!(
                mean(s.train.image(j)) > mean(tr.image(i)),
                "brightness did not brighten sample {i}"
            );
        }
        if s.train.bias[j] == 4 {
            let sd = |x: &[u8]| {
                let m = mean(x);
                x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>()
            };
            assert!(
                sd(s.train.image(j)) < sd(tr.image(i)),
                "contrast did not reduce contrast for {i}"
            );
        }
    }
    // Grey sources are promoted to RGB.
    let g = corrupt::generate(&fake_digits(100, "g"), &fake_digits(20, "g"), &cfg, &frost).unwrap();
    assert_eq!(g.train.channels, 3);
    // Severity 5 does not exist in LfF's Corrupted CIFAR-10 (rows 2..5 are severities 1..4).
    let msg = format!(
        "{:#}",
        corrupt::generate(&tr, &te, &GenConfig::new(5.0, 5, 11), &frost).unwrap_err()
    );
    assert!(msg.contains("severity 5") && msg.contains("1..4"), "{msg}");
}

#[test]
fn export_folder_reads_back_identically() {
    let (tr, te) = (fake_digits(400, "tr"), fake_digits(50, "te"));
    let s = cmnist::generate(&tr, &te, &GenConfig::new(5.0, 4, 2)).unwrap();
    let root = temp_dir("gen-export");
    folder::write_folder(&s, 5.0, &root).unwrap();
    let back =
        rest::data::open(&format!("folder:{}", root.display()), 5.0, Path::new(".")).unwrap();
    assert_eq!(back.train.len(), s.train.len());
    assert_eq!(back.train.num_conflicting(), s.train.num_conflicting());
    let key = |d: &Dataset| {
        let mut v: Vec<(u8, u8, Vec<u8>)> = (0..d.len())
            .map(|i| (d.labels[i], d.bias[i], d.image(i).to_vec()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(key(&back.train), key(&s.train));
    assert_eq!(key(&back.valid), key(&s.valid));
    assert_eq!(key(&back.test), key(&s.test));
    // The layout the reference's CMNIST loader globs: `5pct/align/*/*`, `5pct/conflict/*/*`,
    // `5pct/valid/*` (files, no label folders), `test/*/*`, names ending `_{label}_{bias}.png`.
    let files_at = |pattern: &[&str]| -> usize {
        let mut dirs = vec![root.clone()];
        for part in pattern {
            dirs = dirs
                .iter()
                .flat_map(|d| -> Vec<std::path::PathBuf> {
                    if *part == "*" {
                        std::fs::read_dir(d)
                            .map(|r| r.map(|e| e.unwrap().path()).collect())
                            .unwrap_or_default()
                    } else {
                        vec![d.join(part)]
                    }
                })
                .collect();
        }
        dirs.iter().filter(|p| p.is_file()).count()
    };
    assert_eq!(
        files_at(&["5pct", "align", "*", "*"]) + files_at(&["5pct", "conflict", "*", "*"]),
        s.train.len()
    );
    assert_eq!(files_at(&["5pct", "valid", "*"]), s.valid.len());
    assert_eq!(files_at(&["test", "*", "*"]), s.test.len());
    // The grid for `rest data show`.
    let img = rest::data::cli::grid(&s.train, 3).unwrap();
    assert_eq!(img.height() as usize, 10 * (56 + 2));
    std::fs::remove_dir_all(&root).unwrap();
}
