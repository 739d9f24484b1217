//! Tier 2: every kernel file compiles with NVRTC to PTX for compute_80 and compute_90, and the
//! kernels each PTX defines are exactly the Rust kernel list of that file.
//!
//! NVRTC needs no GPU. CI installs it (`pip install nvidia-cuda-nvrtc==13.0.88`); there a missing
//! NVRTC fails this test. Elsewhere the test is skipped with a visible line, unless
//! REQUIRE_NVRTC=1.

use rest::device::gpu::kernel_store::compile;
use rest::device::gpu::nvrtc::{self, Nvrtc, Target};
use rest::device::gpu::{all_kernels, MODULES};
use std::collections::BTreeSet;

fn nvrtc_or_skip() -> Option<&'static Nvrtc> {
    match nvrtc::get() {
        Ok(n) => {
            eprintln!("NVRTC {:?}: {}", n.version, n.origin);
            Some(n)
        }
        Err(e) => {
            let required =
                std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_NVRTC").is_some();
            assert!(
                !required,
                "NVRTC is required here (CI or REQUIRE_NVRTC set): {e:#}; pip install \
                 nvidia-cuda-nvrtc==13.0.88"
            );
            eprintln!("SKIPPED nvrtc_compile: {e:#}");
            None
        }
    }
}

/// The `.entry` names of a PTX text.
fn entries(ptx: &str) -> BTreeSet<String> {
    ptx.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix(".visible .entry ")?;
            Some(rest.split('(').next()?.trim().to_string())
        })
        .collect()
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_and_matches_the_kernel_list() {
    let Some(n) = nvrtc_or_skip() else {
        return;
    };
    assert!(
        nvrtc::MAJORS.contains(&n.version.0),
        "NVRTC {:?}",
        n.version
    );
    for arch in ["compute_80", "compute_90"] {
        let target: Target = arch.parse().unwrap();
        for m in MODULES {
            let ptx = compile(n, m.name, target).unwrap_or_else(|e| panic!("{e:#}"));
            let ptx = String::from_utf8(ptx).expect("PTX is text");
            // scripts/ptxas-report.sh sets this to run ptxas -v (registers, spills) on the PTX.
            if let Some(dir) = std::env::var_os("REST_PTX_DIR") {
                let path = std::path::Path::new(&dir).join(format!("{}.{arch}.ptx", m.name));
                std::fs::write(&path, &ptx).expect("write PTX");
            }
            let found = entries(&ptx);
            let listed: BTreeSet<String> = all_kernels()
                .into_iter()
                .filter(|k| k.module == m.name)
                .map(|k| k.name.to_string())
                .collect();
            assert_eq!(
                found, listed,
                "kernels/{}.cu for {arch}: PTX entries differ from the Rust kernel list",
                m.name
            );
            eprintln!("{arch} {}: {} kernels", m.name, found.len());
        }
    }
}

#[test]
fn an_unknown_kernel_file_is_named_in_the_error() {
    let Some(n) = nvrtc_or_skip() else {
        return;
    };
    let err = compile(n, "no_such_file", Target::Compute(90)).unwrap_err();
    assert!(err.to_string().contains("no_such_file"), "{err}");
}
