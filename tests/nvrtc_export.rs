//! Kernel folders (`rest device --export-kernels`, the on-disk cache), with NVRTC and no GPU:
//! the export writes cubins for sm_80 and sm_90 and their PTX with a manifest; a GPU picks the
//! right file for its architecture and driver; a damaged, replaced or foreign file is refused
//! with the command that rebuilds it; the cache is filled by NVRTC once and read back after.
//!
//! Needs NVRTC (CI installs the PyPI wheel and sets REQUIRE_NVRTC=1); elsewhere it skips with a
//! line.

mod common;

use rest::device::gpu::kernel_store::{self, load_from, Manifest, Provider};
use rest::device::gpu::nvrtc::{self, Target};
use rest::device::gpu::{all_kernels, MODULES};
use std::path::{Path, PathBuf};

fn nvrtc_or_skip() -> bool {
    match nvrtc::get() {
        Ok(_) => true,
        Err(e) => {
            let required =
                std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_NVRTC").is_some();
            assert!(!required, "NVRTC is required here: {e:#}");
            eprintln!("SKIPPED nvrtc_export: {e:#}");
            false
        }
    }
}

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rest-kexport-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// One export for the whole file: NVRTC takes seconds per target.
fn exported() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = fresh_dir("shared");
        let (code, text) = common::run(
            &[
                "device",
                "--export-kernels",
                d.to_str().unwrap(),
                "--arch",
                "sm_80,sm_90",
            ],
            &[],
        );
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("REST_KERNEL_DIR="), "{text}");
        d
    })
}

/// A copy of the export that a test may damage.
fn copy_of(tag: &str) -> PathBuf {
    let d = fresh_dir(tag);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(exported()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    d
}

#[test]
fn export_writes_cubins_and_ptx_with_a_manifest() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = exported();
    let man = Manifest::read(dir).expect("the export's manifest reads back");
    assert_eq!(man.source_hash, kernel_store::source_hash());
    let n = nvrtc::get().unwrap();
    for t in ["sm_80", "compute_80", "sm_90", "compute_90"] {
        for m in MODULES {
            let e = man
                .entries
                .iter()
                .find(|e| e.module == m.name && e.target == t)
                .unwrap_or_else(|| panic!("no {t} entry for {}", m.name));
            assert_eq!(e.nvrtc, [n.version.0, n.version.1]);
            let bytes = std::fs::read(dir.join(&e.file)).unwrap();
            assert_eq!(bytes.len() as u64, e.bytes);
            if t.starts_with("sm_") {
                assert!(bytes.starts_with(b"\x7fELF"), "{} is not ELF", e.file);
            } else {
                let text = String::from_utf8(bytes.clone()).unwrap();
                assert!(text.contains(&format!(".target {t}").replace("compute_", "sm_")));
            }
            // Every kernel of the file is in it by name (ELF symbol table, PTX .entry).
            for k in all_kernels().into_iter().filter(|k| k.module == m.name) {
                assert!(
                    bytes.windows(k.name.len()).any(|w| w == k.name.as_bytes()),
                    "{} lacks {}",
                    e.file,
                    k.name
                );
            }
        }
    }
    assert_eq!(man.entries.len(), 4 * MODULES.len());
}

#[test]
fn a_gpu_gets_the_file_for_its_architecture_and_driver() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = exported();
    let man = Manifest::read(dir).unwrap();
    let nv = nvrtc::get().unwrap().version;
    let new_driver = (nv.0, nv.1);
    let pick = |arch: u32, driver: (u32, u32)| load_from(dir, &man, "xent", arch, driver);
    // Its own cubin; an earlier cubin of the same major; else the newest PTX at or below it.
    assert_eq!(pick(90, new_driver).unwrap().target, Target::Sm(90));
    assert_eq!(pick(86, new_driver).unwrap().target, Target::Sm(80));
    assert_eq!(pick(100, new_driver).unwrap().target, Target::Compute(90));
    let ptx = pick(120, new_driver).unwrap();
    assert_eq!(
        ptx.bytes.last(),
        Some(&0),
        "PTX is handed over NUL-terminated"
    );
    // Nothing for an older GPU: the message says how to rebuild for it.
    let e = format!("{:#}", pick(75, new_driver).err().unwrap());
    assert!(e.contains("sm_75") && e.contains("--export-kernels"), "{e}");
    // A driver of an older CUDA major than the NVRTC runs neither the cubin nor the PTX.
    let old = (nv.0 - 1, 8);
    let e = format!("{:#}", pick(90, old).err().unwrap());
    assert!(e.contains("driver") && e.contains("update"), "{e}");
    // PTX needs a driver at least as new as the NVRTC; a cubin only the same major.
    assert!(kernel_store::driver_accepts((nv.0, 0), (nv.0, 2), Target::Sm(90)).is_ok());
    let e = kernel_store::driver_accepts((nv.0, 0), (nv.0, 2), Target::Compute(90))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PTX") && e.contains("driver"), "{e}");
}

#[test]
fn a_damaged_or_replaced_file_is_refused() {
    if !nvrtc_or_skip() {
        return;
    }
    let nv = nvrtc::get().unwrap().version;
    let dir = copy_of("damaged");
    let man = Manifest::read(&dir).unwrap();
    // One flipped byte.
    let f = dir.join("conv.sm_90.cubin");
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&f, &bytes).unwrap();
    let e = format!("{:#}", load_from(&dir, &man, "conv", 90, nv).err().unwrap());
    assert!(
        e.contains("differs from its manifest") && e.contains("--export-kernels"),
        "{e}"
    );
    // The sm_80 cubin is untouched and still loads.
    assert!(load_from(&dir, &man, "conv", 80, nv).is_ok());
    // A PTX file put where the cubin belongs, with a manifest edited to match it: not a cubin.
    let ptx = std::fs::read(dir.join("norm.compute_90.ptx")).unwrap();
    std::fs::write(dir.join("norm.sm_90.cubin"), &ptx).unwrap();
    let mut forged = man.clone();
    for e in forged
        .entries
        .iter_mut()
        .filter(|e| e.file == "norm.sm_90.cubin")
    {
        e.bytes = ptx.len() as u64;
        e.fnv64 = format!("{:016x}", kernel_store::fnv64(&ptx));
    }
    let e = format!(
        "{:#}",
        load_from(&dir, &forged, "norm", 90, nv).err().unwrap()
    );
    assert!(e.contains("not a cubin"), "{e}");
}

#[test]
fn a_folder_from_other_sources_is_refused_with_how_to_rebuild() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = copy_of("foreign");
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let ours = kernel_store::source_hash();
    std::fs::write(&path, text.replace(&ours, "0123456789abcdef")).unwrap();
    let e = format!("{:#}", Manifest::read(&dir).unwrap_err());
    assert!(
        e.contains("other kernel sources") && e.contains("rest device --export-kernels"),
        "{e}"
    );
    // Not a manifest at all.
    std::fs::write(&path, "{\"hello\": 1}").unwrap();
    let e = format!("{:#}", Manifest::read(&dir).unwrap_err());
    assert!(e.contains("not a rest kernel manifest"), "{e}");
    std::fs::remove_file(&path).unwrap();
    let e = format!("{:#}", Manifest::read(&dir).unwrap_err());
    assert!(e.contains("cannot read manifest.json"), "{e}");
}

#[test]
fn the_cache_is_filled_by_nvrtc_once_then_read_back() {
    if !nvrtc_or_skip() {
        return;
    }
    let n = nvrtc::get().unwrap();
    let dir = fresh_dir("cache");
    let arch = 90;
    let p = Provider::cache(dir.clone(), Some(n), arch, n.version).unwrap();
    let first = p.image("pool").unwrap();
    assert!(first.from.starts_with("NVRTC"), "{}", first.from);
    assert_eq!(first.target, Target::Sm(90));
    // A new process (a new provider) finds it in the cache, with or without NVRTC.
    let again = Provider::cache(dir.clone(), Some(n), arch, n.version).unwrap();
    let hit = again.image("pool").unwrap();
    assert!(hit.from.starts_with("cache"), "{}", hit.from);
    assert_eq!(hit.bytes, first.bytes);
    let offline = Provider::cache(dir.clone(), None, arch, n.version).unwrap();
    assert_eq!(offline.image("pool").unwrap().bytes, first.bytes);
    // Without NVRTC, what the cache lacks is an error, not a compile.
    let e = format!("{:#}", offline.image("conv").err().unwrap());
    assert!(e.contains("conv") && e.contains("--export-kernels"), "{e}");
    // The cache is a kernel folder like an export: its manifest names what it holds.
    let man = Manifest::read(&dir).unwrap();
    assert_eq!(man.entries.len(), 1);
    assert_eq!(man.entries[0].file, "pool.sm_90.cubin");
}

#[test]
fn export_refuses_an_architecture_nvrtc_does_not_know() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = fresh_dir("unknown");
    let (code, text) = common::run(
        &[
            "device",
            "--export-kernels",
            dir.to_str().unwrap(),
            "--arch",
            "sm_80,sm_31",
        ],
        &[],
    );
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("sm_31") && text.contains("does not know"),
        "{text}"
    );
    let (code, text) = common::run(
        &[
            "device",
            "--export-kernels",
            dir.to_str().unwrap(),
            "--arch",
            "ampere",
        ],
        &[],
    );
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("sm_XY"), "{text}");
}
