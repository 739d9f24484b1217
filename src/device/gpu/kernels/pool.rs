//! Kernels of kernels/pool.cu (placeholder until written).

pub const KERNELS: &[crate::device::gpu::KernelDef] = &[];
