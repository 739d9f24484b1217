//! Kernels of kernels/elementwise.cu: ReLU, residual add (plain or fused with the ReLU), gradient
//! accumulation, scale and fill over flat f32 arrays.

use crate::device::gpu::{Buf, Dim3, Gpu, KernelDef, LaunchCfg};
use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

crate::gpu_kernels!("elementwise" =>
    elementwise_relu_fwd_f32,
    elementwise_relu_bwd_f32,
    elementwise_add_f32,
    elementwise_add_relu_f32,
    elementwise_acc_f32,
    elementwise_scale_f32,
    elementwise_fill_f32,
);

/// Parameters of every kernel of elementwise.cu (mirrors `ElementwiseParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ElementwiseParams {
    /// First input (x; the forward output y for `relu_bwd`).
    pub a: u64,
    /// Second input (dy for `relu_bwd`, b for add/acc).
    pub b: u64,
    /// Output (the accumulated array for `acc`).
    pub y: u64,
    pub n: u32,
    /// Scale factor (`scale`) or value (`fill`).
    pub alpha: f32,
}

/// Threads per block and the most blocks of a grid-stride launch.
const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 4096;

/// Checks that `buf` holds at least `n` elements of `T`; the error names the kernel and buffer.
pub(crate) fn ensure_len<T>(buf: &Buf, n: usize, kernel: &str, what: &str) -> Result<()> {
    ensure!(
        buf.len_of::<T>() >= n,
        "{kernel}: buffer {what} holds {} elements of {} bytes, needs {n}",
        buf.len_of::<T>(),
        std::mem::size_of::<T>()
    );
    Ok(())
}

/// A grid-stride launch over `n` items: `threads` per block, at most `MAX_BLOCKS` blocks.
pub(crate) fn grid_stride(n: usize, threads: u32) -> LaunchCfg {
    let blocks = n.div_ceil(threads as usize).clamp(1, MAX_BLOCKS) as u32;
    LaunchCfg {
        grid: Dim3::x(blocks),
        block: Dim3::x(threads),
        smem: 0,
    }
}

/// Element counts must fit the kernels' u32 indices with room for the grid stride.
pub(crate) fn ensure_count(n: usize, kernel: &str) -> Result<u32> {
    ensure!(
        n < (1usize << 31),
        "{kernel}: {n} elements exceed the 2^31 the kernel indexes"
    );
    Ok(n as u32)
}

fn launch(
    gpu: &Gpu,
    k: &KernelDef,
    n: usize,
    inputs: &[(&Buf, &str)],
    y: &Buf,
    alpha: f32,
) -> Result<()> {
    let n32 = ensure_count(n, k.name)?;
    for (b, what) in inputs {
        ensure_len::<f32>(b, n, k.name, what)?;
    }
    ensure_len::<f32>(y, n, k.name, "y")?;
    if n == 0 {
        return Ok(());
    }
    let p = ElementwiseParams {
        a: inputs.first().map_or(0, |(b, _)| b.addr()),
        b: inputs.get(1).map_or(0, |(b, _)| b.addr()),
        y: y.addr(),
        n: n32,
        alpha,
    };
    gpu.launch(k, grid_stride(n, THREADS), &p)
}

/// y = max(x, 0) over `n` elements (y may be x).
pub fn relu_fwd(gpu: &Gpu, x: &Buf, y: &Buf, n: usize) -> Result<()> {
    launch(gpu, &elementwise_relu_fwd_f32, n, &[(x, "x")], y, 0.0)
}

/// dx = dy where y > 0, else 0 (y: the ReLU's output, or its input: same mask).
pub fn relu_bwd(gpu: &Gpu, y: &Buf, dy: &Buf, dx: &Buf, n: usize) -> Result<()> {
    launch(
        gpu,
        &elementwise_relu_bwd_f32,
        n,
        &[(y, "y"), (dy, "dy")],
        dx,
        0.0,
    )
}

/// y = a + b.
pub fn add(gpu: &Gpu, a: &Buf, b: &Buf, y: &Buf, n: usize) -> Result<()> {
    launch(gpu, &elementwise_add_f32, n, &[(a, "a"), (b, "b")], y, 0.0)
}

/// y = max(a + b, 0) (the end of a ResNet BasicBlock).
pub fn add_relu(gpu: &Gpu, a: &Buf, b: &Buf, y: &Buf, n: usize) -> Result<()> {
    launch(
        gpu,
        &elementwise_add_relu_f32,
        n,
        &[(a, "a"), (b, "b")],
        y,
        0.0,
    )
}

/// y += b.
pub fn acc(gpu: &Gpu, y: &Buf, b: &Buf, n: usize) -> Result<()> {
    // `a` is unused by the kernel; pass y there so the parameter struct holds no null input.
    launch(gpu, &elementwise_acc_f32, n, &[(y, "y"), (b, "b")], y, 0.0)
}

/// y = alpha · x (y may be x).
pub fn scale(gpu: &Gpu, x: &Buf, y: &Buf, alpha: f32, n: usize) -> Result<()> {
    launch(gpu, &elementwise_scale_f32, n, &[(x, "x")], y, alpha)
}

/// y = value over `n` elements.
pub fn fill(gpu: &Gpu, y: &Buf, value: f32, n: usize) -> Result<()> {
    launch(gpu, &elementwise_fill_f32, n, &[], y, value)
}
