//! Corrupted-image generator: every corruption changes an image, at every severity, reproducibly.

use rest::data::corrupt::{self, FrostPhotos, Img, Photo, CORRUPTIONS};
use rest::rng::Rng;

/// A colourful 32x32 test image: gradients, a fine checkerboard in red, and a square.
fn test_image() -> Img {
    let (h, w) = (32, 32);
    let mut d = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let inside = (8..24).contains(&y) && (8..24).contains(&x);
            let checker = if (x + y) % 2 == 0 { 0.3 } else { 0.0 };
            d[y * w + x] = x as f32 / 31.0 * 0.7 + checker;
            d[h * w + y * w + x] = y as f32 / 31.0;
            d[2 * h * w + y * w + x] = if inside { 0.9 } else { 0.2 };
        }
    }
    Img { h, w, d }
}

#[test]
fn every_corruption_changes_the_image_and_is_deterministic() {
    let base = test_image();
    // A stand-in for the frost photographs: a bright, textured 48x48 picture.
    let rgb: Vec<u8> = (0..3 * 48 * 48)
        .map(|i| 150 + (i * 7 % 100) as u8)
        .collect();
    let frost = FrostPhotos::from_photos(vec![Photo { h: 48, w: 48, rgb }]).unwrap();
    for (k, name) in CORRUPTIONS.iter().enumerate() {
        for sev in 1..=corrupt::MAX_SEVERITY {
            let mut a = base.clone();
            corrupt::apply(&mut a, k, sev, &mut Rng::new(9), &frost);
            let mut b = base.clone();
            corrupt::apply(&mut b, k, sev, &mut Rng::new(9), &frost);
            assert_eq!(a.d, b.d, "{name} severity {sev} is not deterministic");
            assert!(
                a.d.iter().all(|v| (0.0..=1.0).contains(v)),
                "{name} leaves [0, 1]"
            );
            let diff: f32 =
                a.d.iter()
                    .zip(&base.d)
                    .map(|(x, y)| (x - y).abs())
                    .sum::<f32>()
                    / a.d.len() as f32;
            eprintln!("{name:>18} severity {sev}: mean |change| {diff:.4}");
            assert!(
                diff > 0.002,
                "{name} severity {sev} barely changes the image ({diff})"
            );
        }
    }
}
