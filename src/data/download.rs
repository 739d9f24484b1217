//! Resumable HTTP(S) downloads checked by MD5, for `rest data fetch --dataset cifar10` and `frost`.
//!
//! A download goes to `<dest>.part`. When that file exists, the request asks for the rest of
//! the file (HTTP `Range: bytes=<have>-`) and appends what the server sends with status 206;
//! a server that answers 200 sends the whole file again, which replaces the part. Only a part
//! whose MD5 matches the expected one is renamed to `dest`; a mismatch deletes the part, so the
//! next run starts afresh. A progress bar shows on a terminal (indicatif hides it otherwise).

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The file a download in progress is written to.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// MD5 of a file, as 32 lowercase hex digits.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// MD5 of bytes, as 32 lowercase hex digits.
pub fn md5_bytes(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into()
}

/// GETs a small document (a registry's JSON) into memory.
pub fn get_text(url: &str) -> Result<String> {
    let resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("{url}: cannot connect (is the network reachable?)"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        bail!("{url}: the server answered HTTP {status}");
    }
    resp.into_body()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .with_context(|| format!("{url}: the download broke off"))
}

/// Downloads `url` to `dest` (resuming `<dest>.part`), checks its MD5 against `md5` and renames
/// it into place. `what` names the file in messages.
pub fn download(url: &str, dest: &Path, md5: &str, what: &str) -> Result<()> {
    let part = part_path(dest);
    if let Some(d) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create", d.display()))?;
    }
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent().get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .with_context(|| format!("{url}: cannot connect (is the network reachable?)"))?;
    let status = resp.status().as_u16();
    let (append, start) = match status {
        206 if have > 0 => (true, have),
        200 => (false, 0),
        // The part is already whole (the server has nothing past its end): check it below.
        416 if have > 0 => return finish(&part, dest, url, md5, what),
        _ => bail!("{url}: the server answered HTTP {status} for {what}"),
    };
    if append {
        eprintln!("resuming {what} at {} MiB", have >> 20);
    } else {
        eprintln!("downloading {what} from {url}");
    }
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + start);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&part)
        .with_context(|| format!("{}: cannot write", part.display()))?;
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar.set_position(start);
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let copied: Result<()> = (|| loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        file.write_all(&buf[..n])?;
        bar.inc(n as u64);
    })();
    bar.finish_and_clear();
    file.flush().ok();
    drop(file);
    if let Err(e) = copied {
        bail!(
            "{url}: the download of {what} broke off ({e:#}); what arrived is kept in {}: run the \
             same command again to resume it",
            part.display()
        );
    }
    let got = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if let Some(t) = total.filter(|&t| got < t) {
        bail!(
            "{url}: the download of {what} stopped at {got} of {t} bytes; what arrived is kept in \
             {}: run the same command again to resume it",
            part.display()
        );
    }
    finish(&part, dest, url, md5, what)
}

fn finish(part: &Path, dest: &Path, url: &str, md5: &str, what: &str) -> Result<()> {
    let got = md5_file(part)?;
    if !got.eq_ignore_ascii_case(md5) {
        let _ = std::fs::remove_file(part);
        bail!(
            "{url}: {what} has MD5 {got}, expected {md5}: the download is damaged or not the \
             published file; it was deleted, so the next run downloads it afresh"
        );
    }
    std::fs::rename(part, dest)
        .with_context(|| format!("{}: cannot move into place", dest.display()))?;
    Ok(())
}
