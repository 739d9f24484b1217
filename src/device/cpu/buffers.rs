//! The per-thread buffer pool of the CPU engine: outputs that a kernel overwrites completely
//! (`overwritten`) and large scratch buffers (`pooled`) reuse the storage of dropped `Tensor`s and
//! `Pooled`s instead of zero-filled fresh pages.

/// A vector of `n` floats that `write` fills completely (every element written, none read
/// first); the kernels that produce whole outputs take their buffers from here.
///
/// The buffer is initialised memory: a pooled one (of a dropped `Tensor` or `Pooled`, holding
/// stale values) for large sizes when one fits, else zeroed. (Uninitialised memory would be
/// undefined behaviour behind a `&mut [f32]`.) So `write` must not read it before writing.
pub fn overwritten(n: usize, write: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut v = take_pooled(n);
    write(&mut v);
    v
}

/// At most this many buffers wait in a thread's pool for reuse (the smallest are dropped).
const POOL_MAX: usize = 64;
/// Buffers smaller than this are not pooled (the allocator serves them well).
pub(crate) const POOL_MIN: usize = 1 << 14;

std::thread_local! {
    /// Buffers given back on this thread (dropped `Tensor`s and `Pooled`s): initialised memory,
    /// so reusing one needs neither a zero-fill nor fresh pages.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Puts `v` in this thread's pool if it is large enough to be worth keeping.
pub(crate) fn give_back(v: Vec<f32>) {
    if v.capacity() < POOL_MIN {
        return;
    }
    // try_with: during thread teardown the pool may already be gone; then v is freed.
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        p.push(v);
        if p.len() > POOL_MAX {
            let i = (0..p.len())
                .min_by_key(|&i| p[i].capacity())
                .expect("non-empty");
            p.swap_remove(i);
        }
    });
}

/// `n` floats of initialised memory: the smallest pooled buffer of capacity n..=2n (resized to
/// n; its contents are stale values), else a fresh zeroed one.
fn take_pooled(n: usize) -> Vec<f32> {
    if n >= POOL_MIN {
        let reused = POOL
            .try_with(|p| {
                let mut p = p.borrow_mut();
                // By capacity, not length: a buffer once truncated for a smaller request keeps
                // its allocation and can serve its original size again.
                let fit = (0..p.len())
                    .filter(|&i| p[i].capacity() >= n && p[i].capacity() <= 2 * n)
                    .min_by_key(|&i| p[i].capacity());
                fit.map(|i| p.swap_remove(i))
            })
            .ok()
            .flatten();
        if let Some(mut v) = reused {
            // Growing back within the capacity zero-fills only the extension.
            v.resize(n, 0.0);
            return v;
        }
    }
    vec![0.0; n]
}

/// A float buffer that goes back to its thread's pool when dropped, for the large scratch and
/// saved buffers of a training step (im2col and its gradient) that live outside `Tensor`s.
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
        give_back(std::mem::take(&mut self.0));
    }
}

/// Like `overwritten`, but the buffer returns to the pool when the `Pooled` is dropped.
pub fn pooled(n: usize, write: impl FnOnce(&mut [f32])) -> Pooled {
    Pooled(overwritten(n, write))
}
