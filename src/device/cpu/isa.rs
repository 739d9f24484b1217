//! Which compiled variant of the CPU kernels runs: the instruction sets this CPU has, detected
//! at run time (the crate itself targets baseline x86-64).

/// Which compiled variant of the kernels to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Baseline instructions only.
    Portable,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512F, AVX2 and FMA (x86-64).
    Avx512,
}

impl Kernels {
    /// The best variant this CPU supports.
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Kernels::Avx512;
            }
            if avx2 {
                return Kernels::Avx2;
            }
        }
        Kernels::Portable
    }

    /// The variant the plain `sparse::reference::{spmm, spmm_t, sddmm}` use: AVX2+FMA where available.
    /// These kernels are load/store bound, and on the 2-core AVX-512 EPYC we measured, the AVX2
    /// build was as fast or faster than the AVX-512 one on every shape (up to 1.5×); use the
    /// `_with` forms to pick AVX-512 explicitly.
    pub fn preferred() -> Kernels {
        match Kernels::detect() {
            Kernels::Avx512 => Kernels::Avx2,
            k => k,
        }
    }

    /// `self`, lowered to what the CPU supports (so any value is safe to request).
    pub fn resolve(self) -> Kernels {
        match (self, Kernels::detect()) {
            (Kernels::Portable, _) | (_, Kernels::Portable) => Kernels::Portable,
            (Kernels::Avx2, _) | (_, Kernels::Avx2) => Kernels::Avx2,
            _ => Kernels::Avx512,
        }
    }
}

/// This CPU's model name (from /proc/cpuinfo on Linux; "unknown CPU" elsewhere) and the kernel
/// variant that runs on it, for benchmark reports: speed figures mean little without the
/// machine, and a cloud VM's machine can change from one day to the next.
pub fn cpu_description() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernels = match Kernels::detect() {
        Kernels::Portable => "portable",
        Kernels::Avx2 => "AVX2",
        Kernels::Avx512 => "AVX-512",
    };
    format!("{name}, {kernels} kernels")
}
