//! The emulator's Rust side: tier 3 of testing, the CUDA kernels run on the CPU.
//!
//! build.rs compiles every `kernels/*.cu` as C++ (g++ through the cc crate) together with
//! `kernels/emu/cuda_emu.h` and `kernels/emu/runtime.cpp` into a static library. Each kernel's
//! host entry `extern "C" fn name(grid, block, smem, params)` — the same symbol name as the CUDA
//! kernel — runs the whole grid on the calling thread, and `Gpu::Emu` calls it directly on host
//! memory (a [`Buf`](super::Buf)'s address is a host pointer there).
//!
//! How it runs (details in kernels/emu/README.md): blocks one after another; within a block
//! every CUDA thread is a cooperative fiber (64 KiB stack, hand-written x86-64 context switch,
//! ~13 ns per thread and `__syncthreads`) that runs until it finishes or waits at
//! `__syncthreads` or in a warp collective.
//! A block in which no thread can progress is a deadlock: the emulator prints kernel, block and
//! every warp's state with source lines to stderr and aborts the process.
//!
//! Race probe: `REST_EMU_REVERSE=1` (or [`set_reverse_order`]) resumes fibers and runs blocks in
//! reverse order; a kernel whose result changes has a race.
//!
//! Numerics differ from a GPU (libm `expf` is more exact than `__expf`; g++ does not fuse
//! multiply-adds): tests size their tolerances for the GPU, not for the emulator.
//!
//! Global-memory traffic: [`count_global_bytes`] measures the bytes the kernels launched on the
//! calling thread read and write in the emulator's device buffers (through a second copy of each
//! kernel compiled with ThreadSanitizer's instrumentation, whose hooks are
//! kernels/emu/counting.cpp).

extern "C" {
    fn rest_emu_set_reverse(mode: i32);
    fn rest_emu_resumes() -> u64;
    fn rest_emu_buffer_register(addr: u64, bytes: u64);
    fn rest_emu_buffer_unregister(addr: u64);
    fn rest_emu_count_begin() -> i32;
    fn rest_emu_count_end(out: *mut GlobalBytes) -> i32;
}

/// Fiber order for launches made from the calling OS thread: `Some(true)` reverse,
/// `Some(false)` forward, `None` back to the `REST_EMU_REVERSE` environment variable.
pub fn set_reverse_order(order: Option<bool>) {
    let mode = match order {
        None => -1,
        Some(r) => r as i32,
    };
    // SAFETY: plain C function setting a thread-local flag; no pointers involved.
    unsafe { rest_emu_set_reverse(mode) }
}

/// Fiber resumes (context switches into a CUDA thread) made by the calling OS thread so far;
/// the emulator's unit of cost.
pub fn resumes() -> u64 {
    // SAFETY: plain C function reading a thread-local counter.
    unsafe { rest_emu_resumes() }
}

/// Global-memory traffic of the kernels launched in a [`count_global_bytes`] window.
///
/// Only bytes inside live `Gpu::Emu` buffers count: not fiber stacks (locals), `__shared__` or
/// dynamic shared memory, the parameter struct, nor host-side copies (`Gpu::write`, `read`,
/// `fill_bytes`). An atomic read-modify-write counts as a read and a write of its bytes (a
/// compare-and-swap too, whether or not it swaps); an atomic load as a read, a store as a write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalBytes {
    /// Unique bytes read: each byte of a buffer once, however often it was read.
    pub read: u64,
    /// Unique bytes written.
    pub written: u64,
    /// Bytes over all reads (every access counted): what loads request.
    pub read_requests: u64,
    /// Bytes over all writes.
    pub written_requests: u64,
}

/// Runs `f` with global-memory counting on for the calling OS thread and returns its result with
/// the bytes the emulated kernels launched from this thread meanwhile read and wrote (see
/// [`GlobalBytes`]). Launches on other threads, and buffers they use, are not seen; buffers
/// allocated inside the window count like the others. A buffer freed and reallocated inside the
/// window counts as a new buffer.
///
/// Windows do not nest: opening one while this thread already counts panics. If `f` panics, the
/// window is closed and the panic goes on.
///
/// Cost: none while no window is open (a launch tests a thread-local flag and runs the kernel's
/// plain copy). Inside a window a launch runs the kernel's instrumented copy, a hook call, a
/// buffer lookup and a bitmap update per access: 6-8x slower (kernels/emu/README.md).
pub fn count_global_bytes<R>(f: impl FnOnce() -> R) -> (R, GlobalBytes) {
    /// Closes the window, also when `f` unwinds.
    struct Window;
    impl Window {
        fn close(&self) -> Option<GlobalBytes> {
            let mut out = GlobalBytes::default();
            // SAFETY: `out` is a live #[repr(C)] struct of four u64, the layout the C side writes.
            let rc = unsafe { rest_emu_count_end(&mut out) };
            (rc == 0).then_some(out)
        }
    }
    impl Drop for Window {
        fn drop(&mut self) {
            self.close();
        }
    }

    // SAFETY: plain C function setting up thread-local state; no pointers involved.
    let rc = unsafe { rest_emu_count_begin() };
    assert!(
        rc == 0,
        "count_global_bytes: this thread is already counting (windows do not nest)"
    );
    let window = Window;
    let r = f();
    let bytes = window.close().expect("the counting window is open");
    std::mem::forget(window); // closed
    (r, bytes)
}

/// Registers an emulator buffer (host memory `[addr, addr + bytes)`) for [`count_global_bytes`];
/// called by `Gpu::alloc`. Empty buffers are ignored.
pub(crate) fn register_buffer(addr: u64, bytes: usize) {
    // SAFETY: the C side only records the range (under a lock); it dereferences nothing.
    unsafe { rest_emu_buffer_register(addr, bytes as u64) }
}

/// Unregisters the buffer at `addr` before its memory is freed (`Buf`'s `Drop`).
pub(crate) fn unregister_buffer(addr: u64) {
    // SAFETY: the C side only removes the range from its registry; it dereferences nothing.
    unsafe { rest_emu_buffer_unregister(addr) }
}

/// The emulator's self-test kernels (kernels/emu/selftest.cu), used by tests/emu_runtime.rs.
/// Not part of `MODULES` / `kernels::ALL`: they are never compiled for a GPU.
pub mod selftest {
    use bytemuck::{Pod, Zeroable};

    crate::gpu_kernels!("emu_selftest" =>
        selftest_block_sum_f32,
        selftest_sgemm_f32,
        selftest_index,
        selftest_warp_f32,
        selftest_vote,
        selftest_atomic,
        selftest_dyn_smem,
        selftest_spin,
        selftest_deadlock,
    );

    /// The self-test kernels are not part of the cost model.
    macro_rules! unmodelled {
        ($($t:ty),+) => {$(
            impl crate::device::gpu::KernelCost for $t {
                fn cost(
                    &self,
                    _: &crate::device::gpu::KernelDef,
                    _: &crate::device::gpu::LaunchCfg,
                ) -> crate::device::gpu::Cost {
                    crate::device::gpu::Cost::UNMODELLED
                }
            }
        )+};
    }
    unmodelled!(
        BlockSumParams,
        GemmParams,
        IndexParams,
        WarpParams,
        VoteParams,
        AtomicParams,
        DynParams,
        SpinParams,
        DeadlockParams
    );

    /// `selftest_block_sum_f32`: block b writes the sum and the sum of squares of
    /// `x[b*chunk .. min(n, (b+1)*chunk)]` to `out[2b]`, `out[2b+1]`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct BlockSumParams {
        pub x: u64,
        pub out: u64,
        pub n: u32,
        pub chunk: u32,
    }

    /// `selftest_sgemm_f32`: `c[m,n] = a[m,k] b[k,n]`, row-major; 256 threads, grid
    /// `(ceil(n/64), ceil(m/64))`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct GemmParams {
        pub a: u64,
        pub b: u64,
        pub c: u64,
        pub m: u32,
        pub n: u32,
        pub k: u32,
        pub pad: u32,
    }

    /// `selftest_index`: four packed words per thread (threadIdx, blockIdx, blockDim, gridDim,
    /// each `x | y << 10 | z << 20`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct IndexParams {
        pub out: u64,
    }

    /// `selftest_warp_f32`: eight shuffle results per thread.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct WarpParams {
        pub x: u64,
        pub out: u64,
    }

    /// `selftest_vote`: eleven words per thread (votes, barrier predicates, bit intrinsics).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct VoteParams {
        pub pred: u64,
        pub out: u64,
    }

    /// `selftest_atomic`: float sums in `fsum[2]`, integer atomics in `ints[8]`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct AtomicParams {
        pub x: u64,
        pub fsum: u64,
        pub ints: u64,
        pub n: u32,
        pub pad: u32,
    }

    /// `selftest_dyn_smem`: two words per thread; launch with `smem = 4 * block.x`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct DynParams {
        pub out: u64,
    }

    /// `selftest_spin`: `iters` rounds of waiting (`mode` 0 `__syncthreads`, 1 `__syncwarp`,
    /// 2 none), one float out per thread.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct SpinParams {
        pub out: u64,
        pub iters: u32,
        pub mode: u32,
    }

    /// `selftest_deadlock`: deadlocks block 1 (`mode` 0: two `__syncthreads` call sites,
    /// 1: half a warp at `__syncthreads`, the other half in a full-mask shuffle; 2: a shuffle
    /// whose mask leaves out the calling lane).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Pod, Zeroable)]
    pub struct DeadlockParams {
        pub mode: u32,
        pub pad: u32,
    }
}
