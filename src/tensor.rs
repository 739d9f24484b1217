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

/// At most this many buffers wait in a thread's pool for reuse (the largest are kept).
const POOL_MAX: usize = 8;

std::thread_local! {
    /// Buffers given back by dropped `Pooled`s on this thread: already initialised memory, so
    /// reusing one needs neither a zero-fill nor fresh pages.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A float buffer that goes back to its thread's pool when dropped, for the large scratch and
/// saved buffers of a training step (im2col and its gradient) that every step allocates
/// again at the same sizes.
#[derive(Default)]
pub struct Pooled(Vec<f32>);

impl std::ops::Deref for Pooled {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        // try_with: during thread teardown the pool may already be gone; then v is freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            p.push(v);
            if p.len() > POOL_MAX {
                // Drop the smallest.
                let i = (0..p.len()).min_by_key(|&i| p[i].len()).expect("non-empty");
                p.swap_remove(i);
            }
        });
    }
}

/// Like `overwritten`, but the buffer is the best-fitting one of this thread's pool when one
/// exists: the smallest whose length is at least `n` (truncated to `n`), else the largest,
/// zero-extended to `n`. Its contents before `write` are stale values, never uninitialised.
pub fn pooled(n: usize, write: impl FnOnce(&mut [f32])) -> Pooled {
    let reused = POOL
        .try_with(|p| {
            let mut p = p.borrow_mut();
            let fit = (0..p.len())
                .filter(|&i| p[i].len() >= n)
                .min_by_key(|&i| p[i].len())
                .or_else(|| (0..p.len()).max_by_key(|&i| p[i].len()));
            fit.map(|i| p.swap_remove(i))
        })
        .ok()
        .flatten();
    let mut v = reused.unwrap_or_default();
    if v.len() >= n {
        v.truncate(n);
    } else {
        v.resize(n, 0.0);
    }
    write(&mut v);
    Pooled(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_are_reused_at_the_requested_length() {
        let a = pooled(1000, |v| v.fill(1.0));
        assert_eq!(a.len(), 1000);
        let ptr = a.as_ptr();
        drop(a);
        // Best fit: the 1000-float buffer comes back, truncated.
        let b = pooled(600, |v| {
            assert_eq!(v.len(), 600);
            v.fill(2.0)
        });
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.iter().all(|&x| x == 2.0));
        drop(b);
        // Larger than anything pooled: grown to the new length.
        let c = pooled(5000, |v| {
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32)
        });
        assert_eq!(c.len(), 5000);
        assert_eq!(c[4999], 4999.0);
        let d = pooled(0, |v| assert!(v.is_empty()));
        assert!(d.is_empty());
    }
}
