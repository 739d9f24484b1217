//! Image operations the corruption recipes are built from, each with the border rule and
//! rounding of the library call it stands for in the reference (named on each function).

/// Index into 0..n with half-sample symmetric reflection (`d c b a | a b c d | d c b a`):
/// scipy.ndimage's and skimage's mode "reflect".
pub fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// Index into 0..n with whole-sample reflection (`d c b | a b c d | c b a`): OpenCV's
/// BORDER_REFLECT_101, the default border of `blur`, `filter2D` and `warpAffine` there.
pub fn reflect101(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - m;
    }
    m as usize
}

/// Index clamped to 0..n: scipy's mode "nearest", ImageMagick's edge virtual pixels.
pub fn clamp_index(i: isize, n: usize) -> usize {
    i.clamp(0, n as isize - 1) as usize
}

/// How a filter reads outside the plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Border {
    /// Half-sample symmetric (scipy "reflect").
    Reflect,
    /// Repeat the edge (scipy "nearest").
    Nearest,
}

impl Border {
    fn index(self, i: isize, n: usize) -> usize {
        match self {
            Border::Reflect => reflect(i, n),
            Border::Nearest => clamp_index(i, n),
        }
    }
}

/// Separable Gaussian blur of one plane as scipy.ndimage.gaussian_filter (what
/// skimage.filters.gaussian calls): kernel radius round(truncate·σ), weights normalised.
pub fn gaussian(p: &mut [f32], h: usize, w: usize, sigma: f32, truncate: f32, border: Border) {
    if sigma <= 0.0 {
        return;
    }
    let r = (truncate * sigma + 0.5) as isize;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-0.5 * (i * i) as f64 / (sigma as f64 * sigma as f64)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    let k: Vec<f64> = k.iter().map(|v| v / s).collect();
    let mut tmp = vec![0f32; h * w];
    // scipy filters axis 0 (rows) first, then axis 1.
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (-r..=r)
                .map(|i| k[(i + r) as usize] * p[border.index(y as isize + i, h) * w + x] as f64)
                .sum::<f64>() as f32;
        }
    }
    for y in 0..h {
        for x in 0..w {
            p[y * w + x] = (-r..=r)
                .map(|i| k[(i + r) as usize] * tmp[y * w + border.index(x as isize + i, w)] as f64)
                .sum::<f64>() as f32;
        }
    }
}

/// Bilinear sample of a plane at (y, x); `index` maps out-of-range coordinates inside.
pub fn bilinear(
    p: &[f32],
    h: usize,
    w: usize,
    y: f32,
    x: f32,
    index: fn(isize, usize) -> usize,
) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let at = |yy: isize, xx: isize| p[index(yy, h) * w + index(xx, w)];
    (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
        + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1))
}

/// 3×3 box mean, OpenCV `blur(src, (3, 3))` with BORDER_REFLECT_101.
pub fn box3(p: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    s += p[reflect101(y as isize + dy, h) * w + reflect101(x as isize + dx, w)];
                }
            }
            out[y * w + x] = s / 9.0;
        }
    }
    out
}

/// RGB → HSV as skimage.color.rgb2hsv (h in [0, 1)).
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let mx = r.max(g).max(b);
    let mn = r.min(g).min(b);
    let d = mx - mn;
    let h = if d <= 0.0 {
        0.0
    } else if mx == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if mx == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    let s = if mx <= 0.0 { 0.0 } else { d / mx };
    (h, s, mx)
}

/// HSV → RGB as skimage.color.hsv2rgb.
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Input pixels and weights of PIL's BOX filter for one output position along an axis of
/// `n` inputs resampled to `nn` (PIL's `precompute_coeffs`): the output pixel's footprint
/// [(j)·s, (j+1)·s) with s = n / nn, widened to at least one input pixel. Shrinking averages
/// the pixels under the footprint (area weights); enlarging picks exactly one input pixel, the
/// one i with centre − 1 < i ≤ centre, centre = (j + ½)·s: a nearest-neighbour upsampling.
pub fn box_weights(n: usize, nn: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = n as f64 / nn as f64;
    let support = 0.5 * scale.max(1.0);
    let filterscale = scale.max(1.0);
    (0..nn)
        .map(|j| {
            let center = (j as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor() as isize).max(0) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(n);
            let mut ws: Vec<(usize, f64)> = (lo..hi)
                .filter_map(|i| {
                    let x = (i as f64 - center + 0.5) / filterscale;
                    (x > -0.5 && x <= 0.5).then_some((i, 1.0))
                })
                .collect();
            let total: f64 = ws.iter().map(|&(_, v)| v).sum();
            for (_, v) in &mut ws {
                *v /= total;
            }
            ws.into_iter().map(|(i, v)| (i, v as f32)).collect()
        })
        .collect()
}

/// Resamples one plane of 8-bit values (as f32) with PIL's BOX filter, rounding to whole
/// levels after each pass as PIL does on an 8-bit image (horizontal pass first).
pub fn resize_box_u8(p: &[f32], h: usize, w: usize, nh: usize, nw: usize) -> Vec<f32> {
    let (wy, wx) = (box_weights(h, nh), box_weights(w, nw));
    let mut tmp = vec![0f32; h * nw];
    for y in 0..h {
        for (x, rx) in wx.iter().enumerate() {
            let s: f32 = rx.iter().map(|&(sx, a)| a * p[y * w + sx]).sum();
            tmp[y * nw + x] = s.round().clamp(0.0, 255.0);
        }
    }
    let mut out = vec![0f32; nh * nw];
    for (y, ry) in wy.iter().enumerate() {
        for x in 0..nw {
            let s: f32 = ry.iter().map(|&(sy, a)| a * tmp[sy * nw + x]).sum();
            out[y * nw + x] = s.round().clamp(0.0, 255.0);
        }
    }
    out
}

/// OpenCV `resize` with INTER_LINEAR of one 8-bit plane: half-pixel centres, source
/// coordinate (j + ½)/scale − ½ clamped to the image, bilinear, rounded to a level.
pub fn resize_linear_u8(p: &[u8], h: usize, w: usize, nh: usize, nw: usize) -> Vec<u8> {
    let axis = |n: usize, nn: usize| -> Vec<(usize, usize, f32)> {
        let s = n as f32 / nn as f32;
        (0..nn)
            .map(|j| {
                let f = ((j as f32 + 0.5) * s - 0.5).max(0.0);
                let i0 = (f.floor() as usize).min(n - 1);
                let i1 = (i0 + 1).min(n - 1);
                (i0, i1, f - i0 as f32)
            })
            .collect()
    };
    let (ay, ax) = (axis(h, nh), axis(w, nw));
    let mut out = vec![0u8; nh * nw];
    for (y, &(y0, y1, fy)) in ay.iter().enumerate() {
        for (x, &(x0, x1, fx)) in ax.iter().enumerate() {
            let at = |yy: usize, xx: usize| p[yy * w + xx] as f32;
            let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x1))
                + fy * ((1.0 - fx) * at(y1, x0) + fx * at(y1, x1));
            out[y * nw + x] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_upsampling_is_nearest_neighbour() {
        // 3 → 4: every output pixel takes exactly one input pixel, under centre (j + ½)·¾.
        let ws = box_weights(3, 4);
        let picked: Vec<usize> = ws.iter().map(|r| r[0].0).collect();
        assert!(ws.iter().all(|r| r.len() == 1));
        assert_eq!(picked, vec![0, 1, 1, 2]);
        // 4 → 2 averages pairs.
        let ws = box_weights(4, 2);
        assert_eq!(ws[1], vec![(2, 0.5), (3, 0.5)]);
    }

    #[test]
    fn borders() {
        assert_eq!(
            (-2..6).map(|i| reflect(i, 4)).collect::<Vec<_>>(),
            vec![1, 0, 0, 1, 2, 3, 3, 2]
        );
        assert_eq!(
            (-2..6).map(|i| reflect101(i, 4)).collect::<Vec<_>>(),
            vec![2, 1, 0, 1, 2, 3, 2, 1]
        );
    }
}
