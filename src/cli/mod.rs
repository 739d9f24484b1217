//! The command-line surface: one file per subcommand, each with its argument structs (clap) and
//! what the command does (`run`): `train`, `eval`, `device` (and `source.rs`, the data options
//! `train` and `eval` share). `data`, `bench`, `reproduce`, `predict` and `export` keep their
//! commands beside their code (`data/cli.rs`, `bench/`, `reproduce/`, `predict.rs`, `export.rs`).

pub mod device;
pub mod eval;
pub mod source;
pub mod train;

pub use device::{gpu_for, DeviceArgs};
pub use eval::EvalArgs;
pub use source::{load_splits, DataSource};
pub use train::{Method, TrainArgs, TrainLine};
