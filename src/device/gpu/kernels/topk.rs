//! Kernels of kernels/topk.cu (placeholder until written).

pub const KERNELS: &[crate::device::gpu::KernelDef] = &[];
