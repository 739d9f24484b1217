//! Where a new run writes: the folder `--out` names, or the default folder, numbered so that a
//! second run of the same command never meets the first (`…-s41`, then `…-s41-2`, `…-s41-3`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The most numbered folders tried beside a default one before giving up.
const MAX_NUMBER: usize = 10_000;

/// The folder of a new run. An explicit `out` that already holds a run (`checkpoint` in it) is an
/// error suggesting `--resume`; without one the default folder is claimed, or the first free
/// `default-N` (N = 2, 3, …) when it exists. Claiming creates the folder (`create_dir`, which
/// fails when it exists), so two runs started at once get different folders. Returns the folder
/// and whether it is not the default one (the caller says where the run goes).
pub fn claim(out: Option<&Path>, default: &Path, checkpoint: &str) -> Result<(PathBuf, bool)> {
    if let Some(out) = out {
        if out.join(checkpoint).exists() {
            bail!(
                "{} already holds a run: continue it with --resume {0}, or choose another --out",
                out.display()
            );
        }
        return Ok((out.to_path_buf(), false));
    }
    if let Some(parent) = default.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    for n in 1..=MAX_NUMBER {
        let candidate = if n == 1 {
            default.to_path_buf()
        } else {
            let mut name = default.as_os_str().to_os_string();
            name.push(format!("-{n}"));
            PathBuf::from(name)
        };
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok((candidate, n > 1)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", candidate.display()))
            }
        }
    }
    bail!(
        "{} and {MAX_NUMBER} numbered folders beside it exist: give the run an --out",
        default.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_default_gets_the_next_number_and_an_explicit_run_folder_is_refused() {
        let dir = std::env::temp_dir().join(format!("rest-run-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let default = dir.join("runs/x-s41");
        assert_eq!(
            claim(None, &default, "last").unwrap(),
            (default.clone(), false)
        );
        let second = claim(None, &default, "last").unwrap();
        assert_eq!(second, (dir.join("runs/x-s41-2"), true));
        assert_eq!(
            claim(None, &default, "last").unwrap().0,
            dir.join("runs/x-s41-3")
        );
        std::fs::write(default.join("last"), b"").unwrap();
        let e = claim(Some(&default), &default, "last")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--resume"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
