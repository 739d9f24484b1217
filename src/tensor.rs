//! `Tensor`: a shape and f32 storage, on the host or on a GPU (`device::gpu::alloc`).
//!
//! Activations of convolutional layers on the CPU are laid out **[C, H, W, N]**, the batch
//! innermost ("CHWN"): a convolution is one GEMM `W[Cout, Cin·k·k] · col[Cin·k·k, OH·OW·N]` whose
//! result is already the next activation, batch-norm statistics are over contiguous rows, and
//! every tap of a sparse convolution reads whole rows of N values (`sparse::conv`). Loader
//! batches are [C, N, H, W] (the CUDA engine's layout); the model turns them around once.
//! Feature vectors (after global pooling) are [F, N]; logits are [N, K].
//!
//! On a GPU the ops keep the kernels' layout instead: activations [C, N, H, W] as loaded,
//! features [F, N], logits class-major [K, N] (what the fused loss kernel reads).

// The buffer pool and the layout transposes live with the CPU kernels; re-exported here, where
// the tensor API's users look for them.
pub use crate::device::cpu::buffers::{overwritten, pooled, Pooled};
pub use crate::device::cpu::transpose::{swap01, transpose_inner};
use crate::device::gpu::alloc::{DeviceBuf, GpuDevice};
use crate::device::gpu::kernels::elementwise;
use anyhow::{bail, Result};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

/// Where a tensor's values are.
#[derive(Clone, Debug)]
enum Storage {
    Host(Vec<f32>),
    /// On a GPU (or the emulator); shared by clones and reshapes, copied before a write
    /// (`add_assign`).
    Device(Arc<DeviceBuf>),
}

impl PartialEq for Tensor {
    /// Host tensors compare by value; device tensors are equal when they share storage.
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape
            && match (&self.storage, &other.storage) {
                (Storage::Host(a), Storage::Host(b)) => a == b,
                (Storage::Device(a), Storage::Device(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, 0.0)
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape: shape.to_vec(),
            storage: Storage::Host(vec![value; n]),
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
            storage: Storage::Host(data),
        })
    }

    /// Wraps device storage; fails if its length does not match the shape.
    pub fn from_device(shape: &[usize], data: DeviceBuf) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("shape {:?} needs {} values, got {}", shape, n, data.len());
        }
        Ok(Self {
            shape: shape.to_vec(),
            storage: Storage::Device(Arc::new(data)),
        })
    }

    /// A copy of this (host) tensor on `device`; a device tensor is shared as it is.
    pub fn to_device(&self, device: &Arc<GpuDevice>) -> Result<Tensor> {
        match &self.storage {
            Storage::Host(v) => Tensor::from_device(&self.shape, DeviceBuf::upload(device, v)?),
            Storage::Device(_) => Ok(self.clone()),
        }
    }

    /// This tensor with its values on the host (a copy from the device, or itself).
    pub fn to_host(&self) -> Result<Tensor> {
        match &self.storage {
            Storage::Host(_) => Ok(self.clone()),
            Storage::Device(d) => Tensor::from_vec(&self.shape, d.to_host()?),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The device storage, None for a host tensor.
    pub fn on_device(&self) -> Option<&DeviceBuf> {
        match &self.storage {
            Storage::Device(d) => Some(d),
            Storage::Host(_) => None,
        }
    }

    /// The values of a host tensor. A device tensor has none here: the ops that may see one
    /// check `on_device` first, so reaching this with one is a bug in the engine.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Host(v) => v,
            Storage::Device(_) => panic!("data() of a device tensor: copy it with to_host()"),
        }
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Storage::Host(v) => v,
            Storage::Device(_) => panic!("data_mut() of a device tensor"),
        }
    }
    pub fn into_vec(mut self) -> Vec<f32> {
        match &mut self.storage {
            Storage::Host(v) => std::mem::take(v),
            Storage::Device(_) => panic!("into_vec() of a device tensor: copy it with to_host()"),
        }
    }

    /// Same data, new shape of equal size.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            bail!(
                "cannot reshape {:?} ({} values) to {:?}",
                self.shape,
                self.numel(),
                shape
            );
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Element-wise `self += other` (shapes must match, and both on the same side: a gradient
    /// sum). On a device, in place when this tensor's storage is not shared, else into a new
    /// buffer.
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        if self.shape != other.shape {
            bail!(
                "add_assign: shapes {:?} and {:?} differ",
                self.shape,
                other.shape
            );
        }
        match (&mut self.storage, &other.storage) {
            (Storage::Host(a), Storage::Host(b)) => {
                for (a, b) in a.iter_mut().zip(b) {
                    *a += *b;
                }
            }
            (Storage::Device(a), Storage::Device(b)) => {
                let n = a.len();
                if let Some(own) = Arc::get_mut(a) {
                    elementwise::acc(b.gpu(), own.buf(), b.buf(), n)?;
                } else {
                    let sum = DeviceBuf::uninit(a.device(), n)?;
                    elementwise::add(a.gpu(), a.buf(), b.buf(), sum.buf(), n)?;
                    *a = Arc::new(sum);
                }
            }
            _ => bail!("add_assign of a host and a device tensor"),
        }
        Ok(())
    }
}

impl Drop for Tensor {
    /// Large host storage goes back to this thread's pool, so the next step's buffers of the same
    /// sizes (`overwritten`, `pooled`) are reused memory instead of zero-filled fresh pages
    /// (device storage goes back to its device's cache when its last user drops it).
    fn drop(&mut self) {
        if let Storage::Host(v) = &mut self.storage {
            crate::device::cpu::buffers::give_back(std::mem::take(v));
        }
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
