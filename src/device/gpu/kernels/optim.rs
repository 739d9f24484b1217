//! Kernels of kernels/optim.cu (placeholder until written).

pub const KERNELS: &[crate::device::gpu::KernelDef] = &[];
