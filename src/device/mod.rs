//! Devices: which backend runs the math.
//!
//! `Cpu` is the reference and a fast CPU backend (`device::cpu`). `Cuda` and `Emu` (the CUDA
//! kernels run on the CPU by an emulator) are shaped here and land with the CUDA engine.

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
/// request that cannot be met is an error naming the reason.
pub fn resolve(req: DeviceRequest) -> Result<(Device, String)> {
    const NO_CUDA_BACKEND: &str = "this version of rest has no CUDA backend yet (the kernels \
        land with the CUDA engine); use --device cpu";
    match req {
        DeviceRequest::Exact(Device::Cpu) => {
            Ok((Device::Cpu, "requested with --device cpu".into()))
        }
        DeviceRequest::Exact(Device::Cuda(i)) => {
            if !cuda_driver_present() {
                bail!("--device cuda:{i}: no CUDA driver library (libcuda) found on this machine; use --device cpu");
            }
            bail!("--device cuda:{i}: {NO_CUDA_BACKEND}")
        }
        DeviceRequest::Exact(Device::Emu) => {
            bail!("--device emu: the CUDA emulator is not built into this version of rest; use --device cpu")
        }
        DeviceRequest::Auto => {
            let why = if cuda_driver_present() {
                format!("auto: a CUDA driver is present, but {NO_CUDA_BACKEND}")
            } else {
                "auto: no CUDA driver library found, running on the CPU".to_string()
            };
            Ok((Device::Cpu, why))
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
        let err = resolve(DeviceRequest::Exact(Device::Cuda(0)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cuda"), "{err}");
    }
}
