//! Containers' root file systems, seen from the agent: image mounts,
//! per-container overlays and pod volumes, all under [`RUN_DIR`].
//!
//! # Design
//!
//! ```text
//! /run/unipod/images/<dev>            the image device, read-only, once per device
//! /run/unipod/containers/<name>/      a tmpfs per container, holding
//!                         upper/ work/     the overlay's writable layer
//!                         rootfs/          overlay(lower = the image)
//! /run/unipod/volumes/<volume>/       pod volumes, shared by name: emptyDir, or
//!                                     files from WriteVolume (see `volume.rs`)
//! ```
//!
//! The agent mounts these in its own mount namespace; the container's child
//! process then builds its private view from them (see `sandbox.rs`): it
//! pivots into `rootfs/` and bind-mounts the volumes and the pod's `hosts`,
//! `hostname` and `resolv.conf` (written to `/etc` by `identity.rs` and
//! `network.rs`) over the image's. A volume mount with a `subPath` binds
//! what that path resolves to inside the volume, opened here
//! ([`volume::open_sub_path`]) so that the bind is made from that very file
//! or directory. Each container start mounts a fresh tmpfs for its upper
//! layer, so a restarted container gets a fresh writable layer as in
//! Kubernetes; [`ContainerRoot::remove`] unmounts and deletes it once the
//! container's exit is reported.
//!
//! The overlay's lower directory is a parameter ([`Filesystems::prepare`]), so
//! tests use a plain directory instead of an image device.
//!
//! # Limitations
//!
//! Images stay mounted for the pod's life. Volumes live on `/run`, a tmpfs
//! in guest RAM, and are never deleted (the pod's life is the VM's). The
//! pod's `/etc` files are bind-mounted per file, so a later `Configure`
//! (which replaces them by rename) is not seen by running containers.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use guest_agent::protocol::{Rootfs, VolumeMount};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::volume::{self, VolumeError};

/// Where the agent keeps images, container roots and volumes.
pub const RUN_DIR: &str = "/run/unipod";
/// Where the pod's `hosts`, `hostname` and `resolv.conf` are.
pub const POD_ETC_DIR: &str = "/etc";
/// The pod files bind-mounted into every container's `/etc`, when they exist.
pub const POD_ETC_FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];
/// Size of each container's writable layer (a tmpfs, in guest RAM).
const UPPER_SIZE: &str = "50%";
/// Where the kernel shows each block device's size (`<dev>/size`).
pub const SYS_BLOCK_DIR: &str = "/sys/class/block";
/// How long a disk may show no size before its image is mounted: the host
/// hot-attaches an image to an empty slot, and the guest sees the size once
/// its virtio-blk driver has handled the config-change interrupt.
const DISK_SIZE_WAIT: Duration = Duration::from_secs(10);
const DISK_SIZE_POLL: Duration = Duration::from_millis(20);

/// Errors of root file system preparation; the reply to the host carries the
/// chain.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The device path or file system type is unusable.
    #[error("invalid rootfs {field} {value:?}: {problem}")]
    Invalid {
        /// `device` or `fstype`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        problem: &'static str,
    },
    /// A mount failed.
    #[error("mount {what} on {target}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The disk still shows no size.
    #[error("{device} is still empty after {secs} s: the host attached no image to it, or the guest has not seen it yet")]
    EmptyDisk {
        /// The device.
        device: String,
        /// How long the agent waited.
        secs: u64,
    },
    /// A volume mount's `subPath` cannot be bound.
    #[error("volume mount {name:?} at {path:?}: subPath")]
    SubPath {
        /// The volume's name.
        name: String,
        /// The mount's path in the container.
        path: String,
        /// The cause (it names the sub path).
        #[source]
        source: VolumeError,
    },
    /// A directory could not be created or removed.
    #[error("{path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where everything lives; [`Layout::default`] is the guest's.
#[derive(Debug, Clone)]
pub struct Layout {
    /// [`RUN_DIR`].
    pub run: PathBuf,
    /// [`POD_ETC_DIR`].
    pub pod_etc: PathBuf,
    /// [`SYS_BLOCK_DIR`].
    pub sys_block: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            run: RUN_DIR.into(),
            pod_etc: POD_ETC_DIR.into(),
            sys_block: SYS_BLOCK_DIR.into(),
        }
    }
}

/// A bind mount into a container, from a path in the agent's view to an
/// absolute path in the container's.
#[derive(Debug)]
pub struct Bind {
    /// The source, in the agent's mount namespace.
    pub source: PathBuf,
    /// The source, already opened (`O_PATH`), when it was resolved in a
    /// volume that containers can change (a `subPath`): the bind is made
    /// from it, not from `source` again.
    pub opened: Option<OwnedFd>,
    /// The target, inside the container's root.
    pub target: String,
    /// Whether the source is a directory (else a file).
    pub dir: bool,
    /// Remount it read-only.
    pub read_only: bool,
}

/// A container's prepared root: its overlay, and what to bind into it.
#[derive(Debug)]
pub struct ContainerRoot {
    /// `/run/unipod/containers/<name>`, a tmpfs.
    dir: PathBuf,
    /// `<dir>/rootfs`, the overlay.
    merged: PathBuf,
    /// Pod files and volumes, in mount order.
    binds: Vec<Bind>,
}

impl ContainerRoot {
    /// The merged overlay: the container's `/`, seen from the agent.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// The bind mounts the container's child makes after entering its root.
    pub fn binds(&self) -> &[Bind] {
        &self.binds
    }

    /// Unmounts the overlay and the tmpfs under it and removes the directory.
    /// Lazy (`MNT_DETACH`): a process still inside keeps its view.
    pub fn remove(&self) -> Result<(), RootfsError> {
        remove_container_dir(&self.dir)
    }
}

/// Waits up to `limit` until block device `dev` shows a non-zero size in
/// `<sys_block>/<dev>/size`. Blocks the agent's loop, but only right after
/// a hot-attach, and briefly: the driver's work item runs meanwhile.
fn wait_for_size(sys_block: &Path, dev: &str, limit: Duration) -> Result<(), RootfsError> {
    let path = sys_block.join(dev).join("size");
    let deadline = Instant::now() + limit;
    loop {
        let sectors = fs::read_to_string(&path).map_err(io_err(&path))?;
        if sectors.trim().parse::<u64>().is_ok_and(|n| n > 0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RootfsError::EmptyDisk {
                device: format!("/dev/{dev}"),
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(DISK_SIZE_POLL);
    }
}

/// Unmounts and removes a container directory, if it exists.
fn remove_container_dir(dir: &Path) -> Result<(), RootfsError> {
    for target in [dir.join("rootfs"), dir.to_path_buf()] {
        match umount2(&target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(source) => {
                return Err(RootfsError::Mount {
                    what: "(unmount)".into(),
                    target,
                    source,
                })
            }
        }
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(dir)(e)),
        _ => Ok(()),
    }
}

/// The pod's image mounts and the places of its containers and volumes.
#[derive(Debug, Default)]
pub struct Filesystems {
    layout: Layout,
    /// Mounted images: device path to mount point.
    images: BTreeMap<String, PathBuf>,
}

impl Filesystems {
    /// Image mounts and container roots go under `layout`.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            images: BTreeMap::new(),
        }
    }

    /// `<run>/volumes`, where each pod volume is a directory.
    pub fn volumes_dir(&self) -> PathBuf {
        self.layout.run.join("volumes")
    }

    /// Mounts `rootfs`'s device read-only at `<run>/images/<dev>`, unless it
    /// is mounted already; returns the mount point.
    pub fn mount_image(&mut self, rootfs: &Rootfs) -> Result<PathBuf, RootfsError> {
        if let Some(at) = self.images.get(&rootfs.device) {
            return Ok(at.clone());
        }
        let invalid = |field, value: &str, problem| RootfsError::Invalid {
            field,
            value: value.to_string(),
            problem,
        };
        let dev = rootfs
            .device
            .strip_prefix("/dev/")
            .filter(|d| is_component(d))
            .ok_or_else(|| invalid("device", &rootfs.device, "give a device as /dev/NAME"))?;
        if !rootfs
            .fstype
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.')
            || rootfs.fstype.is_empty()
        {
            return Err(invalid(
                "fstype",
                &rootfs.fstype,
                "give a file system type such as erofs or ext4",
            ));
        }
        wait_for_size(&self.layout.sys_block, dev, DISK_SIZE_WAIT)?;
        let at = self.layout.run.join("images").join(dev);
        fs::create_dir_all(&at).map_err(io_err(&at))?;
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        mount(
            Some(rootfs.device.as_str()),
            &at,
            Some(rootfs.fstype.as_str()),
            flags,
            None::<&str>,
        )
        .map_err(|source| RootfsError::Mount {
            what: format!("{} ({})", rootfs.device, rootfs.fstype),
            target: at.clone(),
            source,
        })?;
        self.images.insert(rootfs.device.clone(), at.clone());
        Ok(at)
    }

    /// Makes the root of container `name` (a validated path component): a
    /// fresh tmpfs with an overlay of `lower` (replacing any earlier one of
    /// that name), the volumes' directories, and the list of bind mounts.
    /// `resolv_conf`, when given, is the container's own `/etc/resolv.conf`
    /// in place of the pod's.
    pub fn prepare(
        &self,
        name: &str,
        lower: &Path,
        volume_mounts: &[VolumeMount],
        resolv_conf: Option<&str>,
    ) -> Result<ContainerRoot, RootfsError> {
        let dir = self.layout.run.join("containers").join(name);
        remove_container_dir(&dir)?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mounted = |what: &str, target: &Path| {
            let (what, target) = (what.to_string(), target.to_path_buf());
            move |source| RootfsError::Mount {
                what,
                target,
                source,
            }
        };
        let tmpfs_opts = format!("mode=0755,size={UPPER_SIZE}");
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(tmpfs_opts.as_str()),
        )
        .map_err(mounted("a tmpfs", &dir))?;
        let mut root = ContainerRoot {
            merged: dir.join("rootfs"),
            dir,
            binds: Vec::new(),
        };
        // From here on, a failure removes what was made.
        match self.fill(&mut root, lower, volume_mounts, resolv_conf) {
            Ok(()) => Ok(root),
            Err(e) => {
                let _ = root.remove();
                Err(e)
            }
        }
    }

    fn fill(
        &self,
        root: &mut ContainerRoot,
        lower: &Path,
        volume_mounts: &[VolumeMount],
        resolv_conf: Option<&str>,
    ) -> Result<(), RootfsError> {
        let (upper, work) = (root.dir.join("upper"), root.dir.join("work"));
        for d in [&upper, &work, &root.merged] {
            fs::create_dir(d).map_err(io_err(d))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &root.merged,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|source| RootfsError::Mount {
            what: format!("an overlay of {}", lower.display()),
            target: root.merged.clone(),
            source,
        })?;
        // The container's own resolv.conf sits beside its layers, on its tmpfs.
        let own_resolv_conf = match resolv_conf {
            Some(text) => {
                let path = root.dir.join("resolv.conf");
                fs::write(&path, text).map_err(io_err(&path))?;
                Some(path)
            }
            None => None,
        };
        let mut binds: Vec<Bind> = POD_ETC_FILES
            .iter()
            .map(|f| match (*f, &own_resolv_conf) {
                ("resolv.conf", Some(own)) => own.clone(),
                _ => self.layout.pod_etc.join(f),
            })
            .filter(|p| p.is_file())
            .map(|source| Bind {
                target: format!(
                    "/etc/{}",
                    source.file_name().unwrap_or_default().to_string_lossy()
                ),
                source,
                opened: None,
                dir: false,
                read_only: false,
            })
            .collect();
        for v in volume_mounts {
            let volume = self.volumes_dir().join(&v.name);
            fs::create_dir_all(&volume).map_err(io_err(&volume))?;
            let (source, opened, dir) = match &v.sub_path {
                None => (volume, None, true),
                Some(sub) => {
                    let (fd, dir) = volume::open_sub_path(&volume, sub).map_err(|source| {
                        RootfsError::SubPath {
                            name: v.name.clone(),
                            path: v.path.clone(),
                            source,
                        }
                    })?;
                    (volume.join(sub), Some(fd), dir)
                }
            };
            binds.push(Bind {
                source,
                opened,
                target: v.path.clone(),
                dir,
                read_only: v.read_only,
            });
        }
        root.binds = binds;
        Ok(())
    }
}

/// True for one normal path component (no `/`, `.` or `..`).
pub fn is_component(s: &str) -> bool {
    let mut c = Path::new(s).components();
    matches!((c.next(), c.next()), (Some(Component::Normal(n)), None) if n == s)
}

/// True for a relative path of normal components separated by single `/`s
/// (no `.`, `..` or empty ones).
pub fn is_relative_path(s: &str) -> bool {
    s.split('/').all(is_component)
}

/// True for an absolute path other than `/` without `.` or `..` parts.
pub fn is_mount_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() > 1
        && Path::new(s)
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !s.split('/').any(|p| p == "." || p == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_absolute_and_plain() {
        for ok in ["/data", "/var/lib/x", "/a/"] {
            assert!(is_mount_path(ok), "{ok}");
        }
        for bad in ["", "/", "data", "/a/../b", "/a/./b", "./a"] {
            assert!(!is_mount_path(bad), "{bad}");
        }
        assert!(is_component("vda") && is_component("a.b"));
        for bad in ["", ".", "..", "a/b", "/a"] {
            assert!(!is_component(bad), "{bad}");
        }
        for ok in ["a", "a/b", "..data/key", "a.b/c"] {
            assert!(is_relative_path(ok), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "./a", "a/../b", ".."] {
            assert!(!is_relative_path(bad), "{bad}");
        }
    }

    #[test]
    fn a_disk_is_mounted_only_once_it_shows_a_size() {
        let sys = std::env::temp_dir().join(format!("unipod-sys-block-{}", std::process::id()));
        fs::create_dir_all(sys.join("vdb")).unwrap();
        let size = sys.join("vdb/size");
        fs::write(&size, "0\n").unwrap();
        match wait_for_size(&sys, "vdb", Duration::from_millis(100)) {
            Err(e @ RootfsError::EmptyDisk { .. }) => {
                assert!(e.to_string().starts_with("/dev/vdb is still empty"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let writer = {
            let size = size.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                fs::write(size, "16\n").unwrap();
            })
        };
        wait_for_size(&sys, "vdb", Duration::from_secs(10)).expect("the size appears");
        writer.join().unwrap();
        assert!(matches!(
            wait_for_size(&sys, "vdc", Duration::from_secs(1)),
            Err(RootfsError::Io { .. })
        ));
        fs::remove_dir_all(&sys).unwrap();
    }

    #[test]
    fn image_devices_and_types_are_validated_before_mounting() {
        let mut fs = Filesystems::new(Layout {
            run: std::env::temp_dir().join("unipod-never-created"),
            pod_etc: "/nonexistent".into(),
            sys_block: "/nonexistent".into(),
        });
        for (device, fstype, field) in [
            ("vda", "erofs", "device"),
            ("/dev/../etc", "erofs", "device"),
            ("/dev/vda", "", "fstype"),
            ("/dev/vda", "erofs,ro", "fstype"),
        ] {
            let rootfs = Rootfs {
                device: device.into(),
                fstype: fstype.into(),
            };
            match fs.mount_image(&rootfs) {
                Err(RootfsError::Invalid { field: f, .. }) => assert_eq!(f, field, "{device}"),
                other => panic!("{device} {fstype}: {other:?}"),
            }
        }
    }
}
