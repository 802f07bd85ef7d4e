//! Warm start: a guest saved once, right after its agent is ready, and
//! restored for every later pod.
//!
//! # Format
//! A snapshot is a directory with two files:
//! - `state`: an 8-byte magic, a little-endian `u32` format version, the
//!   `u64` payload length and the payload's `u64` XXH3 checksum, then the
//!   payload: [`Snapshot`] as JSON (serde). The header is checked before the
//!   payload is parsed, so a truncated, corrupted or foreign file is refused
//!   with its own error;
//! - `memory`: guest RAM, sparse (zero pages are holes), mapped `MAP_PRIVATE`
//!   on restore; its length and checksum are in `state`.
//!
//! A snapshot only fits the inputs it was taken from. [`key`] hashes them
//! (kernel and initramfs contents, vCPUs, memory, CPU template, command line,
//! whether there is a net device, how many disks, and this format's
//! version), the snapshot records that key, and a restore with other inputs
//! is refused ([`SnapshotError::KeyMismatch`]). Disk images do not enter the
//! key: a restored VM's disks start empty and take the images it is given.

pub mod cache;
pub mod hash_memo;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::config::{CpuTemplate, VmConfig};
use crate::device_manager::DevicesState;
use crate::vstate::memory::RegionState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

pub use self::hash_memo::HashMemo;

/// Bumped whenever the saved state changes shape or meaning.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"UNIPODSN";
const HEADER_LEN: usize = 8 + 4 + 8 + 8;
/// The state file inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Bound on the state file's payload; real ones are about 100 KiB.
const MAX_STATE_LEN: u64 = 64 << 20;

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file cannot be read or written.
    #[error("{}: {what}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the snapshot magic.
    #[error("{}: not a unipod snapshot", .0.display())]
    NotASnapshot(PathBuf),
    /// Written by another format version.
    #[error("{}: snapshot format version {found}, this unipod reads version {FORMAT_VERSION}", .path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{}: truncated ({found} of {expected} bytes)", .path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// The checksum does not match the contents.
    #[error("{}: checksum mismatch; the file is corrupted", .0.display())]
    Checksum(PathBuf),
    /// The payload is not a valid state.
    #[error("{}: cannot decode the saved state", .0.display())]
    Decode(PathBuf, #[source] serde_json::Error),
    /// The state cannot be encoded (a bug).
    #[error("cannot encode the VM state")]
    Encode(#[source] serde_json::Error),
    /// Taken from other inputs (kernel, initramfs, memory size, ...).
    #[error("the snapshot was taken with other inputs (kernel, initramfs, vCPUs, memory, CPU template, command line, net device or number of disks): key {found}, this VM needs {expected}")]
    KeyMismatch {
        /// The snapshot's key.
        found: String,
        /// The key this VM needs.
        expected: String,
    },
}

impl SnapshotError {
    fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SnapshotError {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, what, source }
    }
}

/// What the snapshot was taken from, for people (`unipod snapshot ls`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The kernel file.
    pub kernel: PathBuf,
    /// The initramfs file.
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// vCPU count.
    pub vcpus: u8,
    /// When it was taken, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Whether the VM has the free-page-reporting balloon (absent in older
    /// snapshots, which had none).
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// A saved VM, without its memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`key`] of the inputs.
    pub key: String,
    /// Where it came from.
    pub info: SnapshotInfo,
    /// Interrupt controllers, PIT and clock.
    pub vm: VmState,
    /// One entry per vCPU.
    pub vcpus: Vec<VcpuState>,
    /// Device registers and queues.
    pub devices: DevicesState,
    /// Guest RAM ranges and their place in the memory file.
    pub memory: Vec<RegionState>,
    /// The memory file's length.
    pub memory_len: u64,
    /// XXH3 of the memory file.
    pub memory_hash: u64,
}

impl Snapshot {
    /// Writes the state file into `dir`.
    pub fn write_state(&self, dir: &Path) -> Result<(), SnapshotError> {
        let payload = serde_json::to_vec(self).map_err(SnapshotError::Encode)?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let path = dir.join(STATE_FILE);
        let mut file = File::create(&path).map_err(SnapshotError::io(&path, "cannot create"))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(SnapshotError::io(&path, "cannot write"))
    }

    /// Reads and checks the state file in `dir` (header, checksum, decode).
    pub fn read_state(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let path = dir.join(STATE_FILE);
        let mut file = File::open(&path).map_err(SnapshotError::io(&path, "cannot open"))?;
        let mut header = [0u8; HEADER_LEN];
        let got =
            read_up_to(&mut file, &mut header).map_err(SnapshotError::io(&path, "cannot read"))?;
        if got < MAGIC.len() || &header[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot(path));
        }
        if got < HEADER_LEN {
            return Err(SnapshotError::Truncated {
                path,
                expected: HEADER_LEN as u64,
                found: got as u64,
            });
        }
        let field = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                path,
                found: version,
            });
        }
        let (len, checksum) = (field(12), field(20));
        if len > MAX_STATE_LEN {
            return Err(SnapshotError::Checksum(path));
        }
        let mut payload = Vec::with_capacity(usize::try_from(len).expect("bounded above"));
        file.take(len)
            .read_to_end(&mut payload)
            .map_err(SnapshotError::io(&path, "cannot read"))?;
        if (payload.len() as u64) < len {
            return Err(SnapshotError::Truncated {
                path,
                expected: HEADER_LEN as u64 + len,
                found: (HEADER_LEN + payload.len()) as u64,
            });
        }
        if xxh3_64(&payload) != checksum {
            return Err(SnapshotError::Checksum(path));
        }
        serde_json::from_slice(&payload).map_err(|e| SnapshotError::Decode(path, e))
    }

    /// Reads the snapshot in `dir` and checks that it fits `expected_key` and
    /// that its memory file is whole and unchanged (its hash comes from
    /// `memo` when the file was not written since the last check). Returns
    /// the state and the open memory file.
    pub fn open(
        dir: &Path,
        expected_key: &str,
        memo: &HashMemo,
    ) -> Result<(Snapshot, File), SnapshotError> {
        let snapshot = Snapshot::read_state(dir)?;
        if snapshot.key != expected_key {
            return Err(SnapshotError::KeyMismatch {
                found: snapshot.key,
                expected: expected_key.to_string(),
            });
        }
        let path = dir.join(MEMORY_FILE);
        let file = File::open(&path).map_err(SnapshotError::io(&path, "cannot open"))?;
        let len = file
            .metadata()
            .map_err(SnapshotError::io(&path, "cannot stat"))?
            .len();
        if len != snapshot.memory_len {
            return Err(SnapshotError::Truncated {
                path,
                expected: snapshot.memory_len,
                found: len,
            });
        }
        if memo
            .hash(&path, &file)
            .map_err(SnapshotError::io(&path, "cannot read"))?
            != snapshot.memory_hash
        {
            return Err(SnapshotError::Checksum(path));
        }
        Ok((snapshot, file))
    }
}

/// XXH3 of a whole file, read from the start.
pub fn hash_file(file: &File) -> std::io::Result<u64> {
    let mut hasher = Xxh3::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    std::io::Seek::rewind(&mut reader)?;
    loop {
        let buf = std::io::BufRead::fill_buf(&mut reader)?;
        if buf.is_empty() {
            return Ok(hasher.digest());
        }
        hasher.update(buf);
        let n = buf.len();
        std::io::BufRead::consume(&mut reader, n);
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The key of the inputs a snapshot depends on: kernel and initramfs
/// contents, vCPUs, memory, the resolved CPU template, the command line, and
/// the device set (a net device or not, the number of disks; the images
/// themselves do not count).
///
/// The kernel's and initramfs's hashes come from `memo` when they were not
/// written since they were last hashed.
pub fn key(
    config: &VmConfig,
    template: CpuTemplate,
    memo: &HashMemo,
) -> Result<String, SnapshotError> {
    let mut hasher = Xxh3::new();
    hasher.update(
        format!(
            "unipod-snapshot/{FORMAT_VERSION}/{}\n",
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    for path in std::iter::once(&config.kernel).chain(config.initrd.as_ref()) {
        let file = File::open(path).map_err(SnapshotError::io(path, "cannot open"))?;
        hasher.update(
            &memo
                .hash(path, &file)
                .map_err(SnapshotError::io(path, "cannot read"))?
                .to_le_bytes(),
        );
    }
    hasher.update(
        format!(
            "initrd={} net={} disks={} balloon={} vcpus={} mem={} template={template:?} cmdline={} host_cmdline={}\n",
            config.initrd.is_some(),
            config.net.is_some(),
            config.disks.len(),
            config.free_page_reporting,
            config.vcpus,
            config.mem_mib,
            config.cmdline(),
            crate::config::cmdline::host_cmdline(template)
        )
        .as_bytes(),
    );
    Ok(format!("{:016x}", hasher.digest()))
}

#[cfg(test)]
mod tests;
