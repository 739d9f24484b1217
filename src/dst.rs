//! Dynamic sparse training of a model: turning its weights sparse (exact ERK/ER/uniform
//! counts), choosing per layer between sparse and dense-masked compute, and topology updates
//! (prune, regrow, remap optimiser state) every ΔT steps.

use crate::device::cpu::norm::DxCoefs;
use crate::nn::param::{ComputePath, Grads, ParamKind, Values};
use crate::nn::Model;
use crate::optim::Sgd;
use crate::rng::Rng;

use crate::sparse::density::{layer_nnz, DensityRule};
use crate::sparse::schedule::{death_rate, DecaySchedule};
use crate::sparse::topology::{
    random_layer, update_layer, Fired, GrowRule, PruneRule, UpdateStats,
};
use anyhow::{bail, ensure, Result};

/// Above this density a layer is computed dense-masked: the sparse kernels' per-entry cost
/// (an indexed axpy) loses to the dense GEMM somewhere between 20 and 40 % density on AVX-512
/// CPUs (`rest bench cpu` measures it per layer).
pub const SPARSE_PATH_MAX_DENSITY: f64 = 0.3;

/// How sparse layers are computed.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum PathChoice {
    /// Per layer, whichever of the two is faster on this machine: timed once and stored (see
    /// `calibration`), then reused, so runs repeat.
    #[default]
    Auto,
    /// As auto, but time every layer again and replace the stored choices.
    Calibrate,
    /// Sparse kernels over the active weights in every sparse layer.
    Sparse,
    /// The dense GEMM over the masked weight in every sparse layer.
    DenseMasked,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparseConfig {
    pub density: f64,
    pub rule: DensityRule,
    /// Steps between topology updates (ΔT).
    pub update_every: u64,
    pub death_rate: f64,
    pub death_rate_end: f64,
    pub decay: DecaySchedule,
    pub prune: PruneRule,
    pub grow: GrowRule,
    /// Updates stop after this fraction of training (1 = never, as the reference).
    pub stop_fraction: f64,
    /// Static sparse training: the initial mask is kept.
    pub fix: bool,
    /// Compute path of the sparse layers.
    #[serde(default)]
    pub compute: PathChoice,
}

impl SparseConfig {
    /// The reference code's settings at `density`: ERK, ΔT 1000, death rate 0.5 decaying by
    /// cosine to 0.005, magnitude pruning, gradient regrowth, updates to the end, paths timed.
    pub fn reference(density: f64) -> Self {
        Self {
            density,
            rule: DensityRule::Erk,
            update_every: 1000,
            death_rate: 0.5,
            death_rate_end: 0.005,
            decay: DecaySchedule::Cosine,
            prune: PruneRule::Magnitude,
            grow: GrowRule::Gradient,
            stop_fraction: 1.0,
            fix: false,
            compute: PathChoice::Auto,
        }
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.density > 0.0 && self.density <= 1.0,
            "density must be in (0, 1], got {}",
            self.density
        );
        ensure!(
            self.update_every > 0,
            "the update interval (ΔT, --update-every) must be at least 1 step"
        );
        ensure!(
            (0.0..=1.0).contains(&self.death_rate),
            "death rate must be in [0, 1], got {}",
            self.death_rate
        );
        ensure!(
            (0.0..=1.0).contains(&self.death_rate_end),
            "final death rate must be in [0, 1], got {}",
            self.death_rate_end
        );
        ensure!(
            (0.0..=1.0).contains(&self.stop_fraction),
            "stop fraction must be in [0, 1], got {}",
            self.stop_fraction
        );
        Ok(())
    }
}

/// State that lives beside the model during sparse training.
#[derive(Clone, Debug)]
pub struct SparseState {
    pub config: SparseConfig,
    /// Ever-active positions per masked weight, in `weight_ids` order (None: a dense layer).
    pub fired: Vec<Option<Fired>>,
    /// Momentum of the dense gradient at update steps (only for `GrowRule::Momentum`).
    grad_momentum: Vec<Option<Vec<f32>>>,
}

/// Makes every masked weight of `model` sparse with exactly the counts of `config.rule` at
/// `config.density`; layers that get every weight stay dense.
pub fn sparsify(model: &mut Model, config: &SparseConfig, seed: u64) -> Result<SparseState> {
    config.validate()?;
    let ids = model.params.weight_ids();
    let shapes: Vec<Vec<usize>> = ids
        .iter()
        .map(|&id| model.params.get(id).shape.clone())
        .collect();
    let counts = layer_nnz(&shapes, config.density, config.rule)?;
    if let Some(empty) = counts.iter().position(|&n| n == 0) {
        bail!(
            "density {} leaves {} with no active weight (this model needs a density of at least \
             {:.1e} for one weight in every layer)",
            config.density,
            model.params.get(ids[empty]).name,
            lowest_density_without_empty_layer(&shapes, config.rule)
        );
    }
    for (li, (&id, &nnz)) in ids.iter().zip(&counts).enumerate() {
        let p = model.params.get_mut(id);
        if nnz == p.numel() {
            continue;
        }
        let (rows, cols) = p.matrix_dims();
        let mut rng = Rng::derive(seed, 0x3a5c_0000 + li as u64);
        let sw = random_layer(rows, cols, nnz, p.data(), &mut rng);
        let path = if nnz as f64 / p.numel() as f64 <= SPARSE_PATH_MAX_DENSITY {
            ComputePath::Sparse
        } else {
            ComputePath::DenseMasked
        };
        p.values = Values::Sparse(sw, path);
    }
    let fired = model
        .params
        .weight_ids()
        .iter()
        .map(|&id| model.params.get(id).sparse().map(Fired::from_layer))
        .collect();
    Ok(SparseState {
        config: config.clone(),
        fired,
        grad_momentum: vec![None; model.params.params.len()],
    })
}

/// The lowest global density (to two significant digits, rounded up) at which `rule` gives every
/// layer at least one active weight.
fn lowest_density_without_empty_layer(shapes: &[Vec<usize>], rule: DensityRule) -> f64 {
    let none_empty = |d: f64| layer_nnz(shapes, d, rule).is_ok_and(|c| c.iter().all(|&n| n > 0));
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if none_empty(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let scale = 10f64.powf(hi.log10().floor() - 1.0);
    (hi / scale).ceil() * scale
}

impl SparseState {
    /// Whether step `step` (0-based, of `total`) ends with a topology update.
    pub fn is_update_step(&self, step: u64, total: u64) -> bool {
        !self.config.fix
            && step > 0
            && step.is_multiple_of(self.config.update_every)
            && (step as f64) < self.config.stop_fraction * total as f64
    }

    /// Prunes and regrows every sparse layer using this step's dense gradients, and remaps the
    /// optimiser's momentum. Returns the totals and the death rate used.
    pub fn update(
        &mut self,
        model: &mut Model,
        opt: &mut Sgd,
        grads: &Grads,
        step: u64,
        total: u64,
        rng: &mut Rng,
    ) -> Result<(UpdateStats, f64)> {
        let c = &self.config;
        let rate = death_rate(c.death_rate, c.death_rate_end, step, total, c.decay);
        let ids = model.params.weight_ids();
        if let Some(d) = &mut model.params.device {
            // On a device: every layer in one batched update there (magnitude prune, gradient
            // regrow: `train::ensure_gpu_topology` checked the rules before the model moved).
            let sum = d.topology_update(rate)?;
            for (li, id) in ids.into_iter().enumerate() {
                if let Some(f) = &mut self.fired[li] {
                    f.record_positions(&d.positions(id.0)?);
                }
            }
            return Ok((sum, rate));
        }
        let mut sum = UpdateStats::default();
        for (li, id) in ids.into_iter().enumerate() {
            let p = model.params.get_mut(id);
            let Values::Sparse(sw, _) = &mut p.values else {
                continue;
            };
            let dense = grads.dense[id.0].as_ref().ok_or_else(|| {
                anyhow::anyhow!("{}: no dense gradient on an update step", p.name)
            })?;
            let score: &[f32] = if c.grow == GrowRule::Momentum {
                let m = self.grad_momentum[id.0].get_or_insert_with(|| vec![0.0; dense.len()]);
                for (m, g) in m.iter_mut().zip(dense) {
                    *m = 0.9 * *m + g;
                }
                m
            } else {
                dense
            };
            let mut state: Vec<&mut Vec<f32>> = vec![&mut opt.buffers[id.0]];
            let s = update_layer(sw, rate, c.prune, c.grow, score, &mut state, rng);
            if let Some(f) = &mut self.fired[li] {
                f.record(sw);
            }
            sum.pruned += s.pruned;
            sum.grown += s.grown;
        }
        Ok((sum, rate))
    }

    /// Fraction of weights that have ever been active (in-time over-parameterisation); dense
    /// layers count as wholly active.
    pub fn fired_fraction(&self, model: &Model) -> f64 {
        let (mut on, mut all) = (0usize, 0usize);
        for (f, id) in self.fired.iter().zip(model.params.weight_ids()) {
            let n = model.params.get(id).numel();
            on += f.as_ref().map_or(n, Fired::ever_active);
            all += n;
        }
        on as f64 / all.max(1) as f64
    }
}

/// Global density of the masked weights as stored now.
pub fn global_density(model: &Model) -> f64 {
    let ids = model.params.weight_ids();
    let active: usize = ids.iter().map(|&id| model.params.get(id).len()).sum();
    let total: usize = ids.iter().map(|&id| model.params.get(id).numel()).sum();
    active as f64 / total as f64
}

/// One line per masked layer: density and compute path.
pub fn describe(model: &Model) -> String {
    let mut s = String::new();
    for p in model
        .params
        .params
        .iter()
        .filter(|p| p.kind == ParamKind::Weight)
    {
        let path = match &p.values {
            Values::Dense(_) => "dense",
            Values::Sparse(_, ComputePath::Sparse) => "sparse kernels",
            Values::Sparse(_, ComputePath::DenseMasked) => "dense-masked GEMM",
        };
        s += &format!(
            "  {:<28} {:>9} of {:>9} active ({:>6.2}%)  {}\n",
            p.name,
            p.len(),
            p.numel(),
            100.0 * p.len() as f64 / p.numel() as f64,
            path
        );
    }
    s
}

/// The compute path of every sparse layer, by name (dense layers are left out).
pub fn compute_paths(model: &Model) -> std::collections::BTreeMap<String, ComputePath> {
    model
        .params
        .params
        .iter()
        .filter_map(|p| match &p.values {
            Values::Sparse(_, path) => Some((p.name.clone(), *path)),
            Values::Dense(_) => None,
        })
        .collect()
}

/// Sets every sparse layer's compute path: timed per layer (`Auto`) or as asked.
pub fn choose_paths(
    model: &mut Model,
    choice: PathChoice,
    batch: usize,
    h: usize,
    w: usize,
) -> Result<()> {
    let fixed = match choice {
        PathChoice::Auto | PathChoice::Calibrate => {
            let mut store = crate::calibration::Store::open();
            time_paths(
                model,
                batch,
                h,
                w,
                Some((&mut store, choice == PathChoice::Calibrate)),
            )?;
            store.save();
            return Ok(());
        }
        PathChoice::Sparse => ComputePath::Sparse,
        PathChoice::DenseMasked => ComputePath::DenseMasked,
    };
    for p in &mut model.params.params {
        if let Values::Sparse(_, path) = &mut p.values {
            *path = fixed;
        }
    }
    Ok(())
}

/// Picks each sparse layer's compute path by timing it: the sparse kernels against the dense
/// GEMMs on the masked weight, on the layer's real shape for `batch` images of `h`×`w`: forward,
/// weight gradient and (except for the first layer) input gradient, as a training step runs them.
/// (The sparse weight gradient runs at a lower rate than the sparse forward, so the forward alone
/// does not stand for the step.)
pub fn calibrate_paths(model: &mut Model, batch: usize, h: usize, w: usize) -> Result<()> {
    time_paths(model, batch, h, w, None)
}

/// `calibrate_paths`, taking each layer's path from `store` when it holds the layer and `redo`
/// is false, and storing what it times.
fn time_paths(
    model: &mut Model,
    batch: usize,
    h: usize,
    w: usize,
    mut store: Option<(&mut crate::calibration::Store, bool)>,
) -> Result<()> {
    use crate::device::cpu::conv::{conv2d_backward, conv2d_forward, ConvGeom, Layout};
    use std::time::Instant;
    for wg in model.weight_geometry(h, w) {
        let p = &mut model.params.params[wg.param];
        let (rows, cols) = p.matrix_dims();
        let Values::Sparse(sw, path) = &mut p.values else {
            continue;
        };
        let key = crate::calibration::layer_key(
            rows,
            cols,
            wg.k,
            wg.stride,
            wg.pad,
            wg.in_size,
            batch,
            sw.nnz(),
            wg.first,
        );
        if let Some((store, false)) = &store {
            if let Some(e) = store.get(&key) {
                *path = e.path;
                continue;
            }
        }
        let cin = cols / (wg.k * wg.k);
        let g = ConvGeom::new(
            batch,
            cin,
            wg.in_size.0,
            wg.in_size.1,
            rows,
            wg.k,
            wg.stride,
            wg.pad,
        )?
        .with_layout(Layout::Chwn);
        let n = g.col_cols();
        let mut rng = Rng::new(wg.param as u64);
        let x: Vec<f32> = (0..cin * batch * wg.in_size.0 * wg.in_size.1)
            .map(|_| rng.uniform())
            .collect();
        let best_of = |f: &mut dyn FnMut()| {
            f();
            (0..2)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let dy: Vec<f32> = (0..rows * n).map(|_| rng.uniform() - 0.5).collect();
        let input_grad = !wg.first;
        // The first layer of both models feeds a batch norm + ReLU, whose backward then runs
        // the sparse weight gradient itself, computing the rows of dx and of the convolution's
        // output again as it walks (`DirectGeom::weight_grad_through_bn`): a forward's work on
        // top of the plain weight gradient, so time that (with arbitrary coefficients), and on
        // the dense side the batch norm's dx pass that this saves.
        let coefs = vec![
            DxCoefs {
                a: 0.5,
                b: -0.25,
                c0: 0.125,
                mean: 0.5,
                relu: Some((1.0, -0.5)),
            };
            rows
        ];
        let direct = crate::sparse::conv::DirectGeom::new(&g);
        let through_bn = !input_grad && direct.walks_output_pixels();
        // Both sides call what `ops::conv2d` (and the batch norm's backward) calls.
        let t_sparse = best_of(&mut || {
            std::hint::black_box(direct.forward(sw, &x, None));
            if input_grad {
                std::hint::black_box(direct.backward(sw, &dy, &x));
            } else if through_bn {
                std::hint::black_box(direct.weight_grad_through_bn(sw, &dy, &coefs, &x));
            } else {
                std::hint::black_box(direct.weight_grad(sw, &dy, &x));
            }
        });
        let t_dense = best_of(&mut || {
            let mut d = vec![0.0; rows * cols];
            sw.to_dense(&mut d);
            let (mut col, mut y) = (vec![0.0; g.col_rows() * n], vec![0.0; rows * n]);
            conv2d_forward(&g, &x, &d, None, &mut col, &mut y);
            let mut dw = vec![0.0; rows * cols];
            if through_bn {
                let mut dx = vec![0.0; dy.len()];
                for ((coef, dxr), (dyr, yr)) in coefs
                    .iter()
                    .zip(dx.chunks_mut(n))
                    .zip(dy.chunks(n).zip(y.chunks(n)))
                {
                    coef.apply(dyr, yr, dxr);
                }
                std::hint::black_box(dx);
            }
            if input_grad {
                let (mut dcol, mut dx) = (vec![0.0; col.len()], vec![0.0; x.len()]);
                conv2d_backward(
                    &g,
                    &col,
                    &d,
                    &dy,
                    Some(&mut dw),
                    None,
                    &mut dcol,
                    Some(&mut dx),
                );
                std::hint::black_box(dx);
            } else {
                conv2d_backward(&g, &col, &d, &dy, Some(&mut dw), None, &mut [], None);
            }
            std::hint::black_box((y, dw));
        });
        *path = if t_sparse <= t_dense {
            ComputePath::Sparse
        } else {
            ComputePath::DenseMasked
        };
        if let Some((store, _)) = &mut store {
            store.insert(
                key,
                crate::calibration::Entry {
                    path: *path,
                    sparse_s: t_sparse,
                    dense_s: t_dense,
                },
            );
        }
    }
    Ok(())
}
