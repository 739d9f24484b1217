//! CPU twins of kernels/pool.cu: the functions of `device::cpu::pool`.

use crate::device::cpu::pool;
pub use crate::device::gpu::kernels::pool::{AvgPoolParams, MaxPoolParams};

/// Max-pool forward: y and argmax [planes, oh, ow] from x [planes, h, w].
pub fn pool_max_fwd_f32(p: &MaxPoolParams, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let u = |v: u32| v as usize;
    pool::maxpool_forward_chwn(
        u(p.planes),
        u(p.h),
        u(p.w),
        1,
        u(p.k),
        u(p.stride),
        u(p.pad),
        x,
        y,
        argmax,
    )
}

/// Max-pool backward: dx [planes, h, w] (overwritten) through the saved argmax.
pub fn pool_max_bwd_f32(p: &MaxPoolParams, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    let u = |v: u32| v as usize;
    let (planes, hw, pout) = (u(p.planes), u(p.h) * u(p.w), u(p.oh) * u(p.ow));
    assert_eq!(dy.len(), planes * pout, "maxpool_backward: dy length");
    assert_eq!(dx.len(), planes * hw, "maxpool_backward: dx length");
    pool::maxpool_backward_chwn(1, hw, dy, argmax, dx)
}

/// Global average pool forward: y [planes] = mean of each plane of x [planes, hw].
pub fn pool_avg_fwd_f32(p: &AvgPoolParams, x: &[f32], y: &mut [f32]) {
    pool::global_avgpool_forward(p.planes as usize, 1, p.hw as usize, x, y)
}

/// Global average pool backward: dx [planes, hw] = dy / hw.
pub fn pool_avg_bwd_f32(p: &AvgPoolParams, dy: &[f32], dx: &mut [f32]) {
    pool::global_avgpool_backward(p.planes as usize, 1, p.hw as usize, dy, dx)
}
