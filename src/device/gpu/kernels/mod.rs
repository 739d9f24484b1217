//! Kernel families, one file (or folder) per kernels/*.cu: parameter structs (mirrored in the .cu
//! file), the kernel list, and typed launch wrappers; beside each, `NAME_check.rs`: the family's
//! part of `rest device --check`.

pub mod conv;
pub(crate) mod conv_check;
pub mod costs;
pub mod elementwise;
pub(crate) mod elementwise_check;
pub mod norm;
pub(crate) mod norm_check;
pub mod optim;
pub(crate) mod optim_check;
pub mod pool;
pub(crate) mod pool_check;
pub mod topk;
pub(crate) mod topk_check;
pub mod xent;
pub(crate) mod xent_check;

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
