//! `rest data import bffhq DIR` on a small folder in BFFHQ's layout: the cache it builds is what
//! `--dataset bffhq` opens; a layout with parts missing is refused, naming every missing part.

mod common;
use common::temp_dir;
use rest::data::import;
use std::path::Path;

fn face(dir: &Path, i: usize, label: u8, bias: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([
            (i * 13) as u8,
            (x * 16) as u8,
            (y * 8 + label as u32 * 100) as u8,
        ])
    });
    img.save(dir.join(format!("{i:05}_{label}_{bias}.png")))
        .unwrap();
}

/// 2 classes: 200 aligned and 2 conflicting training faces (1 %: enough for 0.5 %), 10
/// validation (flat), 12 test faces per label folder.
fn bffhq_like(root: &Path) {
    let mut i = 0;
    for label in 0..2u8 {
        for _ in 0..100 {
            face(&root.join(format!("0.5pct/align/{label}")), i, label, label);
            i += 1;
        }
        face(
            &root.join(format!("0.5pct/conflict/{label}")),
            i,
            label,
            1 - label,
        );
        i += 1;
        for k in 0..5 {
            face(&root.join("valid"), i, label, (k % 2) as u8);
            i += 1;
        }
        for k in 0..6 {
            face(&root.join(format!("test/{label}")), i, label, (k % 2) as u8);
            i += 1;
        }
    }
}

#[test]
fn import_builds_the_cache_that_bffhq_opens() {
    let src = temp_dir("bffhq-src");
    let root = src.join("bffhq");
    bffhq_like(&root);
    let dd = temp_dir("bffhq-dd");
    // The parent of `bffhq/` is accepted too.
    let (splits, cache) = import::import_bffhq(&src, &dd).unwrap();
    assert_eq!(cache, import::bffhq_cache_dir(&dd));
    assert_eq!(
        (splits.train.len(), splits.valid.len(), splits.test.len()),
        (202, 10, 12)
    );
    assert_eq!(splits.train.num_conflicting(), 2);
    assert_eq!(splits.train.normalize.mean, vec![0.485, 0.456, 0.406]);
    // `--dataset bffhq` reads the cache, not the PNGs (there are none under dd).
    let opened = rest::data::open("bffhq", 0.5, &dd).unwrap();
    assert_eq!(opened.train, splits.train);
    assert_eq!(opened.test, splits.test);
    // Another ratio is not BFFHQ's.
    let msg = format!("{:#}", rest::data::open("bffhq", 1.0, &dd).unwrap_err());
    assert!(msg.contains("--ratio 0.5"), "{msg}");
    std::fs::remove_dir_all(&dd).unwrap();

    // Missing parts are all named.
    std::fs::remove_dir_all(root.join("0.5pct/conflict")).unwrap();
    std::fs::remove_dir_all(root.join("test")).unwrap();
    let dd = temp_dir("bffhq-dd2");
    let msg = format!("{:#}", import::import_bffhq(&root, &dd).unwrap_err());
    assert!(
        msg.contains("0.5pct/conflict") && msg.contains("test") && !msg.contains("valid is"),
        "{msg}"
    );
    assert!(!import::bffhq_cache_dir(&dd).exists(), "nothing is written");
    // An empty folder counts as missing images.
    std::fs::create_dir_all(root.join("test/0")).unwrap();
    let msg = format!("{:#}", import::import_bffhq(&root, &dd).unwrap_err());
    assert!(msg.contains("holds no .png image"), "{msg}");
    let msg = format!(
        "{:#}",
        import::import_bffhq(&src.join("nope"), &dd).unwrap_err()
    );
    assert!(msg.contains("nope"), "{msg}");
    for d in [src, dd] {
        let _ = std::fs::remove_dir_all(d);
    }
}
