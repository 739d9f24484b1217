//! rest's Corrupted CIFAR-10 corruptions against LfF's reference implementation.
//!
//! `tests/fixtures/corruption_reference.json` holds, for each corruption and severity,
//! statistics of the reference's output on three fixed 32×32 images over 12 random draws
//! each: the mean absolute change against the clean image (levels 0..255), the share of
//! values changed by more than 10 levels, and the mean signed change of each colour plane.
//! It was produced by `scripts/corruption_reference_stats.py` running LfF's own protocol file
//! (see that script). Here rest corrupts the same images with 12 draws of its own; per image,
//! rest's mean of each statistic must lie within the reference's range over its draws,
//! widened by a margin:
//!
//! * mean absolute change: 0.5 level + 5 % of the reference's mean; share: 0.01 + 5 %;
//! * tint (each plane's change minus the mean of the three, which shows a colour swapped
//!   between red and blue, or a frost of another hue): 0.8 level + 10 % (libjpeg's integer
//!   DCT and float64 rounding move the deterministic tints by up to 0.7 level).
//!
//! The recipes re-implement library calls (libjpeg, ImageMagick, OpenCV), which round
//! differently; when they were written the deterministic corruptions' mean changes agreed to
//! 0.1 level and the random ones' means fell well inside the reference's spread. Swapping the
//! water colour of spatter to the earlier (yellowish) order fails the tint check.
//!
//! Frost needs the frost photographs: from `$REST_FROST_DIR`, else `$REST_DATA_DIR/frost` or
//! `$REST_TEST_DATA_DIR/frost`, default the checkout's `datasets/frost` (`rest data fetch --dataset frost`). Without them the frost comparison is skipped
//! with a message, unless `REQUIRE_FROST=1` (CI), where it fails.

use rest::data::corrupt::{self, FrostPhotos, Img, Photo, CORRUPTIONS};
use rest::rng::Rng;
use serde_json::Value;
use std::path::PathBuf;

const DRAWS: u64 = 12;

/// The script's `test_image(k)`, byte for byte.
fn test_image(k: usize) -> Vec<u8> {
    let mut hwc = vec![0u8; 32 * 32 * 3];
    for y in 0..32u64 {
        for x in 0..32u64 {
            for c in 0..3u64 {
                let v = match k {
                    0 => [8 * x, 8 * y, 64 + 128 * (((x / 4) + (y / 4)) % 2)][c as usize],
                    1 => {
                        let inside = (8..24).contains(&x) && (8..24).contains(&y);
                        [if inside { 200 } else { 40 }, (x * y) % 256, 255 - 8 * x][c as usize]
                    }
                    _ => {
                        let h = ((x * 37 + y * 91 + c * 53) * 2_654_435_761) % (1 << 32);
                        64 + (h >> 25)
                    }
                };
                hwc[((y * 32 + x) * 3 + c) as usize] = v as u8;
            }
        }
    }
    // Planar [3, 32, 32].
    let mut planar = vec![0u8; hwc.len()];
    for i in 0..32 * 32 {
        for c in 0..3 {
            planar[c * 1024 + i] = hwc[i * 3 + c];
        }
    }
    planar
}

fn stats(clean: &[u8], out: &[u8]) -> (f64, f64, [f64; 3]) {
    let n = clean.len() as f64;
    let (mut mad, mut big, mut shift) = (0.0, 0.0, [0.0; 3]);
    for (i, (&a, &b)) in clean.iter().zip(out).enumerate() {
        let d = b as f64 - a as f64;
        mad += d.abs();
        if d.abs() > 10.0 {
            big += 1.0;
        }
        shift[i * 3 / clean.len()] += d * 3.0 / n;
    }
    (mad / n, big / n, shift)
}

/// Each plane's change minus the mean change of the three planes.
fn tint(shift: [f64; 3]) -> [f64; 3] {
    let m = shift.iter().sum::<f64>() / 3.0;
    shift.map(|s| s - m)
}

fn frost_photos() -> Option<FrostPhotos> {
    let dir = std::env::var_os("REST_FROST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("REST_TEST_DATA_DIR").map(|d| PathBuf::from(d).join("frost")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/frost"));
    match FrostPhotos::load(&dir) {
        Ok(p) => Some(p),
        Err(e) if std::env::var("REQUIRE_FROST").as_deref() == Ok("1") => {
            panic!("REQUIRE_FROST=1 but the frost photographs cannot be loaded: {e:#}")
        }
        Err(e) => {
            eprintln!("skipping the frost comparison: {e:#}");
            None
        }
    }
}

/// A stand-in photograph for the corruptions that do not use frost.
fn grey_photos() -> FrostPhotos {
    FrostPhotos::from_photos(vec![Photo {
        h: 40,
        w: 40,
        rgb: vec![128; 3 * 40 * 40],
    }])
    .unwrap()
}

fn fixture() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/corruption_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn range(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi, v.iter().sum::<f64>() / v.len() as f64)
}

#[test]
fn corruptions_match_the_reference_statistics() {
    let fx = fixture();
    let frost = frost_photos();
    let grey = grey_photos();
    let images: Vec<Vec<u8>> = (0..3).map(test_image).collect();
    let mut failures = Vec::new();
    for (k, name) in CORRUPTIONS.iter().enumerate() {
        let photos = if *name == "frost" {
            match &frost {
                Some(p) => p,
                None => continue,
            }
        } else {
            &grey
        };
        for sev in 1..=corrupt::MAX_SEVERITY {
            let entry = &fx["corruptions"][name][sev.to_string()];
            let as_vec = |key: &str| -> Vec<f64> {
                entry[key]
                    .as_array()
                    .unwrap_or_else(|| panic!("fixture lacks {name} {sev} {key}"))
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            };
            let (ref_mad, ref_big) = (as_vec("mad"), as_vec("frac10"));
            let ref_tint: Vec<[f64; 3]> = entry["shift"]
                .as_array()
                .unwrap_or_else(|| panic!("fixture lacks {name} {sev} shift"))
                .iter()
                .map(|v| {
                    let c = |k: usize| v[k].as_f64().unwrap();
                    tint([c(0), c(1), c(2)])
                })
                .collect();
            for (i, clean) in images.iter().enumerate() {
                let per = DRAWS as usize;
                let (mut mad, mut big, mut tnt) = (0.0, 0.0, [0.0f64; 3]);
                for draw in 0..DRAWS {
                    let mut img = Img::from_u8(clean, 3, 32, 32);
                    corrupt::apply(&mut img, k, sev, &mut Rng::new(1000 + draw), photos);
                    let mut out = vec![0u8; clean.len()];
                    img.to_u8(&mut out);
                    let (m, b, sh) = stats(clean, &out);
                    mad += m / DRAWS as f64;
                    big += b / DRAWS as f64;
                    for (t, v) in tnt.iter_mut().zip(tint(sh)) {
                        *t += v / DRAWS as f64;
                    }
                }
                let (lo, hi, mean) = range(&ref_mad[i * per..(i + 1) * per]);
                let slack = 0.5 + 0.05 * mean;
                let ok_mad = mad >= lo - slack && mad <= hi + slack;
                let (blo, bhi, bmean) = range(&ref_big[i * per..(i + 1) * per]);
                let bslack = 0.01 + 0.05 * bmean;
                let ok_big = big >= blo - bslack && big <= bhi + bslack;
                let mut ok_tint = true;
                let mut tint_text = String::new();
                for c in 0..3 {
                    let v: Vec<f64> = ref_tint[i * per..(i + 1) * per]
                        .iter()
                        .map(|t| t[c])
                        .collect();
                    let (tlo, thi, tmean) = range(&v);
                    let tslack = 0.8 + 0.1 * tmean.abs();
                    ok_tint &= tnt[c] >= tlo - tslack && tnt[c] <= thi + tslack;
                    tint_text += &format!(" {:+.2} ({tlo:+.2}..{thi:+.2})", tnt[c]);
                }
                eprintln!(
                    "{name:>18} sev {sev} image {i}: mad {mad:6.2} (ref {lo:6.2}..{hi:6.2}) \
                     >10 {big:.3} (ref {blo:.3}..{bhi:.3}) tint{tint_text}{}",
                    if ok_mad && ok_big && ok_tint {
                        ""
                    } else {
                        "  <-- outside"
                    }
                );
                if !(ok_mad && ok_big && ok_tint) {
                    failures.push(format!("{name} severity {sev} image {i}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "outside the reference's spread: {failures:?}"
    );
}
