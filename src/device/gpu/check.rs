//! `rest device --check`: every kernel against its CPU twin on random inputs, on the device the
//! user chose (a real GPU, or the emulator). The compact self-check a user runs on a new machine;
//! the exhaustive edge cases stay in tests/gpu_*.rs.
//!
//! Each case uploads random inputs (a fixed seed per run), poisons every output buffer with 0xFF
//! bytes (NaN for f32, u32::MAX for indices) before the launch, runs the kernel through its launch
//! wrapper, runs the twin on the same inputs, and compares element-wise:
//! |kernel − twin| ≤ abs + rel·|twin|, NaN only where the twin has NaN. Tolerances are stated per
//! kernel and sized for a real GPU (f32 tree sums and fused multiply-adds against the twins' f64
//! sums, libdevice `expf`/`logf`), as in the family tests:
//! - elementwise, optim, max-pool, average-pool backward: exact (one correctly rounded f32
//!   operation per element, or comparisons and copies);
//! - convolutions: rel 1e-4, abs 1e-5·L, L the reduction length of the output;
//! - batch norm: rel 1e-4, abs 1e-5 (channel sums dγ, dβ: abs 1e-5 + 1e-6·Σ|term|);
//! - cross-entropy: rel 1e-4, abs 1e-5 (statistics sums: abs 1e-5·N);
//! - global average pool forward: rel 1e-5, abs 1e-6;
//! - topology update (topk): exact, every buffer, workspace included. Each launch of the update's
//!   plan is checked on its own: the twin starts from the device's state just before that launch.
//!   The batched update likewise, on three layers at once (each layer's workspace slice).

use super::kernels::{conv, elementwise as ew, norm, optim, pool, topk, xent};
use super::{Buf, Gpu, KernelDef, LaunchCfg};
use crate::device::cpu::twin;
use crate::device::cpu::ConvGeom;
use crate::rng::Rng;
use crate::sparse::csr::SparseWeight;
use crate::sparse::topology::{prune_count, random_layer};
use anyhow::{Context, Result};
use bytemuck::Pod;

/// One comparison of a kernel with its twin on one shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CheckRow {
    /// The kernel's name (its PTX entry).
    pub kernel: &'static str,
    /// The shape checked, in words.
    pub shape: String,
    /// Largest |kernel − twin| over every output compared (∞ for a NaN or length mismatch).
    pub max_abs: f64,
    /// Largest |kernel − twin| / |twin| over the elements where the relative term of the
    /// tolerance is the larger (|twin| ≥ abs/rel; every nonzero |twin| for an exact check).
    pub max_rel: f64,
    /// The tolerance, in words (`exact`, or `rel R, abs A`).
    pub tolerance: String,
    pub pass: bool,
}

/// Running comparison of one row's outputs.
#[derive(Clone, Debug)]
struct Cmp {
    max_abs: f64,
    max_rel: f64,
    pass: bool,
}

impl Cmp {
    fn new() -> Self {
        Cmp {
            max_abs: 0.0,
            max_rel: 0.0,
            pass: true,
        }
    }

    /// Element-wise |got − want| ≤ abs + rel·|want|; NaN only where `want` is NaN.
    fn f32s(&mut self, got: &[f32], want: &[f32], rel: f64, abs: f64) -> &mut Self {
        if got.len() != want.len() {
            self.fail();
            return self;
        }
        let rel_from = if rel > 0.0 { abs / rel } else { abs };
        for (&g, &w) in got.iter().zip(want) {
            let (g, w) = (g as f64, w as f64);
            if w.is_nan() || g.is_nan() || w.is_infinite() || g.is_infinite() {
                // NaN must match NaN, infinity the same infinity.
                let same = (w.is_nan() && g.is_nan()) || g == w;
                if !same {
                    self.fail();
                }
                continue;
            }
            let err = (g - w).abs();
            self.max_abs = self.max_abs.max(err);
            if w.abs() >= rel_from && w != 0.0 {
                self.max_rel = self.max_rel.max(err / w.abs());
            }
            if err > abs + rel * w.abs() {
                self.pass = false;
            }
        }
        self
    }

    /// Exact equality of indices (the error is the largest difference as a number).
    fn u32s(&mut self, got: &[u32], want: &[u32]) -> &mut Self {
        if got.len() != want.len() {
            self.fail();
            return self;
        }
        for (&g, &w) in got.iter().zip(want) {
            let err = (g as f64 - w as f64).abs();
            if err > 0.0 {
                self.pass = false;
                self.max_abs = self.max_abs.max(err);
                if w != 0 {
                    self.max_rel = self.max_rel.max(err / w as f64);
                }
            }
        }
        self
    }

    /// Bit-for-bit equality of floats (NaN patterns included).
    fn bits(&mut self, got: &[f32], want: &[f32]) -> &mut Self {
        let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        if b(got) != b(want) {
            // Report the numeric difference, but fail whatever it is.
            let mut c = Cmp::new();
            c.f32s(got, want, 0.0, 0.0);
            self.max_abs = self.max_abs.max(c.max_abs);
            self.max_rel = self.max_rel.max(c.max_rel);
            self.pass = false;
            if c.pass {
                // Equal as numbers but not as bits (e.g. −0 vs 0, NaN payloads): still a fail.
                self.max_abs = self.max_abs.max(f64::MIN_POSITIVE);
            }
        }
        self
    }

    fn fail(&mut self) {
        self.pass = false;
        self.max_abs = f64::INFINITY;
    }

    fn merge(&mut self, o: &Cmp) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.max_rel = self.max_rel.max(o.max_rel);
        self.pass &= o.pass;
    }
}

const EXACT: &str = "exact";

fn tol(rel: f64, abs: f64) -> String {
    format!("rel {rel:.0e}, abs {abs:.1e}")
}

/// Comparisons of a kernel's repeated launches (the topk plans) merged into one row per kernel.
#[derive(Default)]
struct PerKernel(Vec<(&'static KernelDef, Cmp, usize)>);

impl PerKernel {
    fn add(&mut self, kernel: &'static KernelDef, r: Cmp) {
        match self.0.iter_mut().find(|(k, _, _)| k.name == kernel.name) {
            Some((_, acc, n)) => {
                acc.merge(&r);
                *n += 1;
            }
            None => self.0.push((kernel, r, 1)),
        }
    }

    fn rows(self, c: &mut Checker, shape: &str) {
        for (kernel, r, launches) in self.0 {
            let sh = if launches > 1 {
                format!("{shape} ({launches} launches)")
            } else {
                shape.to_string()
            };
            c.row(kernel, sh, EXACT.into(), &r);
        }
    }
}

struct Checker<'a> {
    gpu: &'a Gpu,
    rng: Rng,
    rows: Vec<CheckRow>,
}

impl Checker<'_> {
    fn row(&mut self, kernel: &KernelDef, shape: impl Into<String>, tolerance: String, c: &Cmp) {
        self.rows.push(CheckRow {
            kernel: kernel.name,
            shape: shape.into(),
            max_abs: c.max_abs,
            max_rel: c.max_rel,
            tolerance,
            pass: c.pass,
        });
    }

    fn normal(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.normal() * scale + offset).collect()
    }

    /// Uniform in [−1, 1).
    fn uniform(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.uniform() * 2.0 - 1.0).collect()
    }

    fn up<T: Pod>(&self, v: &[T]) -> Result<Buf> {
        self.gpu.upload(v)
    }

    /// An output buffer of `n` elements, poisoned with 0xFF bytes.
    fn out<T: Pod>(&self, n: usize) -> Result<Buf> {
        let mut b = self.gpu.zeros::<T>(n.max(1))?;
        self.gpu.fill_bytes(&mut b, 0xFF)?;
        Ok(b)
    }

    fn read(&self, b: &Buf, n: usize) -> Result<Vec<f32>> {
        let mut v = self.gpu.read::<f32>(b)?;
        v.truncate(n);
        Ok(v)
    }

    fn read_u32(&self, b: &Buf, n: usize) -> Result<Vec<u32>> {
        let mut v = self.gpu.read::<u32>(b)?;
        v.truncate(n);
        Ok(v)
    }
}

/// Runs every kernel against its twin on `gpu` (inputs drawn from `seed`). One row per kernel and
/// shape; an `Err` only when the device itself fails (allocation, compilation, launch).
pub fn run(gpu: &Gpu, seed: u64) -> Result<Vec<CheckRow>> {
    let mut c = Checker {
        gpu,
        rng: Rng::new(seed),
        rows: Vec::new(),
    };
    elementwise(&mut c).context("checking the elementwise kernels")?;
    sgd(&mut c).context("checking the SGD kernel")?;
    pools(&mut c).context("checking the pooling kernels")?;
    batchnorm(&mut c).context("checking the batch-norm kernels")?;
    cross_entropy(&mut c).context("checking the cross-entropy kernels")?;
    convolutions(&mut c).context("checking the convolution kernels")?;
    topology(&mut c).context("checking the topology-update kernels")?;
    topology_batched(&mut c).context("checking the batched topology-update kernels")?;
    Ok(c.rows)
}

/// Renders rows as a fixed-width table with a header.
pub fn render(rows: &[CheckRow]) -> String {
    let w = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let s = rows.iter().map(|r| r.shape.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<w$}  {:<s$}  {:>10}  {:>10}  {:<22}  pass\n",
        "kernel", "shape", "max abs", "max rel", "tolerance"
    );
    for r in rows {
        out += &format!(
            "{:<w$}  {:<s$}  {:>10.3e}  {:>10.3e}  {:<22}  {}\n",
            r.kernel,
            r.shape,
            r.max_abs,
            r.max_rel,
            r.tolerance,
            if r.pass { "ok" } else { "FAIL" }
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------

fn elementwise(c: &mut Checker) -> Result<()> {
    use twin::elementwise::*;
    let gpu = c.gpu;
    for n in [37usize, 70_001] {
        let shape = format!("n {n}");
        let mut a = c.normal(n, 1.0, 0.0);
        a[0] = 0.0;
        let b = c.normal(n, 1.0, 0.0);
        let p = ElementwiseParams {
            n: n as u32,
            alpha: -0.37,
            ..Default::default()
        };
        let (ba, bb) = (c.up(&a)?, c.up(&b)?);
        let mut want = vec![0.0; n];

        let y = c.out::<f32>(n)?;
        ew::relu_fwd(gpu, &ba, &y, n)?;
        elementwise_relu_fwd_f32(&p, &a, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_relu_fwd_f32, &shape, EXACT.into(), &r);

        let y = c.out::<f32>(n)?;
        ew::relu_bwd(gpu, &ba, &bb, &y, n)?;
        elementwise_relu_bwd_f32(&p, &a, &b, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_relu_bwd_f32, &shape, EXACT.into(), &r);

        let y = c.out::<f32>(n)?;
        ew::add(gpu, &ba, &bb, &y, n)?;
        elementwise_add_f32(&p, &a, &b, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_add_f32, &shape, EXACT.into(), &r);

        let y = c.out::<f32>(n)?;
        ew::add_relu(gpu, &ba, &bb, &y, n)?;
        elementwise_add_relu_f32(&p, &a, &b, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_add_relu_f32, &shape, EXACT.into(), &r);

        // Accumulates into its output: starts from `a`, not from poison.
        let y = c.up(&a)?;
        ew::acc(gpu, &y, &bb, n)?;
        want.copy_from_slice(&a);
        elementwise_acc_f32(&p, &b, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_acc_f32, &shape, EXACT.into(), &r);

        let y = c.out::<f32>(n)?;
        ew::scale(gpu, &ba, &y, p.alpha, n)?;
        elementwise_scale_f32(&p, &a, &mut want);
        let r = Cmp::new().bits(&c.read(&y, n)?, &want).clone();
        c.row(&ew::elementwise_scale_f32, &shape, EXACT.into(), &r);

        // One element more than n: the kernel must not write past n.
        let y = c.out::<f32>(n + 1)?;
        ew::fill(gpu, &y, p.alpha, n)?;
        elementwise_fill_f32(&p, &mut want);
        let mut want1 = want.clone();
        want1.push(f32::from_bits(u32::MAX));
        let r = Cmp::new().bits(&c.read(&y, n + 1)?, &want1).clone();
        c.row(&ew::elementwise_fill_f32, &shape, EXACT.into(), &r);
    }
    Ok(())
}

fn sgd(c: &mut Checker) -> Result<()> {
    for n in [777usize, 70_001] {
        let mut w = c.normal(n, 1.0, 0.0);
        let g = c.normal(n, 0.1, 0.0);
        let mut m = c.normal(n, 0.1, 0.0);
        let p = twin::optim::SgdParams {
            n: n as u32,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..Default::default()
        };
        // In place: the inputs are the outputs, so they cannot be poisoned.
        let (bw, bg, bm) = (c.up(&w)?, c.up(&g)?, c.up(&m)?);
        optim::sgd(c.gpu, &bw, &bg, &bm, n, p.lr, p.momentum, p.weight_decay)?;
        twin::optim::optim_sgd_f32(&p, &mut w, &g, &mut m);
        let mut r = Cmp::new();
        r.bits(&c.read(&bw, n)?, &w).bits(&c.read(&bm, n)?, &m);
        c.row(&optim::optim_sgd_f32, format!("n {n}"), EXACT.into(), &r);
    }
    // Many tensors in one launch, ragged sizes (an empty one and a single value included).
    let sizes = [3000usize, 0, 1, 2048, 2049, 777];
    let mut host: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = sizes
        .iter()
        .map(|&n| {
            (
                c.normal(n, 1.0, 0.0),
                c.normal(n, 0.1, 0.0),
                c.normal(n, 0.1, 0.0),
            )
        })
        .collect();
    let dev = host
        .iter()
        .map(|(w, g, m)| Ok((c.up(w)?, c.up(g)?, c.up(m)?)))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<_> = dev
        .iter()
        .zip(&sizes)
        .map(|((w, g, m), &n)| (w, g, m, n))
        .collect();
    let table = optim::SgdTable::new(c.gpu, &refs)?;
    let p = twin::optim::SgdMultiParams {
        ntensors: sizes.len() as u32,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Default::default()
    };
    optim::sgd_multi(c.gpu, &table, p.lr, p.momentum, p.weight_decay)?;
    let mut tensors: Vec<twin::optim::SgdTensor> = host
        .iter_mut()
        .map(|(w, g, m)| (&mut w[..], &g[..], &mut m[..]))
        .collect();
    twin::optim::optim_sgd_multi_f32(&p, &mut tensors);
    let mut r = Cmp::new();
    for ((w, _, m), (bw, _, bm)) in host.iter().zip(&dev) {
        r.bits(&c.read(bw, w.len())?, w)
            .bits(&c.read(bm, m.len())?, m);
    }
    c.row(
        &optim::optim_sgd_multi_f32,
        format!("{} tensors, n {sizes:?}", sizes.len()),
        EXACT.into(),
        &r,
    );
    Ok(())
}

fn pools(c: &mut Checker) -> Result<()> {
    use twin::pool::*;
    let gpu = c.gpu;
    // (planes, h, w, k, stride, pad): the ResNet stem's 3×3/2 p1 on ragged planes; 2×2/2.
    for (planes, h, w, k, s, pad) in [
        (15usize, 7usize, 9usize, 3usize, 2usize, 1usize),
        (64, 8, 8, 2, 2, 0),
    ] {
        let shape = format!("{planes}×{h}×{w}, k{k} s{s} p{pad}");
        // Values on a coarse grid so windows hold ties (the first maximum must win).
        let x: Vec<f32> = (0..planes * h * w)
            .map(|_| (c.rng.normal() * 2.0).round() * 0.5)
            .collect();
        let mp = pool::max_pool_params(planes, h, w, k, s, pad)?;
        let no = planes * mp.oh as usize * mp.ow as usize;
        let bx = c.up(&x)?;
        let (y, am) = (c.out::<f32>(no)?, c.out::<u32>(no)?);
        pool::max_fwd(gpu, &bx, &y, &am, planes, h, w, k, s, pad)?;
        let (mut wy, mut wam) = (vec![0.0; no], vec![0u32; no]);
        pool_max_fwd_f32(&mp, &x, &mut wy, &mut wam);
        let mut r = Cmp::new();
        r.bits(&c.read(&y, no)?, &wy)
            .u32s(&c.read_u32(&am, no)?, &wam);
        c.row(&pool::pool_max_fwd_f32, &shape, EXACT.into(), &r);

        let dy = c.normal(no, 1.0, 0.0);
        let (bdy, bam) = (c.up(&dy)?, c.up(&wam)?);
        let dx = c.out::<f32>(planes * h * w)?;
        pool::max_bwd(gpu, &bdy, &bam, &dx, planes, h, w, k, s, pad)?;
        let mut wdx = vec![0.0; planes * h * w];
        pool_max_bwd_f32(&mp, &dy, &wam, &mut wdx);
        let r = Cmp::new().bits(&c.read(&dx, wdx.len())?, &wdx).clone();
        c.row(&pool::pool_max_bwd_f32, &shape, EXACT.into(), &r);
    }
    for (planes, hw) in [(70usize, 33usize), (512, 49)] {
        let shape = format!("{planes} planes × {hw}");
        let x = c.normal(planes * hw, 1.0, 0.5);
        let p = AvgPoolParams {
            planes: planes as u32,
            hw: hw as u32,
            inv_hw: 1.0 / hw as f32,
            ..Default::default()
        };
        let bx = c.up(&x)?;
        let y = c.out::<f32>(planes)?;
        pool::avg_fwd(gpu, &bx, &y, planes, hw)?;
        let mut wy = vec![0.0; planes];
        pool_avg_fwd_f32(&p, &x, &mut wy);
        let r = Cmp::new()
            .f32s(&c.read(&y, planes)?, &wy, 1e-5, 1e-6)
            .clone();
        c.row(&pool::pool_avg_fwd_f32, &shape, tol(1e-5, 1e-6), &r);

        let dy = c.normal(planes, 1.0, 0.0);
        let bdy = c.up(&dy)?;
        let dx = c.out::<f32>(planes * hw)?;
        pool::avg_bwd(gpu, &bdy, &dx, planes, hw)?;
        let mut wdx = vec![0.0; planes * hw];
        pool_avg_bwd_f32(&p, &dy, &mut wdx);
        let r = Cmp::new().bits(&c.read(&dx, wdx.len())?, &wdx).clone();
        c.row(&pool::pool_avg_bwd_f32, &shape, EXACT.into(), &r);
    }
    Ok(())
}

fn batchnorm(c: &mut Checker) -> Result<()> {
    use twin::norm::*;
    let gpu = c.gpu;
    let (eps, momentum) = (crate::nn::ops::BN_EPS, crate::nn::ops::BN_MOMENTUM);
    // C 3 × M 315 (ragged against 256 threads); C 2 × M 70001 (1024-thread blocks).
    for (ch, m) in [(3usize, 5 * 7 * 9), (2, 70_001usize)] {
        let shape = format!("C {ch}, M {m}");
        let mut x = Vec::with_capacity(ch * m);
        for ci in 0..ch {
            x.extend(c.normal(m, 1.5 + ci as f32, ci as f32 - 1.0));
        }
        let gamma = c.normal(ch, 0.2, 1.0);
        let beta = c.normal(ch, 0.3, 0.0);
        let rm0 = c.normal(ch, 0.1, 0.0);
        let rv0: Vec<f32> = (0..ch).map(|_| 0.5 + c.rng.uniform()).collect();
        let p = NormParams {
            c: ch as u32,
            m: m as u32,
            eps,
            momentum,
            ..Default::default()
        };
        let (bx, bg, bb) = (c.up(&x)?, c.up(&gamma)?, c.up(&beta)?);
        let (rel, abs) = (1e-4, 1e-5);
        for relu in [false, true] {
            // Training forward.
            let (brm, brv) = (c.up(&rm0)?, c.up(&rv0)?);
            let (y, sm, si) = (c.out::<f32>(ch * m)?, c.out::<f32>(ch)?, c.out::<f32>(ch)?);
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
            norm::train_fwd(gpu, &bufs, ch, m, eps, momentum, relu)?;
            let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
            let (mut wy, mut wsm, mut wsi) = (vec![0.0; ch * m], vec![0.0; ch], vec![0.0; ch]);
            let o = TrainFwdOut {
                running_mean: &mut rm,
                running_var: &mut rv,
                y: &mut wy,
                save_mean: &mut wsm,
                save_invstd: &mut wsi,
            };
            let k = if relu {
                norm_fwd_train_relu_f32(&p, &x, &gamma, &beta, o);
                &norm::norm_fwd_train_relu_f32
            } else {
                norm_fwd_train_f32(&p, &x, &gamma, &beta, o);
                &norm::norm_fwd_train_f32
            };
            let mut r = Cmp::new();
            r.f32s(&c.read(&y, ch * m)?, &wy, rel, abs)
                .f32s(&c.read(&sm, ch)?, &wsm, rel, abs)
                .f32s(&c.read(&si, ch)?, &wsi, rel, abs)
                .f32s(&c.read(&brm, ch)?, &rm, rel, abs)
                .f32s(&c.read(&brv, ch)?, &rv, rel, abs);
            c.row(k, &shape, tol(rel, abs), &r);

            // Backward, from the twin's saved statistics on both sides.
            let dy = c.normal(ch * m, 1.0, 0.0);
            let (bdy, bsm, bsi) = (c.up(&dy)?, c.up(&wsm)?, c.up(&wsi)?);
            let (dx, dg, db) = (c.out::<f32>(ch * m)?, c.out::<f32>(ch)?, c.out::<f32>(ch)?);
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
            norm::bwd(gpu, &bufs, ch, m, relu)?;
            let (mut wdx, mut wdg, mut wdb) = (vec![0.0; ch * m], vec![0.0; ch], vec![0.0; ch]);
            let o = BwdOut {
                dx: &mut wdx,
                dgamma: &mut wdg,
                dbeta: &mut wdb,
            };
            let k = if relu {
                norm_bwd_relu_f32(&p, &x, &gamma, &beta, &wsm, &wsi, &dy, o);
                &norm::norm_bwd_relu_f32
            } else {
                norm_bwd_f32(&p, &x, &gamma, &wsm, &wsi, &dy, o);
                &norm::norm_bwd_f32
            };
            // Σ|term| over the whole tensor bounds the f32 accumulation error of a channel sum.
            let mass: f64 = (0..ch * m)
                .map(|j| {
                    let xh = (x[j] - wsm[j / m]).abs() * wsi[j / m];
                    (dy[j].abs() * (1.0 + xh)) as f64
                })
                .sum();
            let sum_abs = abs + 1e-6 * mass;
            let mut r = Cmp::new();
            r.f32s(&c.read(&dx, ch * m)?, &wdx, rel, abs)
                .f32s(&c.read(&dg, ch)?, &wdg, rel, sum_abs)
                .f32s(&c.read(&db, ch)?, &wdb, rel, sum_abs);
            let t = format!("{}; dγ,dβ abs {sum_abs:.1e}", tol(rel, abs));
            c.row(k, &shape, t, &r);
        }

        // Evaluation forward.
        let (brm, brv) = (c.up(&rm0)?, c.up(&rv0)?);
        let y = c.out::<f32>(ch * m)?;
        norm::eval_fwd(gpu, &bx, &bg, &bb, &brm, &brv, &y, ch, m, eps)?;
        let mut wy = vec![0.0; ch * m];
        norm_fwd_eval_f32(&p, &x, &gamma, &beta, &rm0, &rv0, &mut wy);
        let r = Cmp::new().f32s(&c.read(&y, ch * m)?, &wy, rel, abs).clone();
        c.row(&norm::norm_fwd_eval_f32, &shape, tol(rel, abs), &r);
    }
    Ok(())
}

fn cross_entropy(c: &mut Checker) -> Result<()> {
    use twin::xent::*;
    // (N, K, groups): CMNIST's 10 classes with 3 groups over a ragged batch; 37 classes, 8 groups.
    for (n, k, ng) in [(300usize, 10usize, 3usize), (513, 37, 8)] {
        let shape = format!("N {n}, K {k}, {ng} groups");
        // Logits with a large per-sample offset (the log-sum-exp must be shifted).
        let offs = c.normal(n, 30.0, 0.0);
        let logits: Vec<f32> = (0..k * n)
            .map(|j| c.rng.normal() * 3.0 + offs[j % n])
            .collect();
        let labels: Vec<u32> = (0..n).map(|_| c.rng.below(k) as u32).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| {
                if i % 4 == 1 {
                    0.0
                } else {
                    0.25 + c.rng.uniform() * 3.0
                }
            })
            .collect();
        let groups: Vec<u32> = (0..n).map(|_| c.rng.below(ng) as u32).collect();
        let inv_wsum = (1.0 / weights.iter().map(|&w| w as f64).sum::<f64>()) as f32;
        let (bl, blab, bw, bgrp) = (
            c.up(&logits)?,
            c.up(&labels)?,
            c.up(&weights)?,
            c.up(&groups)?,
        );
        let blocks = n.div_ceil(xent::XENT_THREADS as usize);
        let (losses, dlogits, partials, stats) = (
            c.out::<f32>(n)?,
            c.out::<f32>(n * k)?,
            c.out::<f32>(xent::partials_len(n))?,
            c.out::<f32>(XENT_STATS)?,
        );
        let bufs = xent::XentBufs {
            logits: &bl,
            labels: &blab,
            weights: &bw,
            groups: Some(&bgrp),
            losses: &losses,
            dlogits: &dlogits,
            partials: &partials,
            stats: &stats,
        };
        xent::cross_entropy(c.gpu, &bufs, n, k, ng, inv_wsum)?;
        let p = XentParams {
            n: n as u32,
            k: k as u32,
            inv_wsum,
            num_groups: ng as u32,
            blocks: blocks as u32,
            per_block: xent::XENT_THREADS,
            ..Default::default()
        };
        let (mut wl, mut wd, mut wp) = (
            vec![0.0; n],
            vec![0.0; n * k],
            vec![0.0; blocks * XENT_STATS],
        );
        xent_fused_f32(
            &p,
            &logits,
            &labels,
            &weights,
            Some(&groups),
            &mut wl,
            &mut wd,
            &mut wp,
        );
        let (rel, abs, sum_abs) = (1e-4, 1e-5, 1e-5 * n as f64);
        let got_p = c.read(&partials, blocks * XENT_STATS)?;
        let mut r = Cmp::new();
        r.f32s(&c.read(&losses, n)?, &wl, rel, abs)
            .f32s(&c.read(&dlogits, n * k)?, &wd, rel, abs)
            .f32s(&got_p, &wp, rel, sum_abs);
        let t = format!("{}; sums abs {sum_abs:.1e}", tol(rel, abs));
        c.row(&xent::xent_fused_f32, &shape, t, &r);

        // The reduction, on the device's own partials (so it is checked on its own).
        let mut ws = vec![0.0; XENT_STATS];
        xent_reduce_f32(&p, &got_p, &mut ws);
        let r = Cmp::new()
            .f32s(&c.read(&stats, XENT_STATS)?, &ws, rel, sum_abs)
            .clone();
        c.row(&xent::xent_reduce_f32, &shape, tol(rel, sum_abs), &r);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Convolution tolerance for reduction length `l`: rel 1e-4, abs 1e-5·l.
fn conv_tol(l: usize) -> (f64, f64) {
    (1e-4, 1e-5 * l as f64)
}

fn sparse_bufs<'a>(bufs: &'a [Buf; 6], nnz: usize) -> conv::SparseBufs<'a> {
    conv::SparseBufs {
        row_ptr: &bufs[0],
        col_idx: &bufs[1],
        values: &bufs[2],
        col_ptr: &bufs[3],
        csc_row: &bufs[4],
        csc_pos: &bufs[5],
        nnz,
    }
}

/// A random sparse weight at about `density` on the device (empty arrays get one element so
/// every address is valid).
fn upload_sparse(c: &Checker, w: &SparseWeight) -> Result<[Buf; 6]> {
    let u = |v: &[u32]| c.up(if v.is_empty() { &[0u32][..] } else { v });
    let vals = if w.values.is_empty() {
        vec![0.0]
    } else {
        w.values.clone()
    };
    Ok([
        u(&w.row_ptr)?,
        u(&w.col_idx)?,
        c.up(&vals)?,
        u(&w.col_ptr)?,
        u(&w.csc_row)?,
        u(&w.csc_pos)?,
    ])
}

fn convolutions(c: &mut Checker) -> Result<()> {
    use twin::conv as tw;
    let gpu = c.gpu;
    // (name, n, cin, h, w, cout, k, stride, pad): a ragged 3×3 with two 64-row output tiles, and
    // the 7×7/2 stem on a ragged plane.
    let shapes = [
        (
            "k3 s1 p1",
            (
                4usize, 37usize, 9usize, 11usize, 67usize, 3usize, 1usize, 1usize,
            ),
        ),
        ("k7 s2 p3", (1, 3, 19, 17, 8, 7, 2, 3)),
    ];
    for (i, (name, s)) in shapes.into_iter().enumerate() {
        let g = ConvGeom::new(s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7)?;
        let shape = format!("{name} N{} {}→{} {}×{}", g.n, g.cin, g.cout, g.h, g.w);
        let cs = conv::ConvShape::new(&g)?;
        let (xl, yl, wl) = (cs.x_len(), cs.y_len(), cs.w_len());
        let x = c.uniform(xl);
        let w = c.uniform(wl);
        let b = c.uniform(g.cout);
        let dy = c.uniform(yl);
        let (bx, bw, bb, bdy) = (c.up(&x)?, c.up(&w)?, c.up(&b)?, c.up(&dy)?);
        let with_bias = i == 0;
        let bias = with_bias.then_some(&b[..]);
        let bias_buf = with_bias.then_some(&bb);

        // Forward, tiled and simple.
        let pf = conv::ConvFwdParams {
            s: cs,
            ..Default::default()
        };
        let mut want = vec![0.0; yl];
        tw::conv_fwd_dense_f32(&pf, &x, &w, bias, &mut want);
        let (rel, abs) = conv_tol(g.col_rows());
        for (k, simple) in [
            (&conv::conv_fwd_dense_f32, false),
            (&conv::conv_fwd_dense_simple_f32, true),
        ] {
            let mut y = c.out::<f32>(yl)?;
            if simple {
                conv::conv_fwd_dense_simple(gpu, &g, &bx, &bw, bias_buf, &mut y)?;
            } else {
                conv::conv_fwd_dense(gpu, &g, &bx, &bw, bias_buf, &mut y)?;
            }
            let r = Cmp::new().f32s(&c.read(&y, yl)?, &want, rel, abs).clone();
            c.row(k, &shape, tol(rel, abs), &r);
        }

        // Input gradient.
        let pd = conv::ConvBwdDataParams {
            s: cs,
            ..Default::default()
        };
        let mut want = vec![0.0; xl];
        tw::conv_bwd_data_dense_f32(&pd, &dy, &w, &mut want);
        let mut dx = c.out::<f32>(xl)?;
        conv::conv_bwd_data_dense(gpu, &g, &bdy, &bw, &mut dx)?;
        let (rel, abs) = conv_tol(g.cout * g.k * g.k);
        let r = Cmp::new().f32s(&c.read(&dx, xl)?, &want, rel, abs).clone();
        c.row(&conv::conv_bwd_data_dense_f32, &shape, tol(rel, abs), &r);

        // Weight gradient: one split, and three (partials, then the reduction kernel).
        let pw = conv::ConvBwdWeightParams {
            s: cs,
            ..Default::default()
        };
        let mut want = vec![0.0; wl];
        tw::conv_bwd_weight_dense_f32(&pw, &x, &dy, &mut want);
        let (rel, abs) = conv_tol(g.col_cols());
        for splits in [1usize, 3] {
            let mut dw = c.out::<f32>(wl)?;
            let mut work = c.out::<f32>(conv::conv_bwd_weight_dense_workspace(&g, splits))?;
            conv::conv_bwd_weight_dense_split(
                gpu,
                &g,
                &bx,
                &bdy,
                &mut dw,
                splits,
                Some(&mut work),
            )?;
            let r = Cmp::new().f32s(&c.read(&dw, wl)?, &want, rel, abs).clone();
            let sh = format!(
                "{shape}, {splits} split{}",
                if splits > 1 { "s" } else { "" }
            );
            c.row(&conv::conv_bwd_weight_dense_f32, sh, tol(rel, abs), &r);
        }

        // Bias gradient.
        let cols = g.col_cols();
        let pb = conv::ConvBwdBiasParams {
            cout: g.cout as u32,
            cols: cols as u32,
            ..Default::default()
        };
        let mut want = vec![0.0; g.cout];
        tw::conv_bwd_bias_f32(&pb, &dy, &mut want);
        let mut db = c.out::<f32>(g.cout)?;
        conv::conv_bwd_bias(gpu, g.cout, cols, &bdy, &mut db)?;
        let (rel, abs) = conv_tol(cols);
        let r = Cmp::new()
            .f32s(&c.read(&db, g.cout)?, &want, rel, abs)
            .clone();
        c.row(&conv::conv_bwd_bias_f32, &shape, tol(rel, abs), &r);

        // Sparse, at density 0.3 (first shape) and 0.05 (second: rows and columns left empty).
        let density = if i == 0 { 0.3 } else { 0.05 };
        let (rows, kcols) = (g.cout, g.col_rows());
        let mask: Vec<bool> = (0..rows * kcols)
            .map(|_| c.rng.uniform_f64() < density)
            .collect();
        let sw = SparseWeight::from_dense_mask(rows, kcols, &w, &mask);
        let sb = upload_sparse(c, &sw)?;
        let sp = sparse_bufs(&sb, sw.nnz());
        let shape = format!("{shape}, density {density}, nnz {}", sw.nnz());
        let nnz = sw.nnz() as u32;

        let p = conv::ConvSparseFwdParams {
            s: cs,
            nnz,
            ..Default::default()
        };
        let mut want = vec![0.0; yl];
        tw::conv_fwd_sparse_f32(
            &p,
            &x,
            &sw.row_ptr,
            &sw.col_idx,
            &sw.values,
            bias,
            &mut want,
        );
        let mut y = c.out::<f32>(yl)?;
        conv::conv_fwd_sparse(gpu, &g, &bx, &sp, bias_buf, &mut y)?;
        let (rel, abs) = conv_tol(g.col_rows());
        let r = Cmp::new().f32s(&c.read(&y, yl)?, &want, rel, abs).clone();
        c.row(&conv::conv_fwd_sparse_f32, &shape, tol(rel, abs), &r);

        let p = conv::ConvSparseBwdDataParams {
            s: cs,
            nnz,
            ..Default::default()
        };
        let mut want = vec![0.0; xl];
        tw::conv_bwd_data_sparse_f32(
            &p,
            &dy,
            &sw.col_ptr,
            &sw.csc_row,
            &sw.csc_pos,
            &sw.values,
            &mut want,
        );
        let mut dx = c.out::<f32>(xl)?;
        conv::conv_bwd_data_sparse(gpu, &g, &bdy, &sp, &mut dx)?;
        let (rel, abs) = conv_tol(g.cout * g.k * g.k);
        let r = Cmp::new().f32s(&c.read(&dx, xl)?, &want, rel, abs).clone();
        c.row(&conv::conv_bwd_data_sparse_f32, &shape, tol(rel, abs), &r);

        let p = conv::ConvSparseBwdWeightParams {
            s: cs,
            nnz,
            ..Default::default()
        };
        let mut want = vec![0.0; sw.nnz()];
        tw::conv_bwd_weight_sparse_f32(&p, &x, &dy, &sw.row_ptr, &sw.col_idx, &mut want);
        let mut dv = c.out::<f32>(sw.nnz())?;
        conv::conv_bwd_weight_sparse(gpu, &g, &bx, &bdy, &sp, &mut dv)?;
        let (rel, abs) = conv_tol(g.col_cols());
        let r = Cmp::new()
            .f32s(&c.read(&dv, sw.nnz())?, &want, rel, abs)
            .clone();
        c.row(&conv::conv_bwd_weight_sparse_f32, &shape, tol(rel, abs), &r);
    }

    // The split reduction on its own: out[i] = Σ_z partial[z·len + i].
    let (len, splits) = (1000usize, 5usize);
    let partial = c.uniform(len * splits);
    let p = conv::ConvReduceParams {
        len: len as u32,
        splits: splits as u32,
        ..Default::default()
    };
    let mut want = vec![0.0; len];
    tw::conv_bwd_weight_reduce_f32(&p, &partial, &mut want);
    let pb = c.up(&partial)?;
    let out = c.out::<f32>(len)?;
    let kp = conv::ConvReduceParams {
        partial: pb.addr(),
        out: out.addr(),
        ..p
    };
    gpu.launch(
        &conv::conv_bwd_weight_reduce_f32,
        LaunchCfg::linear(len, 256),
        &kp,
    )?;
    let (rel, abs) = conv_tol(splits);
    let r = Cmp::new()
        .f32s(&c.read(&out, len)?, &want, rel, abs)
        .clone();
    c.row(
        &conv::conv_bwd_weight_reduce_f32,
        format!("len {len}, {splits} splits"),
        tol(rel, abs),
        &r,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Everything the device holds for one layer's update, as the twins' host mirror.
fn download_topk(
    c: &Checker,
    layer: &topk::SparseLayerBufs,
    ws: &topk::TopkWorkspace,
    score: &Buf,
) -> Result<twin::topk::HostTopk> {
    let g = topk::Geometry::new(layer.rows, layer.cols, layer.nnz)?;
    let u = |b: &Buf, n: usize| c.read_u32(b, n);
    let f = |b: &Buf, n: usize| c.read(b, n);
    Ok(twin::topk::HostTopk {
        rows: layer.rows,
        cols: layer.cols,
        positions: u(&layer.positions, g.nnz)?,
        values: f(&layer.values, g.nnz)?,
        momentum: f(&layer.momentum, g.nnz)?,
        row_ptr: u(&layer.row_ptr, g.rows + 1)?,
        col_idx: u(&layer.col_idx, g.nnz)?,
        col_ptr: u(&layer.col_ptr, g.cols + 1)?,
        csc_row: u(&layer.csc_row, g.nnz)?,
        csc_pos: u(&layer.csc_pos, g.nnz)?,
        score: f(score, g.size)?,
        mark: u(&ws.mark, g.size)?,
        old_values: f(&ws.old_values, g.nnz)?,
        old_momentum: f(&ws.old_momentum, g.nnz)?,
        state: u(&ws.state, 2 * topk::SLOT)?,
        tile_cnt: u(&ws.tile_cnt, g.ntiles + 1)?,
        csc_cnt: u(&ws.csc_cnt, g.ncells())?,
    })
}

fn compare_topk(a: &twin::topk::HostTopk, b: &twin::topk::HostTopk) -> Cmp {
    let mut r = Cmp::new();
    r.u32s(&a.positions, &b.positions)
        .bits(&a.values, &b.values)
        .bits(&a.momentum, &b.momentum)
        .u32s(&a.row_ptr, &b.row_ptr)
        .u32s(&a.col_idx, &b.col_idx)
        .u32s(&a.col_ptr, &b.col_ptr)
        .u32s(&a.csc_row, &b.csc_row)
        .u32s(&a.csc_pos, &b.csc_pos)
        .u32s(&a.mark, &b.mark)
        .bits(&a.old_values, &b.old_values)
        .bits(&a.old_momentum, &b.old_momentum)
        .u32s(&a.state, &b.state)
        .u32s(&a.tile_cnt, &b.tile_cnt)
        .u32s(&a.csc_cnt, &b.csc_cnt);
    r
}

fn topology(c: &mut Checker) -> Result<()> {
    let gpu = c.gpu;
    // (rows, cols, density): a small conv weight (67 × 5·3·3); a wider one with several 2048-wide
    // tiles and CSC counting chunks. Prune (and regrow) half the active weights.
    for (rows, cols, density) in [(67usize, 45usize, 0.3f64), (40, 300, 0.1)] {
        let size = rows * cols;
        let nnz = ((size as f64 * density).round() as usize).max(1);
        let dense = c.normal(size, 1.0, 0.0);
        let w = random_layer(rows, cols, nnz, &dense, &mut c.rng);
        let momentum = c.normal(nnz, 0.1, 0.0);
        let score = c.normal(size, 1.0, 0.0);
        let k = prune_count(0.5, nnz);
        let g = topk::Geometry::new(rows, cols, nnz)?;
        let shape = format!("{rows}×{cols}, nnz {nnz}, prune {k}");

        let mut layer = topk::SparseLayerBufs::upload(gpu, &w, &momentum)?;
        let bscore = c.up(&score)?;
        let mut ws = topk::TopkWorkspace::new(gpu, &g)?;
        // Poison what the update fully rewrites: CSR/CSC and the whole workspace.
        for b in [
            &mut layer.row_ptr,
            &mut layer.col_idx,
            &mut layer.col_ptr,
            &mut layer.csc_row,
            &mut layer.csc_pos,
            &mut ws.mark,
            &mut ws.old_values,
            &mut ws.old_momentum,
            &mut ws.state,
            &mut ws.tile_cnt,
            &mut ws.csc_cnt,
        ] {
            gpu.fill_bytes(b, 0xFF)?;
        }
        // One row per kernel: its launches merged (each checked from the device's state).
        let mut per_kernel = PerKernel::default();
        for step in topk::plan(&g, k, topk::addresses(&layer.refs(), &ws, &bscore)) {
            let mut host = download_topk(c, &layer, &ws, &bscore)?;
            twin::topk::run_step(&step, &mut host);
            gpu.launch(step.kernel, step.cfg, &step.params)?;
            let dev = download_topk(c, &layer, &ws, &bscore)?;
            let r = compare_topk(&dev, &host);
            per_kernel.add(step.kernel, r);
        }
        per_kernel.rows(c, &shape);
    }
    Ok(())
}

/// One layer and its slice of a batched workspace, as the twins' host mirror.
fn download_topk_slice(
    c: &Checker,
    layer: &topk::SparseLayerBufs,
    ws: &topk::TopkBatchWorkspace,
    sl: &topk::BatchSlice,
    score: &Buf,
) -> Result<twin::topk::HostTopk> {
    let g = topk::Geometry::new(layer.rows, layer.cols, layer.nnz)?;
    let u = |b: &Buf, at: usize, n: usize| -> Result<Vec<u32>> {
        Ok(c.read_u32(b, at + n)?[at..].to_vec())
    };
    let f = |b: &Buf, at: usize, n: usize| -> Result<Vec<f32>> {
        Ok(c.read(b, at + n)?[at..].to_vec())
    };
    Ok(twin::topk::HostTopk {
        rows: layer.rows,
        cols: layer.cols,
        positions: u(&layer.positions, 0, g.nnz)?,
        values: f(&layer.values, 0, g.nnz)?,
        momentum: f(&layer.momentum, 0, g.nnz)?,
        row_ptr: u(&layer.row_ptr, 0, g.rows + 1)?,
        col_idx: u(&layer.col_idx, 0, g.nnz)?,
        col_ptr: u(&layer.col_ptr, 0, g.cols + 1)?,
        csc_row: u(&layer.csc_row, 0, g.nnz)?,
        csc_pos: u(&layer.csc_pos, 0, g.nnz)?,
        score: f(score, 0, g.size)?,
        mark: u(&ws.mark, sl.mark, g.size)?,
        old_values: f(&ws.old_values, sl.old, g.nnz)?,
        old_momentum: f(&ws.old_momentum, sl.old, g.nnz)?,
        state: u(&ws.state, sl.state, 2 * topk::SLOT)?,
        tile_cnt: u(&ws.tile_cnt, sl.tile, g.ntiles + 1)?,
        csc_cnt: u(&ws.csc_cnt, sl.csc, g.ncells())?,
    })
}

fn topology_batched(c: &mut Checker) -> Result<()> {
    let gpu = c.gpu;
    // (rows, cols, density, rate): three layers of different shapes, densities and k (so their
    // index digits differ: positions of 5, 12 and 14 bits), updated by one batched plan.
    let shapes = [
        (3usize, 7usize, 0.5f64, 0.4f64),
        (67, 45, 0.3, 0.5),
        (40, 300, 0.1, 0.3),
    ];
    let mut layers = Vec::new();
    let mut scores = Vec::new();
    let mut recs = Vec::new();
    let mut desc = Vec::new();
    for &(rows, cols, density, rate) in &shapes {
        let size = rows * cols;
        let nnz = ((size as f64 * density).round() as usize).max(1);
        let dense = c.normal(size, 1.0, 0.0);
        let w = random_layer(rows, cols, nnz, &dense, &mut c.rng);
        let momentum = c.normal(nnz, 0.1, 0.0);
        let score = c.normal(size, 1.0, 0.0);
        let k = prune_count(rate, nnz);
        let mut layer = topk::SparseLayerBufs::upload(gpu, &w, &momentum)?;
        for b in [
            &mut layer.row_ptr,
            &mut layer.col_idx,
            &mut layer.col_ptr,
            &mut layer.csc_row,
            &mut layer.csc_pos,
        ] {
            gpu.fill_bytes(b, 0xFF)?;
        }
        recs.push((topk::Geometry::new(rows, cols, nnz)?, k));
        desc.push(format!("{rows}×{cols} nnz {nnz} k {k}"));
        layers.push(layer);
        scores.push(c.up(&score)?);
    }
    let shape = desc.join(", ");
    let geoms: Vec<topk::Geometry> = recs.iter().map(|r| r.0).collect();
    let layout = topk::BatchLayout::new(&geoms);
    let mut ws = topk::TopkBatchWorkspace::new(gpu, &layout)?;
    for b in [
        &mut ws.mark,
        &mut ws.old_values,
        &mut ws.old_momentum,
        &mut ws.state,
        &mut ws.tile_cnt,
        &mut ws.csc_cnt,
    ] {
        gpu.fill_bytes(b, 0xFF)?;
    }
    let items: Vec<(topk::Geometry, usize, topk::TopkParams)> = recs
        .iter()
        .zip(&layers)
        .zip(&scores)
        .map(|((&(g, k), l), s)| (g, k, topk::layer_addresses(&l.refs(), s)))
        .collect();
    let (table, starts) = ws.table_addresses(items.len());
    let plan = topk::plan_batched(&items, &topk::batch_addresses(&ws), table, starts);
    gpu.write(&mut ws.table, &plan.table_bytes())?;
    let snapshot = |c: &Checker, ws: &topk::TopkBatchWorkspace| -> Result<Vec<_>> {
        layers
            .iter()
            .zip(&layout.slices)
            .zip(&scores)
            .map(|((l, sl), s)| download_topk_slice(c, l, ws, sl, s))
            .collect()
    };
    let mut per_kernel = PerKernel::default();
    for step in &plan.steps {
        let mut host = snapshot(c, &ws)?;
        twin::topk::run_batch_step(step, &plan.table, &mut host);
        gpu.launch(step.kernel, step.cfg, &step.params)?;
        let dev = snapshot(c, &ws)?;
        let mut r = Cmp::new();
        for (d, h) in dev.iter().zip(&host) {
            r.merge(&compare_topk(d, h));
        }
        per_kernel.add(step.kernel, r);
    }
    per_kernel.rows(c, &shape);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_applies_the_tolerance_and_catches_poison() {
        let want = [1.0f32, -2.0, 0.0, f32::NAN];
        assert!(Cmp::new().f32s(&want, &want, 0.0, 0.0).pass);
        let off = [1.0f32 + 1e-3, -2.0, 0.0, f32::NAN];
        let r = Cmp::new().f32s(&off, &want, 1e-2, 0.0).clone();
        assert!(r.pass && (r.max_rel - 1e-3).abs() < 1e-5, "{r:?}");
        assert!(!Cmp::new().f32s(&off, &want, 1e-4, 1e-4).pass);
        // An element the kernel never wrote (still poison) fails whatever the tolerance.
        let poisoned = [1.0f32, f32::from_bits(u32::MAX), 0.0, f32::NAN];
        let r = Cmp::new().f32s(&poisoned, &want, 1.0, 1.0).clone();
        assert!(!r.pass && r.max_abs.is_infinite());
        // A NaN where the twin has a number, and a number where the twin has NaN.
        assert!(
            !Cmp::new()
                .f32s(&[1.0, -2.0, 0.0, 0.0], &want, 1.0, 1.0)
                .pass
        );
        assert!(!Cmp::new().f32s(&want[..3], &want, 1.0, 1.0).pass, "length");
        assert!(!Cmp::new().u32s(&[1, 2, u32::MAX], &[1, 2, 3]).pass);
        assert!(!Cmp::new().bits(&[-0.0], &[0.0]).pass);
    }

    #[test]
    fn render_marks_failures() {
        let row = |pass| CheckRow {
            kernel: "k",
            shape: "s".into(),
            max_abs: 0.0,
            max_rel: 0.0,
            tolerance: EXACT.into(),
            pass,
        };
        let t = render(&[row(true), row(false)]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.contains(" ok") && t.contains("FAIL"), "{t}");
    }
}
