//! XXH3 of files, remembered by each file's identity and change times, so
//! that a restore does not read the kernel, the initramfs and the snapshot's
//! memory file again when they have not changed since the last one.
//!
//! # Design
//! A memo is a small file in the memo directory (`<snapshots>/.hashes/`),
//! named after the hashed file's path, holding the file's stamp (device,
//! inode, size, mtime and ctime in nanoseconds) and its hash. A stamp that
//! still matches means the file was not written since, as for git's index
//! and make: every write changes ctime, which user space cannot set back.
//!
//! A file changed within `SETTLE` of being hashed gets no memo (git's
//! "racy" entries): file times are coarse (a kernel tick), so a write in the
//! same tick as the hash would leave the stamp unchanged.
//!
//! # Limitations
//! Corruption that bypasses the file system (a bad disk sector, writes to
//! the block device) is not seen once a memo exists; the file system's own
//! checks are what catch that.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::xxh3_64;

use super::hash_file;

/// How long after its last change a file is trusted to a memo.
const SETTLE: Duration = Duration::from_secs(2);

/// Where memos are kept, if anywhere.
#[derive(Clone, Debug, Default)]
pub struct HashMemo {
    dir: Option<PathBuf>,
}

impl HashMemo {
    /// Memos in `dir` (created when the first is written).
    pub fn new(dir: PathBuf) -> HashMemo {
        HashMemo { dir: Some(dir) }
    }

    /// The memos of the snapshot cache that holds the snapshot directory
    /// `snapshot_dir`: `<its parent>/.hashes`.
    pub fn beside(snapshot_dir: &Path) -> HashMemo {
        snapshot_dir
            .parent()
            .map_or_else(HashMemo::default, |root| {
                HashMemo::new(root.join(".hashes"))
            })
    }

    /// XXH3 of `file`, opened from `path`: the memo's when the file has not
    /// changed since, else read (and remembered when it has settled).
    pub fn hash(&self, path: &Path, file: &File) -> std::io::Result<u64> {
        let Some(memo) = self.memo_path(path) else {
            return hash_file(file);
        };
        let meta = file.metadata()?;
        let stamp = format!(
            "{} {} {} {}.{:09} {}.{:09}",
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        if let Some(hash) = read_memo(&memo, &stamp) {
            return Ok(hash);
        }
        let hash = hash_file(file)?;
        let changed = UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
        let settled = SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|age| age >= SETTLE);
        if settled {
            // A memo is only a shortcut: failing to write one costs the
            // next restore a read, nothing more.
            if let Err(e) = write_memo(&memo, &format!("{stamp} {hash:016x}\n")) {
                log::debug!("cannot remember the hash of {}: {e}", path.display());
            }
        }
        Ok(hash)
    }

    fn memo_path(&self, path: &Path) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let name = xxh3_64(absolute.as_os_str().as_encoded_bytes());
        Some(dir.join(format!("{name:016x}")))
    }
}

/// The hash in `memo` if its stamp is `stamp`.
fn read_memo(memo: &Path, stamp: &str) -> Option<u64> {
    let text = std::fs::read_to_string(memo).ok()?;
    let (saved, hash) = text.trim_end().rsplit_once(' ')?;
    (saved == stamp)
        .then(|| u64::from_str_radix(hash, 16).ok())
        .flatten()
}

/// Writes `memo` whole or not at all: concurrent restores read it.
fn write_memo(memo: &Path, text: &str) -> std::io::Result<()> {
    let dir = memo.parent().expect("memos live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, memo).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unipod-memo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Waits until the files written so far have settled (ctime cannot be
    /// set back, so there is no quicker way).
    fn settle() {
        std::thread::sleep(SETTLE + Duration::from_millis(50));
    }

    #[test]
    fn a_settled_file_is_hashed_once_and_then_taken_from_its_memo() {
        let dir = temp("settled");
        let path = dir.join("kernel");
        std::fs::write(&path, b"a kernel").unwrap();
        settle();
        let memo = HashMemo::new(dir.join(".hashes"));
        let hash = memo.hash(&path, &File::open(&path).unwrap()).unwrap();
        assert_eq!(hash, xxh3_64(b"a kernel"));
        // Prove the second call trusts the memo: give it another hash.
        let memo_file = memo.memo_path(&path).unwrap();
        let text = std::fs::read_to_string(&memo_file).unwrap();
        std::fs::write(
            &memo_file,
            text.replace(&format!("{hash:016x}"), "00000000000000aa"),
        )
        .unwrap();
        assert_eq!(memo.hash(&path, &File::open(&path).unwrap()).unwrap(), 0xaa);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_written_file_is_hashed_again() {
        let dir = temp("written");
        let path = dir.join("memory");
        std::fs::write(&path, b"before").unwrap();
        settle();
        let memo = HashMemo::new(dir.join(".hashes"));
        memo.hash(&path, &File::open(&path).unwrap()).unwrap();
        // Same length, other bytes: only the times tell.
        std::fs::write(&path, b"after!").unwrap();
        let hash = memo.hash(&path, &File::open(&path).unwrap()).unwrap();
        assert_eq!(hash, xxh3_64(b"after!"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_changed_just_now_gets_no_memo() {
        let dir = temp("racy");
        let path = dir.join("initrd");
        std::fs::write(&path, b"fresh").unwrap();
        let memo = HashMemo::new(dir.join(".hashes"));
        assert_eq!(
            memo.hash(&path, &File::open(&path).unwrap()).unwrap(),
            xxh3_64(b"fresh")
        );
        assert!(!memo.memo_path(&path).unwrap().exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_directory_every_hash_is_read() {
        let dir = temp("none");
        let path = dir.join("f");
        std::fs::write(&path, b"x").unwrap();
        let memo = HashMemo::default();
        assert_eq!(
            memo.hash(&path, &File::open(&path).unwrap()).unwrap(),
            xxh3_64(b"x")
        );
        assert!(memo.memo_path(&path).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
