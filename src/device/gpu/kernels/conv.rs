//! Kernels of kernels/conv.cu (placeholder until written).

pub const KERNELS: &[crate::device::gpu::KernelDef] = &[];
