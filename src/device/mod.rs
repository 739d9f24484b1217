//! Devices: which backend runs the math.
//!
//! `Cpu` is the reference and a fast CPU backend (`device::cpu`). `Cuda` runs the CUDA backend
//! (`device::gpu`) on a GPU; `Emu` runs the same kernels on the CPU through the emulator (tests).

pub mod cpu;
pub mod gpu;

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
    Emu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Emu => write!(f, "emu"),
        }
    }
}

impl Device {
    /// The GPU backend this device names, started (None for the CPU): the one place where a
    /// `Device` becomes a `Gpu`.
    pub fn open(self) -> Result<Option<std::sync::Arc<gpu::alloc::GpuDevice>>> {
        Ok(match self {
            Device::Cpu => None,
            Device::Emu => Some(gpu::alloc::GpuDevice::new(gpu::Gpu::emu())),
            Device::Cuda(i) => Some(gpu::alloc::GpuDevice::new(gpu::Gpu::cuda(i)?)),
        })
    }
}

/// What the user asked for with `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Exact(Device),
}

impl FromStr for DeviceRequest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "auto" => DeviceRequest::Auto,
            "cpu" => DeviceRequest::Exact(Device::Cpu),
            "emu" => DeviceRequest::Exact(Device::Emu),
            "cuda" => DeviceRequest::Exact(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => DeviceRequest::Exact(Device::Cuda(i)),
                _ => bail!("unknown device '{s}': expected auto, cpu, cuda, cuda:N or emu"),
            },
        })
    }
}

/// Whether the CUDA driver library can be found on this machine (no context is created).
pub fn cuda_driver_present() -> bool {
    // SAFETY: this only tries to dlopen the driver library and reports whether it loaded; no
    // CUDA function is called and no state is shared.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Picks the backend for a request and says why. Never falls back silently: an explicit
/// request that cannot be met is an error naming the reason. `cuda:N` is usable when the driver
/// passes its probe, a context can be created on GPU N and its kernels can be had (kernel
/// folder, cache or NVRTC: `Gpu::cuda`); `auto` takes GPU 0 when it is usable, else the CPU, and
/// says which check failed.
pub fn resolve(req: DeviceRequest) -> Result<(Device, String)> {
    match req {
        DeviceRequest::Exact(Device::Cpu) => {
            Ok((Device::Cpu, "requested with --device cpu".into()))
        }
        DeviceRequest::Exact(Device::Cuda(i)) => match gpu::Gpu::cuda(i) {
            Ok(g) => Ok((Device::Cuda(i), format!("requested; {}", g.describe()))),
            Err(e) => bail!("--device cuda:{i}: {e:#}; use --device cpu (or auto)"),
        },
        DeviceRequest::Exact(Device::Emu) => Ok((
            Device::Emu,
            "requested: the CUDA kernels emulated on the CPU, one fiber per GPU thread (slow; \
             for tests and small runs)"
                .into(),
        )),
        DeviceRequest::Auto => {
            if !cuda_driver_present() {
                return Ok((
                    Device::Cpu,
                    "auto: no CUDA driver library found, running on the CPU".into(),
                ));
            }
            match gpu::Gpu::cuda(0) {
                Ok(g) => Ok((Device::Cuda(0), format!("auto: {}", g.describe()))),
                Err(e) => Ok((
                    Device::Cpu,
                    format!(
                        "auto: a CUDA driver is present but not usable ({e:#}), running on the CPU"
                    ),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(
            "cpu".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exact(Device::Cpu)
        );
        assert_eq!(
            "cuda:1".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Exact(Device::Cuda(1))
        );
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        assert!("tpu".parse::<DeviceRequest>().is_err());
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
    }

    #[test]
    fn cuda_request_is_an_error_not_a_fallback() {
        // Where GPU 0 is usable the request succeeds; elsewhere it must fail, not fall back.
        match resolve(DeviceRequest::Exact(Device::Cuda(0))) {
            Ok((dev, _)) => assert_eq!(dev, Device::Cuda(0)),
            Err(e) => assert!(e.to_string().contains("cuda"), "{e}"),
        }
        // An ordinal no machine has is always an error.
        let err = resolve(DeviceRequest::Exact(Device::Cuda(4096)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cuda:4096"), "{err}");
    }

    #[test]
    fn emu_and_auto_resolve() {
        assert_eq!(
            resolve(DeviceRequest::Exact(Device::Emu)).unwrap().0,
            Device::Emu
        );
        let (dev, why) = resolve(DeviceRequest::Auto).unwrap();
        assert!(matches!(dev, Device::Cpu | Device::Cuda(0)), "{dev}: {why}");
        assert!(why.starts_with("auto"), "{why}");
    }
}
