//! Parity of the non-convolution kernels (xent, norm, pool, elementwise, optim) with their CPU
//! twins, on the emulator (`Gpu::emu()`): random inputs with fixed seeds, ragged sizes, outputs
//! poisoned (0xFF = NaN) before every launch. Tolerances are stated per kernel and sized for a
//! real GPU (f32 tree sums instead of the CPU's f64, libdevice expf/logf), not for the emulator.

use anyhow::Result;
use rest::device::cpu::twin;
use rest::device::gpu::kernels::{elementwise as ew, norm, optim, pool, xent};
use rest::device::gpu::{Buf, Gpu};
use rest::rng::Rng;

fn normal(rng: &mut Rng, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale + offset).collect()
}

/// A zero buffer of `n` f32 (or u32) poisoned with 0xFF bytes.
fn poisoned<T: bytemuck::Pod>(gpu: &Gpu, n: usize) -> Result<Buf> {
    let mut b = gpu.zeros::<T>(n)?;
    gpu.fill_bytes(&mut b, 0xFF)?;
    Ok(b)
}

/// |got − want| ≤ abs + rel·|want| element-wise; NaN only where the reference is NaN; infinities
/// must be equal.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= abs + rel * w.abs()
        };
        assert!(ok, "{what}[{i}]: got {g}, want {w} (rel {rel}, abs {abs})");
    }
}

/// Bit-for-bit equality (NaN patterns aside).
fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_close(what, got, want, 0.0, 0.0);
}

// ---------------------------------------------------------------------------------------------
// elementwise: every op is one correctly rounded f32 operation → exact on any GPU.

#[test]
fn elementwise_matches_twins_exactly() -> Result<()> {
    use twin::elementwise::*;
    let gpu = Gpu::emu();
    let mut rng = Rng::new(11);
    for n in [1usize, 37, 1000, 3 * 5 * 7 * 9] {
        let mut a = normal(&mut rng, n, 1.0, 0.0);
        a[0] = 0.0;
        let b = normal(&mut rng, n, 1.0, 0.0);
        let p = ElementwiseParams {
            n: n as u32,
            alpha: -0.37,
            ..Default::default()
        };
        let (ba, bb) = (gpu.upload(&a)?, gpu.upload(&b)?);
        let mut want = vec![0.0; n];

        let y = poisoned::<f32>(&gpu, n)?;
        ew::relu_fwd(&gpu, &ba, &y, n)?;
        elementwise_relu_fwd_f32(&p, &a, &mut want);
        assert_exact("relu_fwd", &gpu.read(&y)?, &want);

        let y = poisoned::<f32>(&gpu, n)?;
        ew::relu_bwd(&gpu, &ba, &bb, &y, n)?;
        elementwise_relu_bwd_f32(&p, &a, &b, &mut want);
        assert_exact("relu_bwd", &gpu.read(&y)?, &want);

        let y = poisoned::<f32>(&gpu, n)?;
        ew::add(&gpu, &ba, &bb, &y, n)?;
        elementwise_add_f32(&p, &a, &b, &mut want);
        assert_exact("add", &gpu.read(&y)?, &want);

        let y = poisoned::<f32>(&gpu, n)?;
        ew::add_relu(&gpu, &ba, &bb, &y, n)?;
        elementwise_add_relu_f32(&p, &a, &b, &mut want);
        assert_exact("add_relu", &gpu.read(&y)?, &want);

        let y = gpu.upload(&a)?;
        ew::acc(&gpu, &y, &bb, n)?;
        want.copy_from_slice(&a);
        elementwise_acc_f32(&p, &b, &mut want);
        assert_exact("acc", &gpu.read(&y)?, &want);

        let y = poisoned::<f32>(&gpu, n)?;
        ew::scale(&gpu, &ba, &y, p.alpha, n)?;
        elementwise_scale_f32(&p, &a, &mut want);
        assert_exact("scale", &gpu.read(&y)?, &want);
        // In place.
        let y = gpu.upload(&a)?;
        ew::scale(&gpu, &y, &y, p.alpha, n)?;
        assert_exact("scale in place", &gpu.read(&y)?, &want);

        let y = poisoned::<f32>(&gpu, n + 3)?;
        ew::fill(&gpu, &y, p.alpha, n)?;
        elementwise_fill_f32(&p, &mut want);
        let got = gpu.read::<f32>(&y)?;
        assert_exact("fill", &got[..n], &want);
        assert!(got[n..].iter().all(|v| v.is_nan()), "fill wrote past n");
    }
    Ok(())
}

#[test]
fn elementwise_rejects_short_buffers() -> Result<()> {
    let gpu = Gpu::emu();
    let (a, y) = (gpu.zeros::<f32>(10)?, gpu.zeros::<f32>(9)?);
    let err = ew::relu_fwd(&gpu, &a, &y, 10).unwrap_err().to_string();
    assert!(
        err.contains("elementwise_relu_fwd_f32") && err.contains("y"),
        "{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// optim: products and sums rounded separately on the GPU too (__fmul_rn/__fadd_rn) → exact.

#[test]
fn sgd_matches_twin_exactly() -> Result<()> {
    let gpu = Gpu::emu();
    let mut rng = Rng::new(12);
    for n in [5usize, 777, 1000] {
        let mut w = normal(&mut rng, n, 1.0, 0.0);
        let g1 = normal(&mut rng, n, 0.1, 0.0);
        let g2 = normal(&mut rng, n, 0.1, 0.0);
        let mut m = vec![0.0; n];
        let (bw, bm) = (gpu.upload(&w)?, gpu.upload(&m)?);
        let p = twin::optim::SgdParams {
            n: n as u32,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..Default::default()
        };
        for g in [&g1, &g2, &g1] {
            let bg = gpu.upload(g)?;
            optim::sgd(&gpu, &bw, &bg, &bm, n, p.lr, p.momentum, p.weight_decay)?;
            twin::optim::optim_sgd_f32(&p, &mut w, g, &mut m);
        }
        assert_exact("sgd w", &gpu.read(&bw)?, &w);
        assert_exact("sgd buf", &gpu.read(&bm)?, &m);
    }
    Ok(())
}

/// One `optim_sgd_multi_f32` launch over ragged tensors (empty, single value, chunk edges) is
/// bit for bit per-tensor `optim_sgd_f32` (and its twin) over 3 steps; a changed lr between
/// steps too (the plateau schedule).
#[test]
fn sgd_multi_matches_per_tensor_sgd_exactly() -> Result<()> {
    let gpu = Gpu::emu();
    let mut rng = Rng::new(14);
    let sizes = [0usize, 1, 5, 2047, 2048, 2049, 0, 4100, 1, 777];
    let init: Vec<(Vec<f32>, Vec<f32>)> = sizes
        .iter()
        .map(|&n| (normal(&mut rng, n, 1.0, 0.0), normal(&mut rng, n, 0.1, 0.0)))
        .collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|_| {
            sizes
                .iter()
                .map(|&n| normal(&mut rng, n, 0.1, 0.0))
                .collect()
        })
        .collect();
    let up = |v: &[f32]| gpu.upload(v);
    let mut multi = init
        .iter()
        .map(|(w, m)| Ok((up(w)?, up(&vec![0.0; w.len()])?, up(m)?)))
        .collect::<Result<Vec<_>>>()?;
    let single = init
        .iter()
        .map(|(w, m)| Ok((up(w)?, up(m)?)))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = multi
        .iter()
        .zip(&sizes)
        .map(|((w, g, m), &n)| (w, g, m, n))
        .collect();
    let table = optim::SgdTable::new(&gpu, &refs)?;
    drop(refs);
    assert_eq!(table.records().len(), sizes.len());
    let mut host: Vec<(Vec<f32>, Vec<f32>)> = init.clone();
    let before = gpu.launches();
    for (step, gs) in grads.iter().enumerate() {
        let (lr, mu, wd) = (0.05 / (step + 1) as f32, 0.9, 5e-4);
        // Each tensor's gradient rewritten in its own buffer (the table keeps the addresses).
        for ((_, g, _), gh) in multi.iter_mut().zip(gs) {
            gpu.write(g, gh)?;
        }
        let l0 = gpu.launches();
        optim::sgd_multi(&gpu, &table, lr, mu, wd)?;
        assert_eq!(gpu.launches(), l0 + 1, "one launch for every tensor");
        for (((w, m), &n), gh) in single.iter().zip(&sizes).zip(gs) {
            let bg = gpu.upload(gh)?;
            optim::sgd(&gpu, w, &bg, m, n, lr, mu, wd)?;
        }
        let p = twin::optim::SgdMultiParams {
            ntensors: sizes.len() as u32,
            lr,
            momentum: mu,
            weight_decay: wd,
            ..Default::default()
        };
        let mut tensors: Vec<twin::optim::SgdTensor> = host
            .iter_mut()
            .zip(gs)
            .map(|((w, m), g)| (&mut w[..], &g[..], &mut m[..]))
            .collect();
        twin::optim::optim_sgd_multi_f32(&p, &mut tensors);
    }
    assert!(gpu.launches() > before);
    for (i, (((mw, _, mm), (sw, sm)), (hw, hm))) in multi.iter().zip(&single).zip(&host).enumerate()
    {
        let n = sizes[i];
        let read = |b: &Buf| -> Result<Vec<f32>> {
            let mut v: Vec<f32> = gpu.read(b)?;
            v.truncate(n);
            Ok(v)
        };
        let (mw, mm, sw, sm) = (read(mw)?, read(mm)?, read(sw)?, read(sm)?);
        assert_exact(&format!("tensor {i} (n {n}) w vs sgd"), &mw, &sw);
        assert_exact(&format!("tensor {i} (n {n}) buf vs sgd"), &mm, &sm);
        assert_exact(&format!("tensor {i} (n {n}) w vs twin"), &mw, hw);
        assert_exact(&format!("tensor {i} (n {n}) buf vs twin"), &mm, hm);
    }
    Ok(())
}

#[test]
fn sgd_multi_rejects_short_buffers() -> Result<()> {
    let gpu = Gpu::emu();
    let (a, b) = (gpu.zeros::<f32>(10)?, gpu.zeros::<f32>(9)?);
    assert!(optim::SgdTable::new(&gpu, &[(&a, &a, &b, 10)]).is_err());
    assert!(optim::SgdTable::new(&gpu, &[(&a, &a, &a, 10), (&b, &a, &a, 10)]).is_err());
    // No tensor, or only empty ones: nothing to launch.
    let l0 = gpu.launches();
    optim::sgd_multi(&gpu, &optim::SgdTable::new(&gpu, &[])?, 0.1, 0.9, 0.0)?;
    optim::sgd_multi(
        &gpu,
        &optim::SgdTable::new(&gpu, &[(&a, &a, &a, 0)])?,
        0.1,
        0.9,
        0.0,
    )?;
    assert_eq!(gpu.launches(), l0);
    Ok(())
}

#[test]
fn sgd_twin_is_the_engine_step() {
    use rest::nn::param::{Grads, ParamKind, ParamStore};
    let mut rng = Rng::new(13);
    let mut store = ParamStore::default();
    let w0 = normal(&mut rng, 50, 1.0, 0.0);
    store.add("w", &[50], ParamKind::Bias, w0.clone());
    let mut opt = rest::optim::Sgd::new(&store, 0.1, 0.9, 1e-3);
    let mut grads = Grads::zeros(&store, false);
    grads.g[0] = normal(&mut rng, 50, 0.5, 0.0);
    let p = twin::optim::SgdParams {
        n: 50,
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-3,
        ..Default::default()
    };
    let (mut w, mut m) = (w0, vec![0.0; 50]);
    for _ in 0..3 {
        opt.step(&mut store, &grads).unwrap();
        twin::optim::optim_sgd_f32(&p, &mut w, &grads.g[0], &mut m);
    }
    assert_exact("engine vs twin", &w, store.params[0].data());
}

// ---------------------------------------------------------------------------------------------
// pool: max-pool forward/backward exact (comparisons, and the backward sums in the CPU's
// order); global average forward rel 1e-5 / abs 1e-6 (f32 warp sum vs the CPU's f64), backward
// exact.

#[test]
fn maxpool_matches_twin() -> Result<()> {
    use twin::pool::*;
    let gpu = Gpu::emu();
    let mut rng = Rng::new(14);
    // (planes, h, w, k, stride, pad): the ResNet stem's 3×3/2 p1 on ragged planes, overlapping
    // and disjoint windows, and windows of padding only (pad ≥ k: argmax NO_INPUT, y = −∞).
    for (case, &(planes, h, w, k, s, pad)) in [
        (15usize, 7usize, 9usize, 3usize, 2usize, 1usize),
        (4, 8, 8, 2, 2, 0),
        (3, 5, 6, 3, 1, 1),
        (2, 3, 3, 2, 1, 2),
        (1, 1, 1, 1, 1, 0),
    ]
    .iter()
    .enumerate()
    {
        // Values on a coarse grid so windows hold ties (the first maximum must win).
        let mut x: Vec<f32> = (0..planes * h * w)
            .map(|_| (rng.normal() * 2.0).round() * 0.5)
            .collect();
        if case == 0 {
            x[10] = f32::NAN;
        }
        let mp = pool::max_pool_params(planes, h, w, k, s, pad)?;
        let (oh, ow) = (mp.oh as usize, mp.ow as usize);
        let bx = gpu.upload(&x)?;
        let y = poisoned::<f32>(&gpu, planes * oh * ow)?;
        let am = poisoned::<u32>(&gpu, planes * oh * ow)?;
        assert_eq!(
            pool::max_fwd(&gpu, &bx, &y, &am, planes, h, w, k, s, pad)?,
            (oh, ow)
        );
        let mut wy = vec![0.0; planes * oh * ow];
        let mut wam = vec![0u32; planes * oh * ow];
        pool_max_fwd_f32(&mp, &x, &mut wy, &mut wam);
        assert_exact(&format!("maxpool y, case {case}"), &gpu.read(&y)?, &wy);
        assert_eq!(gpu.read::<u32>(&am)?, wam, "maxpool argmax, case {case}");
        if case == 3 {
            assert!(
                wam.contains(&u32::MAX),
                "case 3 should have padding-only windows"
            );
        }

        let dy = normal(&mut rng, planes * oh * ow, 1.0, 0.0);
        let bdy = gpu.upload(&dy)?;
        let dx = poisoned::<f32>(&gpu, planes * h * w)?;
        pool::max_bwd(&gpu, &bdy, &am, &dx, planes, h, w, k, s, pad)?;
        let mut wdx = vec![0.0; planes * h * w];
        pool_max_bwd_f32(&mp, &dy, &wam, &mut wdx);
        assert_exact(&format!("maxpool dx, case {case}"), &gpu.read(&dx)?, &wdx);
    }
    Ok(())
}

#[test]
fn global_avgpool_matches_twin() -> Result<()> {
    use twin::pool::*;
    let gpu = Gpu::emu();
    let mut rng = Rng::new(15);
    for (planes, hw) in [(15usize, 63usize), (4, 1), (2, 49), (70, 33)] {
        let x = normal(&mut rng, planes * hw, 1.0, 0.5);
        let p = AvgPoolParams {
            planes: planes as u32,
            hw: hw as u32,
            inv_hw: 1.0 / hw as f32,
            ..Default::default()
        };
        let bx = gpu.upload(&x)?;
        let y = poisoned::<f32>(&gpu, planes)?;
        pool::avg_fwd(&gpu, &bx, &y, planes, hw)?;
        let mut wy = vec![0.0; planes];
        pool_avg_fwd_f32(&p, &x, &mut wy);
        assert_close("avgpool y", &gpu.read(&y)?, &wy, 1e-5, 1e-6);

        let dy = normal(&mut rng, planes, 1.0, 0.0);
        let bdy = gpu.upload(&dy)?;
        let dx = poisoned::<f32>(&gpu, planes * hw)?;
        pool::avg_bwd(&gpu, &bdy, &dx, planes, hw)?;
        let mut wdx = vec![0.0; planes * hw];
        pool_avg_bwd_f32(&p, &dy, &mut wdx);
        assert_exact("avgpool dx", &gpu.read(&dx)?, &wdx);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// norm: rel 1e-4 / abs 1e-5 on outputs and statistics (f32 block sums vs the CPU's f64); the
// channel sums dgamma/dbeta additionally get abs 1e-6·Σ|term| (f32 accumulation over M terms).
// The backwards take identical saved statistics, so the fused ReLU mask is identical (the GPU
// evaluates it without FMA contraction, as the CPU).

struct BnCase {
    c: usize,
    m: usize,
}

#[test]
fn batchnorm_matches_twin() -> Result<()> {
    use twin::norm::*;
    let gpu = Gpu::emu();
    let mut rng = Rng::new(16);
    // C 3 × (N 5, 7×9); M = 2; M = 1 (no unbiased variance; forward only); M not a multiple of 256 above it;
    // M ≥ 65536 (1024-thread blocks).
    let cases = [
        BnCase { c: 3, m: 5 * 7 * 9 },
        BnCase { c: 4, m: 2 },
        BnCase { c: 2, m: 1 },
        BnCase { c: 2, m: 1100 },
        BnCase { c: 1, m: 70_001 },
    ];
    let (eps, momentum) = (rest::nn::ops::BN_EPS, rest::nn::ops::BN_MOMENTUM);
    for BnCase { c, m } in cases {
        let mut x = Vec::with_capacity(c * m);
        for ci in 0..c {
            x.extend(normal(&mut rng, m, 1.5 + ci as f32, ci as f32 - 1.0));
        }
        let gamma = normal(&mut rng, c, 0.2, 1.0);
        let beta = normal(&mut rng, c, 0.3, 0.0);
        let rm0 = normal(&mut rng, c, 0.1, 0.0);
        let rv0: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
        let p = NormParams {
            c: c as u32,
            m: m as u32,
            eps,
            momentum,
            ..Default::default()
        };
        let (bx, bg, bb) = (gpu.upload(&x)?, gpu.upload(&gamma)?, gpu.upload(&beta)?);
        for relu in [false, true] {
            let what = |s: &str| format!("{s} (C {c}, M {m}, relu {relu})");
            // Training forward.
            let (brm, brv) = (gpu.upload(&rm0)?, gpu.upload(&rv0)?);
            let (y, sm, si) = (
                poisoned::<f32>(&gpu, c * m)?,
                poisoned::<f32>(&gpu, c)?,
                poisoned::<f32>(&gpu, c)?,
            );
            let bufs = norm::BnTrainFwd {
                x: &bx,
                gamma: &bg,
                beta: &bb,
                running_mean: &brm,
                running_var: &brv,
                y: &y,
                save_mean: &sm,
                save_invstd: &si,
            };
            norm::train_fwd(&gpu, &bufs, c, m, eps, momentum, relu)?;
            let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
            let (mut wy, mut wsm, mut wsi) = (vec![0.0; c * m], vec![0.0; c], vec![0.0; c]);
            let out = TrainFwdOut {
                running_mean: &mut rm,
                running_var: &mut rv,
                y: &mut wy,
                save_mean: &mut wsm,
                save_invstd: &mut wsi,
            };
            if relu {
                norm_fwd_train_relu_f32(&p, &x, &gamma, &beta, out);
            } else {
                norm_fwd_train_f32(&p, &x, &gamma, &beta, out);
            }
            assert_close(&what("bn y"), &gpu.read(&y)?, &wy, 1e-4, 1e-5);
            assert_close(&what("bn save_mean"), &gpu.read(&sm)?, &wsm, 1e-4, 1e-5);
            assert_close(&what("bn save_invstd"), &gpu.read(&si)?, &wsi, 1e-4, 1e-5);
            assert_close(&what("bn running_mean"), &gpu.read(&brm)?, &rm, 1e-4, 1e-5);
            assert_close(&what("bn running_var"), &gpu.read(&brv)?, &rv, 1e-4, 1e-5);

            // Backward, from the twin's saved statistics on both sides. Not for M = 1: the
            // engine never trains on it (nn::ops refuses), and there dx = a·dy − a·dy is pure
            // cancellation of terms ~1/sqrt(eps) large.
            if m == 1 {
                continue;
            }
            let dy = normal(&mut rng, c * m, 1.0, 0.0);
            let (bdy, bsm, bsi) = (gpu.upload(&dy)?, gpu.upload(&wsm)?, gpu.upload(&wsi)?);
            let (dx, dg, db) = (
                poisoned::<f32>(&gpu, c * m)?,
                poisoned::<f32>(&gpu, c)?,
                poisoned::<f32>(&gpu, c)?,
            );
            let bufs = norm::BnBwd {
                x: &bx,
                gamma: &bg,
                beta: &bb,
                save_mean: &bsm,
                save_invstd: &bsi,
                dy: &bdy,
                dx: &dx,
                dgamma: &dg,
                dbeta: &db,
            };
            norm::bwd(&gpu, &bufs, c, m, relu)?;
            let (mut wdx, mut wdg, mut wdb) = (vec![0.0; c * m], vec![0.0; c], vec![0.0; c]);
            let out = BwdOut {
                dx: &mut wdx,
                dgamma: &mut wdg,
                dbeta: &mut wdb,
            };
            if relu {
                norm_bwd_relu_f32(&p, &x, &gamma, &beta, &wsm, &wsi, &dy, out);
            } else {
                norm_bwd_f32(&p, &x, &gamma, &wsm, &wsi, &dy, out);
            }
            // Σ|term| per channel bounds the f32 accumulation error of the channel sums.
            let mass: f32 = (0..c * m)
                .map(|j| dy[j].abs() * (1.0 + (x[j] - wsm[j / m]).abs() * wsi[j / m]))
                .sum();
            let sum_abs = 1e-5 + 1e-6 * mass;
            assert_close(&what("bn dgamma"), &gpu.read(&dg)?, &wdg, 1e-4, sum_abs);
            assert_close(&what("bn dbeta"), &gpu.read(&db)?, &wdb, 1e-4, sum_abs);
            assert_close(&what("bn dx"), &gpu.read(&dx)?, &wdx, 1e-4, 1e-5);
        }

        // Evaluation forward.
        let (brm, brv) = (gpu.upload(&rm0)?, gpu.upload(&rv0)?);
        let y = poisoned::<f32>(&gpu, c * m)?;
        norm::eval_fwd(&gpu, &bx, &bg, &bb, &brm, &brv, &y, c, m, eps)?;
        let mut wy = vec![0.0; c * m];
        norm_fwd_eval_f32(&p, &x, &gamma, &beta, &rm0, &rv0, &mut wy);
        assert_close("bn eval y", &gpu.read(&y)?, &wy, 1e-4, 1e-5);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// xent: losses and dlogits rel 1e-4 / abs 1e-5 (expf/logf in f32 vs the CPU's f64 sum and log);
// per-group counts exact (integers in f32); loss sums rel 1e-4 / abs 1e-5·N.

struct XentCase {
    n: usize,
    k: usize,
    num_groups: usize,
    with_groups: bool,
}

#[test]
fn xent_matches_twin_and_engine() -> Result<()> {
    use twin::xent::*;
    let gpu = Gpu::emu();
    let mut rng = Rng::new(17);
    let cases = [
        XentCase {
            n: 5,
            k: 10,
            num_groups: 1,
            with_groups: false,
        },
        XentCase {
            n: 300,
            k: 10,
            num_groups: 3,
            with_groups: true,
        },
        XentCase {
            n: 37,
            k: 37,
            num_groups: 4,
            with_groups: true,
        },
        XentCase {
            n: 513,
            k: 37,
            num_groups: 8,
            with_groups: true,
        },
    ];
    for XentCase {
        n,
        k,
        num_groups,
        with_groups,
    } in cases
    {
        let what = |s: &str| format!("{s} (N {n}, K {k}, {num_groups} groups)");
        // Logits with a large per-sample offset (the log-sum-exp must be shifted).
        let offs: Vec<f32> = (0..n).map(|_| rng.normal() * 30.0).collect();
        let logits: Vec<f32> = (0..k * n)
            .map(|j| rng.normal() * 3.0 + offs[j % n])
            .collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        // Zero-weight samples (every 4th), the rest positive and uneven.
        let weights: Vec<f32> = (0..n)
            .map(|i| {
                if i % 4 == 1 {
                    0.0
                } else {
                    0.25 + rng.uniform() * 3.0
                }
            })
            .collect();
        // Group 1 left empty; an id ≥ num_groups on some samples counts in no group.
        let groups: Vec<u32> = (0..n)
            .map(|i| match (i % 7, num_groups) {
                (6, _) => num_groups as u32 + 2,
                (_, 1) => 0,
                _ => {
                    let g = rng.below(num_groups) as u32;
                    if g == 1 {
                        0
                    } else {
                        g
                    }
                }
            })
            .collect();
        let inv_wsum = (1.0 / weights.iter().map(|&w| w as f64).sum::<f64>()) as f32;

        let (bl, blab, bw, bgrp) = (
            gpu.upload(&logits)?,
            gpu.upload(&labels)?,
            gpu.upload(&weights)?,
            gpu.upload(&groups)?,
        );
        let (losses, dlogits, partials, stats) = (
            poisoned::<f32>(&gpu, n)?,
            poisoned::<f32>(&gpu, n * k)?,
            poisoned::<f32>(&gpu, xent::partials_len(n))?,
            poisoned::<f32>(&gpu, XENT_STATS)?,
        );
        let bufs = xent::XentBufs {
            logits: &bl,
            labels: &blab,
            weights: &bw,
            groups: with_groups.then_some(&bgrp),
            losses: &losses,
            dlogits: &dlogits,
            partials: &partials,
            stats: &stats,
        };
        xent::fused(&gpu, &bufs, n, k, num_groups, inv_wsum)?;

        let blocks = n.div_ceil(xent::XENT_THREADS as usize);
        let p = XentParams {
            n: n as u32,
            k: k as u32,
            inv_wsum,
            num_groups: num_groups as u32,
            blocks: blocks as u32,
            per_block: xent::XENT_THREADS,
            ..Default::default()
        };
        let (mut wl, mut wd, mut wp, mut ws) = (
            vec![0.0; n],
            vec![0.0; n * k],
            vec![0.0; blocks * XENT_STATS],
            vec![0.0; XENT_STATS],
        );
        let grp = with_groups.then_some(&groups[..]);
        xent_fused_f32(
            &p, &logits, &labels, &weights, grp, &mut wl, &mut wd, &mut wp,
        );
        xent_reduce_f32(&p, &wp, &mut ws);

        assert_close(&what("losses"), &gpu.read(&losses)?, &wl, 1e-4, 1e-5);
        assert_close(&what("dlogits"), &gpu.read(&dlogits)?, &wd, 1e-4, 1e-5);
        let got_p = gpu.read::<f32>(&partials)?;
        let sum_abs = 1e-5 * n as f32;
        assert_close(
            &what("partials"),
            &got_p[..blocks * XENT_STATS],
            &wp,
            1e-4,
            sum_abs,
        );
        let got_s = gpu.read::<f32>(&stats)?;
        assert_close(&what("stats"), &got_s, &ws, 1e-4, sum_abs);
        let st = xent::XentStats::decode(&got_s, num_groups);
        for (g, &(_, correct, count)) in st.groups.iter().enumerate() {
            let wc = ws[3 + 3 * g];
            assert_eq!(count, wc, "{}", what(&format!("group {g} count")));
            assert_eq!(
                correct,
                ws[2 + 3 * g],
                "{}",
                what(&format!("group {g} correct"))
            );
            if num_groups > 1 && g == 1 {
                assert_eq!(count, 0.0, "group 1 is empty");
            }
        }
        // Unused group slots are zero.
        assert!(got_s[1 + 3 * num_groups..].iter().all(|&v| v == 0.0));
        // Zero-weight samples get no gradient.
        let d = gpu.read::<f32>(&dlogits)?;
        for i in (1..n).step_by(4) {
            assert!(
                (0..k).all(|c| d[c * n + i] == 0.0),
                "zero-weight sample {i}"
            );
        }

        // The twin against the engine's cross_entropy on the transposed [N, K] logits.
        let mut nk = vec![0.0; n * k];
        for i in 0..n {
            for c in 0..k {
                nk[i * k + c] = logits[c * n + i];
            }
        }
        let (mut el, mut ed) = (vec![0.0; n], vec![0.0; n * k]);
        let eloss =
            rest::device::cpu::xent::cross_entropy(n, k, &nk, &labels, &weights, &mut el, &mut ed);
        assert_close(&what("twin vs engine losses"), &wl, &el, 1e-6, 1e-6);
        let wd_nk: Vec<f32> = (0..n * k).map(|j| wd[(j % k) * n + j / k]).collect();
        assert_close(&what("twin vs engine dlogits"), &wd_nk, &ed, 1e-5, 1e-7);
        assert_close(&what("twin vs engine loss"), &ws[..1], &[eloss], 1e-5, 1e-6);
        let pred = rest::metrics::argmax_rows(&nk, k);
        let correct = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
        let counted: f32 = (0..num_groups).map(|g| ws[2 + 3 * g]).sum();
        let in_groups = (0..n)
            .filter(|&i| {
                (!with_groups || (groups[i] as usize) < num_groups) && pred[i] == labels[i]
            })
            .count();
        assert_eq!(counted as usize, in_groups, "{}", what("correct in groups"));
        assert!(in_groups <= correct);
    }
    Ok(())
}

#[test]
fn xent_rejects_bad_shapes() -> Result<()> {
    let gpu = Gpu::emu();
    let f = |n: usize| gpu.zeros::<f32>(n);
    let (l, lab, w, loss, d, p, s) = (f(20)?, f(4)?, f(4)?, f(4)?, f(20)?, f(25)?, f(25)?);
    let bufs = xent::XentBufs {
        logits: &l,
        labels: &lab,
        weights: &w,
        groups: None,
        losses: &loss,
        dlogits: &d,
        partials: &p,
        stats: &s,
    };
    assert!(
        xent::fused(&gpu, &bufs, 4, 6, 1, 0.25).is_err(),
        "logits too short"
    );
    assert!(xent::fused(&gpu, &bufs, 4, 5, 9, 0.25).is_err(), "9 groups");
    assert!(
        xent::fused(&gpu, &bufs, 4, 5, 1, 0.0).is_err(),
        "inv_wsum 0"
    );
    Ok(())
}

/// The parameter structs have the C layout their .cu mirrors assume (u64 addresses first, then
/// 4-byte scalars, no padding).
#[test]
fn param_struct_sizes() {
    use std::mem::size_of;
    assert_eq!(size_of::<ew::ElementwiseParams>(), 3 * 8 + 2 * 4);
    assert_eq!(size_of::<optim::SgdParams>(), 3 * 8 + 4 * 4);
    assert_eq!(size_of::<optim::SgdRecord>(), 3 * 8 + 2 * 4);
    assert_eq!(size_of::<optim::SgdMultiParams>(), 2 * 8 + 4 * 4);
    assert_eq!(size_of::<pool::MaxPoolParams>(), 4 * 8 + 8 * 4);
    assert_eq!(size_of::<pool::AvgPoolParams>(), 2 * 8 + 4 * 4);
    assert_eq!(size_of::<norm::NormParams>(), 11 * 8 + 4 * 4);
    assert_eq!(size_of::<xent::XentParams>(), 8 * 8 + 6 * 4);
}
