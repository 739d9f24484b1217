//! CPU twins of kernels/elementwise.cu.

use crate::device::cpu::elementwise;
pub use crate::device::gpu::kernels::elementwise::ElementwiseParams;

/// y = max(a, 0).
pub fn elementwise_relu_fwd_f32(_p: &ElementwiseParams, a: &[f32], y: &mut [f32]) {
    elementwise::relu_forward(a, y)
}

/// dx = dy where y > 0, else 0.
pub fn elementwise_relu_bwd_f32(_p: &ElementwiseParams, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    elementwise::relu_backward(y, dy, dx)
}

/// y = a + b.
pub fn elementwise_add_f32(_p: &ElementwiseParams, a: &[f32], b: &[f32], y: &mut [f32]) {
    elementwise::add_forward(a, b, y)
}

/// y = max(a + b, 0): add then ReLU, as the CPU model runs them.
pub fn elementwise_add_relu_f32(_p: &ElementwiseParams, a: &[f32], b: &[f32], y: &mut [f32]) {
    let mut s = vec![0.0; y.len()];
    elementwise::add_forward(a, b, &mut s);
    elementwise::relu_forward(&s, y)
}

/// y += b.
pub fn elementwise_acc_f32(_p: &ElementwiseParams, b: &[f32], y: &mut [f32]) {
    assert_eq!(b.len(), y.len(), "elementwise_acc_f32: length mismatch");
    for (o, &v) in y.iter_mut().zip(b) {
        *o += v;
    }
}

/// y = alpha · a.
pub fn elementwise_scale_f32(p: &ElementwiseParams, a: &[f32], y: &mut [f32]) {
    assert_eq!(a.len(), y.len(), "elementwise_scale_f32: length mismatch");
    for (o, &v) in y.iter_mut().zip(a) {
        *o = p.alpha * v;
    }
}

/// y = alpha.
pub fn elementwise_fill_f32(p: &ElementwiseParams, y: &mut [f32]) {
    y.fill(p.alpha);
}
