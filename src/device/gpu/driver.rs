//! The CUDA driver as it is on this machine, probed before cudarc touches it.
//!
//! cudarc (built for the CUDA 13.0 API) resolves each driver function on first call and panics
//! when the symbol is missing, as it can be on an older driver. So we dlopen `libcuda.so.1`
//! ourselves, ask `cuDriverGetVersion` (it needs no `cuInit`), and check that every symbol our
//! path through cudarc calls exists; only then does cudarc get the driver.

use anyhow::{anyhow, bail, Result};
use std::ffi::{c_int, c_void, CString};

/// The driver functions cudarc calls on our path (context, stream, memory, modules, launches,
/// errors). Each exists since CUDA 11.2; a driver lacking one is refused by name.
pub const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuMemAllocAsync",
    "cuMemAlloc_v2",
    "cuMemFreeAsync",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuGetErrorString",
    "cuGetErrorName",
];

/// The oldest driver API we accept: CUDA 12.0 (cubins from an NVRTC 12 run there).
pub const MIN_CUDA: (u32, u32) = (12, 0);

/// What the probe found.
#[derive(Clone, Debug)]
pub struct DriverInfo {
    /// The CUDA version the driver supports, e.g. (13, 0).
    pub cuda: (u32, u32),
    /// The kernel module's version string (e.g. "580.65.06"), when /proc tells it.
    pub version: Option<String>,
}

/// The NVIDIA kernel module's version from /proc/driver/nvidia/version.
fn kernel_module_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul ..."
    let line = text.lines().next()?;
    line.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

/// Loads the driver library, reads its CUDA version and checks [`REQUIRED_SYMBOLS`]. Cached for
/// the process. The error names the cause and the fix.
pub fn probe() -> Result<&'static DriverInfo> {
    static INFO: std::sync::OnceLock<std::result::Result<DriverInfo, String>> =
        std::sync::OnceLock::new();
    INFO.get_or_init(|| probe_once().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn probe_once() -> Result<DriverInfo> {
    let mut handle: *mut c_void = std::ptr::null_mut();
    for name in ["libcuda.so.1", "libcuda.so"] {
        let c = CString::new(name).expect("no NUL");
        // SAFETY: dlopen of the driver library by name; the handle is kept for the process
        // (cudarc loads the same library again, which only bumps its reference count).
        handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            break;
        }
    }
    if handle.is_null() {
        bail!(
            "no CUDA driver library (libcuda.so.1) on this machine: install the NVIDIA driver \
             (≥ 525 for CUDA 12, ≥ 580 for CUDA 13)"
        );
    }
    let missing: Vec<&str> = REQUIRED_SYMBOLS
        .iter()
        .copied()
        .filter(|s| {
            let c = CString::new(*s).expect("no NUL");
            // SAFETY: dlsym only looks the name up in a live handle.
            unsafe { libc::dlsym(handle, c.as_ptr()) }.is_null()
        })
        .collect();
    let get_version = CString::new("cuDriverGetVersion").expect("no NUL");
    // SAFETY: as above.
    let f = unsafe { libc::dlsym(handle, get_version.as_ptr()) };
    if f.is_null() {
        bail!("libcuda.so.1 has no cuDriverGetVersion: it is not an NVIDIA CUDA driver");
    }
    // SAFETY: cuDriverGetVersion(int*) -> CUresult is its documented C signature.
    let f: unsafe extern "C" fn(*mut c_int) -> c_int = unsafe { std::mem::transmute(f) };
    let mut v: c_int = 0;
    // SAFETY: writes one int; valid before cuInit.
    let rc = unsafe { f(&mut v) };
    if rc != 0 {
        bail!("cuDriverGetVersion failed (CUDA error {rc}): the driver installation is broken");
    }
    let cuda = ((v / 1000) as u32, ((v % 1000) / 10) as u32);
    let info = DriverInfo {
        cuda,
        version: kernel_module_version(),
    };
    if cuda < MIN_CUDA {
        bail!(
            "the NVIDIA driver{} supports CUDA {}.{}; rest needs CUDA ≥ {}.{} (driver ≥ 525): \
             update the driver",
            info.version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            cuda.0,
            cuda.1,
            MIN_CUDA.0,
            MIN_CUDA.1
        );
    }
    if !missing.is_empty() {
        bail!(
            "the NVIDIA driver (CUDA {}.{}) lacks {}: it is too old or damaged; update the driver",
            cuda.0,
            cuda.1,
            missing.join(", ")
        );
    }
    Ok(info)
}

/// A driver error code with its cause and fix in words, for the errors a user can act on.
pub fn explain(e: &cudarc::driver::DriverError, doing: &str) -> anyhow::Error {
    use cudarc::driver::sys::cudaError_enum as E;
    let fix = match e.0 {
        E::CUDA_ERROR_OUT_OF_MEMORY => {
            "the GPU is out of memory: other processes hold it (see nvidia-smi), or use a smaller \
             batch"
        }
        E::CUDA_ERROR_NO_DEVICE => {
            "the driver sees no GPU (CUDA_VISIBLE_DEVICES, or container GPU access)"
        }
        E::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | E::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            "the driver library and the loaded kernel module disagree or are too old: update or \
             reinstall the NVIDIA driver (or reboot after an update)"
        }
        E::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
            "the PTX is newer than this driver: use an NVRTC no newer than the driver's CUDA \
             version, or cubins (see `rest device`)"
        }
        E::CUDA_ERROR_NO_BINARY_FOR_GPU | E::CUDA_ERROR_INVALID_IMAGE => {
            "the compiled kernels are not for this GPU: delete the kernel cache or rebuild the \
             kernel folder for this GPU's sm_XY"
        }
        E::CUDA_ERROR_DEVICE_UNAVAILABLE => {
            "the GPU is in exclusive mode and used by another process"
        }
        _ => "",
    };
    let what = describe(e);
    if fix.is_empty() {
        anyhow!("{doing}: {what}")
    } else {
        anyhow!("{doing}: {what}: {fix}")
    }
}

/// The error's name, and the driver's text for it when the driver is loaded (cudarc's `Display`
/// asks the driver, and would panic without one).
fn describe(e: &cudarc::driver::DriverError) -> String {
    let name = format!("{:?}", e.0);
    if probe().is_ok() {
        if let Ok(text) = e.error_string() {
            return format!("{name} ({})", text.to_string_lossy());
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::{sys::cudaError_enum as E, DriverError};

    #[test]
    fn actionable_driver_errors_name_the_fix() {
        let e = explain(
            &DriverError(E::CUDA_ERROR_OUT_OF_MEMORY),
            "creating a context",
        )
        .to_string();
        assert!(
            e.starts_with("creating a context") && e.contains("nvidia-smi"),
            "{e}"
        );
        let e = explain(
            &DriverError(E::CUDA_ERROR_UNSUPPORTED_PTX_VERSION),
            "loading",
        )
        .to_string();
        assert!(e.contains("NVRTC no newer than the driver"), "{e}");
        // Others pass through with what was being done.
        let e = explain(&DriverError(E::CUDA_ERROR_INVALID_VALUE), "launching k").to_string();
        assert!(e.starts_with("launching k: "), "{e}");
    }

    #[test]
    fn kernel_module_version_parses_when_present() {
        // Only meaningful on a machine with the NVIDIA module; elsewhere it must be None.
        let v = kernel_module_version();
        let present = std::path::Path::new("/proc/driver/nvidia/version").exists();
        assert_eq!(v.is_some(), present, "{v:?}");
    }
}
