//! Kernels of kernels/elementwise.cu (placeholder until written).

pub const KERNELS: &[crate::device::gpu::KernelDef] = &[];
