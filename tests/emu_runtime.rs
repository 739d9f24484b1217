//! Self-tests of the CUDA emulator (kernels/emu, kernels/emu/selftest.cu): each self-test
//! kernel runs through `Gpu::emu().launch` and is compared with a plain Rust computation, in
//! forward and in reverse fiber order (the race probe). Deadlocks are checked in a child
//! process, since the emulator aborts on them.
//!
//! Tolerances: float sums of terms in [-1, 1] are compared with |Δ| ≤ 1e-5·terms + 1e-6 (the
//! kernels sum in another order than the sequential Rust sums); everything else is exact.

use rest::device::gpu::emu::{self, selftest::*};
use rest::device::gpu::{Dim3, Gpu};

#[path = "common/emu.rs"]
mod emu_fixtures;
use emu_fixtures::{atomic_case, cfg, values};

const FULL: u32 = u32::MAX;

fn close(got: f32, want: f32, terms: usize) -> bool {
    (got - want).abs() <= 1e-5 * terms as f32 + 1e-6
}

fn check_block_sum(gpu: &Gpu) {
    for (n, chunk, threads) in [
        (1000usize, 300u32, 128u32),
        (77, 77, 32),
        (5000, 1024, 1024),
    ] {
        let x = values(n, n as u64);
        let blocks = n.div_ceil(chunk as usize);
        let xb = gpu.upload(&x).unwrap();
        let mut out = gpu.zeros::<f32>(2 * blocks).unwrap();
        gpu.fill_bytes(&mut out, 0xFF).unwrap();
        let p = BlockSumParams {
            x: xb.addr(),
            out: out.addr(),
            n: n as u32,
            chunk,
        };
        let c = cfg(Dim3::x(blocks as u32), Dim3::x(threads), 0);
        gpu.launch(&selftest_block_sum_f32, c, &p).unwrap();
        let got = gpu.read::<f32>(&out).unwrap();
        for b in 0..blocks {
            let s = &x[b * chunk as usize..((b + 1) * chunk as usize).min(n)];
            let sum: f32 = s.iter().sum();
            let sq: f32 = s.iter().map(|v| v * v).sum();
            assert!(
                close(got[2 * b], sum, s.len()),
                "n {n} block {b}: {} vs {sum}",
                got[2 * b]
            );
            assert!(
                close(got[2 * b + 1], sq, s.len()),
                "n {n} block {b}: {} vs {sq}",
                got[2 * b + 1]
            );
        }
    }
}

fn check_sgemm(gpu: &Gpu) {
    for (m, n, k) in [
        (37usize, 53usize, 29usize),
        (130, 70, 45),
        (64, 64, 64),
        (1, 1, 1),
    ] {
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let (ab, bb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
        let mut cb = gpu.zeros::<f32>(m * n).unwrap();
        gpu.fill_bytes(&mut cb, 0xFF).unwrap();
        let p = GemmParams {
            a: ab.addr(),
            b: bb.addr(),
            c: cb.addr(),
            m: m as u32,
            n: n as u32,
            k: k as u32,
            pad: 0,
        };
        let grid = Dim3::xy(n.div_ceil(64) as u32, m.div_ceil(64) as u32);
        gpu.launch(&selftest_sgemm_f32, cfg(grid, Dim3::x(256), 0), &p)
            .unwrap();
        let c = gpu.read::<f32>(&cb).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                let got = c[i * n + j];
                assert!(
                    close(got, want, k),
                    "{m}x{n}x{k} at ({i},{j}): {got} vs {want}"
                );
            }
        }
    }
}

fn check_index(gpu: &Gpu) {
    let (grid, block) = (Dim3::xyz(3, 2, 2), Dim3::xyz(4, 3, 2));
    let total = (grid.count() * block.count()) as usize;
    let mut out = gpu.zeros::<u32>(4 * total).unwrap();
    gpu.fill_bytes(&mut out, 0xFF).unwrap();
    gpu.launch(
        &selftest_index,
        cfg(grid, block, 0),
        &IndexParams { out: out.addr() },
    )
    .unwrap();
    let got = gpu.read::<u32>(&out).unwrap();
    let pack = |x: u32, y: u32, z: u32| x | y << 10 | z << 20;
    let mut g = 0;
    for bz in 0..grid.z {
        for by in 0..grid.y {
            for bx in 0..grid.x {
                for tz in 0..block.z {
                    for ty in 0..block.y {
                        for tx in 0..block.x {
                            let want = [
                                pack(tx, ty, tz),
                                pack(bx, by, bz),
                                pack(block.x, block.y, block.z),
                                pack(grid.x, grid.y, grid.z),
                            ];
                            assert_eq!(got[4 * g..4 * g + 4], want, "thread {g}");
                            g += 1;
                        }
                    }
                }
            }
        }
    }
}

fn check_warp(gpu: &Gpu) {
    let (blocks, threads) = (2usize, 64usize);
    let n = blocks * threads;
    let x = values(n, 7);
    let xb = gpu.upload(&x).unwrap();
    let mut out = gpu.zeros::<f32>(8 * n).unwrap();
    gpu.fill_bytes(&mut out, 0xFF).unwrap();
    let p = WarpParams {
        x: xb.addr(),
        out: out.addr(),
    };
    let c = cfg(Dim3::x(blocks as u32), Dim3::x(threads as u32), 0);
    gpu.launch(&selftest_warp_f32, c, &p).unwrap();
    let o = gpu.read::<f32>(&out).unwrap();
    for g in 0..n {
        let (wb, l) = (g & !31, g & 31);
        let at = |lane: usize| x[wb + lane];
        let r = &o[8 * g..8 * g + 8];
        assert_eq!(r[0], at(3), "broadcast, thread {g}");
        assert_eq!(r[1], at(31 - l), "reverse idx, thread {g}");
        let sum: f32 = (0..32).map(at).sum();
        assert!(
            close(r[2], sum, 32),
            "warp_sum, thread {g}: {} vs {sum}",
            r[2]
        );
        assert_eq!(
            r[3],
            if l + 3 <= 31 { at(l + 3) } else { at(l) },
            "down 3, thread {g}"
        );
        let seg = l & 16;
        assert_eq!(
            r[4],
            if l >= seg + 2 { at(l - 2) } else { at(l) },
            "up 2 w16, thread {g}"
        );
        assert_eq!(r[5], at(l ^ 5), "xor 5 w8, thread {g}");
        if l < 16 {
            let s: f32 = (0..16).map(at).sum();
            assert!(
                close(r[6], s, 16),
                "half-warp sum, thread {g}: {} vs {s}",
                r[6]
            );
        } else {
            let m = (l..32).map(at).fold(f32::MIN, f32::max);
            assert_eq!(r[6], m, "half-warp suffix max, thread {g}");
        }
        assert_eq!(r[7], (((l + 1) & 31) * 3) as f32, "int shuffle, thread {g}");
    }
}

fn check_vote(gpu: &Gpu) {
    let (blocks, threads) = (2usize, 80usize); // warp 2 of each block has 16 lanes
    let n = blocks * threads;
    let mut pred: Vec<u32> = (0..n)
        .map(|g| ((g as u32).wrapping_mul(2654435761) >> 7) & 1)
        .collect();
    pred[32..64].iter_mut().for_each(|p| *p = 1); // block 0, warp 1: all true
    pred[80 + 64..160].iter_mut().for_each(|p| *p = 0); // block 1, warp 2: all false
    let pb = gpu.upload(&pred).unwrap();
    let mut out = gpu.zeros::<u32>(11 * n).unwrap();
    gpu.fill_bytes(&mut out, 0xFF).unwrap();
    let c = cfg(Dim3::x(blocks as u32), Dim3::x(threads as u32), 0);
    gpu.launch(
        &selftest_vote,
        c,
        &VoteParams {
            pred: pb.addr(),
            out: out.addr(),
        },
    )
    .unwrap();
    let o = gpu.read::<u32>(&out).unwrap();
    for g in 0..n {
        let (b, t) = (g / threads, g % threads);
        let (w, l) = (t / 32, t % 32);
        let lanes = (threads - w * 32).min(32);
        let exist = if lanes == 32 {
            FULL
        } else {
            (1u32 << lanes) - 1
        };
        let base = b * threads + w * 32;
        let ballot = (0..lanes)
            .filter(|&i| pred[base + i] != 0)
            .fold(0u32, |m, i| m | 1 << i);
        let half = if l < 16 { 0x0000_ffff } else { 0xffff_0000 };
        let block_count = pred[b * threads..(b + 1) * threads]
            .iter()
            .filter(|&&p| p != 0)
            .count();
        let bits = (1u32 << l).reverse_bits()
            ^ (l as u32).count_ones() << 8
            ^ (l as u32).leading_zeros() << 16
            ^ (if l == 0 { 0 } else { l.trailing_zeros() + 1 }) << 24;
        let tail = match (w, l) {
            (0, l) if l >= 20 => FULL, // exited: never written (poison)
            (0, _) => 0xfffff,
            _ => exist,
        };
        let want = [
            ballot,
            (ballot != 0) as u32,
            (ballot == exist) as u32,
            exist,
            ballot & half,
            block_count as u32,
            (block_count == threads) as u32,
            (block_count != 0) as u32,
            tail,
            bits,
            match (w, l) {
                (0, l) if l >= 20 => FULL,    // exited: never written
                (0, _) => FULL,               // lane 25 exited: poison
                (_, _) if lanes < 32 => FULL, // lane 25 absent: poison
                _ => 25,
            },
        ];
        assert_eq!(
            o[11 * g..11 * g + 11],
            want,
            "thread {g} (block {b}, warp {w}, lane {l})"
        );
    }
}

fn check_atomic(gpu: &Gpu) {
    let case = atomic_case(gpu, 1000);
    let (n, x, fsum, ints) = (case.n, &case.x, &case.fsum, &case.ints);
    gpu.launch(&selftest_atomic, case.cfg, &case.params)
        .unwrap();
    let f = gpu.read::<f32>(fsum).unwrap();
    let sum: f32 = x.iter().sum();
    assert!(
        close(f[0], sum, n),
        "global float atomicAdd: {} vs {sum}",
        f[0]
    );
    assert!(
        close(f[1], sum, n),
        "shared float atomicAdd: {} vs {sum}",
        f[1]
    );
    let i = gpu.read::<u32>(ints).unwrap();
    let xor = (0..n as u32).fold(0, |a, v| a ^ v);
    let n = n as u32;
    assert_eq!(i, [n, n, n - 1, 0, FULL, xor, 2 * n, 10_000 - n]);
}

fn check_dyn_smem(gpu: &Gpu) {
    let (blocks, threads) = (3usize, 96usize);
    let mut out = gpu.zeros::<u32>(2 * blocks * threads).unwrap();
    let c = cfg(
        Dim3::x(blocks as u32),
        Dim3::x(threads as u32),
        4 * threads as u32,
    );
    gpu.launch(&selftest_dyn_smem, c, &DynParams { out: out.addr() })
        .unwrap();
    let o = gpu.read::<u32>(&out).unwrap();
    for g in 0..blocks * threads {
        let (b, t) = (g / threads, g % threads);
        assert_eq!(
            o[2 * g],
            0xffff_ffff,
            "thread {g}: dynamic shared memory not poisoned"
        );
        assert_eq!(
            o[2 * g + 1],
            (threads - 1 - t + 1000 * b) as u32,
            "thread {g}"
        );
    }
    gpu.fill_bytes(&mut out, 0).unwrap();
}

fn all_checks(gpu: &Gpu) {
    check_block_sum(gpu);
    check_sgemm(gpu);
    check_index(gpu);
    check_warp(gpu);
    check_vote(gpu);
    check_atomic(gpu);
    check_dyn_smem(gpu);
}

#[test]
fn block_sum_matches() {
    check_block_sum(&Gpu::emu());
}

#[test]
fn tiled_sgemm_on_ragged_sizes() {
    check_sgemm(&Gpu::emu());
}

#[test]
fn grid_and_block_indices_2d_3d() {
    check_index(&Gpu::emu());
}

#[test]
fn warp_shuffles_and_subwarp_groups() {
    check_warp(&Gpu::emu());
}

#[test]
fn votes_barrier_predicates_and_exited_lanes() {
    check_vote(&Gpu::emu());
}

#[test]
fn atomics_on_global_and_shared_memory() {
    check_atomic(&Gpu::emu());
}

#[test]
fn dynamic_shared_memory_is_poisoned_per_block() {
    check_dyn_smem(&Gpu::emu());
}

/// Race probe: the same results with fibers and blocks scheduled in reverse.
#[test]
fn reverse_order_gives_the_same_results() {
    emu::set_reverse_order(Some(true));
    all_checks(&Gpu::emu());
    emu::set_reverse_order(None);
}

/// Launches from several OS threads at once (all emulator state is per thread).
#[test]
fn concurrent_launches_from_threads() {
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| all_checks(&Gpu::emu()));
        }
    });
}

// ---- deadlock reports (in a child process: the emulator aborts) -----------------------------

const CHILD_ENV: &str = "REST_EMU_DEADLOCK_CHILD";

/// Runs a deadlocking kernel when started by a `deadlock_*` test; does nothing otherwise.
#[test]
fn deadlock_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let gpu = Gpu::emu();
    let p = DeadlockParams {
        mode: mode.parse().unwrap(),
        pad: 0,
    };
    gpu.launch(&selftest_deadlock, cfg(Dim3::x(2), Dim3::x(64), 0), &p)
        .unwrap();
    println!("deadlock kernel returned");
}

fn source_line(marker: &str) -> usize {
    let src = include_str!("../kernels/emu/selftest.cu");
    1 + src
        .lines()
        .position(|l| l.contains(marker))
        .expect("marker in selftest.cu")
}

fn run_deadlock_child(mode: u32) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "deadlock_child",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, mode.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the deadlocked child exited normally; stderr:\n{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("deadlock kernel returned"),
        "the deadlock kernel returned"
    );
    for want in ["kernel selftest_deadlock", "block (1,0,0)"] {
        assert!(stderr.contains(want), "report lacks {want:?}:\n{stderr}");
    }
    stderr
}

#[test]
fn deadlock_at_two_barrier_call_sites_is_reported() {
    let err = run_deadlock_child(0);
    for m in ["DEADLOCK-A", "DEADLOCK-B"] {
        let site = format!("selftest.cu:{}", source_line(m));
        assert!(err.contains(&site), "report lacks {site}:\n{err}");
    }
}

#[test]
fn lane_outside_its_own_mask_is_reported() {
    let err = run_deadlock_child(2);
    let want = format!(
        "selftest.cu:{} with mask 0x00000001",
        source_line("MISUSE-E")
    );
    assert!(err.contains(&want), "report lacks {want:?}:\n{err}");
}

#[test]
fn deadlock_between_barrier_and_shuffle_is_reported() {
    let err = run_deadlock_child(1);
    let bar = format!(
        "lanes 0-15 at __syncthreads (selftest.cu:{})",
        source_line("DEADLOCK-C")
    );
    let shfl = format!(
        "lanes 16-31 in __shfl_sync mask 0xffffffff (selftest.cu:{})",
        source_line("DEADLOCK-D")
    );
    for want in [bar, shfl] {
        assert!(err.contains(&want), "report lacks {want:?}:\n{err}");
    }
}

// ---- cost (run with --ignored --nocapture) ---------------------------------------------------

#[test]
#[ignore = "timing report, not a check"]
fn emulator_speed() {
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
    let time = |f: &mut dyn FnMut()| {
        f();
        let t = cpu_now();
        f();
        cpu_now() - t
    };
    let out = gpu.zeros::<f32>(256 * 1000).unwrap();
    for (mode, name, blocks, iters) in [
        (0u32, "__syncthreads", 1u32, 2000u32),
        (1, "__syncwarp", 1, 2000),
        (2, "no waiting", 1000, 1),
    ] {
        let p = SpinParams {
            out: out.addr(),
            iters,
            mode,
        };
        let c = cfg(Dim3::x(blocks), Dim3::x(256), 0);
        let r0 = emu::resumes();
        let s = time(&mut || gpu.launch(&selftest_spin, c, &p).unwrap());
        let resumes = (emu::resumes() - r0) / 2;
        let waits = blocks as f64 * 256.0 * iters as f64;
        eprintln!(
            "{name}: {resumes} fiber resumes, {:.1} ns per thread and iteration",
            s * 1e9 / waits
        );
    }
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
    let reps = 200;
    let s = time(&mut || {
        for _ in 0..reps {
            gpu.launch(&selftest_sgemm_f32, cfg(Dim3::x(1), Dim3::x(256), 0), &p)
                .unwrap();
        }
    });
    eprintln!(
        "64x64x64 tiled SGEMM, one 256-thread block: {:.3} ms",
        s * 1e3 / reps as f64
    );
}
