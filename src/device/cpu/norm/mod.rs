//! Batch normalisation over [C, M] (M = N·H·W contiguous per channel), as PyTorch's BatchNorm2d:
//! biased variance to normalise, unbiased variance into the running estimate, momentum 0.1.
//!
//! The blocked sums and per-channel loops are in `sums.rs`, the forward passes in `forward.rs`,
//! the backward and its coefficients in `backward.rs`.

mod backward;
mod forward;
mod sums;
#[cfg(test)]
mod tests;

pub use backward::{
    batchnorm_backward, batchnorm_backward_coefs, batchnorm_backward_with, batchnorm_relu_backward,
    BnGradIn, BwdOut, DxCoefs,
};
pub use forward::{
    batchnorm_eval_forward_with, batchnorm_relu_train_forward, batchnorm_train_forward, BnIn,
    TrainFwdOut,
};
pub(crate) use sums::sum_f64;
