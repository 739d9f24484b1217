//! Layers on the tape and the paper's models.

mod architectures;
pub mod models;
pub mod on_device;
pub mod ops;
pub mod param;

pub use models::{Arch, Model, ModelConfig};
