//! What the emulator's own tests share (tests/emu_runtime.rs, tests/emu_bytes.rs): inputs, launch
//! configurations, and the atomics self-test's buffers.
#![allow(dead_code)] // each test binary uses a part of it

use rest::device::gpu::emu::selftest::AtomicParams;
use rest::device::gpu::{Buf, Dim3, Gpu, LaunchCfg};

/// Values in [-1, 1) from a small LCG (deterministic).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn cfg(grid: Dim3, block: Dim3, smem: u32) -> LaunchCfg {
    LaunchCfg { grid, block, smem }
}

/// `selftest_atomic` over `n` values: its inputs, buffers, parameters and launch (128 threads a
/// block, one block more than the values need: an idle one).
pub struct AtomicCase {
    pub n: usize,
    pub x: Vec<f32>,
    pub xb: Buf,
    pub fsum: Buf,
    pub ints: Buf,
    pub params: AtomicParams,
    pub blocks: usize,
    pub cfg: LaunchCfg,
}

pub fn atomic_case(gpu: &Gpu, n: usize) -> AtomicCase {
    let x = values(n, 3);
    let xb = gpu.upload(&x).unwrap();
    let fsum = gpu.zeros::<f32>(2).unwrap();
    let ints = gpu
        .upload(&[0u32, 0, 0, u32::MAX, 0, 0, 0, 10_000])
        .unwrap();
    let params = AtomicParams {
        x: xb.addr(),
        fsum: fsum.addr(),
        ints: ints.addr(),
        n: n as u32,
        pad: 0,
    };
    let blocks = n.div_ceil(128) + 1;
    AtomicCase {
        n,
        x,
        xb,
        fsum,
        ints,
        params,
        blocks,
        cfg: cfg(Dim3::x(blocks as u32), Dim3::x(128), 0),
    }
}
