//! Kernels of kernels/conv.cu: dense and masked-sparse 2-D convolution (forward, input gradient,
//! weight gradient, bias gradient) over CNHW activations, with their parameter structs and typed
//! launch wrappers. Layouts and math match `device::cpu::conv` (im2col column order
//! r = ci·k·k + kh·k + kw) and `sparse::csr::SparseWeight` (CSR over output channels, CSC index
//! into the same values). The linear layer is the 1×1 convolution of x [Cin, N, 1, 1].
//!
//! This file holds the kernel list, the kernels' view of the shape ([`ConvShape`]), the checks
//! every wrapper runs and the bias gradient; the parameter structs are in `params.rs`, the dense
//! wrappers in `dense.rs`, the sparse ones in `sparse.rs`. Its device check is `conv_check.rs`.

mod dense;
mod params;
mod sparse;

pub use dense::{
    conv_bwd_data_dense, conv_bwd_weight_dense, conv_bwd_weight_dense_split,
    conv_bwd_weight_dense_splits, conv_bwd_weight_dense_workspace, conv_fwd_dense,
    conv_fwd_dense_simple,
};
pub use params::{
    ConvBwdBiasParams, ConvBwdDataParams, ConvBwdWeightParams, ConvFwdParams, ConvReduceParams,
    ConvSparseBwdDataParams, ConvSparseBwdWeightParams, ConvSparseFwdParams,
};
pub use sparse::{
    conv_bwd_data_sparse, conv_bwd_weight_sparse, conv_bwd_weight_sparse_splits,
    conv_bwd_weight_sparse_workspace, conv_fwd_sparse, sparse_bwd_data_tile, sparse_fwd_tile,
    SparseBufs, SPB_G, SPF_G,
};

use crate::device::cpu::conv::ConvGeom;
use crate::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("conv" =>
    conv_fwd_dense_simple_f32,
    conv_fwd_dense_f32,
    conv_bwd_data_dense_f32,
    conv_bwd_weight_dense_f32,
    conv_bwd_weight_reduce_f32,
    conv_fwd_sparse_f32,
    conv_bwd_data_sparse_f32,
    conv_bwd_weight_sparse_f32,
    conv_bwd_bias_f32,
);

/// `ConvGeom` with u32 fields, as the kernels receive it (C `ConvShape`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConvShape {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub k: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
}

/// Kernels index with 32-bit signed ints: every tensor (and the im2col matrix's row and column
/// counts) must stay below this many elements.
const MAX_ELEMS: usize = i32::MAX as usize;

impl ConvShape {
    /// The kernels' view of `g`; fails if a tensor of the convolution is too large for their
    /// 32-bit indexing.
    pub fn new(g: &ConvGeom) -> Result<Self> {
        let sizes = [
            ("input", g.cin * g.n * g.h * g.w),
            ("output", g.cout * g.n * g.oh * g.ow),
            ("weight", g.cout * g.col_rows()),
            ("im2col rows", g.col_rows()),
        ];
        for (what, n) in sizes {
            ensure!(
                n <= MAX_ELEMS,
                "convolution {g:?}: the {what} has {n} elements, more than the GPU kernels index \
                 ({MAX_ELEMS})"
            );
        }
        let u = |v: usize| v as u32; // every field is ≤ one of the sizes checked above
        Ok(ConvShape {
            n: u(g.n),
            cin: u(g.cin),
            h: u(g.h),
            w: u(g.w),
            cout: u(g.cout),
            k: u(g.k),
            stride: u(g.stride),
            pad: u(g.pad),
            oh: u(g.oh),
            ow: u(g.ow),
        })
    }

    pub fn x_len(&self) -> usize {
        self.cin as usize * self.n as usize * self.h as usize * self.w as usize
    }
    pub fn y_len(&self) -> usize {
        self.cout as usize * self.cols()
    }
    /// K = Cin·k·k, the weight matrix's column count.
    pub fn k_len(&self) -> usize {
        self.cin as usize * (self.k * self.k) as usize
    }
    pub fn w_len(&self) -> usize {
        self.cout as usize * self.k_len()
    }
    /// P = N·OH·OW, output pixels over the batch.
    pub fn cols(&self) -> usize {
        self.n as usize * self.oh as usize * self.ow as usize
    }
}

fn check_len(what: &str, buf: &Buf, want: usize) -> Result<()> {
    ensure!(
        buf.len_of::<f32>() == want && buf.bytes() == want * 4,
        "convolution: {what} holds {} bytes, {} expected ({want} f32)",
        buf.bytes(),
        want * 4
    );
    Ok(())
}

fn check_bias(bias: Option<&Buf>, s: &ConvShape) -> Result<u64> {
    match bias {
        Some(b) => {
            check_len("bias", b, s.cout as usize)?;
            Ok(b.addr())
        }
        None => Ok(0),
    }
}

fn grid_dim(n: usize, what: &str) -> Result<u32> {
    ensure!(
        n <= 65535,
        "convolution: {n} {what} exceed the grid's y/z limit (65535)"
    );
    Ok(n as u32)
}

/// db [Cout] (overwritten) = row sums of dy [Cout, cols] (the bias gradient; cols = N·OH·OW).
pub fn conv_bwd_bias(gpu: &Gpu, cout: usize, cols: usize, dy: &Buf, db: &mut Buf) -> Result<()> {
    ensure!(
        cout > 0 && cout * cols <= MAX_ELEMS,
        "conv bias gradient: bad shape {cout}×{cols}"
    );
    check_len("dy", dy, cout * cols)?;
    check_len("db", db, cout)?;
    let p = ConvBwdBiasParams {
        dy: dy.addr(),
        db: db.addr(),
        cout: cout as u32,
        cols: cols as u32,
    };
    let cfg = LaunchCfg {
        grid: Dim3::x(cout as u32),
        block: Dim3::x(256),
        smem: 0,
    };
    gpu.launch(&conv_bwd_bias_f32, cfg, &p)
}
