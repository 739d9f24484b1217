//! `Tensor`: a shape and f32 storage on a device.
//!
//! Activations of convolutional layers are laid out **[C, N, H, W]** ("CNHW") throughout the
//! engine: a convolution is then one GEMM `W[Cout, Cin·k·k] · col[Cin·k·k, N·OH·OW]` whose result
//! is already the next activation, and batch-norm statistics are over contiguous rows.
//! Feature vectors (after global pooling) are [F, N]; logits are [N, K].

use crate::device::Device;
use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
    device: Device,
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Self {
        let n = shape.iter().product();
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; n],
            device: Device::Cpu,
        }
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape: shape.to_vec(),
            data: vec![value; n],
            device: Device::Cpu,
        }
    }

    /// Wraps `data`; fails if its length does not match the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("shape {:?} needs {} values, got {}", shape, n, data.len());
        }
        Ok(Self {
            shape: shape.to_vec(),
            data,
            device: Device::Cpu,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Same data, new shape of equal size.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.data.len() {
            bail!(
                "cannot reshape {:?} ({} values) to {:?}",
                self.shape,
                self.data.len(),
                shape
            );
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Element-wise `self += other` (shapes must match).
    pub fn add_assign(&mut self, other: &Tensor) {
        assert_eq!(self.shape, other.shape, "add_assign shape mismatch");
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += *b;
        }
    }
}

/// Swaps the first two axes of a tensor whose layout is [A, B, rest…] → [B, A, rest…]
/// (NCHW ↔ CNHW, [N, K] ↔ [K, N]).
pub fn swap01(x: &[f32], a: usize, b: usize, inner: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), a * b * inner);
    debug_assert_eq!(out.len(), a * b * inner);
    for i in 0..a {
        for j in 0..b {
            let src = (i * b + j) * inner;
            let dst = (j * a + i) * inner;
            out[dst..dst + inner].copy_from_slice(&x[src..src + inner]);
        }
    }
}

/// A vector of `n` floats that `write` fills completely (every element written, none read
/// first); the kernels that produce whole outputs take their buffers from here.
///
/// The buffer is zeroed first. Handing `write` uninitialised memory instead saved 3–5 % of a
/// sparse CNN step, but a `&mut [f32]` over uninitialised memory is undefined behaviour in Rust;
/// doing it soundly needs kernels that write through `&mut [MaybeUninit<f32>]` (not done yet).
pub fn overwritten(n: usize, write: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut v = vec![0.0; n];
    write(&mut v);
    v
}
