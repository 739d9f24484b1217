//! CPU twins of kernels/optim.cu.

pub use crate::device::gpu::kernels::optim::SgdParams;

/// In-place SGD step, the loop of `optim::Sgd::step`: g = grad + wd·w; buf = μ·buf + g;
/// w −= lr·buf.
pub fn optim_sgd_f32(p: &SgdParams, w: &mut [f32], grad: &[f32], buf: &mut [f32]) {
    assert_eq!(w.len(), grad.len(), "optim_sgd_f32: grad length");
    assert_eq!(w.len(), buf.len(), "optim_sgd_f32: buf length");
    for ((w, &g), b) in w.iter_mut().zip(grad).zip(buf.iter_mut()) {
        let g = g + p.weight_decay * *w;
        *b = p.momentum * *b + g;
        *w -= p.lr * *b;
    }
}
