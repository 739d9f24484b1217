//! CPU twins of the CUDA kernels: one function per kernel, with the kernel's name and parameter
//! struct (its scalars; buffers come as slices, the struct's addresses are ignored). They are the
//! reference the parity tests (emulator in CI, `rest device --check` on a GPU) compare against.
pub mod conv;
pub mod elementwise;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod topk;
pub mod xent;
