//! Elastic transform as CIFAR-10-C draws it, in two resamplings like the reference: a random
//! affine warp (three points around the centre moved by up to `aff` pixels; bilinear,
//! whole-sample reflected borders as OpenCV's warpAffine), then a smoothed random displacement
//! field (uniform noise, Gaussian σ with truncate 3 and reflected borders, times α) read
//! bilinearly with half-sample reflection (scipy's map_coordinates, order 1, mode "reflect").

use super::ops::{self, Border};
use super::Img;
use crate::rng::Rng;

/// (α, σ, affine jitter) per table row 1..5, in units of the image side (CIFAR-10-C: side 32).
const TABLE: [(f32, f32, f32); 5] = [
    (0.0, 0.0, 0.08),
    (0.05, 0.2, 0.07),
    (0.08, 0.06, 0.06),
    (0.1, 0.04, 0.05),
    (0.1, 0.03, 0.03),
];

/// Solves the affine map A (2×3) with A·[p, 1] = q for three point pairs.
fn affine_from(p: [[f32; 2]; 3], q: [[f32; 2]; 3]) -> [[f32; 3]; 2] {
    let det = |m: [[f32; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let m = [
        [p[0][0], p[0][1], 1.0],
        [p[1][0], p[1][1], 1.0],
        [p[2][0], p[2][1], 1.0],
    ];
    let d = det(m);
    let mut out = [[0f32; 3]; 2];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            let mut mc = m;
            for k in 0..3 {
                mc[k][c] = q[k][r];
            }
            *v = det(mc) / d;
        }
    }
    out
}

pub fn elastic(img: &mut Img, row: usize, rng: &mut Rng) {
    let s = img.h.min(img.w) as f32;
    let (alpha, sigma, aff) = TABLE[row];
    let (alpha, sigma, aff) = (alpha * s, sigma * s, aff * s);
    let (h, w, hw) = (img.h, img.w, img.h * img.w);
    // The reference's points, (x, y): centre ± a third of the side (integer division).
    let (cx, cy) = ((w / 2) as f32, (h / 2) as f32);
    let sq = (img.h.min(img.w) / 3) as f32;
    let pts: [[f32; 2]; 3] = [[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]];
    let moved: [[f32; 2]; 3] = std::array::from_fn(|k| {
        [
            pts[k][0] + aff * (2.0 * rng.uniform() - 1.0),
            pts[k][1] + aff * (2.0 * rng.uniform() - 1.0),
        ]
    });
    // warpAffine reads output q from the source at M⁻¹(q), M mapping pts → moved.
    let inv = affine_from(moved, pts);
    let src = img.d.clone();
    let mut warped = vec![0f32; 3 * hw];
    for y in 0..h {
        for x in 0..w {
            let (qx, qy) = (x as f32, y as f32);
            let sx = inv[0][0] * qx + inv[0][1] * qy + inv[0][2];
            let sy = inv[1][0] * qx + inv[1][1] * qy + inv[1][2];
            for ch in 0..3 {
                warped[ch * hw + y * w + x] =
                    ops::bilinear(&src[ch * hw..(ch + 1) * hw], h, w, sy, sx, ops::reflect101);
            }
        }
    }
    let mut dx: Vec<f32> = (0..hw).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    let mut dy: Vec<f32> = (0..hw).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    ops::gaussian(&mut dx, h, w, sigma, 3.0, Border::Reflect);
    ops::gaussian(&mut dy, h, w, sigma, 3.0, Border::Reflect);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (sy, sx) = (y as f32 + alpha * dy[i], x as f32 + alpha * dx[i]);
            for ch in 0..3 {
                img.d[ch * hw + i] =
                    ops::bilinear(&warped[ch * hw..(ch + 1) * hw], h, w, sy, sx, ops::reflect)
                        .clamp(0.0, 1.0);
            }
        }
    }
}
