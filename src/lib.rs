//! rest: reweighted sparse training (REST, arXiv 2312.03044) of bias-robust image classifiers.
//!
//! Layers, bottom up: `device` (CPU kernels; CUDA to come) → `tensor` → `autograd` → `nn`
//! (layers and the paper's models) → `train` (trainer, metrics, checkpoints), with `sparse`
//! (topology and sparse kernels) and `data` (datasets and loader) beside them.

pub mod data;
pub mod device;
pub mod rng;
pub mod sparse;
pub mod tensor;
