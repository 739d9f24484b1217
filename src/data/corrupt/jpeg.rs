//! JPEG compression as a lossy round trip: YCbCr, 4:2:0 chroma subsampling, 8×8 DCT and
//! quantisation with the standard tables scaled by the quality (as libjpeg scales them), without
//! the lossless entropy coding; chroma is upsampled as libjpeg's decoder does by default
//! ("fancy" triangular upsampling).

use super::Img;

const LUMA_Q: [u8; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];
const CHROMA_Q: [u8; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

fn quant_table(base: &[u8; 64], quality: u32) -> [f32; 64] {
    let q = quality.clamp(1, 100);
    let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
    std::array::from_fn(|i| ((base[i] as u32 * scale + 50) / 100).clamp(1, 255) as f32)
}

/// Quantises one plane (values 0..255) through 8×8 DCT blocks, in place. Edges are padded by
/// replication to whole blocks, as an encoder does.
fn jpeg_plane(p: &mut [f32], h: usize, w: usize, q: &[f32; 64]) {
    let cos: [[f32; 8]; 8] = std::array::from_fn(|x| {
        std::array::from_fn(|u| {
            (((2 * x + 1) as f32 * u as f32 * std::f32::consts::PI) / 16.0).cos()
        })
    });
    let cu = |u: usize| {
        if u == 0 {
            std::f32::consts::FRAC_1_SQRT_2
        } else {
            1.0
        }
    };
    for by in (0..h).step_by(8) {
        for bx in (0..w).step_by(8) {
            let mut blk = [[0f32; 8]; 8];
            for (y, row) in blk.iter_mut().enumerate() {
                for (x, v) in row.iter_mut().enumerate() {
                    *v = p[(by + y).min(h - 1) * w + (bx + x).min(w - 1)] - 128.0;
                }
            }
            // Forward DCT, separable.
            let mut tmp = [[0f32; 8]; 8];
            for y in 0..8 {
                for u in 0..8 {
                    tmp[y][u] = (0..8).map(|x| blk[y][x] * cos[x][u]).sum::<f32>() * cu(u) / 2.0;
                }
            }
            let mut coef = [[0f32; 8]; 8];
            for v in 0..8 {
                for u in 0..8 {
                    let c = (0..8).map(|y| tmp[y][u] * cos[y][v]).sum::<f32>() * cu(v) / 2.0;
                    let qq = q[v * 8 + u];
                    coef[v][u] = (c / qq).round() * qq;
                }
            }
            // Inverse DCT.
            for y in 0..8 {
                for u in 0..8 {
                    tmp[y][u] = (0..8).map(|v| cu(v) * coef[v][u] * cos[y][v]).sum::<f32>() / 2.0;
                }
            }
            for y in 0..8 {
                for x in 0..8 {
                    let val =
                        (0..8).map(|u| cu(u) * tmp[y][u] * cos[x][u]).sum::<f32>() / 2.0 + 128.0;
                    if by + y < h && bx + x < w {
                        p[(by + y) * w + bx + x] = val.round().clamp(0.0, 255.0);
                    }
                }
            }
        }
    }
}

pub fn jpeg(img: &mut Img, row: usize) {
    let quality = [80, 65, 58, 50, 40][row];
    let (h, w, hw) = (img.h, img.w, img.h * img.w);
    let (mut yp, mut cb, mut cr) = (vec![0f32; hw], vec![0f32; hw], vec![0f32; hw]);
    for i in 0..hw {
        let (r, g, b) = (
            img.d[i] * 255.0,
            img.d[hw + i] * 255.0,
            img.d[2 * hw + i] * 255.0,
        );
        yp[i] = (0.299 * r + 0.587 * g + 0.114 * b).round();
        cb[i] = (128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b)
            .round()
            .clamp(0.0, 255.0);
        cr[i] = (128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b)
            .round()
            .clamp(0.0, 255.0);
    }
    let (ch, cw) = (h.div_ceil(2), w.div_ceil(2));
    let sub = |p: &[f32]| -> Vec<f32> {
        let mut o = vec![0f32; ch * cw];
        for y in 0..ch {
            for x in 0..cw {
                let mut s = 0.0;
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    s += p[(2 * y + dy).min(h - 1) * w + (2 * x + dx).min(w - 1)];
                }
                o[y * cw + x] = (s / 4.0).round();
            }
        }
        o
    };
    let (mut cbs, mut crs) = (sub(&cb), sub(&cr));
    jpeg_plane(&mut yp, h, w, &quant_table(&LUMA_Q, quality));
    let cq = quant_table(&CHROMA_Q, quality);
    jpeg_plane(&mut cbs, ch, cw, &cq);
    jpeg_plane(&mut crs, ch, cw, &cq);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let (yy, cbv, crv) = (
                yp[i],
                fancy_upsample(&cbs, ch, cw, y, x) - 128.0,
                fancy_upsample(&crs, ch, cw, y, x) - 128.0,
            );
            img.d[i] = ((yy + 1.402 * crv).round() / 255.0).clamp(0.0, 1.0);
            img.d[hw + i] =
                ((yy - 0.344_136 * cbv - 0.714_136 * crv).round() / 255.0).clamp(0.0, 1.0);
            img.d[2 * hw + i] = ((yy + 1.772 * cbv).round() / 255.0).clamp(0.0, 1.0);
        }
    }
}

/// libjpeg's h2v2 "fancy" upsampling of a half-size chroma plane at full-size pixel (y, x):
/// 9/16 of the nearest sample, 3/16 of each of the two next along the rows and columns, 1/16
/// of the diagonal one; the edges repeat their samples.
fn fancy_upsample(p: &[f32], ch: usize, cw: usize, y: usize, x: usize) -> f32 {
    let far = |i: usize, n: usize| -> usize {
        let near = i / 2;
        if i.is_multiple_of(2) {
            near.saturating_sub(1)
        } else {
            (near + 1).min(n - 1)
        }
    };
    let (ny, fy, nx, fx) = (y / 2, far(y, ch), x / 2, far(x, cw));
    let at = |yy: usize, xx: usize| p[yy * cw + xx];
    let v = 9.0 * at(ny, nx) + 3.0 * at(ny, fx) + 3.0 * at(fy, nx) + at(fy, fx);
    (v / 16.0).round()
}
