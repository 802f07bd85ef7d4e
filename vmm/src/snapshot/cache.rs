//! The snapshot cache: `<state dir>/snapshots/<key>/`, one snapshot per set
//! of inputs.
//!
//! A snapshot is built in a hidden staging directory and renamed into place
//! only when complete, so a crash leaves no half-written snapshot under a
//! key. Creation is serialized per key with an exclusive `flock`, so
//! concurrent `unipod run`s boot the template guest once and the others
//! wait for it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{HashMemo, Snapshot, SnapshotInfo, STATE_FILE};

/// One cached snapshot, as `unipod snapshot ls` shows it.
#[derive(Debug)]
pub struct Entry {
    /// Its key (the directory name).
    pub key: String,
    /// Disk blocks in use, in bytes (the memory file is sparse).
    pub disk_bytes: u64,
    /// What it was taken from, or why it cannot be read.
    pub info: Result<SnapshotInfo, String>,
}

/// The snapshot directory of a state dir.
#[derive(Clone, Debug)]
pub struct SnapshotCache {
    root: PathBuf,
}

impl SnapshotCache {
    /// The cache under `state_dir`.
    pub fn new(state_dir: &Path) -> SnapshotCache {
        SnapshotCache {
            root: state_dir.join("snapshots"),
        }
    }

    /// The hashes of the inputs and memory files its snapshots were
    /// checked against (see [`HashMemo`]).
    pub fn hash_memo(&self) -> HashMemo {
        HashMemo::new(self.root.join(".hashes"))
    }

    /// Where the snapshot for `key` lives.
    pub fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Whether a complete snapshot for `key` exists.
    pub fn contains(&self, key: &str) -> bool {
        self.dir(key).join(STATE_FILE).is_file()
    }

    /// Waits for and takes the creation lock of `key`; released on drop.
    pub fn lock(&self, key: &str) -> std::io::Result<Flock<File>> {
        std::fs::create_dir_all(&self.root)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(format!(".{key}.lock")))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
    }

    /// A fresh staging directory for `key`; hold the key's lock.
    pub fn staging(&self, key: &str) -> std::io::Result<PathBuf> {
        let dir = self.root.join(format!(".{key}.staging"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Moves a finished staging directory into place as `key`.
    pub fn commit(&self, staging: &Path, key: &str) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(self.dir(key));
        std::fs::rename(staging, self.dir(key))
    }

    /// Every snapshot, sorted by key; staging leftovers are not listed.
    pub fn list(&self) -> Vec<Entry> {
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut entries: Vec<Entry> = dirs
            .filter_map(Result::ok)
            .filter(|d| d.path().is_dir())
            .filter_map(|d| {
                let key = d.file_name().into_string().ok()?;
                if key.starts_with('.') {
                    return None;
                }
                let path = d.path();
                Some(Entry {
                    disk_bytes: disk_usage(&path),
                    info: Snapshot::read_state(&path)
                        .map(|s| s.info)
                        .map_err(|e| e.to_string()),
                    key,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries
    }

    /// Removes the snapshot `key`; returns the bytes freed, or `None` if
    /// there was none.
    pub fn remove(&self, key: &str) -> std::io::Result<Option<u64>> {
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            return Ok(None);
        }
        let dir = self.dir(key);
        if !dir.is_dir() {
            return Ok(None);
        }
        let freed = disk_usage(&dir);
        std::fs::remove_dir_all(&dir)?;
        let _ = std::fs::remove_file(self.root.join(format!(".{key}.lock")));
        Ok(Some(freed))
    }

    /// Removes staging directories left by interrupted creations, and the
    /// remembered hashes (shortcuts only: the next restore rereads its
    /// files once); returns the bytes freed. Lock files stay: a running
    /// creation may hold one.
    pub fn remove_leftovers(&self) -> u64 {
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut freed = 0;
        for d in dirs.filter_map(Result::ok) {
            let name = d.file_name().to_string_lossy().into_owned();
            let Some(key) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".staging"))
            else {
                continue;
            };
            // Someone creating it right now holds the lock; skip it then.
            let Ok(file) = File::open(self.root.join(format!(".{key}.lock"))) else {
                continue;
            };
            if Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok() {
                freed += disk_usage(&d.path());
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
        let memos = self.root.join(".hashes");
        if memos.is_dir() {
            freed += disk_usage(&memos);
            let _ = std::fs::remove_dir_all(&memos);
        }
        freed
    }
}

/// Bytes of disk blocks used by the files in `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|files| {
            files
                .filter_map(Result::ok)
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}
