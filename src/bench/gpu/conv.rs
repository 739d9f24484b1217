//! `rest bench gpu`, conv section: sparse against dense convolution per layer (forward, input
//! gradient, weight gradient) on ResNet-18's distinct shapes, and summed over the network.

use super::timing::{uniform, Plan, Timer};
use crate::device::cpu::ConvGeom;
use crate::device::gpu::kernels::conv;
use crate::device::gpu::sparse_weight::DeviceSparseWeight;
use crate::rng::Rng;
use crate::sparse::topology::random_layer;
use anyhow::Result;

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvSection {
    pub model: String,
    pub batch: usize,
    pub input: usize,
    pub layers: Vec<ConvLayerRow>,
    /// Per density: the three passes summed over every convolution of the network (each distinct
    /// shape times its number of layers), and the speed-up against dense.
    pub network: Vec<NetworkRow>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConvLayerRow {
    /// The first layer of this shape, and how many layers of the network share it.
    pub layer: String,
    pub count: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Output pixels over the batch (N·OH·OW).
    pub pixels: usize,
    pub dense: Passes,
    pub sparse: Vec<SparseRow>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SparseRow {
    pub density: f64,
    pub nnz: usize,
    pub passes: Passes,
    /// Dense time / sparse time, per pass (fwd, bwd_data, bwd_weight).
    pub speedup: [f64; 3],
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Passes {
    pub fwd: PassTime,
    pub bwd_data: PassTime,
    pub bwd_weight: PassTime,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PassTime {
    pub ms: f64,
    /// Useful FLOPs (2·nnz·pixels) per second, in 10⁹.
    pub gflops: f64,
    /// Compulsory bytes per second, in 10⁹.
    pub gbs: f64,
}

impl PassTime {
    pub(super) fn new(secs: f64, flops: f64, bytes: f64) -> Self {
        PassTime {
            ms: secs * 1e3,
            gflops: flops / secs / 1e9,
            gbs: bytes / secs / 1e9,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct NetworkRow {
    pub density: f64,
    pub ms: f64,
    pub speedup: f64,
}

/// ResNet-18's convolutions at the plan's size: each distinct geometry once, with the name of its
/// first layer and how many layers share it.
fn resnet_convs(plan: &Plan) -> Result<Vec<(String, usize, ConvGeom)>> {
    let model = plan.resnet()?;
    let mut out: Vec<(String, usize, ConvGeom)> = Vec::new();
    for wg in model.weight_geometry(plan.size, plan.size) {
        let shape = &model.params.params[wg.param].shape;
        if shape.len() != 4 {
            continue; // the linear layer
        }
        let g = ConvGeom::new(
            plan.batch,
            shape[1],
            wg.in_size.0,
            wg.in_size.1,
            shape[0],
            wg.k,
            wg.stride,
            wg.pad,
        )?;
        match out.iter_mut().find(|(_, _, o)| *o == g) {
            Some((_, n, _)) => *n += 1,
            None => out.push((wg.name.clone(), 1, g)),
        }
    }
    Ok(out)
}

pub(super) fn section(timer: &Timer, plan: &Plan, rng: &mut Rng) -> Result<ConvSection> {
    let gpu = timer.gpu;
    println!(
        "\n== convolution per layer: ResNet-18 width {}, {}×{} input, batch {} (ms per pass; × = \
         dense time / this time; GF/s useful = 2·nnz·pixels; GB/s compulsory traffic) ==",
        plan.width, plan.size, plan.size, plan.batch
    );
    println!(
        "{:<26} {:>6} {:>9} | {:>9} {:>7} {:>7} {:>7} | {:>9} {:>7} {:>7} | {:>9} {:>7} {:>7}",
        "layer (×count)",
        "dens",
        "nnz",
        "fwd ms",
        "×",
        "GF/s",
        "GB/s",
        "bwd-d ms",
        "×",
        "GF/s",
        "bwd-w ms",
        "×",
        "GF/s"
    );
    let f4 = 4.0f64;
    let mut layers = Vec::new();
    for (name, count, g) in resnet_convs(plan)? {
        let (rows, cols, pixels) = (g.cout, g.col_rows(), g.col_cols());
        let s = conv::ConvShape::new(&g)?;
        let (xl, yl, wl) = (s.x_len(), s.y_len(), s.w_len());
        let x = gpu.upload(&uniform(rng, xl))?;
        let dy = gpu.upload(&uniform(rng, yl))?;
        let dense_w = uniform(rng, wl);
        let w = gpu.upload(&dense_w)?;
        let mut y = gpu.zeros::<f32>(yl)?;
        let mut dx = gpu.zeros::<f32>(xl)?;
        let mut dw = gpu.zeros::<f32>(wl)?;
        let splits = conv::conv_bwd_weight_dense_splits(&g);
        let mut work =
            gpu.zeros::<f32>(conv::conv_bwd_weight_dense_workspace(&g, splits).max(1))?;
        let (xb, yb, wb) = (xl as f64 * f4, yl as f64 * f4, wl as f64 * f4);
        let flops = |nnz: usize| 2.0 * nnz as f64 * pixels as f64;

        let t_fwd = timer.time(|| conv::conv_fwd_dense(gpu, &g, &x, &w, None, &mut y))?;
        let t_bd = timer.time(|| conv::conv_bwd_data_dense(gpu, &g, &dy, &w, &mut dx))?;
        let t_bw = timer
            .time(|| conv::conv_bwd_weight_dense(gpu, &g, &x, &dy, &mut dw, Some(&mut work)))?;
        let dense = Passes {
            fwd: PassTime::new(t_fwd, flops(wl), xb + wb + yb),
            bwd_data: PassTime::new(t_bd, flops(wl), yb + wb + xb),
            bwd_weight: PassTime::new(t_bw, flops(wl), xb + yb + wb),
        };
        let short = name.strip_suffix(".weight").unwrap_or(&name);
        let label = format!("{short} (×{count})");
        print_layer_row(&label, 1.0, wl, &dense, None, true);

        let mut sparse = Vec::new();
        for &d in &plan.densities {
            let nnz = ((d * wl as f64).round() as usize).clamp(1, wl);
            let sw = random_layer(rows, cols, nnz, &dense_w, rng);
            let (dsw, values) = DeviceSparseWeight::upload_with_values(gpu, &sw)?;
            let sp = dsw.bufs(&values);
            let mut dv = gpu.zeros::<f32>(nnz)?;
            let splits = conv::conv_bwd_weight_sparse_splits(&g)?;
            let mut swork =
                gpu.zeros::<f32>(conv::conv_bwd_weight_sparse_workspace(nnz, splits).max(1))?;
            let t_fwd = timer.time(|| conv::conv_fwd_sparse(gpu, &g, &x, &sp, None, &mut y))?;
            let t_bd = timer.time(|| conv::conv_bwd_data_sparse(gpu, &g, &dy, &sp, &mut dx))?;
            let t_bw = timer.time(|| {
                conv::conv_bwd_weight_sparse(gpu, &g, &x, &dy, &sp, &mut dv, Some(&mut swork))
            })?;
            let nz = nnz as f64;
            let csr = nz * 8.0 + (rows + 1) as f64 * f4;
            let csc = nz * 12.0 + (cols + 1) as f64 * f4;
            let passes = Passes {
                fwd: PassTime::new(t_fwd, flops(nnz), xb + csr + yb),
                bwd_data: PassTime::new(t_bd, flops(nnz), yb + csc + xb),
                bwd_weight: PassTime::new(
                    t_bw,
                    flops(nnz),
                    xb + yb + nz * f4 + (rows + 1) as f64 * f4 + nz * f4,
                ),
            };
            let speedup = [
                dense.fwd.ms / passes.fwd.ms,
                dense.bwd_data.ms / passes.bwd_data.ms,
                dense.bwd_weight.ms / passes.bwd_weight.ms,
            ];
            print_layer_row("", d, nnz, &passes, Some(speedup), false);
            sparse.push(SparseRow {
                density: d,
                nnz,
                passes,
                speedup,
            });
        }
        layers.push(ConvLayerRow {
            layer: name,
            count,
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
            k: g.k,
            stride: g.stride,
            pad: g.pad,
            pixels,
            dense,
            sparse,
        });
    }

    // The whole network's convolutions, each shape weighted by its number of layers.
    let total = |p: &Passes| p.fwd.ms + p.bwd_data.ms + p.bwd_weight.ms;
    let dense_ms: f64 = layers
        .iter()
        .map(|l| l.count as f64 * total(&l.dense))
        .sum();
    println!("\nall convolutions of the network, fwd + bwd-data + bwd-weight:");
    println!("  dense kernels          {dense_ms:>9.3} ms");
    let mut network = Vec::new();
    for (i, &d) in plan.densities.iter().enumerate() {
        let ms: f64 = layers
            .iter()
            .map(|l| l.count as f64 * total(&l.sparse[i].passes))
            .sum();
        let speedup = dense_ms / ms;
        println!("  sparse at density {d:<5} {ms:>8.3} ms  ×{speedup:.2}");
        network.push(NetworkRow {
            density: d,
            ms,
            speedup,
        });
    }
    Ok(ConvSection {
        model: format!("resnet18 width {}", plan.width),
        batch: plan.batch,
        input: plan.size,
        layers,
        network,
    })
}

fn print_layer_row(
    label: &str,
    density: f64,
    nnz: usize,
    p: &Passes,
    speedup: Option<[f64; 3]>,
    dense: bool,
) {
    let x = |i: usize| match speedup {
        Some(s) => format!("{:.2}", s[i]),
        None => "dense".into(),
    };
    let dens = if dense {
        "dense".to_string()
    } else {
        format!("{density}")
    };
    println!(
        "{:<26} {:>6} {:>9} | {:>9.4} {:>7} {:>7.1} {:>7.1} | {:>9.4} {:>7} {:>7.1} | {:>9.4} {:>7} {:>7.1}",
        label,
        dens,
        nnz,
        p.fwd.ms,
        x(0),
        p.fwd.gflops,
        p.fwd.gbs,
        p.bwd_data.ms,
        x(1),
        p.bwd_data.gflops,
        p.bwd_weight.ms,
        x(2),
        p.bwd_weight.gflops
    );
}
