//! CPU kernels: the reference math of every operation and the fast CPU backend.
//!
//! Layouts (see `tensor.rs`): convolution activations are [C, H, W, N] in the CPU engine
//! (`conv::Layout::Chwn`) and [C, N, H, W] in the CUDA kernels and their twins (`Layout::Cnhw`);
//! a convolution is `y[Cout, N·OH·OW] = W[Cout, Cin·k·k] · col[Cin·k·k, N·OH·OW]` over an
//! im2col buffer whose row r = (ci·k + kh)·k + kw and whose columns follow the layout
//! ((n·OH + oh)·OW + ow, or (oh·OW + ow)·N + n). Weights are [Cout, Cin, k, k] row-major
//! (PyTorch's order). A linear layer is the same GEMM with k = 1 on [F, N] features.
//!
//! Every function overwrites its outputs (no accumulation) unless it says otherwise, and
//! parallelises with rayon where the work is large.

pub mod buffers;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod isa;
pub mod norm;
pub mod pool;
pub mod transpose;
pub mod twin;
pub mod xent;

pub use conv::ConvGeom;
pub use isa::Kernels;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a `KeepAwake` spinner goes on without finding pool work before it returns: well
/// above the serial stretches of a step (microseconds), well below anything a user would see.
const IDLE_LIMIT: Duration = Duration::from_millis(2);

/// Keeps the other threads of the current rayon pool spinning until dropped, each taking pool
/// work the moment it appears (`rayon::yield_now`), as OpenMP's active wait does.
///
/// A training step runs some forty parallel loops with short serial stretches between them
/// (the ops' bookkeeping, the small layers). A rayon thread that finds no work goes to sleep
/// within microseconds, and waking it costs 35–40 µs on the 2-vCPU VM we measure on: about a
/// millisecond per step, a sixth of a sparse CMNIST step. While a `KeepAwake` lives, that cost
/// is about 1 µs. The price is that the other cores spin through the serial stretches.
///
/// Only from inside a pool (the binary runs every command on one, `main.rs`): called from
/// outside, it does nothing.
pub struct KeepAwake {
    stop: Arc<AtomicBool>,
    /// Spinners that have returned, and how many there are.
    done: Arc<AtomicUsize>,
    spinners: usize,
}

impl KeepAwake {
    pub fn new() -> KeepAwake {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let Some(me) = rayon::current_thread_index() else {
            return KeepAwake {
                stop,
                done,
                spinners: 0,
            };
        };
        let (flag, exits) = (Arc::clone(&stop), Arc::clone(&done));
        rayon::spawn_broadcast(move |ctx| {
            if ctx.index() == me {
                return;
            }
            // A thread busy when the broadcast came may start its spinner while it waits inside
            // a stolen job (a join whose other half another thread runs). That job cannot finish
            // until the spinner returns, and the owner may be waiting for that job before it
            // drops the `KeepAwake`: without a way out, both wait forever (seen in a training
            // run). So a spinner that finds no work for IDLE_LIMIT returns: the thread then
            // sleeps as rayon's threads do without a `KeepAwake`.
            let mut last_work = Instant::now();
            while !flag.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    last_work = Instant::now();
                } else if last_work.elapsed() > IDLE_LIMIT {
                    break;
                } else {
                    std::hint::spin_loop();
                }
            }
            exits.fetch_add(1, Ordering::Release);
        });
        KeepAwake {
            stop,
            done,
            spinners: rayon::current_num_threads() - 1,
        }
    }
}

impl Default for KeepAwake {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepAwake {
    /// Stops the spinners and waits for them to return, so that the next `KeepAwake`'s never
    /// start inside these (a spinner runs whatever pool work it finds, a new spinner included).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        while self.done.load(Ordering::Acquire) < self.spinners {
            std::thread::yield_now();
        }
    }
}

/// Runs `f` as code built for this CPU's widest vectors: `f`, and the `#[inline(always)]` loops
/// it calls, are inlined into a copy compiled with AVX-512 (or AVX2 + FMA) where the CPU has it.
/// The crate targets baseline x86-64, which gives loops SSE2 only; the memory-bound passes of
/// batch norm, pooling and the elementwise ops ran twice as long that way. The loops use no
/// fused multiply-add and keep their own lane order, so every build gives the same bits.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match Kernels::detect() {
        // SAFETY: `detect` saw AVX-512F, AVX2 and FMA on this CPU.
        Kernels::Avx512 => return unsafe { with_avx512(f) },
        // SAFETY: `detect` saw AVX2 and FMA on this CPU.
        Kernels::Avx2 => return unsafe { with_avx2(f) },
        Kernels::Portable => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// f(i, chunk i) over the `size`-float chunks of `data`, on rayon's threads when `parallel`.
pub(crate) fn for_each_chunk(
    data: &mut [f32],
    size: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    use rayon::prelude::*;
    if parallel {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// The hang of a spinner started inside a stolen job: thread B runs half of a join (X)
    /// when the `KeepAwake` is made, X's own join has its second half stolen by A, so B waits
    /// inside X and runs its queued spinner there; A waits for X before dropping the
    /// `KeepAwake`. The spinner must give up, or this never returns.
    #[test]
    fn a_spinner_started_inside_a_stolen_job_does_not_hang_the_pool() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            pool.install(|| {
                let started = AtomicBool::new(false);
                let made = AtomicBool::new(false);
                let wait = |f: &AtomicBool| {
                    while !f.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                };
                let (keep, ()) = rayon::join(
                    || {
                        wait(&started);
                        let k = KeepAwake::new();
                        made.store(true, Ordering::Release);
                        k
                    },
                    || {
                        started.store(true, Ordering::Release);
                        wait(&made);
                        rayon::join(
                            || std::thread::sleep(Duration::from_millis(20)),
                            || std::thread::sleep(Duration::from_millis(100)),
                        );
                    },
                );
                drop(keep);
            });
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "the pool hung: a KeepAwake spinner waits inside the job its owner waits for"
        );
    }
}
