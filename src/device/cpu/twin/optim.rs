//! CPU twins of kernels/optim.cu.

pub use crate::device::gpu::kernels::optim::{SgdMultiParams, SgdParams};

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

/// One tensor of `optim_sgd_multi_f32`: (w, grad, momentum buffer).
pub type SgdTensor<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32]);

/// `optim_sgd_f32` on every tensor of the table, with the launch's scalars.
pub fn optim_sgd_multi_f32(p: &SgdMultiParams, tensors: &mut [SgdTensor<'_>]) {
    let one = SgdParams {
        lr: p.lr,
        momentum: p.momentum,
        weight_decay: p.weight_decay,
        ..Default::default()
    };
    for (w, g, m) in tensors.iter_mut() {
        let one = SgdParams {
            n: w.len() as u32,
            ..one
        };
        optim_sgd_f32(&one, w, g, m);
    }
}
