//! Kernel families, one file per kernels/*.cu: parameter structs (mirrored in the .cu file),
//! the kernel list, and typed launch wrappers.

pub mod conv;
pub mod elementwise;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod topk;
pub mod xent;

/// Every family's kernel list.
pub const ALL: &[&[super::KernelDef]] = &[
    conv::KERNELS,
    xent::KERNELS,
    topk::KERNELS,
    norm::KERNELS,
    pool::KERNELS,
    elementwise::KERNELS,
    optim::KERNELS,
];
