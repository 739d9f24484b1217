//! NVRTC, found and loaded by us (not by cudarc), for CUDA 12 or 13.
//!
//! cudarc's NVRTC bindings look the library up by name only and panic on a missing symbol; we
//! need to find `libnvrtc.so.13` *or* `libnvrtc.so.12` in the places a user has them (toolkit
//! `lib64`, the PyPI wheels' folders, `REST_NVRTC_DIR`) and to name the problem when something
//! is off. The NVRTC C API we use is the same in both majors, so one table of function pointers,
//! resolved with `dlsym` and checked before any call, serves both.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The NVRTC majors we can use, newest first (13 is tried before 12 in every folder).
pub const MAJORS: [u32; 2] = [13, 12];

/// An NVRTC library file found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub major: u32,
}

/// The first folder of `dirs` holding `libnvrtc.so.13` or `libnvrtc.so.12` (13 first within a
/// folder). Pure: no library is loaded.
pub fn find_in_dirs(dirs: &[PathBuf]) -> Option<Found> {
    dirs.iter().find_map(|d| {
        MAJORS.iter().find_map(|&major| {
            let path = d.join(format!("libnvrtc.so.{major}"));
            path.is_file().then_some(Found { path, major })
        })
    })
}

/// Folders that may hold NVRTC, in the order they are searched: `REST_NVRTC_DIR`,
/// `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, then the PyPI wheels'
/// folders in python3's site-packages: `nvidia/cu13/lib` (CUDA 13 wheels) and
/// `nvidia/cuda_nvrtc/lib` (CUDA 12 wheels, e.g. the ones PyTorch brings).
pub fn candidate_dirs() -> Vec<PathBuf> {
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
    // The wheels' folders: ask python where the `nvidia` namespace package lives.
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import nvidia, sys; [print(p) for p in nvidia.__path__]",
        ])
        .stderr(std::process::Stdio::null())
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let base = PathBuf::from(line.trim());
            dirs.push(base.join("cu13/lib"));
            dirs.push(base.join("cuda_nvrtc/lib"));
        }
    }
    dirs
}

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type NumArchsFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type ArchsFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type CreateFn = unsafe extern "C" fn(
    *mut *mut c_void,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(*mut c_void, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(*mut c_void, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(*mut c_void, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// A loaded NVRTC: where it came from, its version, and the functions we call.
pub struct Nvrtc {
    /// "LD_LIBRARY_PATH / system" or the file it was loaded from.
    pub origin: String,
    pub version: (u32, u32),
    /// Real architectures it compiles cubins for (e.g. 75, 80, …, 120).
    pub archs: Vec<u32>,
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: GetFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    cubin_size: SizeFn,
    cubin: GetFn,
    destroy: DestroyFn,
    error_string: ErrorStringFn,
}

/// What one compile makes: a cubin for `sm_XY` or PTX for `compute_XY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Sm(u32),
    Compute(u32),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Sm(a) => write!(f, "sm_{a}"),
            Target::Compute(a) => write!(f, "compute_{a}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let parse = |n: &str| -> Result<u32> {
            let a: u32 = n.parse().map_err(|_| {
                anyhow!("architecture '{t}': expected sm_XY or compute_XY, e.g. sm_90")
            })?;
            if !(30..=999).contains(&a) {
                bail!("architecture '{t}': {a} is not a CUDA compute capability (e.g. 80, 90)");
            }
            Ok(a)
        };
        if let Some(n) = t.strip_prefix("sm_") {
            Ok(Target::Sm(parse(n)?))
        } else if let Some(n) = t.strip_prefix("compute_") {
            Ok(Target::Compute(parse(n)?))
        } else {
            bail!("architecture '{t}': expected sm_XY or compute_XY, e.g. sm_90")
        }
    }
}

impl Target {
    pub fn arch(&self) -> u32 {
        match *self {
            Target::Sm(a) | Target::Compute(a) => a,
        }
    }
    pub fn is_cubin(&self) -> bool {
        matches!(self, Target::Sm(_))
    }
}

/// A library handle from `dlopen`; `None` when it does not load.
fn dlopen(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlopen of a shared library; the handle is deliberately never closed, so the
    // function pointers taken from it stay valid for the life of the process.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    (!h.is_null()).then_some(h)
}

/// The last `dlerror()` text.
fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (above); copied out before any other dl call.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// `dlsym(handle, name)` as a function pointer of type `F`; an error naming the symbol when it
/// is missing.
///
/// # Safety
/// `F` must be the C signature of `name` in the library behind `handle`.
unsafe fn sym<F: Copy>(handle: *mut c_void, lib: &str, name: &str) -> Result<F> {
    let c = CString::new(name).expect("symbol names have no NUL");
    // SAFETY: handle is a live dlopen handle; dlsym only looks the name up.
    let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
    if p.is_null() {
        bail!("{lib} has no symbol {name}: it is not an NVRTC of CUDA 12 or 13");
    }
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: F is a function-pointer type of pointer size (the caller's contract).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

impl Nvrtc {
    /// Loads NVRTC from `found` (by full path, its builtins library first), or, with `None`,
    /// by name through the dynamic loader (`LD_LIBRARY_PATH`, system folders).
    pub fn load(found: Option<&Found>) -> Result<Nvrtc> {
        let (handle, origin) = match found {
            Some(f) => {
                let dir = f.path.parent().unwrap_or(Path::new("."));
                // NVRTC dlopens its builtins by soname; loading them first from the same folder
                // makes that find them even when the folder is not on the loader's path.
                if let Ok(rd) = std::fs::read_dir(dir) {
                    let prefix = format!("libnvrtc-builtins.so.{}.", f.major);
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.starts_with(&prefix) {
                            if let Ok(c) = CString::new(e.path().as_os_str().as_encoded_bytes()) {
                                let _ = dlopen(&c);
                            }
                        }
                    }
                }
                let c = CString::new(f.path.as_os_str().as_encoded_bytes())
                    .context("NVRTC path contains a NUL byte")?;
                let h = dlopen(&c)
                    .ok_or_else(|| anyhow!("{} does not load: {}", f.path.display(), dlerror()))?;
                (h, f.path.display().to_string())
            }
            None => {
                let h = MAJORS
                    .iter()
                    .find_map(|m| dlopen(&CString::new(format!("libnvrtc.so.{m}")).ok()?))
                    .ok_or_else(|| anyhow!("libnvrtc.so.13/.12 not on the loader's path"))?;
                (
                    h,
                    "found by the dynamic loader (LD_LIBRARY_PATH or system)".into(),
                )
            }
        };
        let lib = origin.as_str();
        // SAFETY: each type alias is the C signature of the NVRTC function of that name, the
        // same in CUDA 12 and 13; `sym` checks that the symbol exists.
        let (version, num_archs, get_archs, mut n) = unsafe {
            let version: VersionFn = sym(handle, lib, "nvrtcVersion")?;
            let num_archs: NumArchsFn = sym(handle, lib, "nvrtcGetNumSupportedArchs")?;
            let get_archs: ArchsFn = sym(handle, lib, "nvrtcGetSupportedArchs")?;
            let n = Nvrtc {
                origin: origin.clone(),
                version: (0, 0),
                archs: Vec::new(),
                create: sym(handle, lib, "nvrtcCreateProgram")?,
                compile: sym(handle, lib, "nvrtcCompileProgram")?,
                log_size: sym(handle, lib, "nvrtcGetProgramLogSize")?,
                log: sym(handle, lib, "nvrtcGetProgramLog")?,
                ptx_size: sym(handle, lib, "nvrtcGetPTXSize")?,
                ptx: sym(handle, lib, "nvrtcGetPTX")?,
                cubin_size: sym(handle, lib, "nvrtcGetCUBINSize")?,
                cubin: sym(handle, lib, "nvrtcGetCUBIN")?,
                destroy: sym(handle, lib, "nvrtcDestroyProgram")?,
                error_string: sym(handle, lib, "nvrtcGetErrorString")?,
            };
            (version, num_archs, get_archs, n)
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion writes two ints.
        n.check(unsafe { version(&mut major, &mut minor) }, "nvrtcVersion")?;
        n.version = (major as u32, minor as u32);
        let mut count = 0;
        // SAFETY: writes one int.
        let rc = unsafe { num_archs(&mut count) };
        n.check(rc, "nvrtcGetNumSupportedArchs")?;
        let mut archs = vec![0 as c_int; count.max(0) as usize];
        // SAFETY: writes `count` ints, the buffer's size.
        let rc = unsafe { get_archs(archs.as_mut_ptr()) };
        n.check(rc, "nvrtcGetSupportedArchs")?;
        n.archs = archs.into_iter().map(|a| a as u32).collect();
        Ok(n)
    }

    fn check(&self, rc: c_int, what: &str) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
        let s = unsafe { CStr::from_ptr((self.error_string)(rc)) };
        bail!("{what}: {} (NVRTC error {rc})", s.to_string_lossy())
    }

    /// Compiles `source` (named `name` in messages) for `target` with `options` (besides the
    /// architecture): a cubin for `sm_XY`, NUL-free PTX text for `compute_XY`.
    pub fn compile(
        &self,
        source: &str,
        name: &str,
        target: Target,
        options: &[&str],
    ) -> Result<Vec<u8>> {
        if target.is_cubin() && !self.archs.contains(&target.arch()) {
            bail!(
                "NVRTC {}.{} cannot make cubins for {target} (it knows sm_{:?})",
                self.version.0,
                self.version.1,
                self.archs
            );
        }
        let src = CString::new(source).context("kernel source contains a NUL byte")?;
        let cname = CString::new(name).context("kernel file name contains a NUL byte")?;
        let mut prog: *mut c_void = std::ptr::null_mut();
        // SAFETY: creates a program from two NUL-terminated strings, no headers.
        self.check(
            unsafe {
                (self.create)(
                    &mut prog,
                    src.as_ptr(),
                    cname.as_ptr(),
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                )
            },
            "nvrtcCreateProgram",
        )?;
        let out = self.compile_program(prog, name, target, options);
        // SAFETY: prog was created above and is destroyed once.
        unsafe { (self.destroy)(&mut prog) };
        out
    }

    fn compile_program(
        &self,
        prog: *mut c_void,
        name: &str,
        target: Target,
        options: &[&str],
    ) -> Result<Vec<u8>> {
        let mut opts = vec![CString::new(format!("--gpu-architecture={target}"))?];
        for o in options {
            opts.push(CString::new(*o)?);
        }
        let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: prog is live; `ptrs` holds opts.len() NUL-terminated strings that outlive the call.
        let rc = unsafe { (self.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
        if rc != 0 {
            let log = self
                .fetch(prog, self.log_size, self.log)
                .unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            let e = self.check(rc, "nvrtcCompileProgram").unwrap_err();
            bail!(
                "NVRTC {}.{} failed on {name} for {target}: {e}\n{}",
                self.version.0,
                self.version.1,
                log.trim_end_matches('\0').trim()
            );
        }
        let mut bytes = if target.is_cubin() {
            self.fetch(prog, self.cubin_size, self.cubin)?
        } else {
            self.fetch(prog, self.ptx_size, self.ptx)?
        };
        if !target.is_cubin() {
            // PTX comes NUL-terminated; we keep text and add the NUL when loading.
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
        }
        Ok(bytes)
    }

    /// Reads one of a program's outputs (log, PTX, cubin) through its size and copy functions.
    fn fetch(&self, prog: *mut c_void, size: SizeFn, get: GetFn) -> Result<Vec<u8>> {
        let mut n = 0usize;
        // SAFETY: prog is live; the size function writes one size_t.
        self.check(unsafe { size(prog, &mut n) }, "NVRTC output size")?;
        let mut buf = vec![0u8; n];
        // SAFETY: the copy function writes exactly the `n` bytes it reported.
        self.check(
            unsafe { get(prog, buf.as_mut_ptr() as *mut c_char) },
            "NVRTC output",
        )?;
        Ok(buf)
    }
}

/// The NVRTC of this process, loaded once: `REST_NVRTC_DIR` first, then the dynamic loader's
/// path, then the toolkit and wheel folders ([`candidate_dirs`]). The error says what was tried.
pub fn get() -> Result<&'static Nvrtc> {
    static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    NVRTC
        .get_or_init(|| {
            let dirs = candidate_dirs();
            // An explicit REST_NVRTC_DIR that holds NVRTC wins over the loader's path.
            if std::env::var_os("REST_NVRTC_DIR").is_some() {
                if let Some(f) = find_in_dirs(&dirs[..1]) {
                    return Nvrtc::load(Some(&f)).map_err(|e| format!("{e:#}"));
                }
            }
            let found = find_in_dirs(&dirs);
            if let Ok(n) = Nvrtc::load(None) {
                return Ok(n);
            }
            match found {
                Some(f) => Nvrtc::load(Some(&f)).map_err(|e| format!("{e:#}")),
                None => Err(format!(
                    "NVRTC (libnvrtc.so.13 or .so.12) was not found on the loader's path nor in {}; \
                     install the CUDA toolkit or `pip install nvidia-cuda-nvrtc` (CUDA 13) or \
                     `nvidia-cuda-nvrtc-cu12` (CUDA 12), or set REST_NVRTC_DIR to its lib folder",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// Whether NVRTC loads (no compilation is attempted).
pub fn present() -> bool {
    get().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        assert_eq!("sm_90".parse::<Target>().unwrap(), Target::Sm(90));
        assert_eq!("compute_86".parse::<Target>().unwrap(), Target::Compute(86));
        assert_eq!(Target::Sm(80).to_string(), "sm_80");
        for bad in ["90", "sm_", "sm_x", "sm_7", "gfx90a"] {
            let e = bad.parse::<Target>().unwrap_err().to_string();
            assert!(
                e.contains("sm_XY") || e.contains("compute capability"),
                "{bad}: {e}"
            );
        }
    }
}
