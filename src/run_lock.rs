//! An exclusive lock on a run's output folder, held while a process trains into it, so that two
//! processes never write one run (a second `rest train --out` of the same folder, or a rerun of
//! `rest reproduce` while an earlier child still trains). The lock is `flock` on the folder
//! itself: the kernel drops it when the process ends, however it ends, and no lock file is left.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::Path;

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct RunLock {
    _folder: File,
}

impl RunLock {
    /// Locks `dir` (which must exist) or fails at once, naming the folder, when another process
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let folder = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor that `folder` owns and keeps open for the call;
            // it reads no memory of ours.
            let rc = unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    bail!(
                        "{} is in use: another rest process is training into it",
                        dir.display()
                    );
                }
                return Err(err).with_context(|| format!("cannot lock {}", dir.display()));
            }
        }
        Ok(Self { _folder: folder })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_locked_once_at_a_time() {
        let dir = std::env::temp_dir().join(format!("rest-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = RunLock::acquire(&dir).unwrap();
        // flock locks belong to the open file: a second open, even in this process, conflicts.
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("is in use"), "{err}");
        drop(first);
        RunLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
