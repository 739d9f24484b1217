//! Fog, snow and frost as CIFAR-10-C draws them.

use super::frost_photos::FrostPhotos;
use super::ops;
use super::Img;
use crate::rng::Rng;

/// Diamond-square plasma fractal on a `m`×`m` torus (m a power of two), scaled to [0, 1], as
/// the reference's `plasma_fractal`: every new point is the mean of its four parents plus
/// noise uniform in ±wibble², and wibble shrinks by `decay` per level, so the noise amplitude
/// shrinks by decay² per level (the squared amplitude is what makes the reference's fog
/// smooth).
pub fn plasma(m: usize, decay: f32, rng: &mut Rng) -> Vec<f32> {
    let mut a = vec![0f64; m * m];
    let mut wibble = 100.0f64;
    let mut step = m;
    let idx = |y: usize, x: usize| (y % m) * m + (x % m);
    let noise = |wibble: f64, rng: &mut Rng| wibble * wibble * (2.0 * rng.uniform_f64() - 1.0);
    while step >= 2 {
        let half = step / 2;
        for y in (0..m).step_by(step) {
            for x in (0..m).step_by(step) {
                let sum = a[idx(y, x)]
                    + a[idx(y, x + step)]
                    + a[idx(y + step, x)]
                    + a[idx(y + step, x + step)];
                a[idx(y + half, x + half)] = sum / 4.0 + noise(wibble, rng);
            }
        }
        for y in (0..m).step_by(half) {
            let x0 = if (y / half).is_multiple_of(2) {
                half
            } else {
                0
            };
            for x in (x0..m).step_by(step) {
                let sum = a[idx(y + m - half, x)]
                    + a[idx(y + half, x)]
                    + a[idx(y, x + m - half)]
                    + a[idx(y, x + half)];
                a[idx(y, x)] = sum / 4.0 + noise(wibble, rng);
            }
        }
        step = half;
        wibble /= decay as f64;
    }
    let mn = a.iter().cloned().fold(f64::INFINITY, f64::min);
    let mx = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let span = (mx - mn).max(1e-300);
    a.iter().map(|v| ((v - mn) / span) as f32).collect()
}

pub fn fog(img: &mut Img, row: usize, rng: &mut Rng) {
    let (c0, c1) = [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)][row];
    let m = img.h.max(img.w).next_power_of_two().max(2);
    let p = plasma(m, c1, rng);
    let mx = img.d.iter().cloned().fold(0.0f32, f32::max);
    let (h, w, hw) = (img.h, img.w, img.h * img.w);
    for ch in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = &mut img.d[ch * hw + y * w + x];
                *v = ((*v + c0 * p[y * m + x]) * mx / (mx + c0)).clamp(0.0, 1.0);
            }
        }
    }
}

/// The reference's `clipped_zoom` of one plane: the central ceil(side / zoom) square,
/// enlarged by `zoom` with scipy.ndimage.zoom (order 1, corners aligned: output o reads input
/// o·(n − 1)/(n' − 1), n' = round(n·zoom)), then the central side×side crop.
fn clipped_zoom(p: &[f32], side: usize, zoom: f32) -> Vec<f32> {
    let ch = (side as f32 / zoom).ceil() as usize;
    let top = (side - ch) / 2;
    let big = (ch as f32 * zoom).round() as usize;
    let trim = big.saturating_sub(side) / 2;
    let scale = if big > 1 {
        (ch - 1) as f32 / (big - 1) as f32
    } else {
        0.0
    };
    let mut out = vec![0f32; side * side];
    for y in 0..side {
        for x in 0..side {
            let (sy, sx) = ((y + trim) as f32 * scale, (x + trim) as f32 * scale);
            let v = ops::bilinear(
                p,
                side,
                side,
                top as f32 + sy,
                top as f32 + sx,
                ops::clamp_index,
            );
            out[y * side + x] = v;
        }
    }
    out
}

/// ImageMagick's MotionBlurImage on an 8-bit plane: 2·⌈radius⌉ + 1 one-sided taps along the
/// angle with Gaussian weights exp(−i²/2σ²) (normalised), offsets ⌈i·cos − ½⌉, ⌈i·sin − ½⌉,
/// edge pixels repeated outside the image; the result rounded to 8 bits.
fn motion_blur(p: &[f32], h: usize, w: usize, radius: f32, sigma: f32, angle_deg: f32) -> Vec<f32> {
    let width = 2 * radius.ceil() as usize + 1;
    let k: Vec<f64> = (0..width)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma as f64 * sigma as f64)).exp())
        .collect();
    let total: f64 = k.iter().sum();
    let a = (angle_deg as f64).to_radians();
    let offs: Vec<(isize, isize)> = (0..width)
        .map(|i| {
            let ox = (i as f64 * a.cos() - 0.5).ceil() as isize;
            let oy = (i as f64 * a.sin() - 0.5).ceil() as isize;
            (oy, ox)
        })
        .collect();
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0f64;
            for (&(oy, ox), &kw) in offs.iter().zip(&k) {
                let yy = ops::clamp_index(y as isize + oy, h);
                let xx = ops::clamp_index(x as isize + ox, w);
                s += kw * p[yy * w + xx] as f64;
            }
            out[y * w + x] = (s / total).round().clamp(0.0, 255.0) as f32;
        }
    }
    out
}

pub fn snow(img: &mut Img, row: usize, rng: &mut Rng) {
    let (loc, scale, zoom, thr, radius, sigma, blend) = [
        (0.1, 0.2, 1.0, 0.6, 8.0, 3.0, 0.95),
        (0.1, 0.2, 1.0, 0.5, 10.0, 4.0, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10.0, 4.0, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12.0, 6.0, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14.0, 12.0, 0.8),
    ][row];
    let (h, w, hw) = (img.h, img.w, img.h * img.w);
    // The reference's layer is square (CIFAR); other shapes use the larger side and crop.
    let side = h.max(w);
    let noise: Vec<f32> = (0..side * side)
        .map(|_| loc + scale * rng.normal())
        .collect();
    let zoomed = clipped_zoom(&noise, side, zoom);
    // Thresholded, then written as an 8-bit grey image (truncated) for ImageMagick.
    let mut layer = vec![0f32; hw];
    for y in 0..h {
        for x in 0..w {
            let v = zoomed[y * side + x];
            let v = if v < thr { 0.0 } else { v };
            layer[y * w + x] = (v.clamp(0.0, 1.0) * 255.0).floor();
        }
    }
    let angle = -135.0 + 90.0 * rng.uniform();
    let scaled_radius = radius * side as f32 / 32.0;
    let flakes = motion_blur(&layer, h, w, scaled_radius, sigma, angle);
    for i in 0..hw {
        let grey = 0.299 * img.d[i] + 0.587 * img.d[hw + i] + 0.114 * img.d[2 * hw + i];
        let lift = grey * 1.5 + 0.5;
        let flip = hw - 1 - i;
        let add = (flakes[i] + flakes[flip]) / 255.0;
        for ch in 0..3 {
            let v = &mut img.d[ch * hw + i];
            *v = (blend * *v + (1.0 - blend) * v.max(lift) + add).clamp(0.0, 1.0);
        }
    }
}

/// Frost: a random crop of one of the frost photographs (scaled by 0.2) blended in,
/// a·image + b·frost.
pub fn frost(img: &mut Img, row: usize, rng: &mut Rng, photos: &FrostPhotos) {
    let (a, b) = [
        (1.0, 0.2),
        (1.0, 0.3),
        (0.9, 0.4),
        (0.85, 0.4),
        (0.75, 0.45),
    ][row];
    let crop = photos.random_crop(img.h, img.w, rng);
    for (v, &f) in img.d.iter_mut().zip(&crop) {
        *v = (a * *v + b * f as f32 / 255.0).clamp(0.0, 1.0);
    }
}
