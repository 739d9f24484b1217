//! Max-pooling over planes and global average pooling.

/// Output side of a pooling window: (size + 2·pad − k) / stride + 1.
pub fn pool_out(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - k) / stride + 1
}

/// Max-pool each of `planes` [h, w] planes (padding counts as −∞). Writes y [planes, oh, ow] and
/// the flat in-plane index of each maximum (first maximum wins) for backward.
#[allow(clippy::too_many_arguments)]
pub fn maxpool_forward(planes: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let _ = (planes, h, w, k, stride, pad, x, y, argmax);
    todo!("ops helper")
}

/// dx (overwritten, [planes, h, w]) from dy [planes, oh, ow] through the saved argmax.
pub fn maxpool_backward(planes: usize, h: usize, w: usize, oh: usize, ow: usize, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    let _ = (planes, h, w, oh, ow, dy, argmax, dx);
    todo!("ops helper")
}

/// y[c, n] = mean over the hw pixels of x[c, n, :].
pub fn global_avgpool_forward(c: usize, n: usize, hw: usize, x: &[f32], y: &mut [f32]) {
    let _ = (c, n, hw, x, y);
    todo!("ops helper")
}

/// dx[c, n, p] = dy[c, n] / hw.
pub fn global_avgpool_backward(c: usize, n: usize, hw: usize, dy: &[f32], dx: &mut [f32]) {
    let _ = (c, n, hw, dy, dx);
    todo!("ops helper")
}
