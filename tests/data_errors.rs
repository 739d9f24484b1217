//! Bad input: every problem is an error (never a panic) whose message names the file and says
//! what is wrong.

use rest::data::{cache, cifar, folder, idx, Dataset, Normalize};
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

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn assert_names(msg: &str, file: &Path, words: &[&str]) {
    eprintln!("MSG: {msg}");
    let f = file.display().to_string();
    assert!(msg.contains(&f), "message does not name {f}: {msg}");
    for w in words {
        assert!(
            msg.to_lowercase().contains(&w.to_lowercase()),
            "message lacks {w:?}: {msg}"
        );
    }
}

fn fake_mnist(dir: &Path, n_img: usize, n_lab: usize) {
    idx::write_idx(
        &dir.join("train-images-idx3-ubyte"),
        &[n_img, 28, 28],
        &vec![1u8; n_img * 784],
    )
    .unwrap();
    idx::write_idx(
        &dir.join("train-labels-idx1-ubyte"),
        &[n_lab],
        &vec![3u8; n_lab],
    )
    .unwrap();
    idx::write_idx(
        &dir.join("t10k-images-idx3-ubyte"),
        &[5, 28, 28],
        &[0u8; 5 * 784],
    )
    .unwrap();
    idx::write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[5], &[0u8; 5]).unwrap();
}

#[test]
fn truncated_idx() {
    let d = temp_dir("trunc-idx");
    fake_mnist(&d, 10, 10);
    let p = d.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    assert_names(&err_text(idx::load_mnist(&d)), &p, &["truncated"]);
    // Truncated inside the header.
    std::fs::write(&p, &bytes[..9]).unwrap();
    assert_names(
        &err_text(idx::read_idx_images(&p)),
        &p,
        &["truncated", "header"],
    );
    // Truncated gzip stream.
    let gz = d.join("x.gz");
    idx::write_idx(&gz, &[10, 28, 28], &[7u8; 7840]).unwrap();
    let g = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &g[..g.len() / 2]).unwrap();
    assert_names(&err_text(idx::read_idx_images(&gz)), &gz, &["gzip"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wrong_magic_idx() {
    let d = temp_dir("magic-idx");
    fake_mnist(&d, 4, 4);
    let p = d.join("train-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[0] = 0x50; // "P", e.g. a PNG or HTML page saved under the name
    std::fs::write(&p, &bytes).unwrap();
    assert_names(&err_text(idx::load_mnist(&d)), &p, &["magic"]);
    // Labels file given where images are expected.
    let lab = d.join("t10k-labels-idx1-ubyte");
    assert_names(
        &err_text(idx::read_idx_images(&lab)),
        &lab,
        &["magic", "dimensions"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn label_image_count_mismatch() {
    let d = temp_dir("count-idx");
    fake_mnist(&d, 10, 9);
    let msg = err_text(idx::load_mnist(&d));
    assert_names(
        &msg,
        &d.join("train-labels-idx1-ubyte"),
        &["mismatch", "9 labels", "10 images"],
    );
    assert!(msg.contains(&d.join("train-images-idx3-ubyte").display().to_string()));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_mnist_file() {
    let d = temp_dir("missing-idx");
    fake_mnist(&d, 3, 3);
    std::fs::remove_file(d.join("t10k-labels-idx1-ubyte")).unwrap();
    assert_names(
        &err_text(idx::load_mnist(&d)),
        &d,
        &["missing", "t10k-labels-idx1-ubyte"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn truncated_cifar_batch() {
    let d = temp_dir("cifar-bad");
    let p = d.join("test_batch.bin");
    std::fs::write(&p, vec![1u8; 3073 * 2 + 5]).unwrap();
    assert_names(
        &err_text(cifar::read_batches(&[&p], "x")),
        &p,
        &["3073-byte", "truncated"],
    );
    std::fs::write(&p, vec![12u8; 3073]).unwrap();
    assert_names(
        &err_text(cifar::read_batches(&[&p], "x")),
        &p,
        &["label 12"],
    );
    let msg = err_text(cifar::load_cifar10(&d.join("nope")));
    assert!(msg.contains("cifar-10-binary"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

fn png(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]))
        .save(path)
        .unwrap();
}

/// A valid layout: root/1pct/{align,conflict}, root/1pct/valid, root/test.
fn layout(root: &Path) {
    png(&root.join("1pct/align/0/a_0_0.png"), 4, 4);
    png(&root.join("1pct/align/1/b_1_1.png"), 4, 4);
    png(&root.join("1pct/conflict/1/c_1_0.png"), 4, 4);
    png(&root.join("1pct/valid/0/d_0_1.png"), 4, 4);
    png(&root.join("test/1/e_1_1.png"), 4, 4);
}

#[test]
fn corrupt_png() {
    let root = temp_dir("png-corrupt");
    layout(&root);
    folder::read_folder(&root, 1.0, None, None).unwrap();
    let p = root.join("1pct/align/1/b_1_1.png");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_names(
        &err_text(folder::read_folder(&root, 1.0, None, None)),
        &p,
        &["corrupt", "png"],
    );
    std::fs::write(&p, b"not a png at all").unwrap();
    assert_names(
        &err_text(folder::read_folder(&root, 1.0, None, None)),
        &p,
        &["png"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn missing_png_dir() {
    let root = temp_dir("png-missing");
    layout(&root);
    let msg = err_text(folder::read_folder(&root, 2.0, None, None));
    assert_names(&msg, &root.join("2pct"), &["missing"]);
    std::fs::remove_dir_all(root.join("test")).unwrap();
    let msg = err_text(folder::read_folder(&root, 1.0, None, None));
    assert_names(&msg, &root, &["no test directory"]);
    std::fs::remove_dir_all(root.join("1pct/align")).unwrap();
    let msg = err_text(folder::read_folder(&root, 1.0, None, None));
    assert_names(&msg, &root.join("1pct/align"), &["missing"]);
    let msg = err_text(rest::data::open("bffhq", 0.5, &root));
    assert!(msg.contains("bffhq") && msg.contains("missing"), "{msg}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn unknown_label_in_file_name() {
    let root = temp_dir("png-label");
    layout(&root);
    let p = root.join("1pct/align/0/f_cat_0.png");
    png(&p, 4, 4);
    assert_names(
        &err_text(folder::read_folder(&root, 1.0, None, None)),
        &p,
        &["unknown label", "cat"],
    );
    std::fs::remove_file(&p).unwrap();
    let p = root.join("1pct/align/0/g_12_12.png");
    png(&p, 4, 4);
    assert_names(
        &err_text(folder::read_folder(&root, 1.0, Some(10), None)),
        &p,
        &["unknown label 12", "10 classes"],
    );
    std::fs::remove_file(&p).unwrap();
    let p = root.join("1pct/align/0/nosuffix.png");
    png(&p, 4, 4);
    assert_names(
        &err_text(folder::read_folder(&root, 1.0, None, None)),
        &p,
        &["_{label}_{bias}"],
    );
    std::fs::remove_file(&p).unwrap();
    // An align/ file whose name says it conflicts.
    let p = root.join("1pct/align/0/h_0_1.png");
    png(&p, 4, 4);
    assert_names(
        &err_text(folder::read_folder(&root, 1.0, None, None)),
        &p,
        &["align", "label 0 != bias"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn inconsistent_image_sizes() {
    let root = temp_dir("png-size");
    layout(&root);
    let p = root.join("1pct/conflict/0/z_0_2.png");
    png(&p, 5, 4);
    assert_names(
        &err_text(folder::read_folder(&root, 1.0, None, None)),
        &p,
        &["inconsistent image sizes", "5x4"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

fn tiny() -> Dataset {
    Dataset {
        name: "tiny".into(),
        channels: 1,
        height: 2,
        width: 2,
        num_classes: 2,
        pixels: vec![1, 2, 3, 4, 5, 6, 7, 8],
        labels: vec![0, 1],
        bias: vec![0, 0],
        normalize: Normalize::identity(1),
    }
}

#[test]
fn bad_cache_files() {
    let d = temp_dir("cache-bad");
    let p = d.join("train.bin");
    cache::write(&p, &tiny(), 5, 1.0, 4).unwrap();
    let (back, meta) = cache::read(&p).unwrap();
    assert_eq!(back, tiny());
    assert_eq!((meta.seed, meta.ratio_percent, meta.severity), (5, 1.0, 4));
    let good = std::fs::read(&p).unwrap();

    // Another generator version.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&(cache::GENERATOR_VERSION + 1).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert_names(
        &err_text(cache::read(&p)),
        &p,
        &["generator version", "rest data make"],
    );

    // Truncated.
    std::fs::write(&p, &good[..good.len() - 11]).unwrap();
    assert_names(&err_text(cache::read(&p)), &p, &["truncated"]);

    // Wrong magic.
    let mut b = good.clone();
    b[0] = b'X';
    std::fs::write(&p, &b).unwrap();
    assert_names(&err_text(cache::read(&p)), &p, &["wrong magic"]);

    // A flipped pixel.
    let mut b = good.clone();
    let n = b.len();
    b[n - 14] ^= 1;
    std::fs::write(&p, &b).unwrap();
    assert_names(&err_text(cache::read(&p)), &p, &["checksum"]);

    // No temporary file left behind by the atomic write.
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn unknown_dataset_and_missing_cifar_source() {
    let d = temp_dir("open-bad");
    let msg = err_text(rest::data::open("imagenet", 1.0, &d));
    assert!(
        msg.contains("unknown dataset") && msg.contains("imagenet"),
        "{msg}"
    );
    let msg = err_text(rest::data::open("cifar10c", 1.0, &d));
    assert!(
        msg.contains("cifar-10-batches-bin") && msg.contains("cs.toronto.edu"),
        "{msg}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}
