//! Kernels of kernels/xent.cu (placeholder until written).

pub const KERNELS: &[crate::device::gpu::KernelDef] = &[];
