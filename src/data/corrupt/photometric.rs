//! Brightness, contrast, saturate and pixelate: deterministic recipes of CIFAR-10-C.

use super::ops;
use super::Img;

fn map_hsv(img: &mut Img, f: impl Fn(f32, f32, f32) -> (f32, f32, f32)) {
    let hw = img.h * img.w;
    for i in 0..hw {
        let (h, s, v) = ops::rgb_to_hsv(img.d[i], img.d[hw + i], img.d[2 * hw + i]);
        let (h, s, v) = f(h, s, v);
        let (r, g, b) = ops::hsv_to_rgb(h, s.clamp(0.0, 1.0), v.clamp(0.0, 1.0));
        img.d[i] = r;
        img.d[hw + i] = g;
        img.d[2 * hw + i] = b;
    }
}

/// HSV value + c.
pub fn brightness(img: &mut Img, row: usize) {
    let c = [0.05, 0.1, 0.15, 0.2, 0.3][row];
    map_hsv(img, |h, s, v| (h, s, v + c));
}

/// HSV saturation · a + b, with CIFAR-10-C's table (ImageNet-C's is stronger).
pub fn saturate(img: &mut Img, row: usize) {
    let (a, b) = [(0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)][row];
    map_hsv(img, |h, s, v| (h, s * a + b, v));
}

/// Each channel pulled towards its mean by the factor c.
pub fn contrast(img: &mut Img, row: usize) {
    let c = [0.75, 0.5, 0.4, 0.3, 0.15][row];
    let hw = img.h * img.w;
    for ch in 0..3 {
        let p = &mut img.d[ch * hw..(ch + 1) * hw];
        let m = p.iter().sum::<f32>() / hw as f32;
        for v in p.iter_mut() {
            *v = ((*v - m) * c + m).clamp(0.0, 1.0);
        }
    }
}

/// PIL's `resize` with the BOX filter down to ⌊side·c⌋ and back: area averages on the way
/// down, nearest neighbour on the way up, 8-bit levels after each pass.
pub fn pixelate(img: &mut Img, row: usize) {
    let c = [0.95, 0.9, 0.85, 0.75, 0.65][row];
    let (h, w, hw) = (img.h, img.w, img.h * img.w);
    let (nh, nw) = (
        ((h as f32 * c) as usize).max(1),
        ((w as f32 * c) as usize).max(1),
    );
    for ch in 0..3 {
        let plane: Vec<f32> = img.d[ch * hw..(ch + 1) * hw]
            .iter()
            .map(|v| (v * 255.0).round())
            .collect();
        let small = ops::resize_box_u8(&plane, h, w, nh, nw);
        let back = ops::resize_box_u8(&small, nh, nw, h, w);
        for (o, v) in img.d[ch * hw..(ch + 1) * hw].iter_mut().zip(back) {
            *o = v / 255.0;
        }
    }
}
