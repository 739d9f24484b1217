//! The real GPU: the CUDA driver through cudarc, kernels from `kernel_store`.
//!
//! Before cudarc sees the driver, `driver::probe` checks its version and symbols (cudarc would
//! panic on a missing one). Kernels are cubins for the GPU's own sm_XY (PTX only for an
//! architecture NVRTC does not know), from `REST_KERNEL_DIR`, the on-disk cache, or NVRTC, loaded
//! per kernel file on first use. Every launch and copy goes to one stream of our own (not the
//! legacy default stream), so nothing synchronises implicitly with other libraries and the step
//! can be captured as a graph. Buffers are plain allocations whose addresses the parameter
//! structs carry, so cudarc's per-buffer event tracking is off (one stream orders everything).

use super::driver::{self, explain, DriverInfo};
use super::kernel_store::Provider;
use super::{KernelDef, LaunchCfg};
use anyhow::{bail, Context, Result};
use bytemuck::Pod;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Parameter struct passed by value to a kernel.
#[repr(transparent)]
struct ByValue<P>(P);
// SAFETY: P is Pod and #[repr(C)], mirrored field for field by the kernel's struct; the driver
// copies its bytes into the kernel's parameter space.
unsafe impl<P: Pod> DeviceRepr for ByValue<P> {}

pub struct CudaGpu {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    cc: (i32, i32),
    total_mem: usize,
    driver: &'static DriverInfo,
    kernels: Provider,
    /// Per kernel file: its module and where its image came from.
    modules: Mutex<HashMap<&'static str, (Arc<CudaModule>, String)>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// What this GPU has done so far (`Gpu::traffic`).
    pub(super) traffic: super::Traffic,
}

impl CudaGpu {
    pub fn new(ordinal: usize) -> Result<Self> {
        let driver = driver::probe()?;
        let count = CudaContext::device_count().map_err(|e| explain(&e, "counting GPUs"))?;
        if count <= 0 {
            bail!("the CUDA driver reports no GPU");
        }
        if ordinal >= count as usize {
            bail!("cuda:{ordinal} requested but only {count} GPU(s) are visible");
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| explain(&e, &format!("creating a context on cuda:{ordinal}")))?;
        // SAFETY: one stream orders all work; buffers are shared only through raw addresses in
        // parameter structs, which the event tracking could not see anyway.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| explain(&e, &format!("creating a stream on cuda:{ordinal}")))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| explain(&e, "reading the compute capability"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let total_mem = ctx.total_mem().unwrap_or(0);
        let arch = (cc.0 * 10 + cc.1) as u32;
        let kernels = Provider::from_env(arch, driver.cuda)?;
        Ok(CudaGpu {
            ordinal,
            ctx,
            stream,
            name,
            cc,
            total_mem,
            driver,
            kernels,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            traffic: super::Traffic::default(),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "cuda:{} {} (compute capability {}.{})",
            self.ordinal, self.name, self.cc.0, self.cc.1
        )
    }

    /// What `rest device` prints about this GPU: (label, value) lines.
    pub fn report(&self) -> Vec<(&'static str, String)> {
        let free = self.ctx.mem_get_info().map(|(f, _)| f).ok();
        let gib = |b: usize| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        vec![
            ("GPU", self.describe()),
            (
                "memory",
                match free {
                    Some(f) => format!("{} total, {} free", gib(self.total_mem), gib(f)),
                    None => gib(self.total_mem),
                },
            ),
            (
                "driver",
                format!(
                    "{} (supports CUDA {}.{})",
                    self.driver.version.as_deref().unwrap_or("version unknown"),
                    self.driver.cuda.0,
                    self.driver.cuda.1
                ),
            ),
            (
                "stream",
                "own non-blocking stream (not the legacy default stream)".into(),
            ),
            ("kernels", self.kernels.describe()),
        ]
    }

    /// Loads every kernel file now; returns, per file, what was loaded from where
    /// (e.g. "conv: sm_90 cubin from NVRTC 13.0").
    pub fn load_all(&self) -> Result<Vec<String>> {
        super::MODULES
            .iter()
            .map(|m| {
                let (_, from) = self.module(m.name)?;
                Ok(format!("{}: {from}", m.name))
            })
            .collect()
    }

    /// The loaded module of kernel file `name` and where its image came from.
    fn module(&self, name: &'static str) -> Result<(Arc<CudaModule>, String)> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(name) {
            return Ok(m.clone());
        }
        let img = self.kernels.image(name)?;
        let kind = if img.target.is_cubin() {
            "cubin"
        } else {
            "PTX, compiled by the driver"
        };
        let from = format!(
            "{} {kind} from {} (NVRTC {}.{})",
            img.target, img.from, img.nvrtc.0, img.nvrtc.1
        );
        let m = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(img.bytes))
            .map_err(|e| {
                explain(
                    &e,
                    &format!("loading kernels/{name}.cu ({from}) on {}", self.describe()),
                )
            })?;
        modules.insert(name, (m.clone(), from.clone()));
        Ok((m, from))
    }

    pub(super) fn alloc_zeros(&self, bytes: usize) -> Result<(u64, CudaSlice<u8>)> {
        let s = self.stream.alloc_zeros::<u8>(bytes).map_err(|e| {
            explain(
                &e,
                &format!("allocating {bytes} bytes on {}", self.describe()),
            )
        })?;
        let addr = {
            let (addr, _guard) = s.device_ptr(&self.stream);
            addr
        };
        Ok((addr, s))
    }

    pub(super) fn write(&self, dst: &mut CudaSlice<u8>, src: &[u8]) -> Result<()> {
        let mut view = dst.slice_mut(0..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| explain(&e, "copying to the GPU"))?;
        Ok(())
    }

    pub(super) fn read(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<()> {
        let view = src.slice(0..dst.len());
        self.stream
            .memcpy_dtoh(&view, dst)
            .map_err(|e| explain(&e, "copying from the GPU"))?;
        self.sync()
    }

    pub(super) fn memset(&self, dst: &mut CudaSlice<u8>, byte: u8) -> Result<()> {
        let (ptr, _guard) = dst.device_ptr(&self.stream);
        // SAFETY: `ptr` addresses `dst.len()` bytes of a live allocation on this context.
        unsafe {
            cudarc::driver::result::memset_d8_async(ptr, byte, dst.len(), self.stream.cu_stream())
        }
        .map_err(|e| explain(&e, "filling a GPU buffer"))?;
        Ok(())
    }

    fn function(&self, k: &KernelDef) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(k.name) {
            return Ok(f.clone());
        }
        let (module, _) = self.module(k.module)?;
        let f = module
            .load_function(k.name)
            .with_context(|| format!("kernel {} missing from kernels/{}.cu", k.name, k.module))?;
        self.functions.lock().unwrap().insert(k.name, f.clone());
        Ok(f)
    }

    pub(super) fn launch<P: Pod>(&self, k: &KernelDef, cfg: LaunchCfg, params: &P) -> Result<()> {
        let f = self.function(k)?;
        let p = ByValue(*params);
        let lc = LaunchConfig {
            grid_dim: (cfg.grid.x, cfg.grid.y, cfg.grid.z),
            block_dim: (cfg.block.x, cfg.block.y, cfg.block.z),
            shared_mem_bytes: cfg.smem,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p);
        // SAFETY: the parameter struct mirrors the kernel's (layout tests), its addresses point
        // to live buffers of this context that the caller keeps alive until the stream is synced.
        unsafe { b.launch(lc) }.map_err(|e| explain(&e, &format!("launching {}", k.name)))?;
        Ok(())
    }

    pub(super) fn sync(&self) -> Result<()> {
        // Launches are asynchronous: a kernel's fault surfaces here.
        self.stream
            .synchronize()
            .map_err(|e| explain(&e, &format!("waiting for {}", self.describe())))
    }
}
