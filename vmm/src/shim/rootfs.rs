//! A container's root file system, from containerd's snapshot mounts to a
//! block image the guest mounts.
//!
//! # Design
//! containerd hands the shim the snapshot as mounts (overlay for the
//! overlayfs snapshotter). The shim mounts them on `<bundle>/rootfs`, as
//! runc's shim does, packs that directory into an uncompressed erofs image
//! with the same `mkfs.erofs` call as `unipod image import`, and unmounts it
//! at once: the guest only ever sees the image, attached as a read-only
//! virtio-blk disk under an overlay with a tmpfs upper layer (the agent's
//! usual rootfs). So no host mount outlives Create.
//!
//! # Limitations
//! - Every container start copies its whole rootfs: the cost grows with the
//!   image size (docs/CONTAINERD.md has the measured figure). Passing the
//!   snapshot's layers as block devices would avoid the copy, but needs one
//!   disk per layer.
//! - Writes in the container go to the guest's tmpfs, not back to the
//!   snapshot: `ctr snapshot diff` of a unipod container is empty.

use std::path::{Path, PathBuf};
use std::time::Instant;

use containerd_shim::protos::types::mount::Mount;
use nix::mount::MsFlags;

/// Errors making a container's image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A snapshot mount failed.
    #[error("cannot mount the container's rootfs ({fstype} from {source_path}) on {}: {reason}", target.display())]
    Mount {
        /// The mount's type.
        fstype: String,
        /// The mount's source.
        source_path: String,
        /// Where.
        target: PathBuf,
        /// Why.
        reason: String,
    },
    /// No rootfs: no mounts and no `<bundle>/rootfs` directory.
    #[error("{}: no rootfs: containerd passed no mounts and the directory is missing", .0.display())]
    Missing(PathBuf),
    /// mkfs.erofs failed.
    #[error("cannot pack the container's rootfs into {}", .0.display())]
    Pack(PathBuf, #[source] crate::image::ImageError),
    /// Creating the mount point failed.
    #[error("cannot create {}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
}

/// Mounts `mounts` on `<bundle>/rootfs`, packs it into `image` and unmounts
/// it again. On error nothing stays mounted and `image` does not exist.
pub fn pack(bundle: &Path, mounts: &[Mount], image: &Path, seed: &str) -> Result<(), RootfsError> {
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| RootfsError::Io(target.clone(), e))?;
    let mut mounted = false;
    for m in mounts {
        mount_one(m, &target).map_err(|e| {
            unmount(&target);
            RootfsError::Mount {
                fstype: m.type_.clone(),
                source_path: m.source.clone(),
                target: target.clone(),
                reason: e.to_string(),
            }
        })?;
        mounted = true;
    }
    let packed = if !mounted && is_empty_dir(&target) {
        Err(RootfsError::Missing(target.clone()))
    } else {
        let started = Instant::now();
        let r = crate::image::pack_rootfs_dir(&target, image, seed)
            .map_err(|e| RootfsError::Pack(image.to_path_buf(), e));
        log::info!(
            "packed {} into {} in {} ms",
            target.display(),
            image.display(),
            started.elapsed().as_millis()
        );
        r
    };
    if mounted {
        unmount(&target);
    }
    if packed.is_err() {
        let _ = std::fs::remove_file(image);
    }
    packed
}

/// Mounts one snapshot mount. Hand-written rather than the crate's
/// `mount_rootfs`: that one forks and waits for the child through the
/// crate's reaper, which the shim turns off (it would race `Child::wait` on
/// the VMM), so it never returns here. Snapshot mounts are short (overlay
/// of a few layers, or a bind), so the page-size compaction it also does is
/// not needed.
fn mount_one(m: &Mount, target: &Path) -> nix::Result<()> {
    let (flags, data) = split_options(&m.options);
    let fstype = if m.type_.is_empty() {
        None
    } else {
        Some(m.type_.as_str())
    };
    let source = if m.source.is_empty() {
        None
    } else {
        Some(m.source.as_str())
    };
    let data = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    nix::mount::mount(source, target, fstype, flags, data)
}

/// Splits mount(8)-style options into flags and the file system's data.
fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// Unmounts `<bundle>/rootfs` (and anything below it); no error when
/// nothing is mounted there.
pub fn unmount(target: &Path) {
    // Lazy: a process of ours still holding a file open must not leave the
    // snapshot mounted for containerd to trip over on removal.
    while nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "index=off", "lowerdir=/a:/b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = split_options(&opts);
        assert_eq!(
            flags,
            MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC
        );
        assert_eq!(data, "index=off,lowerdir=/a:/b");
    }
}
