//! Spatter as CIFAR-10-C draws it: a thresholded, smoothed noise layer is the liquid. Water
//! (table rows 1–3) adds a pale turquoise sheen whose texture comes from the distance to the
//! liquid's edges (Canny edges, L2 distance capped at 20, 3×3 mean, histogram equalisation,
//! an emboss kernel, 3×3 mean) weighted by the liquid itself; mud (rows 4–5) paints brown where
//! the smoothed blob mask is at least 0.8. Outside the liquid the image is unchanged: there
//! are no soft halos.

use super::ops::{self, Border};
use super::Img;
use crate::rng::Rng;

/// (loc, scale, sigma, threshold, intensity or mud sigma, mud) per table row 1..5.
const TABLE: [(f32, f32, f32, f32, f32, bool); 5] = [
    (0.62, 0.1, 0.7, 0.7, 0.5, false),
    (0.65, 0.1, 0.8, 0.7, 0.5, false),
    (0.65, 0.3, 1.0, 0.69, 0.5, false),
    (0.65, 0.1, 0.7, 0.69, 0.6, true),
    (0.65, 0.1, 0.5, 0.68, 0.6, true),
];

pub fn spatter(img: &mut Img, row: usize, rng: &mut Rng) {
    let (loc, scale, sigma, thr, c4, mud) = TABLE[row];
    let (h, w, hw) = (img.h, img.w, img.h * img.w);
    let mut liquid: Vec<f32> = (0..hw).map(|_| loc + scale * rng.normal()).collect();
    ops::gaussian(&mut liquid, h, w, sigma, 4.0, Border::Nearest);
    for v in &mut liquid {
        if *v < thr {
            *v = 0.0;
        }
    }
    if mud {
        let mut m: Vec<f32> = liquid
            .iter()
            .map(|&v| if v > thr { 1.0 } else { 0.0 })
            .collect();
        ops::gaussian(&mut m, h, w, c4, 4.0, Border::Nearest);
        let colour = [63.0 / 255.0, 42.0 / 255.0, 20.0 / 255.0];
        for (plane, &col) in img.d.chunks_exact_mut(hw).zip(&colour) {
            for (v, &mk) in plane.iter_mut().zip(&m) {
                let mk = if mk < 0.8 { 0.0 } else { mk };
                *v = (*v * (1.0 - mk) + col * mk).clamp(0.0, 1.0);
            }
        }
        return;
    }
    // Water. The reference works on the liquid as 8-bit levels from here on.
    let l8: Vec<u8> = liquid
        .iter()
        .map(|&v| (v * 255.0).clamp(0.0, 255.0) as u8)
        .collect();
    let edges = canny(&l8, h, w, 50.0, 150.0);
    let dist = distance_to_edges(&edges, h, w);
    let capped: Vec<f32> = dist.iter().map(|&d| d.min(20.0)).collect();
    let smooth: Vec<u8> = ops::box3(&capped, h, w)
        .iter()
        .map(|&v| v.clamp(0.0, 255.0) as u8)
        .collect();
    let eq = equalize_hist(&smooth);
    let embossed = emboss(&eq, h, w);
    let tex: Vec<f32> = ops::box3(&embossed, h, w)
        .iter()
        .map(|v| v.round())
        .collect();
    let m: Vec<f32> = l8.iter().zip(&tex).map(|(&l, &t)| l as f32 * t).collect();
    let mx = m.iter().cloned().fold(0.0f32, f32::max);
    if mx <= 0.0 {
        return;
    }
    let colour = [175.0 / 255.0, 238.0 / 255.0, 238.0 / 255.0];
    for (plane, &col) in img.d.chunks_exact_mut(hw).zip(&colour) {
        for (v, &mk) in plane.iter_mut().zip(&m) {
            *v = (*v + mk / mx * c4 * col).clamp(0.0, 1.0);
        }
    }
}

/// OpenCV's Canny on an 8-bit plane (3×3 Sobel, L1 magnitude, non-maximum suppression along
/// the gradient quantised to 0°/45°/90°/135°, hysteresis with 8-connectivity): 1 on edges.
fn canny(p: &[u8], h: usize, w: usize, low: f32, high: f32) -> Vec<u8> {
    let at = |y: isize, x: isize| p[ops::clamp_index(y, h) * w + ops::clamp_index(x, w)] as f32;
    let (mut gx, mut gy, mut mag) = (vec![0f32; h * w], vec![0f32; h * w], vec![0f32; h * w]);
    for y in 0..h as isize {
        for x in 0..w as isize {
            let dx = (at(y - 1, x + 1) + 2.0 * at(y, x + 1) + at(y + 1, x + 1))
                - (at(y - 1, x - 1) + 2.0 * at(y, x - 1) + at(y + 1, x - 1));
            let dy = (at(y + 1, x - 1) + 2.0 * at(y + 1, x) + at(y + 1, x + 1))
                - (at(y - 1, x - 1) + 2.0 * at(y - 1, x) + at(y - 1, x + 1));
            let i = y as usize * w + x as usize;
            gx[i] = dx;
            gy[i] = dy;
            mag[i] = dx.abs() + dy.abs();
        }
    }
    let m = |y: isize, x: isize| {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            0.0
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    let tan22 = (22.5f32).to_radians().tan();
    let tan67 = (67.5f32).to_radians().tan();
    // 0 not an edge, 1 weak, 2 strong.
    let mut state = vec![0u8; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let v = mag[i];
            if v <= low {
                continue;
            }
            let (ax, ay) = (gx[i].abs(), gy[i].abs());
            let is_max = if ay < ax * tan22 {
                v > m(y, x - 1) && v >= m(y, x + 1)
            } else if ay > ax * tan67 {
                v > m(y - 1, x) && v >= m(y + 1, x)
            } else {
                let s = if (gx[i] < 0.0) != (gy[i] < 0.0) {
                    -1
                } else {
                    1
                };
                v > m(y - 1, x - s) && v > m(y + 1, x + s)
            };
            if is_max {
                state[i] = if v > high { 2 } else { 1 };
            }
        }
    }
    let mut stack: Vec<usize> = (0..h * w).filter(|&i| state[i] == 2).collect();
    while let Some(i) = stack.pop() {
        let (y, x) = ((i / w) as isize, (i % w) as isize);
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (yy, xx) = (y + dy, x + dx);
                if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                    continue;
                }
                let j = yy as usize * w + xx as usize;
                if state[j] == 1 {
                    state[j] = 2;
                    stack.push(j);
                }
            }
        }
    }
    state.iter().map(|&s| u8::from(s == 2)).collect()
}

/// OpenCV's distanceTransform(DIST_L2, 5) to the nearest edge pixel: a two-pass chamfer with
/// the 5×5 mask's weights 1, 1.4 and 2.1969. Without any edge every distance is large.
fn distance_to_edges(edges: &[u8], h: usize, w: usize) -> Vec<f32> {
    const FAR: f32 = 1e6;
    let mut d: Vec<f32> = edges
        .iter()
        .map(|&e| if e == 1 { 0.0 } else { FAR })
        .collect();
    let (a, b, c) = (1.0f32, 1.4f32, 2.1969f32);
    let fwd: [(isize, isize, f32); 8] = [
        (-2, -1, c),
        (-2, 1, c),
        (-1, -2, c),
        (-1, -1, b),
        (-1, 0, a),
        (-1, 1, b),
        (-1, 2, c),
        (0, -1, a),
    ];
    let relax = |d: &mut Vec<f32>, y: usize, x: usize, sign: isize| {
        let mut best = d[y * w + x];
        for &(dy, dx, wt) in &fwd {
            let (yy, xx) = (y as isize + sign * dy, x as isize + sign * dx);
            if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                best = best.min(d[yy as usize * w + xx as usize] + wt);
            }
        }
        d[y * w + x] = best;
    };
    for y in 0..h {
        for x in 0..w {
            relax(&mut d, y, x, 1);
        }
    }
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            relax(&mut d, y, x, -1);
        }
    }
    d
}

/// OpenCV's equalizeHist: the cumulative histogram, from the first occupied level, scaled to
/// 0..255.
fn equalize_hist(p: &[u8]) -> Vec<u8> {
    let mut hist = [0usize; 256];
    for &v in p {
        hist[v as usize] += 1;
    }
    let first = hist.iter().position(|&c| c > 0).unwrap_or(0);
    let total = p.len();
    if hist[first] == total {
        return vec![first as u8; total];
    }
    let scale = 255.0 / (total - hist[first]) as f32;
    let mut lut = [0u8; 256];
    let mut sum = 0usize;
    for (l, &c) in hist.iter().enumerate().skip(first + 1) {
        sum += c;
        lut[l] = (sum as f32 * scale).round().clamp(0.0, 255.0) as u8;
    }
    p.iter().map(|&v| lut[v as usize]).collect()
}

/// filter2D with the reference's emboss kernel [[-2,-1,0],[-1,1,1],[0,1,2]] (correlation,
/// BORDER_REFLECT_101), saturated to 8 bits.
fn emboss(p: &[u8], h: usize, w: usize) -> Vec<f32> {
    const K: [[f32; 3]; 3] = [[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]];
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (ky, row) in K.iter().enumerate() {
                for (kx, &k) in row.iter().enumerate() {
                    let yy = ops::reflect101(y as isize + ky as isize - 1, h);
                    let xx = ops::reflect101(x as isize + kx as isize - 1, w);
                    s += k * p[yy * w + xx] as f32;
                }
            }
            out[y * w + x] = s.round().clamp(0.0, 255.0);
        }
    }
    out
}
