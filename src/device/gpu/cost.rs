//! The GPU cost model: how fast the CUDA engine would run on a GPU we do not have.
//!
//! Three parts:
//! - every kernel family states what one launch reads, writes and computes, from its parameter
//!   struct and launch configuration ([`KernelCost`], implemented beside each parameter struct);
//! - a [`Gpu`](super::Gpu) records, when asked ([`Gpu::record`](super::Gpu::record)), every
//!   launch with that cost, every copy, memset and synchronisation, as [`Event`]s; the dry
//!   emulator ([`Gpu::emu_dry`](super::Gpu::emu_dry)) records without running anything, so a
//!   ResNet-18 step at batch 256 and 128 px is costed in milliseconds and no memory;
//! - [`GpuSpec::estimate`] prices such a record with a roofline per launch on a named GPU.
//!
//! Bytes are the kernel's own statement of its global-memory traffic: `read` and `written`
//! count each byte once (what DRAM must move at least), `requested` counts every load the
//! kernel's threads issue (re-reads included: what L2 serves when the data fits there). The
//! emulator measures the same three quantities on small shapes (tests/gpu_cost.rs), so the
//! formulas are checked against the kernels, not only written down.

use super::{Dim3, KernelDef, LaunchCfg};

/// What one launch moves and computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Cost {
    /// Unique bytes read from global memory (each byte once).
    pub read: u64,
    /// Unique bytes written to global memory.
    pub written: u64,
    /// Bytes of every global load issued, re-reads included (≥ `read`).
    pub requested: u64,
    /// Floating-point operations issued (a multiply-add is two), multiplications by padding
    /// zeros included where the kernel performs them.
    pub flops: u64,
    /// False for kernels whose traffic is not modelled yet (the topology update's passes): they
    /// still count as launches.
    pub modelled: bool,
}

impl Cost {
    /// A kernel that reads `read` bytes once each, writes `written` and issues `flops`.
    pub fn streaming(read: u64, written: u64, flops: u64) -> Cost {
        Cost {
            read,
            written,
            requested: read,
            flops,
            modelled: true,
        }
    }

    /// The same with re-reads: `requested` bytes of loads in all.
    pub fn with_requests(mut self, requested: u64) -> Cost {
        self.requested = requested.max(self.read);
        self
    }

    /// A kernel whose traffic the model does not state.
    pub const UNMODELLED: Cost = Cost {
        read: 0,
        written: 0,
        requested: 0,
        flops: 0,
        modelled: false,
    };
}

/// Bytes of `n` f32 (or u32) elements.
pub fn f32s(n: usize) -> u64 {
    4 * n as u64
}

/// A parameter struct that knows what a launch of its kernel costs. Implemented beside every
/// kernel family's parameter structs; `Gpu::launch` requires it, so no kernel goes uncosted.
pub trait KernelCost {
    fn cost(&self, kernel: &KernelDef, cfg: &LaunchCfg) -> Cost;
}

/// A launch on the emulator with its stated cost and the bytes it was measured to touch
/// ([`Gpu::measure`](super::Gpu::measure)).
#[derive(Clone, Debug)]
pub struct Measured {
    pub kernel: &'static str,
    pub cost: Cost,
    pub bytes: super::emu::GlobalBytes,
}

/// One thing a backend did, as recorded by [`Gpu::record`](super::Gpu::record).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Event {
    Launch {
        kernel: &'static str,
        blocks: u64,
        threads_per_block: u32,
        cost: Cost,
    },
    /// A memset of `bytes` (the caching allocator zeroes the buffers it hands out).
    Memset { bytes: u64 },
    /// A copy from the host.
    ToDevice { bytes: u64 },
    /// A copy to the host: the host waits for the stream.
    ToHost { bytes: u64 },
    /// An explicit synchronisation.
    Sync,
}

impl Event {
    pub(super) fn launch(kernel: &KernelDef, cfg: &LaunchCfg, cost: Cost) -> Event {
        Event::Launch {
            kernel: kernel.name,
            blocks: cfg.grid.count(),
            threads_per_block: cfg.block.count() as u32,
            cost,
        }
    }
}

/// The figures a roofline needs, per GPU. Sources are named beside each constant; where a figure
/// is an assumption (launch overheads, L2 bandwidth) it says so.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct GpuSpec {
    pub name: &'static str,
    /// DRAM bandwidth, bytes/s.
    pub dram_bytes_per_s: f64,
    /// L2 bandwidth, bytes/s (loads that hit L2).
    pub l2_bytes_per_s: f64,
    /// L2 capacity, bytes.
    pub l2_bytes: f64,
    /// FP32 (FFMA, no tensor cores) peak, FLOP/s: what the hand-written kernels can reach.
    pub fp32_flops_per_s: f64,
    /// TF32 tensor-core dense peak, FLOP/s (for reference: no kernel uses tensor cores yet).
    pub tf32_flops_per_s: f64,
    pub sms: u32,
    /// Host time to issue one kernel launch (the host must keep ahead of the GPU).
    pub host_launch_s: f64,
    /// GPU time between two dependent kernels on one stream (launch latency, tail drain).
    pub kernel_gap_s: f64,
    /// One host synchronisation: the stream drains and the host wakes up.
    pub sync_s: f64,
    /// Host-to-device bandwidth of a pageable copy, bytes/s.
    pub pageable_copy_bytes_per_s: f64,
}

/// NVIDIA H100 SXM5 80 GB. DRAM 3.35 TB/s, FP32 67 TFLOP/s, TF32 495 TFLOP/s dense (989 with
/// 2:4 sparsity), 132 SMs, 50 MB L2: NVIDIA H100 Tensor Core GPU datasheet and the Hopper
/// architecture whitepaper. L2 bandwidth ~5.5 TB/s: not published by NVIDIA; the order of
/// magnitude third-party microbenchmarks report (an assumption). Launch ~4 µs of host time per
/// launch through the driver API, ~1 µs between dependent kernels, ~15 µs per synchronisation,
/// ~10 GB/s for pageable copies: assumptions of the usual size, to be replaced by measurements
/// (scripts/device-check.sh) when a GPU is at hand.
pub const H100_SXM: GpuSpec = GpuSpec {
    name: "H100 SXM",
    dram_bytes_per_s: 3.35e12,
    l2_bytes_per_s: 5.5e12,
    l2_bytes: 50e6,
    fp32_flops_per_s: 67e12,
    tf32_flops_per_s: 495e12,
    sms: 132,
    host_launch_s: 4e-6,
    kernel_gap_s: 1e-6,
    sync_s: 15e-6,
    pageable_copy_bytes_per_s: 10e9,
};

/// NVIDIA H200 SXM 141 GB: the H100's compute with HBM3e at 4.8 TB/s (NVIDIA H200 datasheet);
/// the other figures as [`H100_SXM`].
pub const H200: GpuSpec = GpuSpec {
    name: "H200",
    dram_bytes_per_s: 4.8e12,
    ..H100_SXM
};

/// The GPUs the model knows, by the names `--gpu-model` takes.
pub const GPUS: &[(&str, GpuSpec)] = &[("h100", H100_SXM), ("h200", H200)];

/// A record priced on one GPU.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Estimate {
    pub launches: u64,
    /// Launches whose cost the model does not state (priced at the gap only).
    pub unmodelled: u64,
    pub memsets: u64,
    pub to_device: u64,
    pub to_host: u64,
    pub syncs: u64,
    /// Unique bytes read + written by the kernels and memsets (each launch counted alone).
    pub bytes: u64,
    /// DRAM bytes after the L2 model (re-reads of footprints larger than L2 spill).
    pub dram_bytes: f64,
    pub flops: u64,
    /// GPU time of the kernels and memsets, seconds.
    pub gpu_s: f64,
    /// Host time to issue them and to stage the uploads, seconds.
    pub host_s: f64,
    /// Copies to the host and synchronisations, seconds (the GPU idles while the host waits).
    pub stall_s: f64,
    /// The step: the larger of GPU and host time, plus the stalls.
    pub total_s: f64,
    /// Per kernel name: launches, GPU seconds, bytes, FLOPs (sorted by time, largest first).
    pub kernels: Vec<KernelTotal>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelTotal {
    pub kernel: String,
    pub launches: u64,
    pub gpu_s: f64,
    pub bytes: u64,
    pub flops: u64,
}

impl GpuSpec {
    /// GPU seconds of one launch: the slowest of DRAM, L2 and FP32 throughput, scaled up when
    /// the grid has fewer blocks than SMs (a block runs on one SM), plus the gap to the next
    /// kernel. Returns (seconds, DRAM bytes).
    pub fn launch_time(&self, grid_blocks: u64, c: &Cost) -> (f64, f64) {
        let util = (grid_blocks as f64 / self.sms as f64).min(1.0);
        let unique = (c.read + c.written) as f64;
        // Re-reads hit L2 while the kernel's footprint fits; beyond that, the share that does
        // not fit goes to DRAM again.
        let rereads = c.requested.saturating_sub(c.read) as f64;
        let spill = if unique > self.l2_bytes {
            1.0 - self.l2_bytes / unique
        } else {
            0.0
        };
        let dram = unique + rereads * spill;
        let t = (dram / self.dram_bytes_per_s)
            .max((c.requested + c.written) as f64 / self.l2_bytes_per_s)
            .max(c.flops as f64 / self.fp32_flops_per_s);
        (t / util.max(1e-9) + self.kernel_gap_s, dram)
    }

    /// Prices a record (one training step, say).
    pub fn estimate(&self, events: &[Event]) -> Estimate {
        let mut e = Estimate::default();
        let mut per: std::collections::BTreeMap<&str, KernelTotal> = Default::default();
        for ev in events {
            match ev {
                Event::Launch {
                    kernel,
                    blocks,
                    cost,
                    ..
                } => {
                    e.launches += 1;
                    e.unmodelled += !cost.modelled as u64;
                    let (t, dram) = self.launch_time(*blocks, cost);
                    e.gpu_s += t;
                    e.dram_bytes += dram;
                    e.bytes += cost.read + cost.written;
                    e.flops += cost.flops;
                    e.host_s += self.host_launch_s;
                    let k = per.entry(kernel).or_default();
                    k.launches += 1;
                    k.gpu_s += t;
                    k.bytes += cost.read + cost.written;
                    k.flops += cost.flops;
                }
                Event::Memset { bytes } => {
                    e.memsets += 1;
                    e.bytes += bytes;
                    e.dram_bytes += *bytes as f64;
                    let c = Cost::streaming(0, *bytes, 0);
                    let blocks = bytes.div_ceil(4096).max(1);
                    let (t, _) = self.launch_time(blocks, &c);
                    e.gpu_s += t;
                    e.host_s += self.host_launch_s;
                    let k = per.entry("(memset)").or_default();
                    k.launches += 1;
                    k.gpu_s += t;
                    k.bytes += bytes;
                }
                Event::ToDevice { bytes } => {
                    // A pageable copy holds the host until the data is staged.
                    e.to_device += 1;
                    e.host_s += *bytes as f64 / self.pageable_copy_bytes_per_s + self.host_launch_s;
                }
                Event::ToHost { bytes } => {
                    e.to_host += 1;
                    e.stall_s += *bytes as f64 / self.pageable_copy_bytes_per_s + self.sync_s;
                }
                Event::Sync => {
                    e.syncs += 1;
                    e.stall_s += self.sync_s;
                }
            }
        }
        e.total_s = e.gpu_s.max(e.host_s) + e.stall_s;
        e.kernels = per
            .into_iter()
            .map(|(name, mut k)| {
                k.kernel = name.to_string();
                k
            })
            .collect();
        e.kernels.sort_by(|a, b| {
            b.gpu_s
                .partial_cmp(&a.gpu_s)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        e
    }
}

/// Blocks of a launch (for costs that depend on the grid, as re-reads per tile do).
pub fn blocks(cfg: &LaunchCfg) -> u64 {
    Dim3::count(&cfg.grid)
}
