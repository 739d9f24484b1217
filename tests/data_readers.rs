//! Readers: MNIST IDX (raw and gzip), CIFAR-10 binary, the debiasing folder layout, and the
//! real MNIST when it has been fetched.

use rest::data::{cifar, folder, idx, Dataset, Normalize, Splits};
use std::path::{Path, PathBuf};

mod common;

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("rest-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a fake MNIST (n_train, n_test images of 28x28, label i % 10, pixel value encoding the
/// index) into `dir`, compressed or not.
fn write_fake_mnist(dir: &Path, n_train: usize, n_test: usize, gz: bool) {
    let ext = if gz { ".gz" } else { "" };
    for (stem_img, stem_lab, n) in [
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            n_train,
        ),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", n_test),
    ] {
        let pixels: Vec<u8> = (0..n * 784)
            .map(|j| ((j / 784) * 7 + j % 784) as u8)
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        idx::write_idx(&dir.join(format!("{stem_img}{ext}")), &[n, 28, 28], &pixels).unwrap();
        idx::write_idx(&dir.join(format!("{stem_lab}{ext}")), &[n], &labels).unwrap();
    }
}

#[test]
fn idx_raw_and_gz_read_the_same() {
    for gz in [false, true] {
        let d = temp_dir(if gz { "idx-gz" } else { "idx-raw" });
        write_fake_mnist(&d, 30, 20, gz);
        if gz {
            // Really compressed on disk.
            let raw = std::fs::read(d.join("train-images-idx3-ubyte.gz")).unwrap();
            assert_eq!(&raw[..2], &[0x1f, 0x8b]);
        }
        let (train, test) = idx::load_mnist(&d).unwrap();
        assert_eq!(
            (train.len(), train.channels, train.height, train.width),
            (30, 1, 28, 28)
        );
        assert_eq!(test.len(), 20);
        assert_eq!(train.labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        assert_eq!(train.image(3)[5], (3 * 7 + 5) as u8);
        assert_eq!(train.num_conflicting(), 0);
        train.validate().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn idx_dotted_file_names_are_found() {
    let d = temp_dir("idx-dotted");
    write_fake_mnist(&d, 10, 10, false);
    for stem in idx::MNIST_FILES {
        let dotted = stem.replacen("-idx", ".idx", 1);
        std::fs::rename(d.join(stem), d.join(dotted)).unwrap();
    }
    let (train, _) = idx::load_mnist(&d).unwrap();
    assert_eq!(train.len(), 10);
    std::fs::remove_dir_all(&d).unwrap();
}

fn write_cifar_batch(path: &Path, n: usize, label0: usize) {
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.push(((label0 + i) % 10) as u8);
        for c in 0..3 {
            bytes.extend((0..1024).map(|p| ((c * 50 + p + i) % 256) as u8));
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn cifar_binary_batches() {
    let d = temp_dir("cifar");
    for b in 1..=5 {
        write_cifar_batch(&d.join(format!("data_batch_{b}.bin")), 4, b);
    }
    write_cifar_batch(&d.join("test_batch.bin"), 3, 0);
    let (train, test) = cifar::load_cifar10(&d).unwrap();
    assert_eq!(
        (train.len(), train.channels, train.height, train.width),
        (20, 3, 32, 32)
    );
    assert_eq!(test.len(), 3);
    assert_eq!(train.labels[..5], [1, 2, 3, 4, 2]);
    // Planes R, G, B as stored: channel 1 starts at value 50 for sample 0.
    assert_eq!(train.image(0)[1024], 50);
    assert_eq!(train.image(1)[0], 1);
    assert_eq!(train.normalize.mean, vec![0.4914, 0.4822, 0.4465]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// A small dataset with 3 classes, RGB 6x5, sample i having label i % 3 and pixels encoding i.
fn small(n: usize, conflicting: &[usize], name: &str) -> Dataset {
    let (c, h, w) = (3, 5, 6);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let bias = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if conflicting.contains(&i) {
                (l + 1) % 3
            } else {
                l
            }
        })
        .collect();
    Dataset {
        name: name.into(),
        channels: c,
        height: h,
        width: w,
        num_classes: 3,
        pixels: (0..n * c * h * w).map(|j| (j * 13 % 251) as u8).collect(),
        labels,
        bias,
        normalize: Normalize::identity(3),
    }
}

#[test]
fn folder_layout_round_trip() {
    let root = temp_dir("folder");
    let splits = Splits {
        train: small(12, &[2, 7], "t"),
        valid: small(6, &[1], "v"),
        test: small(9, &[0, 1, 2, 4], "s"),
    };
    folder::write_folder(&splits, 1.0, &root).unwrap();
    assert!(root.join("1pct/align/0").is_dir());
    assert!(root.join("1pct/conflict/2").is_dir());
    assert!(root.join("test/1").is_dir());
    let back = folder::read_folder(&root, 1.0, Some(3), None).unwrap();
    for (a, b) in [
        (&splits.train, &back.train),
        (&splits.valid, &back.valid),
        (&splits.test, &back.test),
    ] {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.num_conflicting(), b.num_conflicting());
        // Same multiset of (label, bias, pixels); the folder reader orders by path.
        let mut x: Vec<(u8, u8, Vec<u8>)> = (0..a.len())
            .map(|i| (a.labels[i], a.bias[i], a.image(i).to_vec()))
            .collect();
        let mut y: Vec<(u8, u8, Vec<u8>)> = (0..b.len())
            .map(|i| (b.labels[i], b.bias[i], b.image(i).to_vec()))
            .collect();
        x.sort();
        y.sort();
        assert_eq!(x, y);
    }
    assert_eq!(back.train.num_conflicting(), 2);
    // The same through the public entry point.
    let opened = rest::data::open(
        &format!("folder:{}", root.display()),
        1.0,
        Path::new("/nonexistent"),
    )
    .unwrap();
    assert_eq!(opened.test.len(), 9);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn folder_bffhq_style_flat_valid_at_root_and_grey_images() {
    // BFFHQ keeps valid/ and test/ at the root; valid may be flat. Grey PNGs are promoted to
    // RGB for BFFHQ (ImageNet normalisation) and stay grey for a plain folder.
    let root = temp_dir("bffhq");
    let write = |rel: &str, v: u8| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(4, 3, image::Luma([v]))
            .save(&p)
            .unwrap();
    };
    write("bffhq/0.5pct/align/0/a_0_0.png", 10);
    write("bffhq/0.5pct/align/1/b_1_1.png", 20);
    write("bffhq/0.5pct/align/1/c_1_1.png", 30);
    write("bffhq/0.5pct/conflict/0/d_0_1.png", 40);
    write("bffhq/valid/e_0_1.png", 50);
    write("bffhq/valid/f_1_1.png", 60);
    write("bffhq/test/0/g_0_0.png", 70);
    write("bffhq/test/1/h_1_0.png", 80);
    let s = rest::data::open("bffhq", 0.5, &root).unwrap();
    assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (4, 2, 2));
    assert_eq!((s.train.channels, s.train.height, s.train.width), (3, 3, 4));
    assert_eq!(s.train.labels, vec![0, 1, 1, 0]);
    assert_eq!(s.train.bias, vec![0, 1, 1, 1]);
    assert_eq!(s.train.num_conflicting(), 1);
    assert_eq!(s.valid.bias, vec![1, 1]);
    assert_eq!(s.test.image(1)[0], 80);
    assert_eq!(s.train.num_classes, 2);
    let g = rest::data::open(
        &format!("folder:{}", root.join("bffhq").display()),
        0.5,
        &root,
    )
    .unwrap();
    assert_eq!(g.train.channels, 1);
    assert_eq!(g.train.image(3), &[40; 12]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn real_mnist_when_present() {
    let dir = common::real_data_dir().join("mnist");
    if !rest::data::fetch::mnist_present(dir.parent().unwrap()) {
        println!(
            "skipped: no real MNIST under {} (run `rest data fetch --dataset mnist`)",
            dir.display()
        );
        return;
    }
    let (train, test) = idx::load_mnist(&dir).unwrap();
    assert_eq!((train.len(), test.len()), (60000, 10000));
    assert_eq!((train.height, train.width), (28, 28));
    rest::data::fetch::verify_mnist(&dir, true).unwrap();
}
