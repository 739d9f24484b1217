//! A GPU shared by the tensors that live on it, with a caching allocator: a buffer a tensor no
//! longer needs goes back to a free list by size, and the next request of that size takes it, so
//! a training step whose shapes repeat allocates nothing on the device after its first run (a
//! `cudaMalloc` synchronises the device; a free-list hit costs a lock and a memset launch).
//!
//! Two kinds of request: [`GpuDevice::take`] hands out a zero-filled buffer (a memset when it is
//! reused), for kernels that accumulate into their output; [`GpuDevice::take_uninit`] one whose
//! contents are undefined, for outputs a kernel overwrites in full — every op output of a
//! training step, so a step launches no memset. The emulator fills undefined buffers with NaN
//! (uncounted), so a kernel that leaves an element unwritten fails the parity tests.

use super::{Buf, Gpu};
use anyhow::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A GPU (or the emulator) and its cache of free buffers. Shared as `Arc<GpuDevice>` by every
/// tensor on it.
pub struct GpuDevice {
    gpu: Gpu,
    /// Free buffers by size in bytes.
    free: Mutex<HashMap<usize, Vec<Buf>>>,
    /// Buffers made by the driver (not taken from the cache) so far, for tests and reports.
    fresh: std::sync::atomic::AtomicU64,
}

impl GpuDevice {
    pub fn new(gpu: Gpu) -> Arc<Self> {
        Arc::new(Self {
            gpu,
            free: Mutex::new(HashMap::new()),
            fresh: 0.into(),
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// How many buffers were allocated by the driver rather than reused.
    pub fn fresh_allocations(&self) -> u64 {
        self.fresh.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A zero-filled buffer of `bytes` bytes, from the cache when one of that size is free.
    pub fn take(&self, bytes: usize) -> Result<Buf> {
        match self.reuse(bytes) {
            Some(mut b) => {
                self.gpu.fill_bytes(&mut b, 0)?;
                Ok(b)
            }
            None => self.fresh(bytes),
        }
    }

    /// A buffer of `bytes` bytes with undefined contents (NaN on the emulator), from the cache
    /// when one of that size is free: for outputs the next kernel writes in full.
    pub fn take_uninit(&self, bytes: usize) -> Result<Buf> {
        let mut b = match self.reuse(bytes) {
            Some(b) => b,
            None => self.fresh(bytes)?,
        };
        self.gpu.poison(&mut b);
        Ok(b)
    }

    /// A free buffer of exactly `bytes`, if the cache holds one.
    fn reuse(&self, bytes: usize) -> Option<Buf> {
        self.free
            .lock()
            .expect("allocator lock")
            .get_mut(&bytes)
            .and_then(Vec::pop)
    }

    /// A new (zero-filled) buffer from the driver.
    fn fresh(&self, bytes: usize) -> Result<Buf> {
        self.fresh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.gpu.alloc(bytes)
    }

    /// Returns `b` to the cache.
    pub fn give_back(&self, b: Buf) {
        if let Ok(mut free) = self.free.lock() {
            free.entry(b.bytes()).or_default().push(b);
        }
    }
}

/// `n` f32 values on a device: a tensor's storage there. The buffer goes back to its device's
/// cache when dropped.
pub struct DeviceBuf {
    device: Arc<GpuDevice>,
    buf: Option<Buf>,
    len: usize,
}

impl DeviceBuf {
    /// `n` zeros on `device`.
    pub fn zeros(device: &Arc<GpuDevice>, n: usize) -> Result<Self> {
        Ok(Self {
            buf: Some(device.take(n * 4)?),
            device: Arc::clone(device),
            len: n,
        })
    }

    /// `n` undefined values on `device` (NaN on the emulator): for an output the next kernel
    /// overwrites in full.
    pub fn uninit(device: &Arc<GpuDevice>, n: usize) -> Result<Self> {
        Ok(Self {
            buf: Some(device.take_uninit(n * 4)?),
            device: Arc::clone(device),
            len: n,
        })
    }

    /// A copy of `values` on `device`.
    pub fn upload(device: &Arc<GpuDevice>, values: &[f32]) -> Result<Self> {
        let mut d = Self::uninit(device, values.len())?;
        device.gpu.write(d.buf_mut(), values)?;
        Ok(d)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Shows only the first `n` values (n ≤ len); the buffer keeps its size, and a read of the
    /// whole [`Buf`] still sees the rest. The loss op's value is its statistics' first float.
    pub fn view_first(&mut self, n: usize) {
        assert!(n <= self.len, "view_first({n}) of {} values", self.len);
        self.len = n;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.device
    }

    pub fn gpu(&self) -> &Gpu {
        &self.device.gpu
    }

    pub fn buf(&self) -> &Buf {
        self.buf
            .as_ref()
            .expect("a live DeviceBuf holds its buffer")
    }

    pub fn buf_mut(&mut self) -> &mut Buf {
        self.buf
            .as_mut()
            .expect("a live DeviceBuf holds its buffer")
    }

    /// The values, copied to the host.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let mut v: Vec<f32> = self.device.gpu.read(self.buf())?;
        v.truncate(self.len);
        Ok(v)
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.device.give_back(b);
        }
    }
}

impl std::fmt::Debug for DeviceBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuf({} f32 on {:?})", self.len, self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_buffer_is_reused_zeroed_and_sizes_do_not_mix() {
        let dev = GpuDevice::new(Gpu::emu());
        let a = DeviceBuf::upload(&dev, &[1.0, 2.0, 3.0]).unwrap();
        let addr = a.buf().addr();
        drop(a);
        assert_eq!(dev.fresh_allocations(), 1);
        let b = DeviceBuf::zeros(&dev, 3).unwrap();
        assert_eq!(b.buf().addr(), addr, "the freed buffer comes back");
        assert_eq!(b.to_host().unwrap(), [0.0; 3], "and comes back zeroed");
        let c = DeviceBuf::zeros(&dev, 4).unwrap();
        assert_ne!(c.buf().addr(), addr);
        assert_eq!(dev.fresh_allocations(), 2);
    }

    #[test]
    fn an_uninitialised_buffer_is_poisoned_on_the_emulator_and_costs_no_memset() {
        let dev = GpuDevice::new(Gpu::emu());
        let a = DeviceBuf::upload(&dev, &[1.0, 2.0]).unwrap();
        drop(a);
        let fills = dev.gpu().traffic().fills;
        let b = DeviceBuf::uninit(&dev, 2).unwrap();
        assert_eq!(dev.fresh_allocations(), 1, "reused");
        assert!(b.to_host().unwrap().iter().all(|v| v.is_nan()));
        assert_eq!(dev.gpu().traffic().fills, fills, "no memset counted");
    }
}
