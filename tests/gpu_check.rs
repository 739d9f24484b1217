//! `device::gpu::check` (what `rest device --check` runs) on the emulator: every row passes, and
//! every kernel of `all_kernels()` is covered by at least one row, so a kernel added without a
//! check fails here.

use rest::device::gpu::{all_kernels, check, Gpu};

mod common;

#[test]
fn every_kernel_checked_and_passing_on_the_emulator() {
    let t = std::time::Instant::now();
    let rows = check::run(&Gpu::emu(), 7).expect("the check runs");
    eprintln!("{}", check::render(&rows));
    eprintln!("{} rows in {:.1} s", rows.len(), t.elapsed().as_secs_f64());
    let failed: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
    assert!(failed.is_empty(), "failing rows: {failed:#?}");
    let missing: Vec<&str> = all_kernels()
        .iter()
        .map(|k| k.name)
        .filter(|name| !rows.iter().any(|r| r.kernel == *name))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels without a row in device::gpu::check: {missing:?}"
    );
    // Every row names a kernel that exists (no stale names).
    for r in &rows {
        assert!(
            all_kernels().iter().any(|k| k.name == r.kernel),
            "row for unknown kernel {}",
            r.kernel
        );
    }
}

fn rest(args: &[&str]) -> (bool, String) {
    let out = common::command()
        .args(args)
        .env_remove("REST_DEVICE")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "panic on {args:?}: {text}");
    (out.status.success(), text)
}

#[test]
fn device_check_on_the_emulator_from_the_command_line() {
    let (ok, text) = rest(&["device", "--device", "emu", "--check"]);
    assert!(ok, "{text}");
    // The backend/NVRTC report stays, the table follows.
    assert!(
        text.contains("NVRTC") && text.contains("CUDA kernels"),
        "{text}"
    );
    assert!(
        text.contains("max abs") && text.contains("tolerance"),
        "{text}"
    );
    assert!(
        text.contains("all pass") && !text.contains("FAIL"),
        "{text}"
    );
}

#[test]
fn device_check_on_the_cpu_says_it_needs_cuda_or_emu() {
    let (ok, text) = rest(&["device", "--device", "cpu", "--check"]);
    assert!(!ok, "{text}");
    assert!(text.contains("cuda") && text.contains("emu"), "{text}");
}
