//! rest: reweighted sparse training (REST, arXiv 2312.03044) of bias-robust image classifiers.
//!
//! Layers, bottom up: `device` (the CPU kernels; the CUDA backend: kernels, their CPU twins, the
//! emulator) → `tensor` → `autograd` → `nn` (layers and the paper's models) → `train` (trainer,
//! metrics, checkpoints), with `sparse` (one layer's format and kernels), `dst` (dynamic sparse
//! training of a model) and `data` (datasets and loader) beside them. `cli`, `bench` and
//! `reproduce` are the command line's surface. docs/DESIGN.md is the map.

pub mod autograd;
pub mod bench;
pub mod calibration;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod dst;
pub mod export;
pub mod flops;
pub mod metrics;
pub mod nn;
pub mod optim;
pub mod predict;
pub mod progress;
pub mod reproduce;
pub mod rng;
pub mod run_folder;
pub mod run_lock;
pub mod sparse;
pub mod tensor;
pub mod text;
pub mod train;
