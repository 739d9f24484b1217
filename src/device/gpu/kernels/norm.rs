//! Kernels of kernels/norm.cu (placeholder until written).

pub const KERNELS: &[crate::device::gpu::KernelDef] = &[];
