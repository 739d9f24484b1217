//! The emulator's global-memory byte counting (`emu::count_global_bytes`, kernels/emu/counting.cpp):
//! exact counts for kernels whose traffic is known, on the model's own kernels and the emulator's
//! self-test kernels. Every launch's results are checked as well, since a counted launch runs
//! the instrumented copy of its kernel.

use rest::device::gpu::emu::{count_global_bytes, selftest::*, GlobalBytes};
use rest::device::gpu::kernels::elementwise as ew;
use rest::device::gpu::{Dim3, Gpu};
use std::sync::{Arc, Barrier};

#[path = "common/emu.rs"]
mod emu_fixtures;
use emu_fixtures::{atomic_case, cfg, values};

fn bytes(read: u64, written: u64, read_requests: u64, written_requests: u64) -> GlobalBytes {
    GlobalBytes {
        read,
        written,
        read_requests,
        written_requests,
    }
}

/// y = 2x over `n` floats in a window; checks y and returns the counts.
fn counted_scale(gpu: &Gpu, n: usize, seed: u64) -> GlobalBytes {
    let x = values(n, seed);
    let xb = gpu.upload(&x).unwrap();
    let yb = gpu.zeros::<f32>(n).unwrap();
    let ((), b) = count_global_bytes(|| ew::scale(gpu, &xb, &yb, 2.0, n).unwrap());
    let y = gpu.read::<f32>(&yb).unwrap();
    assert!(y.iter().zip(&x).all(|(y, x)| *y == 2.0 * x), "scale result");
    b
}

#[test]
fn a_kernel_reading_and_writing_n_floats_counts_4n_each() {
    let gpu = Gpu::emu();
    // Ragged sizes; 1_100_000 exceeds one grid-stride pass (4096 blocks of 256 threads).
    for n in [1usize, 1000, 5003, 1_100_000] {
        let n4 = 4 * n as u64;
        assert_eq!(
            counted_scale(&gpu, n, n as u64),
            bytes(n4, n4, n4, n4),
            "n = {n}"
        );
    }
}

#[test]
fn unique_bytes_count_once_requests_every_time() {
    let gpu = Gpu::emu();
    let n = 3000;
    let x = gpu.upload(&values(n, 5)).unwrap();
    // In place twice: x read and written twice, the same bytes each time.
    let ((), b) = count_global_bytes(|| {
        ew::scale(&gpu, &x, &x, 0.5, n).unwrap();
        ew::scale(&gpu, &x, &x, 4.0, n).unwrap();
    });
    let n4 = 4 * n as u64;
    assert_eq!(b, bytes(n4, n4, 2 * n4, 2 * n4));
}

#[test]
fn counting_is_off_outside_a_window_and_sees_buffers_allocated_inside() {
    let gpu = Gpu::emu();
    let n = 777;
    let x = gpu.upload(&values(n, 9)).unwrap();
    let y = gpu.zeros::<f32>(n).unwrap();
    ew::scale(&gpu, &x, &y, 3.0, n).unwrap(); // not counted: no window open
    let ((), empty) = count_global_bytes(|| ());
    assert_eq!(empty, GlobalBytes::default());
    let (z, b) = count_global_bytes(|| {
        let z = gpu.zeros::<f32>(2 * n).unwrap(); // allocated inside the window
        ew::scale(&gpu, &y, &z, 1.0, n).unwrap();
        z
    });
    let n4 = 4 * n as u64;
    assert_eq!(b, bytes(n4, n4, n4, n4));
    let got = gpu.read::<f32>(&z).unwrap();
    assert_eq!(got[..n], gpu.read::<f32>(&y).unwrap()[..]);
    assert!(got[n..].iter().all(|v| *v == 0.0));
}

#[test]
fn gemm_touches_a_b_and_c_once_and_requests_more() {
    let gpu = Gpu::emu();
    for (m, n, k) in [(130usize, 70usize, 45usize), (64, 64, 64), (1, 1, 1)] {
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let (ab, bb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
        let cb = gpu.zeros::<f32>(m * n).unwrap();
        let unused = gpu.upload(&values(4096, 3)).unwrap(); // live, registered, never touched
        let p = GemmParams {
            a: ab.addr(),
            b: bb.addr(),
            c: cb.addr(),
            m: m as u32,
            n: n as u32,
            k: k as u32,
            pad: 0,
        };
        let (gx, gy) = (n.div_ceil(64), m.div_ceil(64));
        let grid = Dim3::xy(gx as u32, gy as u32);
        let ((), got) = count_global_bytes(|| {
            gpu.launch(&selftest_sgemm_f32, cfg(grid, Dim3::x(256), 0), &p)
                .unwrap()
        });
        // Unique: A, B and C, each byte once. Requests: every block of a block row reads the
        // same rows of A (gx times in all), every block of a block column the same columns of B
        // (gy times); the tiles' shared-memory traffic does not count. C is written once.
        let (mk, kn, mn) = ((m * k) as u64, (k * n) as u64, (m * n) as u64);
        let want = bytes(
            4 * (mk + kn),
            4 * mn,
            4 * (gx as u64 * mk + gy as u64 * kn),
            4 * mn,
        );
        assert_eq!(got, want, "{m}x{n}x{k}");
        if gx * gy > 1 {
            assert!(got.read_requests > got.read, "{m}x{n}x{k}: {got:?}");
        }
        let c = gpu.read::<f32>(&cb).unwrap();
        for (i, j) in [(0, 0), (m - 1, n - 1), (m / 2, n / 3)] {
            let want: f32 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            let d = (c[i * n + j] - want).abs();
            assert!(d <= 1e-5 * k as f32 + 1e-6, "{m}x{n}x{k} at ({i},{j})");
        }
        drop(unused);
    }
}

#[test]
fn shared_memory_does_not_count() {
    let gpu = Gpu::emu();
    // Block sums through __shared__ scratch: x read once, two floats written per block.
    let (n, chunk, threads) = (1000usize, 300u32, 128u32);
    let blocks = n.div_ceil(chunk as usize);
    let xb = gpu.upload(&values(n, 4)).unwrap();
    let out = gpu.zeros::<f32>(2 * blocks).unwrap();
    let p = BlockSumParams {
        x: xb.addr(),
        out: out.addr(),
        n: n as u32,
        chunk,
    };
    let c = cfg(Dim3::x(blocks as u32), Dim3::x(threads), 0);
    let ((), got) = count_global_bytes(|| gpu.launch(&selftest_block_sum_f32, c, &p).unwrap());
    let (n4, w) = (4 * n as u64, 8 * blocks as u64);
    assert_eq!(got, bytes(n4, w, n4, w));

    // Dynamic shared memory: read before and after a barrier, written; only `out` counts.
    let (blocks, threads) = (3usize, 96usize);
    let out = gpu.zeros::<u32>(2 * blocks * threads).unwrap();
    let c = cfg(
        Dim3::x(blocks as u32),
        Dim3::x(threads as u32),
        4 * threads as u32,
    );
    let ((), got) = count_global_bytes(|| {
        gpu.launch(&selftest_dyn_smem, c, &DynParams { out: out.addr() })
            .unwrap()
    });
    let w = 8 * (blocks * threads) as u64;
    assert_eq!(got, bytes(0, w, 0, w));
    assert_eq!(gpu.read::<u32>(&out).unwrap()[0], 0xffff_ffff);
}

#[test]
fn atomics_count_as_a_read_and_a_write() {
    let gpu = Gpu::emu();
    let case = atomic_case(&gpu, 1000);
    let (n, blocks, ints) = (case.n, case.blocks, &case.ints);
    let ((), got) = count_global_bytes(|| {
        gpu.launch(&selftest_atomic, case.cfg, &case.params)
            .unwrap()
    });
    // Each of the n threads: x[i] (a read), eight atomics on global memory (a float atomicAdd
    // emulated by compare-and-swap, add, max, min, or, xor, CAS, sub: a read and a write each),
    // one plain read of ints[6] before its CAS. Thread 0 of every block: two atomicAdds of the
    // block's shared sums. Shared-memory atomics do not count.
    let (n, blocks) = (n as u64, blocks as u64);
    let want = bytes(
        4 * n + 8 + 32,
        8 + 32,
        40 * n + 8 * blocks,
        32 * n + 8 * blocks,
    );
    assert_eq!(got, want);
    let i = gpu.read::<u32>(ints).unwrap();
    assert_eq!(i[0], n as u32);
    assert_eq!(i[6], 2 * n as u32);
}

#[test]
fn threads_counting_at_once_see_only_their_own_launches() {
    let barrier = Arc::new(Barrier::new(3));
    let sizes = [3000usize, 700];
    let handles: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let gpu = Gpu::emu();
                let x = gpu.upload(&values(n, n as u64)).unwrap();
                let y = gpu.zeros::<f32>(n).unwrap();
                let ((), b) = count_global_bytes(|| {
                    barrier.wait(); // both windows are open, and the third thread launches
                    for _ in 0..20 {
                        ew::scale(&gpu, &x, &y, 2.0, n).unwrap();
                    }
                    barrier.wait();
                });
                b
            })
        })
        .collect();
    // A third thread launches on its own buffers meanwhile, without counting.
    let gpu = Gpu::emu();
    let big = gpu.upload(&values(50_000, 1)).unwrap();
    barrier.wait();
    for _ in 0..5 {
        ew::scale(&gpu, &big, &big, 1.0, 50_000).unwrap();
    }
    barrier.wait();
    for (h, n) in handles.into_iter().zip(sizes) {
        let n4 = 4 * n as u64;
        assert_eq!(
            h.join().unwrap(),
            bytes(n4, n4, 20 * n4, 20 * n4),
            "n = {n}"
        );
    }
}

#[test]
#[should_panic(expected = "windows do not nest")]
fn windows_do_not_nest() {
    count_global_bytes(|| count_global_bytes(|| ()));
}

#[test]
fn a_panic_inside_the_window_closes_it() {
    let r = std::panic::catch_unwind(|| count_global_bytes(|| panic!("inside")));
    assert!(r.is_err());
    // The window is closed: a new one opens, and counts from zero.
    let gpu = Gpu::emu();
    assert_eq!(counted_scale(&gpu, 10, 1), bytes(40, 40, 40, 40));
}

// ---- cost (run with --ignored --nocapture) ---------------------------------------------------

#[test]
#[ignore = "timing report, not a check"]
fn counting_cost() {
    let gpu = Gpu::emu();
    // CPU time of this thread (the machine may be shared: wall time would count waiting).
    let cpu_now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we pass; the clock id is valid on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    };
    let time = |reps: usize, counted: bool, f: &dyn Fn()| {
        let run = || {
            for _ in 0..reps {
                f();
            }
        };
        run();
        let t = cpu_now();
        if counted {
            count_global_bytes(run);
        } else {
            run();
        }
        (cpu_now() - t) / reps as f64
    };
    let a = gpu.upload(&values(64 * 64, 1)).unwrap();
    let b = gpu.upload(&values(64 * 64, 2)).unwrap();
    let c = gpu.zeros::<f32>(64 * 64).unwrap();
    let p = GemmParams {
        a: a.addr(),
        b: b.addr(),
        c: c.addr(),
        m: 64,
        n: 64,
        k: 64,
        pad: 0,
    };
    let gemm = || {
        gpu.launch(&selftest_sgemm_f32, cfg(Dim3::x(1), Dim3::x(256), 0), &p)
            .unwrap()
    };
    let n = 1 << 20;
    let x = gpu.upload(&values(n, 3)).unwrap();
    let y = gpu.zeros::<f32>(n).unwrap();
    let scale = || ew::scale(&gpu, &x, &y, 2.0, n).unwrap();
    for (name, reps, f) in [
        (
            "64x64x64 tiled SGEMM, one 256-thread block",
            200,
            &gemm as &dyn Fn(),
        ),
        ("elementwise_scale_f32 over 2^20 floats", 5, &scale),
    ] {
        let plain = time(reps, false, f);
        let counted = time(reps, true, f);
        eprintln!(
            "{name}: {:.3} ms, {:.3} ms counting ({:.1}x)",
            plain * 1e3,
            counted * 1e3,
            counted / plain
        );
    }
}
