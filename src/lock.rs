//! One process per data directory (and per SQLite ledger file): an exclusive advisory
//! lock (`flock`) on a lock file, taken before anything else is written there and held
//! until the process ends. The holder writes its PID into the file, so a second process
//! can say who holds it. The lock goes with the process, also on kill -9: a stale file is
//! never a reason to refuse a start.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file of a data directory (`quotad serve`).
pub const DATA_DIR_LOCK_FILE: &str = "quotad.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{what} {path} is in use by another quotad (PID {pid}, lock {lock}); stop it first \
         or give this one another directory"
    )]
    Held {
        what: &'static str,
        path: PathBuf,
        lock: PathBuf,
        /// The holder's PID as it wrote it, or "unknown" if it has not yet.
        pid: String,
    },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An exclusive lock held while this value lives.
#[derive(Debug)]
pub struct ProcessLock {
    _file: File,
    path: PathBuf,
}

impl ProcessLock {
    /// Locks `data_dir` (which must exist) for this process.
    pub fn data_dir(data_dir: &Path) -> Result<ProcessLock, LockError> {
        Self::acquire(
            &data_dir.join(DATA_DIR_LOCK_FILE),
            "data directory",
            data_dir,
        )
    }

    /// Locks the SQLite database file `db` for this process (the lock is `db` + `.lock`).
    pub fn sqlite_file(db: &Path) -> Result<ProcessLock, LockError> {
        let mut lock = db.as_os_str().to_owned();
        lock.push(".lock");
        Self::acquire(Path::new(&lock), "SQLite database", db)
    }

    /// Takes the lock at `lock` without waiting, then writes this process's PID in it;
    /// `what` and `path` name what it guards in the refusal.
    pub fn acquire(lock: &Path, what: &'static str, path: &Path) -> Result<ProcessLock, LockError> {
        let io = |source| LockError::Io {
            path: lock.to_path_buf(),
            source,
        };
        // Not truncated on open: the file holds the current holder's PID.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_owned(),
                    p => p.to_owned(),
                };
                return Err(LockError::Held {
                    what,
                    path: path.to_path_buf(),
                    lock: lock.to_path_buf(),
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(ProcessLock {
            _file: file,
            path: lock.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProcessLock::data_dir(dir.path()).unwrap();
        let pid = std::process::id().to_string();
        match ProcessLock::data_dir(dir.path()) {
            Err(e @ LockError::Held { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&pid), "{msg}");
                assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = ProcessLock::data_dir(dir.path()).unwrap();
        let written = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(written.trim(), pid);
    }

    #[test]
    fn a_sqlite_file_is_locked_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.db");
        let _held = ProcessLock::sqlite_file(&db).unwrap();
        assert!(dir.path().join("ledger.db.lock").exists());
        let e = ProcessLock::sqlite_file(&db).unwrap_err().to_string();
        assert!(
            e.contains("SQLite database") && e.contains("ledger.db"),
            "{e}"
        );
    }
}
