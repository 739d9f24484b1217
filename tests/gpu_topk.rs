//! kernels/topk.cu on the emulator: the device topology update against (a) the kernels' CPU twins
//! run on the same launch plan — every buffer, workspace included — and (b) the CPU engine's own
//! `sparse::topology::update_layer` (magnitude prune, gradient regrow).
//!
//! Tolerance: none. Indices must be equal, and floats (copied values and momentum, regrown zeros)
//! equal bit for bit: the kernels only compare bit patterns and move values, so a real GPU must
//! agree exactly too. Outputs (CSR/CSC arrays and the whole workspace) are poisoned (0xFF) before
//! each update.

use rest::device::cpu::twin::topk::{self as twin, HostTopk};
use rest::device::gpu::kernels::topk::{
    self, BatchItem, BatchLayout, Geometry, SparseLayerBufs, TopkBatchWorkspace, TopkWorkspace,
};
use rest::device::gpu::{Buf, Gpu};
use rest::rng::Rng;
use rest::sparse::csr::SparseWeight;
use rest::sparse::topology::{prune_count, random_layer, update_layer, GrowRule, PruneRule};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Everything the device holds after an update, as a host mirror.
fn download(gpu: &Gpu, layer: &SparseLayerBufs, ws: &TopkWorkspace, score: &Buf) -> HostTopk {
    let g = Geometry::new(layer.rows, layer.cols, layer.nnz).unwrap();
    let h = layer.download(gpu).unwrap();
    let u32s = |b: &Buf, n: usize| gpu.read::<u32>(b).unwrap()[..n].to_vec();
    let f32s = |b: &Buf, n: usize| gpu.read::<f32>(b).unwrap()[..n].to_vec();
    HostTopk {
        rows: layer.rows,
        cols: layer.cols,
        positions: h.positions,
        values: h.weight.values,
        momentum: h.momentum,
        row_ptr: h.weight.row_ptr,
        col_idx: h.weight.col_idx,
        col_ptr: h.weight.col_ptr,
        csc_row: h.weight.csc_row,
        csc_pos: h.weight.csc_pos,
        score: f32s(score, g.size),
        mark: u32s(&ws.mark, g.size),
        old_values: f32s(&ws.old_values, g.nnz),
        old_momentum: f32s(&ws.old_momentum, g.nnz),
        state: u32s(&ws.state, 2 * topk::SLOT),
        tile_cnt: u32s(&ws.tile_cnt, g.ntiles + 1),
        csc_cnt: u32s(&ws.csc_cnt, g.ncells()),
    }
}

/// Bitwise equality of two host mirrors, naming the first differing buffer.
fn assert_same(dev: &HostTopk, want: &HostTopk, what: &str) {
    let fl = |name: &str, a: &[f32], b: &[f32]| assert_eq!(bits(a), bits(b), "{what}: {name}");
    assert_eq!(dev.positions, want.positions, "{what}: positions");
    fl("values", &dev.values, &want.values);
    fl("momentum", &dev.momentum, &want.momentum);
    assert_eq!(dev.row_ptr, want.row_ptr, "{what}: row_ptr");
    assert_eq!(dev.col_idx, want.col_idx, "{what}: col_idx");
    assert_eq!(dev.col_ptr, want.col_ptr, "{what}: col_ptr");
    assert_eq!(dev.csc_row, want.csc_row, "{what}: csc_row");
    assert_eq!(dev.csc_pos, want.csc_pos, "{what}: csc_pos");
    assert_eq!(dev.mark, want.mark, "{what}: mark");
    fl("old_values", &dev.old_values, &want.old_values);
    fl("old_momentum", &dev.old_momentum, &want.old_momentum);
    assert_eq!(dev.state, want.state, "{what}: state");
    assert_eq!(dev.tile_cnt, want.tile_cnt, "{what}: tile_cnt");
    assert_eq!(dev.csc_cnt, want.csc_cnt, "{what}: csc_cnt");
}

/// Poisons every buffer the update fully rewrites: CSR/CSC and the whole workspace.
fn poison(gpu: &Gpu, layer: &mut SparseLayerBufs, ws: &mut TopkWorkspace) {
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
        gpu.fill_bytes(b, 0xFF).unwrap();
    }
}

/// Updates `w` (with `momentum`, by `score`, pruning `k`) on the device, with the twins and with
/// the CPU engine; asserts all three agree exactly. Returns the device's layer.
fn check(w: &SparseWeight, momentum: &[f32], score: &[f32], rate: f64, what: &str) -> HostTopk {
    let gpu = Gpu::emu();
    let k = prune_count(rate, w.nnz());
    let g = Geometry::new(w.rows, w.cols, w.nnz()).unwrap();
    let mut layer = SparseLayerBufs::upload(&gpu, w, momentum).unwrap();
    let score_buf = gpu.upload(score).unwrap();
    let mut ws = TopkWorkspace::new(&gpu, &g).unwrap();
    if k > 0 {
        poison(&gpu, &mut layer, &mut ws);
    }
    topk::update_layer(&gpu, &mut layer, &mut ws, k, &score_buf).unwrap();
    let dev = download(&gpu, &layer, &ws, &score_buf);

    // (a) The twins on the same plan, from the same (poisoned) starting point.
    if k > 0 {
        let mut host = HostTopk::new(w, momentum, score);
        host.mark.fill(u32::MAX);
        host.old_values.fill(f32::from_bits(u32::MAX));
        host.old_momentum.fill(f32::from_bits(u32::MAX));
        host.state.fill(u32::MAX);
        host.tile_cnt.fill(u32::MAX);
        host.csc_cnt.fill(u32::MAX);
        twin::update_layer(&mut host, k);
        assert_same(&dev, &host, what);
    }

    // (b) The CPU engine.
    let mut cpu = w.clone();
    let mut mom = momentum.to_vec();
    let mut unused = Rng::new(0);
    let stats = update_layer(
        &mut cpu,
        rate,
        PruneRule::Magnitude,
        GrowRule::Gradient,
        score,
        &mut [&mut mom],
        &mut unused,
    );
    assert_eq!(stats.pruned, k, "{what}: k");
    assert_eq!(dev.positions, cpu.positions(), "{what}: positions vs CPU");
    assert_eq!(dev.row_ptr, cpu.row_ptr, "{what}: row_ptr vs CPU");
    assert_eq!(dev.col_idx, cpu.col_idx, "{what}: col_idx vs CPU");
    assert_eq!(dev.col_ptr, cpu.col_ptr, "{what}: col_ptr vs CPU");
    assert_eq!(dev.csc_row, cpu.csc_row, "{what}: csc_row vs CPU");
    assert_eq!(dev.csc_pos, cpu.csc_pos, "{what}: csc_pos vs CPU");
    assert_eq!(
        bits(&dev.values),
        bits(&cpu.values),
        "{what}: values vs CPU"
    );
    assert_eq!(bits(&dev.momentum), bits(&mom), "{what}: momentum vs CPU");
    dev
}

fn normal_vec(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn random_case(
    rows: usize,
    cols: usize,
    density: f64,
    seed: u64,
) -> (SparseWeight, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let size = rows * cols;
    let nnz = (density * size as f64).round() as usize;
    let init = normal_vec(size, &mut rng);
    let w = random_layer(rows, cols, nnz, &init, &mut rng);
    let momentum = normal_vec(nnz, &mut rng);
    let score = normal_vec(size, &mut rng);
    (w, momentum, score)
}

#[test]
fn random_layers_match_twins_and_cpu_engine() {
    for (rows, cols, density, rate, seed) in [
        (16, 75, 0.1, 0.3, 1),
        (16, 75, 0.5, 0.3, 2),
        (64, 576, 0.1, 0.3, 3),
        (64, 576, 0.5, 0.05, 4),
        // More than 1024 columns (the one-block scan loops) and several row chunks.
        (40, 1030, 0.1, 0.5, 5),
        (1, 1, 1.0, 1.0, 6),
        (7, 3, 0.5, 0.2, 7),
    ] {
        let (w, m, s) = random_case(rows, cols, density, seed);
        check(
            &w,
            &m,
            &s,
            rate,
            &format!("{rows}x{cols} d{density} r{rate}"),
        );
    }
}

#[test]
fn ties_nans_and_zero_gradients() {
    let mut rng = Rng::new(11);
    let (rows, cols) = (24, 90);
    let size = rows * cols;
    // Values from a tiny set: most magnitudes tie; ±0, ±∞ and NaN included.
    let palette = [
        0.5f32,
        -0.5,
        0.25,
        -0.25,
        0.0,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let init: Vec<f32> = (0..size)
        .map(|_| palette[rng.below(palette.len())])
        .collect();
    let w = random_layer(rows, cols, size * 3 / 10, &init, &mut rng);
    let momentum = normal_vec(w.nnz(), &mut rng);
    // Score: mostly exact zeros, some tied magnitudes of either sign.
    let score: Vec<f32> = (0..size)
        .map(|_| match rng.below(10) {
            0 => 2.0,
            1 => -2.0,
            2 => f32::NAN,
            3 => -0.0,
            _ => 0.0,
        })
        .collect();
    for rate in [0.1, 0.5, 0.9, 1.0] {
        check(&w, &momentum, &score, rate, &format!("ties r{rate}"));
    }
    // All gradients zero: regrowth is the lowest inactive positions.
    let zeros = vec![0.0; size];
    check(&w, &momentum, &zeros, 0.4, "zero gradient");
    // All weights equal: pruning takes the lowest positions.
    let same = SparseWeight::from_positions(rows, cols, &w.positions(), vec![0.125; w.nnz()]);
    check(&same, &momentum, &score, 0.4, "equal weights");
    // Over 2048 tied weights and positions: the index takes two digit passes both ways.
    let (w, m, _) = random_case(60, 100, 0.5, 12);
    let same = SparseWeight::from_positions(60, 100, &w.positions(), vec![-0.5; w.nnz()]);
    check(&same, &m, &vec![1.0; 6000], 0.7, "many ties");
}

#[test]
fn k_zero_changes_nothing_and_k_nnz_replaces_everything() {
    let (w, m, s) = random_case(16, 75, 0.2, 21);
    let dev = check(&w, &m, &s, 0.0, "k = 0");
    assert_eq!(dev.positions, w.positions());
    assert_eq!(bits(&dev.values), bits(&w.values));
    let dev = check(&w, &m, &s, 1.0, "k = nnz");
    // Every weight is regrown: all values and momentum are 0.
    assert!(dev.values.iter().all(|v| v.to_bits() == 0));
    assert!(dev.momentum.iter().all(|v| v.to_bits() == 0));
}

#[test]
fn empty_rows_and_columns() {
    let (rows, cols) = (20, 33);
    let mut rng = Rng::new(31);
    // Actives only in even rows and in columns not divisible by 3; the score is zero outside
    // rows 5..9, so regrowth fills odd rows there and leaves other rows/columns empty.
    let positions: Vec<u32> = (0..rows * cols)
        .filter(|&p| (p / cols) % 2 == 0 && (p % cols) % 3 != 0 && rng.below(3) == 0)
        .map(|p| p as u32)
        .collect();
    let values = normal_vec(positions.len(), &mut rng);
    let w = SparseWeight::from_positions(rows, cols, &positions, values);
    let momentum = normal_vec(w.nnz(), &mut rng);
    let score: Vec<f32> = (0..rows * cols)
        .map(|p| {
            if (5..9).contains(&(p / cols)) {
                rng.normal()
            } else {
                0.0
            }
        })
        .collect();
    for rate in [0.1, 0.6] {
        check(&w, &momentum, &score, rate, &format!("empty rows r{rate}"));
    }
    // A layer whose last rows and columns hold nothing before or after the update.
    let positions: Vec<u32> = vec![0, 1, 2, 34, 35];
    let w = SparseWeight::from_positions(rows, cols, &positions, vec![0.3, -0.1, 0.2, 0.05, -0.7]);
    let score: Vec<f32> = (0..rows * cols)
        .map(|p| if p < 40 { p as f32 } else { 0.0 })
        .collect();
    check(&w, &[1.0, 2.0, 3.0, 4.0, 5.0], &score, 0.5, "tiny layer");
}

#[test]
fn one_workspace_serves_layers_of_several_shapes_and_repeated_updates() {
    let gpu = Gpu::emu();
    let mut ws = TopkWorkspace::new(&gpu, &Geometry::new(1, 1, 0).unwrap()).unwrap();
    for (rows, cols, density, seed) in [(16, 75, 0.3, 41), (30, 200, 0.1, 42), (8, 9, 0.5, 43)] {
        let (w, m, s) = random_case(rows, cols, density, seed);
        let mut layer = SparseLayerBufs::upload(&gpu, &w, &m).unwrap();
        let _ = s;
        let (mut cpu, mut mom) = (w.clone(), m.clone());
        let mut rng = Rng::new(seed);
        for step in 0..3 {
            let grad = normal_vec(rows * cols, &mut rng);
            let gbuf = gpu.upload(&grad).unwrap();
            let k = prune_count(0.3, cpu.nnz());
            topk::update_layer(&gpu, &mut layer, &mut ws, k, &gbuf).unwrap();
            update_layer(
                &mut cpu,
                0.3,
                PruneRule::Magnitude,
                GrowRule::Gradient,
                &grad,
                &mut [&mut mom],
                &mut Rng::new(0),
            );
            let dev = layer.download(&gpu).unwrap();
            assert_eq!(dev.weight.row_ptr, cpu.row_ptr, "{rows}x{cols} step {step}");
            assert_eq!(dev.positions, cpu.positions(), "{rows}x{cols} step {step}");
            assert_eq!(dev.weight.csc_pos, cpu.csc_pos, "{rows}x{cols} step {step}");
            assert_eq!(dev.weight.csc_row, cpu.csc_row, "{rows}x{cols} step {step}");
            assert_eq!(bits(&dev.weight.values), bits(&cpu.values));
            assert_eq!(bits(&dev.momentum), bits(&mom));
            // Emulate a training step changing values between updates.
            let vals: Vec<f32> = dev
                .weight
                .values
                .iter()
                .map(|v| v + 0.01 * rng.normal())
                .collect();
            gpu.write(&mut layer.values, &vals).unwrap();
            cpu.values = vals;
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let gpu = Gpu::emu();
    let (w, m, s) = random_case(8, 9, 0.5, 51);
    let g = Geometry::new(8, 9, w.nnz()).unwrap();
    let mut layer = SparseLayerBufs::upload(&gpu, &w, &m).unwrap();
    let mut ws = TopkWorkspace::new(&gpu, &g).unwrap();
    let score = gpu.upload(&s).unwrap();
    let err = topk::update_layer(&gpu, &mut layer, &mut ws, w.nnz() + 1, &score).unwrap_err();
    assert!(err.to_string().contains("cannot prune"), "{err}");
    let short = gpu.upload(&s[..10]).unwrap();
    let err = topk::update_layer(&gpu, &mut layer, &mut ws, 1, &short).unwrap_err();
    assert!(err.to_string().contains("score"), "{err}");
    assert!(SparseLayerBufs::upload(&gpu, &w, &m[1..]).is_err());
}

/// Layer `i`'s slice of a batched workspace, with the layer, as a host mirror.
fn download_batched(
    gpu: &Gpu,
    layer: &SparseLayerBufs,
    ws: &TopkBatchWorkspace,
    slice: &topk::BatchSlice,
    score: &Buf,
) -> HostTopk {
    let g = Geometry::new(layer.rows, layer.cols, layer.nnz).unwrap();
    let h = layer.download(gpu).unwrap();
    let u32s = |b: &Buf, at: usize, n: usize| gpu.read::<u32>(b).unwrap()[at..at + n].to_vec();
    let f32s = |b: &Buf, at: usize, n: usize| gpu.read::<f32>(b).unwrap()[at..at + n].to_vec();
    HostTopk {
        rows: layer.rows,
        cols: layer.cols,
        positions: h.positions,
        values: h.weight.values,
        momentum: h.momentum,
        row_ptr: h.weight.row_ptr,
        col_idx: h.weight.col_idx,
        col_ptr: h.weight.col_ptr,
        csc_row: h.weight.csc_row,
        csc_pos: h.weight.csc_pos,
        score: f32s(score, 0, g.size),
        mark: u32s(&ws.mark, slice.mark, g.size),
        old_values: f32s(&ws.old_values, slice.old, g.nnz),
        old_momentum: f32s(&ws.old_momentum, slice.old, g.nnz),
        state: u32s(&ws.state, slice.state, 2 * topk::SLOT),
        tile_cnt: u32s(&ws.tile_cnt, slice.tile, g.ntiles + 1),
        csc_cnt: u32s(&ws.csc_cnt, slice.csc, g.ncells()),
    }
}

/// A host mirror with its workspace poisoned as the device's is before an update.
fn poisoned_host(w: &SparseWeight, momentum: &[f32], score: &[f32]) -> HostTopk {
    let mut host = HostTopk::new(w, momentum, score);
    host.mark.fill(u32::MAX);
    host.old_values.fill(f32::from_bits(u32::MAX));
    host.old_momentum.fill(f32::from_bits(u32::MAX));
    host.state.fill(u32::MAX);
    host.tile_cnt.fill(u32::MAX);
    host.csc_cnt.fill(u32::MAX);
    host
}

/// Layer buffers (not the workspace) equal, bit for bit.
fn assert_same_layer(a: &HostTopk, b: &HostTopk, what: &str) {
    assert_eq!(a.positions, b.positions, "{what}: positions");
    assert_eq!(bits(&a.values), bits(&b.values), "{what}: values");
    assert_eq!(bits(&a.momentum), bits(&b.momentum), "{what}: momentum");
    assert_eq!(a.row_ptr, b.row_ptr, "{what}: row_ptr");
    assert_eq!(a.col_idx, b.col_idx, "{what}: col_idx");
    assert_eq!(a.col_ptr, b.col_ptr, "{what}: col_ptr");
    assert_eq!(a.csc_row, b.csc_row, "{what}: csc_row");
    assert_eq!(a.csc_pos, b.csc_pos, "{what}: csc_pos");
}

/// The batched update of several layers against (a) the per-layer device path, (b) the twins of
/// the batched kernels and the per-layer twins (every buffer; each layer's workspace slice equals
/// the workspace of its own per-layer update), (c) the CPU engine.
#[test]
fn batched_update_matches_per_layer_twins_and_cpu_engine() {
    // (rows, cols, density, rate, seed): shapes, densities and k all differ; index digit counts
    // differ across layers (0 for the 1×1 layer, 1 for small ones, 2 for the larger ones); one
    // layer has k = 0; the "ties" layer has > 2048 tied weights and tied scores (every index
    // digit pass does work); 40×1030 has more than 1024 columns and several row chunks.
    let cases: &[(usize, usize, f64, f64, u64)] = &[
        (16, 75, 0.3, 0.3, 61),
        (60, 100, 0.5, 0.7001, 0), // ties (built below), k = 2101: odd, so the last index
        // digit (1 bit of 12) is needed too
        (7, 3, 0.5, 0.2, 62),
        (20, 30, 0.2, 0.0, 63), // k = 0
        (1, 1, 1.0, 1.0, 64),
        (64, 576, 0.1, 0.05, 65),
        (40, 1030, 0.1, 0.5, 66),
    ];
    let gpu = Gpu::emu();
    let mut inputs = Vec::new();
    for &(rows, cols, density, rate, seed) in cases {
        let (mut w, m, mut s) = random_case(rows, cols, density, seed);
        if seed == 0 {
            w = SparseWeight::from_positions(rows, cols, &w.positions(), vec![-0.5; w.nnz()]);
            s = vec![1.0; rows * cols];
        }
        let k = prune_count(rate, w.nnz());
        inputs.push((w, m, s, k, format!("{rows}x{cols} d{density} r{rate}")));
    }
    assert_eq!(inputs[3].3, 0, "one layer has k = 0");

    // (a) The per-layer device path.
    let mut per_ws = TopkWorkspace::new(&gpu, &Geometry::new(1, 1, 0).unwrap()).unwrap();
    let per: Vec<HostTopk> = inputs
        .iter()
        .map(|(w, m, s, k, _)| {
            let mut layer = SparseLayerBufs::upload(&gpu, w, m).unwrap();
            let sb = gpu.upload(s).unwrap();
            topk::update_layer(&gpu, &mut layer, &mut per_ws, *k, &sb).unwrap();
            download(&gpu, &layer, &per_ws, &sb)
        })
        .collect();

    // The batched device path, everything it rewrites poisoned first.
    let mut layers: Vec<SparseLayerBufs> = inputs
        .iter()
        .map(|(w, m, ..)| SparseLayerBufs::upload(&gpu, w, m).unwrap())
        .collect();
    let scores: Vec<Buf> = inputs.iter().map(|i| gpu.upload(&i.2).unwrap()).collect();
    let active: Vec<usize> = (0..inputs.len()).filter(|&i| inputs[i].3 > 0).collect();
    let geoms: Vec<Geometry> = active
        .iter()
        .map(|&i| Geometry::new(layers[i].rows, layers[i].cols, layers[i].nnz).unwrap())
        .collect();
    let layout = BatchLayout::new(&geoms);
    let mut ws = TopkBatchWorkspace::new(&gpu, &layout).unwrap();
    for b in [
        &mut ws.mark,
        &mut ws.old_values,
        &mut ws.old_momentum,
        &mut ws.state,
        &mut ws.tile_cnt,
        &mut ws.csc_cnt,
    ] {
        gpu.fill_bytes(b, 0xFF).unwrap();
    }
    for &i in &active {
        let l = &mut layers[i];
        for b in [
            &mut l.row_ptr,
            &mut l.col_idx,
            &mut l.col_ptr,
            &mut l.csc_row,
            &mut l.csc_pos,
        ] {
            gpu.fill_bytes(b, 0xFF).unwrap();
        }
    }
    let items: Vec<BatchItem> = layers
        .iter()
        .zip(&scores)
        .zip(&inputs)
        .map(|((l, s), i)| BatchItem {
            layer: l.refs(),
            score: s,
            k_prune: i.3,
        })
        .collect();
    topk::update_layers(&gpu, &items, &mut ws).unwrap();

    // (b) The batched twins, from poisoned workspaces.
    let mut hosts: Vec<HostTopk> = inputs
        .iter()
        .map(|(w, m, s, ..)| poisoned_host(w, m, s))
        .collect();
    let mut pairs: Vec<(&mut HostTopk, usize)> = hosts
        .iter_mut()
        .zip(&inputs)
        .map(|(h, i)| (h, i.3))
        .collect();
    twin::update_layers(&mut pairs);

    let mut slot = 0;
    for (i, (w, m, s, k, what)) in inputs.iter().enumerate() {
        let what = format!("batched {what}");
        let dev = if *k > 0 {
            let d = download_batched(&gpu, &layers[i], &ws, &layout.slices[slot], &scores[i]);
            slot += 1;
            // Every buffer, the layer's workspace slice included, as the per-layer twins give.
            let mut single = poisoned_host(w, m, s);
            twin::update_layer(&mut single, *k);
            assert_same(&d, &single, &format!("{what} vs per-layer twins"));
            assert_same(&d, &hosts[i], &format!("{what} vs batched twins"));
            d
        } else {
            let d = download(&gpu, &layers[i], &per_ws, &scores[i]);
            assert_eq!(d.positions, w.positions(), "{what}: untouched");
            assert_eq!(d.row_ptr, w.row_ptr, "{what}: untouched");
            assert_eq!(d.csc_pos, w.csc_pos, "{what}: untouched");
            assert_eq!(bits(&d.values), bits(&w.values), "{what}: untouched");
            assert_eq!(bits(&d.momentum), bits(m), "{what}: untouched");
            d
        };
        // (a) The per-layer device path.
        assert_same_layer(&dev, &per[i], &format!("{what} vs per-layer device"));
        // (c) The CPU engine.
        let mut cpu = w.clone();
        let mut mom = m.clone();
        let rate = cases[i].3;
        update_layer(
            &mut cpu,
            rate,
            PruneRule::Magnitude,
            GrowRule::Gradient,
            s,
            &mut [&mut mom],
            &mut Rng::new(0),
        );
        let want = HostTopk::new(&cpu, &mom, s);
        assert_same_layer(&dev, &want, &format!("{what} vs CPU engine"));
    }
}

#[test]
fn batched_updates_repeat_with_one_workspace() {
    // Two layers, three updates each with fresh gradients and changed values, through one
    // workspace (which starts too small and grows), against the CPU engine.
    let gpu = Gpu::emu();
    let mut ws = TopkBatchWorkspace::new(&gpu, &BatchLayout::new(&[])).unwrap();
    let mut rng = Rng::new(71);
    let shapes = [(16usize, 75usize, 0.3f64, 72u64), (30, 200, 0.1, 73)];
    let mut layers = Vec::new();
    let mut cpus = Vec::new();
    for &(rows, cols, density, seed) in &shapes {
        let (w, m, _) = random_case(rows, cols, density, seed);
        layers.push(SparseLayerBufs::upload(&gpu, &w, &m).unwrap());
        cpus.push((w, m));
    }
    for step in 0..3 {
        let grads: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(r, c, ..)| normal_vec(r * c, &mut rng))
            .collect();
        let gbufs: Vec<Buf> = grads.iter().map(|g| gpu.upload(g).unwrap()).collect();
        let items: Vec<BatchItem> = layers
            .iter()
            .zip(&gbufs)
            .map(|(l, g)| BatchItem {
                layer: l.refs(),
                score: g,
                k_prune: prune_count(0.3, l.nnz),
            })
            .collect();
        topk::update_layers(&gpu, &items, &mut ws).unwrap();
        for ((layer, (cpu, mom)), grad) in layers.iter_mut().zip(&mut cpus).zip(&grads) {
            update_layer(
                cpu,
                0.3,
                PruneRule::Magnitude,
                GrowRule::Gradient,
                grad,
                &mut [mom],
                &mut Rng::new(0),
            );
            let dev = layer.download(&gpu).unwrap();
            let what = format!("{}x{} step {step}", layer.rows, layer.cols);
            assert_eq!(dev.weight, *cpu, "{what}");
            assert_eq!(dev.positions, cpu.positions(), "{what}");
            assert_eq!(bits(&dev.momentum), bits(mom), "{what}");
            let vals: Vec<f32> = dev
                .weight
                .values
                .iter()
                .map(|v| v + 0.01 * rng.normal())
                .collect();
            gpu.write(&mut layer.values, &vals).unwrap();
            cpu.values = vals;
        }
    }
}

#[test]
fn batched_bad_arguments_are_errors_and_no_work_is_fine() {
    let gpu = Gpu::emu();
    let (w, m, s) = random_case(8, 9, 0.5, 81);
    let layer = SparseLayerBufs::upload(&gpu, &w, &m).unwrap();
    let score = gpu.upload(&s).unwrap();
    let short = gpu.upload(&s[..10]).unwrap();
    let mut ws = TopkBatchWorkspace::new(&gpu, &BatchLayout::new(&[])).unwrap();
    let item = |k, score| BatchItem {
        layer: layer.refs(),
        score,
        k_prune: k,
    };
    let err = topk::update_layers(&gpu, &[item(w.nnz() + 1, &score)], &mut ws).unwrap_err();
    assert!(err.to_string().contains("cannot prune"), "{err}");
    let err = topk::update_layers(&gpu, &[item(1, &short)], &mut ws).unwrap_err();
    assert!(err.to_string().contains("score"), "{err}");
    // Nothing to do: no layers, or only k = 0.
    topk::update_layers(&gpu, &[], &mut ws).unwrap();
    topk::update_layers(&gpu, &[item(0, &score)], &mut ws).unwrap();
    assert_eq!(layer.download(&gpu).unwrap().weight, w);
}
