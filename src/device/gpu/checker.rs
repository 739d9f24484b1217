//! The parity checker that `rest device --check` (`check.rs`) runs each kernel family's check
//! with (`kernels/*_check.rs`): random inputs, poisoned outputs, element-wise comparison with the
//! twin under a stated tolerance, one `CheckRow` per kernel and shape.

use super::{Buf, Gpu, KernelDef};
use crate::rng::Rng;
use anyhow::Result;
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
pub(crate) struct Cmp {
    pub(crate) max_abs: f64,
    pub(crate) max_rel: f64,
    pub(crate) pass: bool,
}

impl Cmp {
    pub(crate) fn new() -> Self {
        Cmp {
            max_abs: 0.0,
            max_rel: 0.0,
            pass: true,
        }
    }

    /// Element-wise |got − want| ≤ abs + rel·|want|; NaN only where `want` is NaN.
    pub(crate) fn f32s(&mut self, got: &[f32], want: &[f32], rel: f64, abs: f64) -> &mut Self {
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
    pub(crate) fn u32s(&mut self, got: &[u32], want: &[u32]) -> &mut Self {
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
    pub(crate) fn bits(&mut self, got: &[f32], want: &[f32]) -> &mut Self {
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

    pub(crate) fn fail(&mut self) {
        self.pass = false;
        self.max_abs = f64::INFINITY;
    }

    pub(crate) fn merge(&mut self, o: &Cmp) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.max_rel = self.max_rel.max(o.max_rel);
        self.pass &= o.pass;
    }
}

pub(crate) const EXACT: &str = "exact";

pub(crate) fn tol(rel: f64, abs: f64) -> String {
    format!("rel {rel:.0e}, abs {abs:.1e}")
}

/// Comparisons of a kernel's repeated launches (the topk plans) merged into one row per kernel.
#[derive(Default)]
pub(crate) struct PerKernel(Vec<(&'static KernelDef, Cmp, usize)>);

impl PerKernel {
    pub(crate) fn add(&mut self, kernel: &'static KernelDef, r: Cmp) {
        match self.0.iter_mut().find(|(k, _, _)| k.name == kernel.name) {
            Some((_, acc, n)) => {
                acc.merge(&r);
                *n += 1;
            }
            None => self.0.push((kernel, r, 1)),
        }
    }

    pub(crate) fn rows(self, c: &mut Checker, shape: &str) {
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

pub(crate) struct Checker<'a> {
    pub(crate) gpu: &'a Gpu,
    pub(crate) rng: Rng,
    pub(crate) rows: Vec<CheckRow>,
}

impl Checker<'_> {
    pub(crate) fn row(
        &mut self,
        kernel: &KernelDef,
        shape: impl Into<String>,
        tolerance: String,
        c: &Cmp,
    ) {
        self.rows.push(CheckRow {
            kernel: kernel.name,
            shape: shape.into(),
            max_abs: c.max_abs,
            max_rel: c.max_rel,
            tolerance,
            pass: c.pass,
        });
    }

    pub(crate) fn normal(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.normal() * scale + offset).collect()
    }

    /// Uniform in [−1, 1).
    pub(crate) fn uniform(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.uniform() * 2.0 - 1.0).collect()
    }

    pub(crate) fn up<T: Pod>(&self, v: &[T]) -> Result<Buf> {
        self.gpu.upload(v)
    }

    /// An output buffer of `n` elements, poisoned with 0xFF bytes.
    pub(crate) fn out<T: Pod>(&self, n: usize) -> Result<Buf> {
        let mut b = self.gpu.zeros::<T>(n.max(1))?;
        self.gpu.fill_bytes(&mut b, 0xFF)?;
        Ok(b)
    }

    pub(crate) fn read(&self, b: &Buf, n: usize) -> Result<Vec<f32>> {
        let mut v = self.gpu.read::<f32>(b)?;
        v.truncate(n);
        Ok(v)
    }

    pub(crate) fn read_u32(&self, b: &Buf, n: usize) -> Result<Vec<u32>> {
        let mut v = self.gpu.read::<u32>(b)?;
        v.truncate(n);
        Ok(v)
    }
}
