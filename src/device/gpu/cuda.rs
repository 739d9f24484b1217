//! The real GPU: cudarc driver + NVRTC, loaded at run time.
//!
//! Each kernel file is compiled once per process, for the device's own architecture (PTX for
//! `compute_XY`, which the driver JIT-compiles), on first use of one of its kernels. Work goes to
//! one stream; buffers are plain allocations whose addresses the parameter structs carry, so
//! cudarc's per-buffer event tracking is switched off (one stream orders everything).

use super::{module_source_for_nvrtc, KernelDef, LaunchCfg, MODULES};
use anyhow::{anyhow, bail, Context, Result};
use bytemuck::Pod;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// Whether the NVRTC library can be loaded (no compilation is attempted). When the dynamic
/// loader cannot find it by name, the usual install places are tried too (see [`locate_nvrtc`]).
pub fn nvrtc_present() -> bool {
    nvrtc_origin().is_some()
}

/// Where NVRTC was found: "LD_LIBRARY_PATH / system" or the folder it was preloaded from.
pub fn nvrtc_origin() -> Option<&'static str> {
    static ORIGIN: OnceLock<Option<String>> = OnceLock::new();
    ORIGIN
        .get_or_init(|| {
            // SAFETY: only tries to dlopen the NVRTC library and reports whether it loaded.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Some("found by the dynamic loader (LD_LIBRARY_PATH or system)".into());
            }
            let dir = locate_nvrtc()?;
            preload_nvrtc(&dir).then(|| dir.display().to_string())
        })
        .as_deref()
}

/// Folders that may hold `libnvrtc.so.13`, in order: `REST_NVRTC_DIR`, `$CUDA_HOME/lib64`,
/// `/usr/local/cuda/lib64`, and the `nvidia/cu13/lib` folder of the PyPI wheel
/// (`pip install nvidia-cuda-nvrtc==13.0.88`) in python3's site-packages.
pub fn locate_nvrtc() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("REST_NVRTC_DIR") {
        let d = PathBuf::from(d);
        if !d.is_dir() {
            eprintln!(
                "warning: REST_NVRTC_DIR={} is not a folder; looking for NVRTC elsewhere",
                d.display()
            );
        }
        dirs.push(d);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(PathBuf::from(d).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    // The wheel's folder: ask python where the `nvidia` namespace package lives.
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import nvidia, sys; [print(p) for p in nvidia.__path__]",
        ])
        .stderr(std::process::Stdio::null())
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            dirs.push(PathBuf::from(line.trim()).join("cu13/lib"));
        }
    }
    dirs.into_iter()
        .find(|d| d.join("libnvrtc.so.13").is_file())
}

/// Loads NVRTC (and its builtins) from `dir` by full path, so that cudarc's later load by
/// name finds the already-loaded library. Returns whether it worked.
fn preload_nvrtc(dir: &std::path::Path) -> bool {
    let mut ok = true;
    for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: dlopen of a shared library by full path; the handle is deliberately leaked so
        // the library stays loaded for the life of the process.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        ok &= !h.is_null();
    }
    // SAFETY: as in nvrtc_origin: a dlopen by name, which now finds the preloaded library.
    ok && unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The NVRTC version as (major, minor), if the library loads.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: the library is present (checked above); nvrtcVersion writes two ints.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// NVRTC options shared by the runtime compile and the compile tests.
pub fn compile_options(arch: &'static str) -> CompileOptions {
    CompileOptions {
        arch: Some(arch),
        // Numerics as documented per kernel: no fast-math, IEEE division and square root.
        fmad: Some(true),
        options: vec!["--std=c++17".into()],
        name: None,
        ..Default::default()
    }
}

/// Compiles one kernel file to PTX for `arch` (e.g. "compute_90").
pub fn compile_module(name: &str, arch: &'static str) -> Result<String> {
    if !nvrtc_present() {
        bail!(
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit or `pip install \
             nvidia-cuda-nvrtc==13.0.88` and put its lib folder on LD_LIBRARY_PATH"
        );
    }
    let m = MODULES
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| anyhow!("no kernel file named {name}"))?;
    let src = module_source_for_nvrtc(m);
    let mut opts = compile_options(arch);
    opts.name = Some(format!("{name}.cu"));
    let ptx = compile_ptx_with_opts(src, opts)
        .map_err(|e| anyhow!("NVRTC failed on kernels/{name}.cu for {arch}: {e}"))?;
    Ok(ptx.to_src())
}

/// `compile_module`, once per kernel file and architecture per process: every `CudaGpu` (one per
/// model or command, e.g. each model of `rest bench gpu`) reuses the PTX instead of running
/// NVRTC again.
fn cached_ptx(name: &'static str, arch: &'static str) -> Result<String> {
    type Cache = Mutex<HashMap<(&'static str, &'static str), String>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(ptx) = cache.lock().unwrap().get(&(name, arch)) {
        return Ok(ptx.clone());
    }
    let ptx = compile_module(name, arch)?;
    cache.lock().unwrap().insert((name, arch), ptx.clone());
    Ok(ptx)
}

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
    arch: &'static str,
    name: String,
    cc: (i32, i32),
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// Kernel launches so far (`Gpu::launches`).
    pub(super) launches: std::sync::atomic::AtomicU64,
}

impl CudaGpu {
    pub fn new(ordinal: usize) -> Result<Self> {
        if !super::super::cuda_driver_present() {
            bail!("no CUDA driver library (libcuda.so) found on this machine");
        }
        if !nvrtc_present() {
            bail!(
                "the CUDA driver is present but NVRTC (libnvrtc.so) is not: install the CUDA \
                 toolkit or `pip install nvidia-cuda-nvrtc==13.0.88` and put its lib folder on \
                 LD_LIBRARY_PATH"
            );
        }
        let count = CudaContext::device_count()
            .map_err(|e| anyhow!("CUDA driver found but unusable: {e}"))?;
        if count <= 0 {
            bail!("the CUDA driver reports no GPU");
        }
        if ordinal >= count as usize {
            bail!("cuda:{ordinal} requested but only {count} GPU(s) are visible");
        }
        let ctx = CudaContext::new(ordinal)
            .with_context(|| format!("creating a context on cuda:{ordinal}"))?;
        // SAFETY: one stream orders all work; buffers are shared only through raw addresses in
        // parameter structs, which the event tracking could not see anyway.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let cc = ctx.compute_capability()?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let arch: &'static str = Box::leak(format!("compute_{}{}", cc.0, cc.1).into_boxed_str());
        Ok(CudaGpu {
            ordinal,
            ctx,
            stream,
            arch,
            name,
            cc,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            launches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "cuda:{} {} (compute capability {}.{})",
            self.ordinal, self.name, self.cc.0, self.cc.1
        )
    }

    pub(super) fn alloc_zeros(&self, bytes: usize) -> Result<(u64, CudaSlice<u8>)> {
        let s = self
            .stream
            .alloc_zeros::<u8>(bytes)
            .with_context(|| format!("allocating {bytes} bytes on {}", self.describe()))?;
        let addr = {
            let (addr, _guard) = s.device_ptr(&self.stream);
            addr
        };
        Ok((addr, s))
    }

    pub(super) fn write(&self, dst: &mut CudaSlice<u8>, src: &[u8]) -> Result<()> {
        let mut view = dst.slice_mut(0..src.len());
        self.stream.memcpy_htod(src, &mut view)?;
        Ok(())
    }

    pub(super) fn read(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<()> {
        let view = src.slice(0..dst.len());
        self.stream.memcpy_dtoh(&view, dst)?;
        self.stream.synchronize()?;
        Ok(())
    }

    pub(super) fn memset(&self, dst: &mut CudaSlice<u8>, byte: u8) -> Result<()> {
        let (ptr, _guard) = dst.device_ptr(&self.stream);
        // SAFETY: `ptr` addresses `dst.len()` bytes of a live allocation on this context.
        unsafe {
            cudarc::driver::result::memset_d8_async(ptr, byte, dst.len(), self.stream.cu_stream())
        }?;
        Ok(())
    }

    fn function(&self, k: &KernelDef) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(k.name) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap();
            match modules.get(k.module) {
                Some(m) => m.clone(),
                None => {
                    let ptx = cached_ptx(k.module, self.arch)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                        .with_context(|| {
                            format!("loading kernels/{}.cu on {}", k.module, self.describe())
                        })?;
                    modules.insert(k.module, m.clone());
                    m
                }
            }
        };
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
        unsafe { b.launch(lc) }.with_context(|| format!("launching {}", k.name))?;
        Ok(())
    }

    pub(super) fn sync(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }
}
