//! A small reader for ZIP archives (Python wheels): the central directory, stored and
//! deflated entries. No ZIP64, encryption or multi-disk archives, which wheels of a few MB do
//! not use.

use super::fetch::TarEntry;
use anyhow::{bail, Context, Result};
use std::io::Read;

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// The files of a ZIP archive whose names `keep` accepts, with their contents.
pub fn read_zip(bytes: &[u8], what: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<TarEntry>> {
    let bad = || format!("{what}: not a ZIP archive (or a damaged one)");
    // End of central directory: the last "PK\x05\x06" within the final 64 KiB + 22 bytes.
    let lo = bytes.len().saturating_sub(22 + 65535);
    let eocd = (lo..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .with_context(bad)?;
    let count = u16_at(bytes, eocd + 10).with_context(bad)?;
    let mut at = u32_at(bytes, eocd + 16).with_context(bad)?;
    let mut out = Vec::new();
    for _ in 0..count {
        if u32_at(bytes, at) != Some(0x0201_4b50) {
            bail!(bad());
        }
        let method = u16_at(bytes, at + 10).with_context(bad)?;
        let csize = u32_at(bytes, at + 20).with_context(bad)?;
        let usize_ = u32_at(bytes, at + 24).with_context(bad)?;
        let (n, e, c) = (
            u16_at(bytes, at + 28).with_context(bad)?,
            u16_at(bytes, at + 30).with_context(bad)?,
            u16_at(bytes, at + 32).with_context(bad)?,
        );
        let local = u32_at(bytes, at + 42).with_context(bad)?;
        let name = String::from_utf8_lossy(bytes.get(at + 46..at + 46 + n).with_context(bad)?)
            .into_owned();
        at += 46 + n + e + c;
        if name.ends_with('/') || !keep(&name) {
            continue;
        }
        if u32_at(bytes, local) != Some(0x0403_4b50) {
            bail!(bad());
        }
        let ln = u16_at(bytes, local + 26).with_context(bad)?;
        let le = u16_at(bytes, local + 28).with_context(bad)?;
        let start = local + 30 + ln + le;
        let raw = bytes
            .get(start..start + csize)
            .with_context(|| format!("{what}: entry {name} runs past the end (truncated)"))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut d = Vec::with_capacity(usize_);
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut d)
                    .with_context(|| format!("{what}: entry {name} is damaged"))?;
                d
            }
            m => bail!("{what}: entry {name} uses compression method {m}, which rest cannot read"),
        };
        if data.len() != usize_ {
            bail!(
                "{what}: entry {name} unpacks to {} bytes, the archive says {usize_}",
                data.len()
            );
        }
        out.push(TarEntry { path: name, data });
    }
    Ok(out)
}
