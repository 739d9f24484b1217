//! `Tensor`: a shape and f32 storage on a device.
//!
//! Activations of convolutional layers on the CPU are laid out **[C, H, W, N]**, the batch
//! innermost ("CHWN"): a convolution is one GEMM `W[Cout, Cin·k·k] · col[Cin·k·k, OH·OW·N]` whose
//! result is already the next activation, batch-norm statistics are over contiguous rows, and
//! every tap of a sparse convolution reads whole rows of N values (`sparse::conv`). Loader
//! batches are [C, N, H, W] (the CUDA engine's layout); the model turns them around once.
//! Feature vectors (after global pooling) are [F, N]; logits are [N, K].

use crate::device::Device;
// The buffer pool and the layout transposes live with the CPU kernels; re-exported here, where
// the tensor API's users look for them.
pub use crate::device::cpu::buffers::{overwritten, pooled, Pooled};
pub use crate::device::cpu::transpose::{swap01, transpose_inner};
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
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
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

impl Drop for Tensor {
    /// Large storage goes back to this thread's pool, so the next step's buffers of the same
    /// sizes (`overwritten`, `pooled`) are reused memory instead of zero-filled fresh pages.
    fn drop(&mut self) {
        crate::device::cpu::buffers::give_back(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::buffers::POOL_MIN;

    #[test]
    fn pooled_buffers_are_reused_at_the_requested_length() {
        let n = POOL_MIN * 2;
        let a = pooled(n, |v| v.fill(1.0));
        assert_eq!(a.len(), n);
        let ptr = a.as_ptr();
        drop(a);
        // Best fit within 2x: the buffer comes back, truncated, holding what write put there.
        let b = pooled(n - 100, |v| {
            assert_eq!(v.len(), n - 100);
            v.fill(2.0)
        });
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.iter().all(|&x| x == 2.0));
        drop(b);
        // A dropped tensor's storage is reused by overwritten().
        let t = Tensor::from_vec(&[n], vec![3.0; n]).unwrap();
        let tp = t.data().as_ptr();
        drop(t);
        let c = overwritten(n, |v| v.fill(4.0));
        assert!(c.as_ptr() == tp || c.as_ptr() == ptr);
        assert_eq!(c.len(), n);
        // Much smaller or larger requests get fresh buffers of the right length.
        let d = pooled(10 * n, |v| {
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32)
        });
        assert_eq!(d.len(), 10 * n);
        assert_eq!(d[10 * n - 1], (10 * n - 1) as f32);
        let e = pooled(0, |v| assert!(v.is_empty()));
        assert!(e.is_empty());
    }
}
