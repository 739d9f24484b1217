//! The emulator's Rust side: the kernels/*.cu files are compiled as C++ by build.rs (with
//! kernels/emu/cuda_emu.h) into a static library; `Gpu::Emu` calls their host entries directly
//! on host memory. See kernels/emu/README.md for how blocks and threads are scheduled.
