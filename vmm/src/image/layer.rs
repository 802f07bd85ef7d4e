//! Applying one layer tar onto the image's staging root.
//!
//! # Design
//! Layers are applied by hand rather than with `tar::Archive::unpack`
//! because a layer is not a plain archive: `.wh.NAME` entries delete NAME
//! from the layers below, `.wh..wh..opq` hides a directory's lower contents
//! while keeping what the same layer adds, and an entry replaces whatever a
//! lower layer had at its path (a file over a directory, a directory over a
//! symlink). The `tar` crate's unpacker knows none of this, and its symlink
//! checks refuse layers that legitimately reach a directory through a lower
//! layer's symlink (`/lib -> usr/lib`). The crates that do apply layers
//! (containerd's and ocidir's Rust ports) come with an async runtime or a
//! registry client we do not want in the VMM. So this module reads entries
//! with `tar` and does the filesystem work itself, in the way containerd's
//! `archive.Apply` does:
//!
//! - entry paths are relative to the root; a leading `/` is dropped, and an
//!   entry with a `..` component is refused (so is a hard link to one);
//! - the *directories* of an entry's path are resolved inside the root: a
//!   symlink met on the way is followed as if the root were `/` (an absolute
//!   target restarts at the root, `..` stops at it), so no lower layer's
//!   symlink can send a write outside the root; the entry's own name is
//!   never followed: a symlink there is replaced, not written through;
//! - file modes (with setuid/setgid/sticky bits) and numeric ownership are
//!   kept (ownership only when running as root); modification times are not,
//!   because the erofs image sets every time to 0 for reproducibility;
//! - character and block devices are skipped (logged at debug level): the
//!   guest's /dev is a devtmpfs, and a device node from an image is only an
//!   escape hatch. FIFOs are created.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// Where a layer comes from, for error messages.
#[derive(Clone, Debug)]
pub(super) struct LayerName {
    /// "2/3".
    pub index: String,
    /// The blob's path in the archive.
    pub file: String,
}

/// What applying a layer did.
#[derive(Debug, Default, PartialEq)]
pub(super) struct LayerStats {
    /// Entries written (files, directories, links, FIFOs).
    pub written: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes skipped.
    pub devices_skipped: u64,
}

/// Applies the layer tar read from `tar` onto `root`. `chown` says whether
/// to set numeric ownership (only root can).
pub(super) fn apply(
    root: &Path,
    tar: impl Read,
    layer: &LayerName,
    chown: bool,
) -> Result<LayerStats, ImageError> {
    let mut applier = Applier {
        root,
        layer,
        chown,
        unpacked: HashSet::new(),
        dir_modes: Vec::new(),
        stats: LayerStats::default(),
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(|e| applier.error("", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| applier.error("", e))?;
        applier.entry(entry)?;
    }
    // Directory modes last, deepest first, so that a read-only directory
    // does not stop its own entries from being written.
    for (path, mode) in applier.dir_modes.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(|e| {
            applier.error(
                &path.strip_prefix(root).unwrap_or(path).to_string_lossy(),
                e,
            )
        })?;
    }
    Ok(applier.stats)
}

struct Applier<'a> {
    root: &'a Path,
    layer: &'a LayerName,
    chown: bool,
    /// Paths this layer wrote, and their ancestors: what an opaque marker
    /// keeps.
    unpacked: HashSet<PathBuf>,
    /// Directories and the modes to give them once the layer is done.
    dir_modes: Vec<(PathBuf, u32)>,
    stats: LayerStats,
}

impl Applier<'_> {
    fn error(&self, entry: &str, source: io::Error) -> ImageError {
        ImageError::Unpack {
            layer: self.layer.index.clone(),
            file: self.layer.file.clone(),
            entry: entry.to_string(),
            source,
        }
    }

    fn unsafe_entry(&self, entry: &str, reason: &'static str) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.index.clone(),
            file: self.layer.file.clone(),
            entry: entry.to_string(),
            reason,
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let mut parts =
            components(&raw).ok_or_else(|| self.unsafe_entry(&shown, "has a '..' component"))?;
        let Some(name) = parts.pop() else {
            // The root itself ("./"): only its mode and owner apply.
            if kind.is_dir() {
                self.set_owner_and_mode(&entry, self.root.to_path_buf(), &shown)?;
            }
            return Ok(());
        };
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.error(&shown, e))? & 0o7777;
        let (uid, gid) = (
            header.uid().map_err(|e| self.error(&shown, e))?,
            header.gid().map_err(|e| self.error(&shown, e))?,
        );

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let parent = match resolve(self.root, &parts, false) {
                Ok(parent) => parent,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(self.error(&shown, e)),
            };
            if name == OPAQUE_MARKER {
                clear_lower(&parent, &self.unpacked).map_err(|e| self.error(&shown, e))?;
            } else if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other AUFS metadata (.wh..wh.plnk, ...): nothing to do.
                return Ok(());
            } else {
                remove_any(&parent.join(OsStr::from_bytes(hidden)))
                    .map_err(|e| self.error(&shown, e))?;
            }
            self.stats.whiteouts += 1;
            return Ok(());
        }

        if kind.is_character_special() || kind.is_block_special() {
            log::debug!("layer {}: skipping device node {shown}", self.layer.index);
            self.stats.devices_skipped += 1;
            return Ok(());
        }
        let parent = resolve(self.root, &parts, true).map_err(|e| self.error(&shown, e))?;
        let path = parent.join(&name);
        let existing = fs::symlink_metadata(&path).ok();
        let io_err = |e| self.error(&shown, e);

        if kind.is_dir() {
            match existing {
                Some(meta) if meta.is_dir() => {}
                Some(_) => {
                    remove_any(&path).map_err(io_err)?;
                    fs::create_dir(&path).map_err(io_err)?;
                }
                None => fs::create_dir(&path).map_err(io_err)?,
            }
            self.own(&path, uid, gid).map_err(io_err)?;
            self.dir_modes.push((path.clone(), mode));
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            if existing.is_some() {
                remove_any(&path).map_err(io_err)?;
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_err)?;
            io::copy(&mut entry, &mut file).map_err(io_err)?;
            // Owner first: chown clears the setuid and setgid bits.
            self.own_file(&file, uid, gid).map_err(io_err)?;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| self.error(&shown, invalid("a symlink with no target")))?;
            if existing.is_some() {
                remove_any(&path).map_err(io_err)?;
            }
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(io_err)?;
            if self.chown {
                std::os::unix::fs::lchown(&path, Some(uid_of(uid)), Some(uid_of(gid)))
                    .map_err(io_err)?;
            }
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| self.error(&shown, invalid("a hard link with no target")))?;
            let mut target_parts = components(&target)
                .ok_or_else(|| self.unsafe_entry(&shown, "links to a path with '..'"))?;
            let target_name = target_parts
                .pop()
                .ok_or_else(|| self.unsafe_entry(&shown, "links to the root directory"))?;
            let source = resolve(self.root, &target_parts, false)
                .map_err(io_err)?
                .join(target_name);
            if fs::symlink_metadata(&source).map_err(io_err)?.is_dir() {
                return Err(self.unsafe_entry(&shown, "hard-links a directory"));
            }
            if source == path {
                return Ok(());
            }
            if existing.is_some() {
                remove_any(&path).map_err(io_err)?;
            }
            // linkat without AT_SYMLINK_FOLLOW: links a symlink itself.
            fs::hard_link(&source, &path).map_err(io_err)?;
        } else if kind.is_fifo() {
            if existing.is_some() {
                remove_any(&path).map_err(io_err)?;
            }
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
                .map_err(|e| io_err(e.into()))?;
            self.own(&path, uid, gid).map_err(io_err)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err)?;
        } else {
            log::debug!(
                "layer {}: skipping {shown}: tar entry type {:?}",
                self.layer.index,
                kind
            );
            return Ok(());
        }
        self.stats.written += 1;
        let mut p = path.as_path();
        while p != self.root && self.unpacked.insert(p.to_path_buf()) {
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        Ok(())
    }

    fn set_owner_and_mode<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: PathBuf,
        shown: &str,
    ) -> Result<(), ImageError> {
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.error(shown, e))? & 0o7777;
        let uid = header.uid().map_err(|e| self.error(shown, e))?;
        let gid = header.gid().map_err(|e| self.error(shown, e))?;
        self.own(&path, uid, gid)
            .map_err(|e| self.error(shown, e))?;
        self.dir_modes.push((path, mode));
        Ok(())
    }

    fn own(&self, path: &Path, uid: u64, gid: u64) -> io::Result<()> {
        if !self.chown {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(uid_of(uid)), Some(uid_of(gid)))
    }

    fn own_file(&self, file: &File, uid: u64, gid: u64) -> io::Result<()> {
        if !self.chown {
            return Ok(());
        }
        std::os::unix::fs::fchown(file, Some(uid_of(uid)), Some(uid_of(gid)))
    }
}

/// A tar uid or gid as a Linux one; out-of-range ids become nobody (65534).
fn uid_of(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(65534)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The components of a tar path, with the root, `.` and empty components
/// dropped; `None` if any is `..`.
fn components(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            part => parts.push(OsStr::from_bytes(part).to_os_string()),
        }
    }
    Some(parts)
}

/// The directory `parts` names under `root`, resolved as if `root` were
/// `/`: symlinks on the way are followed, but an absolute target restarts
/// at `root` and `..` never climbs above it. With `create`, missing
/// directories are created (mode 0755, owned by the caller); else a missing
/// one is `NotFound`. A non-directory on the way is `NotADirectory`.
fn resolve(root: &Path, parts: &[OsString], create: bool) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = parts.iter().cloned().collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut followed = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let path = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => resolved.push(part),
            Ok(meta) if meta.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&path)?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    resolved.clear();
                }
                // Empty pieces (from "//" or the leading '/') are skipped
                // when popped.
                for piece in target.split(|&b| b == b'/').rev() {
                    pending.push_front(OsStr::from_bytes(piece).to_os_string());
                }
            }
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&path)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
                resolved.push(part);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// Removes whatever is at `path` (a directory with its contents), without
/// following a symlink there. Nothing there is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An opaque directory: removes what lower layers put in `dir`, keeping what
/// this layer wrote (`unpacked`) wherever the tar order put it.
fn clear_lower(dir: &Path, unpacked: &HashSet<PathBuf>) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        let path = child.path();
        if !unpacked.contains(&path) {
            remove_any(&path)?;
        } else if child.file_type()?.is_dir() {
            clear_lower(&path, unpacked)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::{scratch_dir, TarBuilder};

    fn layer() -> LayerName {
        LayerName {
            index: "1/1".into(),
            file: "blobs/sha256/test".into(),
        }
    }

    fn apply_tar(root: &Path, tar: Vec<u8>) -> Result<LayerStats, ImageError> {
        apply(
            root,
            tar.as_slice(),
            &layer(),
            nix::unistd::geteuid().is_root(),
        )
    }

    fn read(root: &Path, path: &str) -> Option<String> {
        fs::read_to_string(root.join(path)).ok()
    }

    #[test]
    fn whiteouts_delete_lower_files_and_opaque_dirs_hide_lower_contents() {
        let root = scratch_dir("layer-whiteout");
        let mut lower = TarBuilder::new();
        lower.dir("etc", 0o755);
        lower.file("etc/motd", b"lower motd", 0o644);
        lower.file("etc/keep", b"kept", 0o644);
        lower.dir("opt/data", 0o755);
        lower.file("opt/data/old", b"old", 0o644);
        lower.dir("opt/data/sub", 0o755);
        lower.file("opt/data/sub/deep", b"deep", 0o644);
        lower.dir("var/cache", 0o755);
        lower.file("var/cache/x", b"x", 0o644);
        apply_tar(&root, lower.finish()).unwrap();

        let mut upper = TarBuilder::new();
        upper.file("etc/.wh.motd", b"", 0o644);
        upper.file("var/.wh.cache", b"", 0o644);
        // The layer's own entry comes before the marker: it must survive.
        upper.file("opt/data/new", b"new", 0o644);
        upper.file("opt/data/.wh..wh..opq", b"", 0o644);
        upper.file("etc/.wh.never-existed", b"", 0o644);
        let stats = apply_tar(&root, upper.finish()).unwrap();

        assert_eq!(read(&root, "etc/motd"), None, "whiteout removed the file");
        assert_eq!(read(&root, "etc/keep").as_deref(), Some("kept"));
        assert!(!root.join("var/cache").exists(), "whiteout removed the dir");
        assert!(root.join("var").is_dir());
        assert_eq!(read(&root, "opt/data/new").as_deref(), Some("new"));
        assert_eq!(read(&root, "opt/data/old"), None, "opaque dir hid it");
        assert!(!root.join("opt/data/sub").exists(), "opaque dir hid it");
        assert!(!root.join("etc/.wh.motd").exists(), "markers are not files");
        assert!(!root.join("opt/data/.wh..wh..opq").exists());
        assert_eq!(stats.whiteouts, 4);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn entries_replace_what_lower_layers_had_and_keep_modes() {
        let root = scratch_dir("layer-replace");
        let mut lower = TarBuilder::new();
        lower.file("a", b"file", 0o644);
        lower.dir("b", 0o755);
        lower.file("b/inner", b"x", 0o644);
        lower.symlink("c", "/etc");
        apply_tar(&root, lower.finish()).unwrap();

        let mut upper = TarBuilder::new();
        upper.dir("a", 0o700);
        upper.file("b", b"now a file", 0o4755);
        upper.file("c", b"not through the link", 0o600);
        upper.dir("tmp", 0o1777);
        upper.hardlink("b2", "b");
        upper.symlink("sh", "busybox");
        apply_tar(&root, upper.finish()).unwrap();

        let mode = |p: &str| {
            fs::symlink_metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
        };
        assert!(root.join("a").is_dir());
        assert_eq!(mode("a") & 0o7777, 0o700);
        assert_eq!(read(&root, "b").as_deref(), Some("now a file"));
        assert_eq!(mode("b") & 0o7777, 0o4755, "setuid kept");
        assert_eq!(read(&root, "c").as_deref(), Some("not through the link"));
        assert!(!fs::symlink_metadata(root.join("c")).unwrap().is_symlink());
        assert_eq!(mode("tmp") & 0o7777, 0o1777, "sticky bit kept");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(root.join("b2")).unwrap().ino(),
            fs::metadata(root.join("b")).unwrap().ino(),
            "hard link shares the inode"
        );
        assert_eq!(
            fs::read_link(root.join("sh")).unwrap(),
            Path::new("busybox")
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn numeric_ownership_is_kept_when_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED numeric_ownership_is_kept_when_root: needs root to chown");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let root = scratch_dir("layer-owner");
        let mut tar = TarBuilder::new();
        tar.owned_file("home/nobody/file", b"x", 0o640, 65534, 65533);
        tar.owned_symlink("link", "home", 12, 34);
        apply_tar(&root, tar.finish()).unwrap();
        let meta = fs::metadata(root.join("home/nobody/file")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65533));
        let meta = fs::symlink_metadata(root.join("link")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (12, 34));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn dot_dot_entries_are_refused() {
        let base = scratch_dir("layer-dotdot");
        let root = base.join("root");
        fs::create_dir(&root).unwrap();
        for name in ["../evil", "a/../../evil", "./../evil"] {
            let mut tar = TarBuilder::new();
            tar.file(name, b"pwned", 0o644);
            let err = apply_tar(&root, tar.finish()).expect_err(name);
            assert!(
                matches!(err, ImageError::UnsafeEntry { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
            assert!(!base.join("evil").exists(), "{name} escaped");
        }
        let mut tar = TarBuilder::new();
        tar.hardlink("innocent", "../../etc/passwd");
        let err = apply_tar(&root, tar.finish()).expect_err("hard link out");
        assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn symlinks_from_lower_layers_never_lead_writes_outside_the_root() {
        let base = scratch_dir("layer-symlink");
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        let mut lower = TarBuilder::new();
        // An absolute symlink to a real host directory, a relative one that
        // climbs out, and one to the host's /.
        lower.symlink("abs", outside.to_str().unwrap());
        lower.symlink("rel", "../../../../../../outside");
        lower.symlink("slash", "/");
        lower.symlink("final", outside.join("final").to_str().unwrap());
        apply_tar(&root, lower.finish()).unwrap();

        let mut upper = TarBuilder::new();
        upper.file("abs/pwned", b"x", 0o644);
        upper.file("rel/pwned2", b"x", 0o644);
        upper.file("slash/tmp/pwned3", b"x", 0o644);
        upper.file("final", b"replaces the link", 0o644);
        apply_tar(&root, upper.finish()).unwrap();

        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing was written outside the root"
        );
        // The writes landed where the links point when the root is '/'.
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("pwned")
            .is_file());
        assert!(root.join("outside/pwned2").is_file());
        assert!(root.join("tmp/pwned3").is_file());
        assert!(!std::path::Path::new("/tmp/pwned3").exists());
        assert_eq!(read(&root, "final").as_deref(), Some("replaces the link"));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let root = scratch_dir("layer-loop");
        let mut tar = TarBuilder::new();
        tar.symlink("a", "b");
        tar.symlink("b", "a");
        tar.file("a/x", b"x", 0o644);
        let err = apply_tar(&root, tar.finish()).expect_err("loop");
        assert!(err.to_string().contains("\"a/x\""), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn device_nodes_are_skipped() {
        let root = scratch_dir("layer-dev");
        let mut tar = TarBuilder::new();
        tar.device("dev/null");
        tar.file("ok", b"x", 0o644);
        let stats = apply_tar(&root, tar.finish()).unwrap();
        assert_eq!(stats.devices_skipped, 1);
        assert!(!root.join("dev/null").exists());
        assert!(root.join("ok").is_file());
        fs::remove_dir_all(&root).unwrap();
    }
}
