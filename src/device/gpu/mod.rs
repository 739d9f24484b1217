//! The CUDA backend: kernels in `kernels/*.cu`, launched on a real GPU through cudarc
//! (`Gpu::Cuda`) or on the CPU by the emulator (`Gpu::Emu`, the same sources compiled as C++).
//!
//! Everything above this module — launch configurations, parameter structs, buffer handling —
//! is shared by both, so the emulator exercises the whole backend in CI, where no GPU exists.
//!
//! Conventions (docs/DESIGN.md, *Kernels*):
//! - a kernel takes one `#[repr(C)]` parameter struct by value, mirrored in its .cu file;
//!   buffer addresses in it are `u64` device addresses ([`Buf::addr`]);
//! - kernel families live in [`kernels`], one Rust file per .cu file, each declaring its kernels
//!   with [`gpu_kernels!`] and giving typed launch wrappers;
//! - every kernel has a CPU twin of the same name in `device::cpu::twin`, the reference the
//!   parity tests compare against.

pub mod alloc;
pub mod check;
pub(crate) mod checker;
pub mod cost;
pub mod cuda;
pub mod driver;
pub mod emu;
pub mod info;
pub mod kernel_store;
pub mod kernels;
pub mod nvrtc;
pub mod sparse_weight;

use anyhow::{bail, ensure, Result};
use bytemuck::{Pod, Zeroable};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub use cost::{Cost, Event, KernelCost};

/// CUDA's `dim3`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn x(x: u32) -> Self {
        Dim3 { x, y: 1, z: 1 }
    }
    pub const fn xy(x: u32, y: u32) -> Self {
        Dim3 { x, y, z: 1 }
    }
    pub const fn xyz(x: u32, y: u32, z: u32) -> Self {
        Dim3 { x, y, z }
    }
    pub fn count(&self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: Dim3,
    pub block: Dim3,
    pub smem: u32,
}

impl LaunchCfg {
    /// One-dimensional launch covering `n` items with `threads` per block.
    pub fn linear(n: usize, threads: u32) -> Self {
        let blocks = n.div_ceil(threads as usize).max(1);
        LaunchCfg {
            grid: Dim3::x(blocks.min(u32::MAX as usize) as u32),
            block: Dim3::x(threads),
            smem: 0,
        }
    }

    /// Checks the limits every CUDA device since sm_50 shares, so both backends refuse the same
    /// launches.
    pub fn validate(&self, kernel: &str) -> Result<()> {
        let b = self.block;
        ensure!(
            b.count() >= 1 && b.count() <= 1024 && b.z <= 64,
            "kernel {kernel}: block {}×{}×{} is outside CUDA's limits (≤ 1024 threads, z ≤ 64)",
            b.x,
            b.y,
            b.z
        );
        let g = self.grid;
        ensure!(
            g.count() >= 1 && g.y <= 65535 && g.z <= 65535,
            "kernel {kernel}: grid {}×{}×{} is outside CUDA's limits",
            g.x,
            g.y,
            g.z
        );
        ensure!(
            self.smem <= 48 * 1024,
            "kernel {kernel}: {} bytes of dynamic shared memory exceed 48 KiB (the limit without \
             an opt-in attribute)",
            self.smem
        );
        Ok(())
    }
}

/// The emulator's host entry of a kernel: runs the whole grid on the calling thread.
pub type EmuEntry = unsafe extern "C" fn(grid: Dim3, block: Dim3, smem: u32, params: *const c_void);

/// One kernel: its name (the PTX `.entry`), the kernel file it lives in, and its emulator entry.
pub struct KernelDef {
    pub name: &'static str,
    pub module: &'static str,
    pub emu: EmuEntry,
}

impl std::fmt::Debug for KernelDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.module, self.name)
    }
}

/// Declares the kernels of one .cu file: for each name, the emulator symbol and a `KernelDef`
/// constant of the same name, plus `KERNELS`, the file's list (the source of truth that tests
/// check against the PTX `.entry` names).
///
/// ```ignore
/// gpu_kernels!("xent" => xent_fwd_f32, xent_bwd_f32);
/// ```
#[macro_export]
macro_rules! gpu_kernels {
    ($module:literal => $($name:ident),+ $(,)?) => {
        mod emu_entries {
            #[allow(unused_imports)]
            use $crate::device::gpu::Dim3;
            extern "C" {
                $(pub fn $name(grid: Dim3, block: Dim3, smem: u32, params: *const std::ffi::c_void);)+
            }
        }
        $(
            #[allow(non_upper_case_globals)]
            pub const $name: $crate::device::gpu::KernelDef = $crate::device::gpu::KernelDef {
                name: stringify!($name),
                module: $module,
                emu: emu_entries::$name,
            };
        )+
        /// Every kernel of this file.
        pub const KERNELS: &[$crate::device::gpu::KernelDef] = &[$($name),+];
    };
}

/// The kernel sources, embedded so the binary compiles them with NVRTC wherever it runs.
pub struct ModuleSource {
    pub name: &'static str,
    pub source: &'static str,
}

/// Included textually ahead of every kernel file for NVRTC (which has no include path here).
pub const COMMON_HEADER: &str = include_str!("../../../kernels/common.cuh");

/// A kernel file's entry in [`MODULES`], its source embedded from `kernels/<name>.cu`.
macro_rules! kernel_file {
    ($name:literal) => {
        ModuleSource {
            name: $name,
            source: include_str!(concat!("../../../kernels/", $name, ".cu")),
        }
    };
}

pub const MODULES: &[ModuleSource] = &[
    kernel_file!("conv"),
    kernel_file!("xent"),
    kernel_file!("topk"),
    kernel_file!("norm"),
    kernel_file!("pool"),
    kernel_file!("elementwise"),
    kernel_file!("optim"),
];

/// The source NVRTC compiles for a module: common.cuh pasted in place of its include line.
pub fn module_source_for_nvrtc(m: &ModuleSource) -> String {
    let mut out = String::with_capacity(COMMON_HEADER.len() + m.source.len() + 64);
    for line in m.source.lines() {
        if line.trim_start().starts_with("#include \"common.cuh\"") {
            out.push_str("// ---- common.cuh ----\n");
            out.push_str(COMMON_HEADER);
            out.push_str("\n// ---- end common.cuh ----\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A device buffer. Its address is what kernels receive in their parameter structs.
pub struct Buf {
    bytes: usize,
    addr: u64,
    store: Store,
}

enum Store {
    /// Emulator memory: 16-byte aligned host words.
    Host(Vec<u128>),
    /// The dry emulator's: an address and a size, no memory (nothing ever runs there).
    Absent,
    Cuda(cudarc::driver::CudaSlice<u8>),
}

impl Buf {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The address kernels see (host pointer under the emulator, CUdeviceptr on a GPU).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Number of `T` elements the buffer holds.
    pub fn len_of<T>(&self) -> usize {
        self.bytes / std::mem::size_of::<T>()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Store::Host(_) = self.store {
            emu::unregister_buffer(self.addr);
        }
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} bytes @ {:#x})", self.bytes, self.addr())
    }
}

/// What a backend has done so far: kernel launches, copies each way, and host synchronisations
/// (every copy to the host waits for the stream). A training step's cost beyond its kernels.
#[derive(Debug, Default)]
pub struct Traffic {
    launches: AtomicU64,
    to_device: AtomicU64,
    to_host: AtomicU64,
    syncs: AtomicU64,
    fills: AtomicU64,
    /// Every event since `Gpu::record` (None: not recording).
    log: Mutex<Option<Vec<Event>>>,
    /// Whether `log` is open: tested first, so that a launch that is not recorded takes no lock
    /// and computes no cost.
    recording: AtomicBool,
}

/// A snapshot of [`Traffic`]; subtract two for what happened between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrafficCounts {
    pub launches: u64,
    /// Copies from the host (uploads of batches, scalars, tables).
    pub to_device: u64,
    /// Copies to the host (each one a synchronisation of the stream).
    pub to_host: u64,
    /// Explicit synchronisations (`Gpu::sync`).
    pub syncs: u64,
    /// Memsets (`Gpu::fill_bytes`; the caching allocator zeroes what `GpuDevice::take` hands
    /// out).
    pub fills: u64,
}

impl std::ops::Sub for TrafficCounts {
    type Output = TrafficCounts;
    fn sub(self, o: Self) -> Self {
        TrafficCounts {
            launches: self.launches - o.launches,
            to_device: self.to_device - o.to_device,
            to_host: self.to_host - o.to_host,
            syncs: self.syncs - o.syncs,
            fills: self.fills - o.fills,
        }
    }
}

impl Traffic {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    fn note(&self, event: impl FnOnce() -> Event) {
        if !self.recording() {
            return;
        }
        if let Some(log) = self.log.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            log.push(event());
        }
    }

    /// Opens (`Some`) or closes (`None`) the log; returns what it held.
    fn set_log(&self, log: Option<Vec<Event>>) -> Option<Vec<Event>> {
        let mut guard = self.log.lock().unwrap_or_else(|e| e.into_inner());
        self.recording.store(log.is_some(), Ordering::Relaxed);
        std::mem::replace(&mut *guard, log)
    }

    fn snapshot(&self) -> TrafficCounts {
        TrafficCounts {
            launches: self.launches.load(Ordering::Relaxed),
            to_device: self.to_device.load(Ordering::Relaxed),
            to_host: self.to_host.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            fills: self.fills.load(Ordering::Relaxed),
        }
    }
}

/// A CUDA backend instance: a real GPU or the emulator.
pub enum Gpu {
    /// The emulator and what it has done.
    Emu(Emulator),
    Cuda(Box<cuda::CudaGpu>),
}

/// The emulator's state: its counters, and whether it is dry.
#[derive(Debug, Default)]
pub struct Emulator {
    traffic: Traffic,
    /// Dry: launches, copies and memsets are recorded and counted but nothing runs, buffers
    /// take no memory and reads return zeros (the cost model's device).
    dry: bool,
    /// The dry emulator's next buffer address.
    next_addr: AtomicU64,
    /// Launches with the bytes they touched, while measuring (`Gpu::measure`).
    measured: Mutex<Option<Vec<cost::Measured>>>,
    /// Whether `measured` is open (tested before taking its lock).
    measuring: AtomicBool,
}

impl Gpu {
    /// The emulator (always available).
    pub fn emu() -> Gpu {
        Gpu::Emu(Emulator::default())
    }

    /// The dry emulator: the backend's whole host side (checks, launch configurations,
    /// allocations, counters, [`Gpu::record`]) with nothing run and no memory behind buffers,
    /// so that a full-size training step can be costed ([`cost`]). Results read back are zeros.
    pub fn emu_dry() -> Gpu {
        Gpu::Emu(Emulator {
            dry: true,
            next_addr: AtomicU64::new(1 << 40),
            ..Default::default()
        })
    }

    /// True for the dry emulator.
    pub fn is_dry(&self) -> bool {
        matches!(self, Gpu::Emu(e) if e.dry)
    }

    /// Starts recording every launch (with its [`Cost`]), copy, memset and synchronisation;
    /// [`Gpu::take_record`] returns them. Recording again restarts the record.
    pub fn record(&self) {
        self.traffic_counters().set_log(Some(Vec::new()));
    }

    /// Starts measuring (the emulator only): every launch from now runs with the emulator's
    /// global-memory counting (`emu::count_global_bytes`, several times slower) and is kept with
    /// its stated cost, for [`Gpu::take_measured`]. An error on a GPU or the dry emulator.
    pub fn measure(&self) -> Result<()> {
        match self {
            Gpu::Emu(e) if !e.dry => {
                *e.measured.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
                e.measuring.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => bail!("only the emulator measures the bytes a kernel touches"),
        }
    }

    /// The launches measured since [`Gpu::measure`], and measuring stops.
    pub fn take_measured(&self) -> Vec<cost::Measured> {
        match self {
            Gpu::Emu(e) => {
                let mut guard = e.measured.lock().unwrap_or_else(|p| p.into_inner());
                e.measuring.store(false, Ordering::Relaxed);
                guard.take().unwrap_or_default()
            }
            Gpu::Cuda(_) => Vec::new(),
        }
    }

    /// The events since [`Gpu::record`], and recording stops (empty if it never started).
    pub fn take_record(&self) -> Vec<Event> {
        self.traffic_counters().set_log(None).unwrap_or_default()
    }

    /// GPU `ordinal` through cudarc; a clear error when no usable GPU or NVRTC is found.
    pub fn cuda(ordinal: usize) -> Result<Gpu> {
        Ok(Gpu::Cuda(Box::new(cuda::CudaGpu::new(ordinal)?)))
    }

    pub fn is_emu(&self) -> bool {
        matches!(self, Gpu::Emu(_))
    }

    /// A short description: "emu" or the GPU's name and compute capability.
    pub fn describe(&self) -> String {
        match self {
            Gpu::Emu(e) if e.dry => "emu, dry (nothing runs: the cost model's device)".into(),
            Gpu::Emu(_) => "emu (CUDA kernels emulated on the CPU)".into(),
            Gpu::Cuda(c) => c.describe(),
        }
    }

    /// A zero-filled buffer of `bytes` bytes.
    pub fn alloc(&self, bytes: usize) -> Result<Buf> {
        let (addr, store) = match self {
            Gpu::Emu(e) if e.dry => {
                let addr = e.next_addr.fetch_add(
                    bytes.next_multiple_of(256).max(256) as u64,
                    Ordering::Relaxed,
                );
                (addr, Store::Absent)
            }
            Gpu::Emu(_) => {
                let v = vec![0u128; bytes.div_ceil(16).max(1)];
                emu::register_buffer(v.as_ptr() as u64, bytes);
                (v.as_ptr() as u64, Store::Host(v))
            }
            Gpu::Cuda(c) => {
                let (addr, s) = c.alloc_zeros(bytes.max(1))?;
                (addr, Store::Cuda(s))
            }
        };
        Ok(Buf { bytes, addr, store })
    }

    /// A zero-filled buffer of `n` elements of `T`.
    pub fn zeros<T: Pod>(&self, n: usize) -> Result<Buf> {
        self.alloc(n * std::mem::size_of::<T>())
    }

    /// A new buffer holding `src`.
    pub fn upload<T: Pod>(&self, src: &[T]) -> Result<Buf> {
        let mut b = self.alloc(std::mem::size_of_val(src))?;
        self.write(&mut b, src)?;
        Ok(b)
    }

    /// Copies `src` into the start of `dst`.
    pub fn write<T: Pod>(&self, dst: &mut Buf, src: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(src);
        ensure!(
            bytes.len() <= dst.bytes,
            "write of {} bytes into a buffer of {}",
            bytes.len(),
            dst.bytes
        );
        match (&mut dst.store, self) {
            (Store::Host(v), Gpu::Emu(_)) => {
                bytemuck::cast_slice_mut::<u128, u8>(v)[..bytes.len()].copy_from_slice(bytes)
            }
            (Store::Cuda(s), Gpu::Cuda(c)) => c.write(s, bytes)?,
            (Store::Absent, Gpu::Emu(_)) => {}
            _ => bail!("buffer belongs to another backend"),
        }
        let t = self.traffic_counters();
        Traffic::count(&t.to_device);
        t.note(|| Event::ToDevice {
            bytes: bytes.len() as u64,
        });
        Ok(())
    }

    /// The whole buffer as `T`s.
    pub fn read<T: Pod>(&self, src: &Buf) -> Result<Vec<T>> {
        let n = src.len_of::<T>();
        let mut out = vec![T::zeroed(); n];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
        match (&src.store, self) {
            (Store::Host(v), Gpu::Emu(_)) => {
                bytes.copy_from_slice(&bytemuck::cast_slice::<u128, u8>(v)[..bytes.len()])
            }
            (Store::Cuda(s), Gpu::Cuda(c)) => c.read(s, bytes)?,
            (Store::Absent, Gpu::Emu(_)) => {}
            _ => bail!("buffer belongs to another backend"),
        }
        let t = self.traffic_counters();
        Traffic::count(&t.to_host);
        t.note(|| Event::ToHost {
            bytes: bytes.len() as u64,
        });
        Ok(out)
    }

    /// Sets every byte of `dst` to `byte` (0xFF poisons f32 outputs with NaN before a test).
    pub fn fill_bytes(&self, dst: &mut Buf, byte: u8) -> Result<()> {
        match (&mut dst.store, self) {
            (Store::Host(v), Gpu::Emu(_)) => bytemuck::cast_slice_mut::<u128, u8>(v).fill(byte),
            (Store::Cuda(s), Gpu::Cuda(c)) => c.memset(s, byte)?,
            (Store::Absent, Gpu::Emu(_)) => {}
            _ => bail!("buffer belongs to another backend"),
        }
        let t = self.traffic_counters();
        Traffic::count(&t.fills);
        t.note(|| Event::Memset {
            bytes: dst.bytes as u64,
        });
        Ok(())
    }

    /// Fills an emulator buffer with 0xFF bytes (NaN as f32), uncounted: how the emulator
    /// marks memory whose contents are undefined. A no-op on a GPU and on the dry emulator.
    pub fn poison(&self, dst: &mut Buf) {
        if let (Store::Host(v), Gpu::Emu(_)) = (&mut dst.store, self) {
            bytemuck::cast_slice_mut::<u128, u8>(v).fill(0xFF);
        }
    }

    fn traffic_counters(&self) -> &Traffic {
        match self {
            Gpu::Emu(e) => &e.traffic,
            Gpu::Cuda(c) => &c.traffic,
        }
    }

    /// What this instance has done so far: launches, copies each way, synchronisations.
    pub fn traffic(&self) -> TrafficCounts {
        self.traffic_counters().snapshot()
    }

    /// Kernel launches made through this instance so far (each successful [`Gpu::launch`]).
    pub fn launches(&self) -> u64 {
        self.traffic().launches
    }

    /// Launches `kernel` with its parameter struct. On a GPU the launch is asynchronous; on the
    /// emulator it has finished when this returns.
    pub fn launch<P: Pod + KernelCost>(
        &self,
        kernel: &KernelDef,
        cfg: LaunchCfg,
        params: &P,
    ) -> Result<()> {
        self.launch_costed(kernel, cfg, params, || params.cost(kernel, &cfg))
    }

    /// [`Gpu::launch`] with the cost stated by the caller, for parameter structs that cannot
    /// know it (a table of tensors in device memory). `cost` runs only while the launch is
    /// recorded or measured: an ordinary launch pays nothing for the cost model.
    pub fn launch_costed<P: Pod>(
        &self,
        kernel: &KernelDef,
        cfg: LaunchCfg,
        params: &P,
        cost: impl FnOnce() -> Cost,
    ) -> Result<()> {
        cfg.validate(kernel.name)?;
        let traffic = self.traffic_counters();
        let measuring = matches!(self, Gpu::Emu(e) if e.measuring.load(Ordering::Relaxed));
        let cost = (traffic.recording() || measuring).then(cost);
        if let Some(c) = cost {
            traffic.note(|| Event::launch(kernel, &cfg, c));
        }
        match self {
            Gpu::Emu(e) if e.dry => {
                Traffic::count(&e.traffic.launches);
                Ok(())
            }
            Gpu::Emu(e) => {
                Traffic::count(&e.traffic.launches);
                // SAFETY: `params` is the #[repr(C)] struct the kernel file mirrors (checked by
                // the layout tests); the buffers it addresses are host memory owned by `Buf`s the
                // caller keeps alive for this synchronous call.
                let run = || unsafe {
                    (kernel.emu)(
                        cfg.grid,
                        cfg.block,
                        cfg.smem,
                        params as *const P as *const c_void,
                    )
                };
                match cost.filter(|_| measuring) {
                    Some(cost) => {
                        let ((), bytes) = emu::count_global_bytes(run);
                        let mut log = e.measured.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(log) = log.as_mut() {
                            log.push(cost::Measured {
                                kernel: kernel.name,
                                cost,
                                bytes,
                            });
                        }
                    }
                    None => run(),
                }
                Ok(())
            }
            Gpu::Cuda(c) => {
                c.launch(kernel, cfg, params)?;
                Traffic::count(&c.traffic.launches);
                Ok(())
            }
        }
    }

    /// Waits until all launched work has finished (a no-op on the emulator).
    pub fn sync(&self) -> Result<()> {
        let t = self.traffic_counters();
        Traffic::count(&t.syncs);
        t.note(|| Event::Sync);
        match self {
            Gpu::Emu(_) => Ok(()),
            Gpu::Cuda(c) => c.sync(),
        }
    }
}

/// Every kernel of every file.
pub fn all_kernels() -> Vec<&'static KernelDef> {
    kernels::ALL.iter().flat_map(|k| k.iter()).collect()
}
