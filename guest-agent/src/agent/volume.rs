//! Volumes the host fills with files (`WriteVolume`: ConfigMap, Secret,
//! downward API and projected volumes), and the `subPath` of a volume mount.
//!
//! # Design
//!
//! A written volume lives where an emptyDir of that name would, and is laid
//! out as the kubelet's atomic writer lays it out:
//!
//! ```text
//! <run>/volumes/<name>/
//!     ..2026_12_07_03_59_57.123/    the files (directories 0755), fresh each write
//!     ..data -> ..2026_12_07_03_59_57.123
//!     key -> ..data/key             one symlink per top-level name
//!     dir -> ..data/dir             (for the file dir/nested)
//! ```
//!
//! [`write()`] checks the whole request first ([`validate`], no I/O), then
//! writes every file into a new hidden directory, adds the symlinks of new
//! top-level names, points a `..data_tmp` symlink at the new directory and
//! renames it over `..data`. That rename is the one atomic step: a reader
//! going through `..data` sees every old file or every new one. Then the
//! top-level symlinks of names that went are removed, and the old directory.
//! Containers bind the volume's directory itself, so they see each swap; a
//! `subPath` bind holds the file or directory it was resolved to and keeps
//! the old content, as in Kubernetes.
//!
//! A container may have the volume bound read-write and plant symlinks in
//! it, so the agent never follows one it did not make: files are created
//! one component at a time with `O_NOFOLLOW` under the new directory, and a
//! sub path is resolved by [`open_sub_path`] with `openat2(RESOLVE_BENEATH)`
//! from the volume's directory. That follows symlinks (a ConfigMap key is one,
//! through `..data`) but refuses any that lead outside the volume, and its
//! result is an `O_PATH` descriptor that the sandbox clones the bind from,
//! so nothing can be swapped between the check and the mount.
//!
//! # Limitations
//!
//! Files belong to root (no `fsGroup`). Every write replaces every file,
//! changed or not. The first write refuses a volume that already holds other
//! files (an emptyDir in use); later writes leave such files alone, as the
//! kubelet does (a missing `subPath` creates one). Nothing is fsynced: the
//! volume is on a tmpfs in guest RAM.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use guest_agent::protocol::{VolumeFile, VolumeFiles, MAX_VOLUME_BYTES, MAX_VOLUME_FILES};
use nix::errno::Errno;
use nix::fcntl::{open, openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode, SFlag};

use super::rootfs::{is_component, is_relative_path};

/// The symlink to the current data directory.
const DATA_LINK: &str = "..data";
/// The symlink renamed over [`DATA_LINK`].
const DATA_TMP_LINK: &str = "..data_tmp";
/// Longest file path, as the kubelet's writer (and `PATH_MAX`) allow.
const MAX_PATH_LEN: usize = 4096;
/// Longest component of a file path (`NAME_MAX`).
const MAX_NAME_LEN: usize = 255;
/// Mode of the directories the writer makes.
const DIR_MODE: u32 = 0o755;

/// Errors of writing a volume or opening a sub path.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A field of the request is unusable; nothing was written.
    #[error("volume {volume:?}: {field}: {problem}")]
    Invalid {
        /// The volume's name.
        volume: String,
        /// The field, for example `files[2] ("a/b").mode`.
        field: String,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The first write found files the writer did not make.
    #[error(
        "volume {volume:?} already holds {entry:?}, which WriteVolume did not write \
         (an emptyDir in use?); give the files a volume of their own"
    )]
    NotWriterVolume {
        /// The volume's name.
        volume: String,
        /// The first such entry.
        entry: String,
    },
    /// A sub path resolves outside its volume.
    #[error("{sub_path:?} leads outside the volume (through a symlink)")]
    Escapes {
        /// The sub path.
        sub_path: String,
    },
    /// A file system operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was done: `create`, `write`, `remove`, ...
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn errno_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> VolumeError + 'a {
    move |e| io_err(what, path)(e.into())
}

/// Checks a request without side effects: the volume's name, the number of
/// files and bytes, and each file's path (relative, normal components, none
/// starting with `..`, unique, not also a directory of another) and mode.
pub fn validate(files: &VolumeFiles) -> Result<(), VolumeError> {
    let invalid = |field: String, problem: String| VolumeError::Invalid {
        volume: files.name.clone(),
        field,
        problem,
    };
    if !is_component(&files.name) || files.name.starts_with('.') {
        let problem = "give one path component, not starting with '.'";
        return Err(invalid("name".into(), problem.into()));
    }
    if files.files.len() > MAX_VOLUME_FILES {
        let problem = format!("{} files; at most {MAX_VOLUME_FILES}", files.files.len());
        return Err(invalid("files".into(), problem));
    }
    let bytes: usize = files.files.iter().map(|f| f.data.len()).sum();
    if bytes > MAX_VOLUME_BYTES {
        let problem = format!("{bytes} bytes of data; at most {MAX_VOLUME_BYTES}");
        return Err(invalid("files".into(), problem));
    }
    let field = |i: usize, f: &VolumeFile| format!("files[{i}] ({:?})", f.path);
    let mut paths = BTreeSet::new();
    for (i, f) in files.files.iter().enumerate() {
        if let Some(problem) = file_path_problem(&f.path) {
            return Err(invalid(field(i, f), problem.into()));
        }
        if f.mode > 0o777 {
            let problem = format!("{:#o} is not permission bits (at most 0o777)", f.mode);
            return Err(invalid(format!("{}.mode", field(i, f)), problem));
        }
        if !paths.insert(f.path.as_str()) {
            return Err(invalid(field(i, f), "another file has this path".into()));
        }
    }
    for (i, f) in files.files.iter().enumerate() {
        let parents = f.path.match_indices('/').map(|(at, _)| &f.path[..at]);
        if let Some(parent) = parents.into_iter().find(|p| paths.contains(p)) {
            let problem = format!("{parent:?} is a file, not a directory");
            return Err(invalid(field(i, f), problem));
        }
    }
    Ok(())
}

/// Why `path` cannot name a file of a volume, if it cannot.
fn file_path_problem(path: &str) -> Option<&'static str> {
    if path.len() > MAX_PATH_LEN {
        Some("the path is over 4096 bytes")
    } else if path.contains('\0') {
        Some("the path contains a NUL byte")
    } else if !is_relative_path(path) {
        Some("give a relative path of normal components separated by '/'")
    } else if path.split('/').any(|c| c.starts_with("..")) {
        Some("no component may start with '..' (those names are the writer's own)")
    } else if path.split('/').any(|c| c.len() > MAX_NAME_LEN) {
        Some("a component is over 255 bytes")
    } else {
        None
    }
}

/// What a volume's directory holds before a write.
#[derive(Debug, Default)]
struct Existing {
    /// A `..data` link: the volume was written before.
    written: bool,
    /// Top-level symlinks `name -> ..data/name`.
    links: BTreeSet<String>,
    /// Data directories (`..` and a digit), current and stale.
    data_dirs: Vec<String>,
    /// The first entry the writer did not make.
    foreign: Option<String>,
}

impl Existing {
    fn scan(dir: &Path) -> Result<Self, VolumeError> {
        let mut found = Self::default();
        for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
            let entry = entry.map_err(io_err("read", dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err("inspect", &path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == DATA_LINK {
                found.written = true;
            } else if let Some(rest) = name.strip_prefix("..") {
                if kind.is_dir() && rest.starts_with(|c: char| c.is_ascii_digit()) {
                    found.data_dirs.push(name);
                }
            } else if kind.is_symlink()
                && fs::read_link(&path).is_ok_and(|t| t == Path::new(DATA_LINK).join(&name))
            {
                found.links.insert(name);
            } else if found.foreign.is_none() {
                found.foreign = Some(name);
            }
        }
        Ok(found)
    }
}

/// Fills volume `files.name` under `volumes` (created if missing) with
/// exactly `files`, replacing what an earlier write put there in one atomic
/// step (see the module doc).
pub fn write(volumes: &Path, files: &VolumeFiles) -> Result<(), VolumeError> {
    validate(files)?;
    let dir = volumes.join(&files.name);
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let existing = Existing::scan(&dir)?;
    if let (false, Some(entry)) = (existing.written, &existing.foreign) {
        return Err(VolumeError::NotWriterVolume {
            volume: files.name.clone(),
            entry: entry.clone(),
        });
    }
    let (data_dir, data_fd) = new_data_dir(&dir, SystemTime::now())?;
    let data_path = dir.join(&data_dir);
    let tops: BTreeSet<&str> = files
        .files
        .iter()
        .map(|f| f.path.split('/').next().unwrap_or_default())
        .collect();
    let swapped = write_files(&data_fd, &data_path, &files.files)
        .and_then(|()| add_links(&dir, &tops, &existing.links))
        .and_then(|()| swap_data_link(&dir, &data_dir));
    if let Err(e) = swapped {
        let _ = fs::remove_dir_all(&data_path);
        return Err(e);
    }
    for gone in existing.links.iter().filter(|l| !tops.contains(l.as_str())) {
        let path = dir.join(gone);
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
    }
    for old in existing.data_dirs {
        let path = dir.join(old);
        fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
    }
    Ok(())
}

/// The flags that open a directory the writer made, and nothing else.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Makes a new, empty data directory `..<UTC time>.<n>` (mode 0755) in `dir`;
/// returns its name and the directory, open.
fn new_data_dir(dir: &Path, now: SystemTime) -> Result<(String, OwnedFd), VolumeError> {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let stamp = utc_stamp(since_epoch.as_secs());
    let mut n = since_epoch.subsec_nanos();
    loop {
        let name = format!("..{stamp}.{n}");
        let path = dir.join(&name);
        match fs::create_dir(&path) {
            Ok(()) => {
                let fd = open(&path, DIR_FLAGS, Mode::empty()).map_err(errno_err("open", &path))?;
                // Whatever the umask.
                fchmod(&fd, Mode::from_bits_truncate(DIR_MODE))
                    .map_err(errno_err("create", &path))?;
                return Ok((name, fd));
            }
            // Left by an earlier write in the same nanosecond: try the next.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n = n.wrapping_add(1),
            Err(e) => return Err(io_err("create", &path)(e)),
        }
    }
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC, as the kubelet names its data directories.
fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).expect("u64 seconds / 86400 fits in i64");
    let rem = secs % 86_400;
    let (year, month, day) = guest_agent::civil::civil_from_days(days);
    let (h, m, s) = (rem / 3_600, rem / 60 % 60, rem % 60);
    format!("{year:04}_{month:02}_{day:02}_{h:02}_{m:02}_{s:02}")
}

/// Writes every file under the fresh directory `root_fd` (at `root`), one
/// component at a time without following symlinks.
fn write_files(root_fd: &OwnedFd, root: &Path, files: &[VolumeFile]) -> Result<(), VolumeError> {
    for f in files {
        let path = root.join(&f.path);
        let err = |what| errno_err(what, &path);
        let (parents, name) = f.path.rsplit_once('/').unwrap_or(("", &f.path));
        let mut at = root_fd.try_clone().map_err(io_err("open", root))?;
        for part in parents.split('/').filter(|p| !p.is_empty()) {
            let created = match mkdirat(&at, part, Mode::from_bits_truncate(DIR_MODE)) {
                Ok(()) => true,
                Err(Errno::EEXIST) => false,
                Err(e) => return Err(err("create a directory for")(e)),
            };
            at =
                openat(&at, part, DIR_FLAGS, Mode::empty()).map_err(err("open a directory for"))?;
            if created {
                fchmod(&at, Mode::from_bits_truncate(DIR_MODE)).map_err(err("create"))?;
            }
        }
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(f.mode);
        let fd = openat(&at, name, flags, mode).map_err(err("create"))?;
        fchmod(&fd, mode).map_err(err("create"))?;
        File::from(fd)
            .write_all(&f.data)
            .map_err(io_err("write", &path))?;
    }
    Ok(())
}

/// Makes the missing top-level symlinks `name -> ..data/name`.
fn add_links(
    dir: &Path,
    tops: &BTreeSet<&str>,
    links: &BTreeSet<String>,
) -> Result<(), VolumeError> {
    for top in tops.iter().filter(|t| !links.contains(**t)) {
        let path = dir.join(top);
        symlink(Path::new(DATA_LINK).join(top), &path).map_err(io_err("link", &path))?;
    }
    Ok(())
}

/// Points `..data` at `data_dir` with one rename.
fn swap_data_link(dir: &Path, data_dir: &str) -> Result<(), VolumeError> {
    let tmp = dir.join(DATA_TMP_LINK);
    if let Err(e) = fs::remove_file(&tmp) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(io_err("remove", &tmp)(e));
        }
    }
    symlink(data_dir, &tmp).map_err(io_err("link", &tmp))?;
    let data = dir.join(DATA_LINK);
    fs::rename(&tmp, &data).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("replace", &data)(e)
    })
}

/// Opens `sub_path` (checked by [`is_relative_path`]) in the volume
/// directory `dir` as an `O_PATH` descriptor, following symlinks only while
/// they stay inside `dir`, and creating missing directories (0755) on the
/// way, as the kubelet does. Returns it and whether it is a directory.
pub fn open_sub_path(dir: &Path, sub_path: &str) -> Result<(OwnedFd, bool), VolumeError> {
    let path_flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    let root = open(dir, path_flags | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(errno_err("open", dir))?;
    let how = OpenHow::new()
        .flags(path_flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let failed = |prefix: &str, e| match e {
        Errno::EXDEV => VolumeError::Escapes {
            sub_path: sub_path.into(),
        },
        e => errno_err("open", &dir.join(prefix))(e),
    };
    let mut found: Option<OwnedFd> = None;
    let mut end = 0;
    for part in sub_path.split('/') {
        end += part.len() + usize::from(end > 0);
        let prefix = &sub_path[..end];
        let fd = match openat2(&root, prefix, how) {
            Err(Errno::ENOENT) => {
                // Made in the directory the shorter prefix resolved to,
                // which is inside the volume.
                let parent = found.as_ref().map_or(root.as_fd(), |p| p.as_fd());
                match mkdirat(parent, part, Mode::from_bits_truncate(DIR_MODE)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno_err("create", &dir.join(prefix))(e)),
                }
                openat2(&root, prefix, how).map_err(|e| failed(prefix, e))?
            }
            other => other.map_err(|e| failed(prefix, e))?,
        };
        found = Some(fd);
    }
    let fd = found.expect("a checked sub path has a component");
    let stat = fstat(&fd).map_err(errno_err("inspect", &dir.join(sub_path)))?;
    let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    Ok((fd, is_dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A fresh directory standing for `<run>/volumes`; removed on drop.
    struct Volumes(PathBuf);

    impl Volumes {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "unipod-volumes-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn read(&self, path: &str) -> String {
            fs::read_to_string(self.0.join(path)).unwrap()
        }

        /// The names in `path`, sorted.
        fn names(&self, path: &str) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.0.join(path))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        fn mode(&self, path: &str) -> u32 {
            fs::metadata(self.0.join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        }
    }

    impl Drop for Volumes {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn files(name: &str, list: &[(&str, &str, u32)]) -> VolumeFiles {
        VolumeFiles {
            name: name.into(),
            files: list
                .iter()
                .map(|(path, data, mode)| VolumeFile {
                    path: (*path).into(),
                    data: data.as_bytes().to_vec(),
                    mode: *mode,
                })
                .collect(),
        }
    }

    fn data_dir(v: &Volumes, volume: &str) -> String {
        let link = fs::read_link(v.0.join(volume).join(DATA_LINK)).unwrap();
        link.to_string_lossy().into_owned()
    }

    #[test]
    fn files_sit_in_a_data_directory_behind_top_level_symlinks() {
        let v = Volumes::new();
        let request = files(
            "cfg",
            &[
                ("app.conf", "a=1\n", 0o644),
                ("tls/key.pem", "secret", 0o600),
                ("tls/ca/root.pem", "ca", 0o444),
            ],
        );
        write(&v.0, &request).unwrap();

        let data = data_dir(&v, "cfg");
        assert!(data.starts_with("..") && !data.contains('/'), "{data}");
        assert_eq!(
            v.names("cfg"),
            [data.as_str(), "..data", "app.conf", "tls"],
            "no ..data_tmp is left"
        );
        for top in ["app.conf", "tls"] {
            let link = fs::read_link(v.0.join("cfg").join(top)).unwrap();
            assert_eq!(link, Path::new("..data").join(top));
        }
        assert_eq!(v.read("cfg/app.conf"), "a=1\n");
        assert_eq!(v.read("cfg/tls/key.pem"), "secret");
        assert_eq!(v.read("cfg/tls/ca/root.pem"), "ca");
        assert_eq!(v.mode("cfg/app.conf"), 0o644);
        assert_eq!(v.mode("cfg/tls/key.pem"), 0o600);
        assert_eq!(v.mode("cfg/tls/ca/root.pem"), 0o444);
        assert_eq!(v.mode("cfg/tls"), 0o755);
        assert_eq!(v.mode("cfg/tls/ca"), 0o755);
        assert_eq!(v.mode(&format!("cfg/{data}")), 0o755);
    }

    #[test]
    fn a_second_write_swaps_every_file_and_removes_the_old_ones() {
        let v = Volumes::new();
        let first = files(
            "cfg",
            &[
                ("a", "1", 0o644),
                ("b/c", "2", 0o644),
                ("d/e/f", "3", 0o644),
            ],
        );
        write(&v.0, &first).unwrap();
        let old = data_dir(&v, "cfg");
        // A reader holding an old file keeps its content.
        let held = File::open(v.0.join("cfg/a")).unwrap();

        let second = files("cfg", &[("b/c", "2'", 0o640), ("g", "4", 0o600)]);
        write(&v.0, &second).unwrap();
        let new = data_dir(&v, "cfg");
        assert_ne!(old, new);
        assert_eq!(
            v.names("cfg"),
            [new.as_str(), "..data", "b", "g"],
            "the old data directory and the links of a and d are gone"
        );
        assert_eq!(v.read("cfg/b/c"), "2'");
        assert_eq!(v.mode("cfg/b/c"), 0o640);
        assert_eq!(v.read("cfg/g"), "4");
        assert_eq!(v.names(&format!("cfg/{new}")), ["b", "g"]);
        assert_eq!(io::read_to_string(held).unwrap(), "1");

        // An empty write leaves only the writer's own names.
        write(&v.0, &files("cfg", &[])).unwrap();
        assert_eq!(v.names("cfg"), [data_dir(&v, "cfg").as_str(), "..data"]);
    }

    #[test]
    fn a_volume_with_other_files_is_refused_at_the_first_write() {
        let v = Volumes::new();
        fs::create_dir_all(v.0.join("scratch")).unwrap();
        fs::write(v.0.join("scratch/log"), "in use").unwrap();
        let err = write(&v.0, &files("scratch", &[("a", "1", 0o644)])).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, VolumeError::NotWriterVolume { entry, .. } if entry == "log"),
            "{msg}"
        );
        assert!(
            msg.contains("volume \"scratch\" already holds \"log\""),
            "{msg}"
        );
        assert_eq!(v.names("scratch"), ["log"], "nothing was written");

        // An empty directory (made for a mount) is fine, and a later write
        // leaves alone what a subPath mount created meanwhile.
        fs::create_dir_all(v.0.join("cfg")).unwrap();
        write(&v.0, &files("cfg", &[("a", "1", 0o644)])).unwrap();
        fs::create_dir(v.0.join("cfg/missing-key")).unwrap();
        write(&v.0, &files("cfg", &[("a", "2", 0o644)])).unwrap();
        assert_eq!(v.read("cfg/a"), "2");
        assert!(v.0.join("cfg/missing-key").is_dir());
    }

    #[test]
    fn invalid_requests_name_the_field_and_change_nothing() {
        let v = Volumes::new();
        let long = "x".repeat(256);
        /// A volume's name, its files, the field the error names.
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str, u32)], &'a str);
        let cases: &[Case] = &[
            ("", &[], "name"),
            ("..", &[], "name"),
            (".hidden", &[], "name"),
            ("a/b", &[], "name"),
            (
                "cfg",
                &[("/etc/passwd", "", 0o644)],
                "files[0] (\"/etc/passwd\")",
            ),
            ("cfg", &[("", "", 0o644)], "files[0] (\"\")"),
            (
                "cfg",
                &[("ok", "", 0o644), ("a/../b", "", 0o644)],
                "files[1]",
            ),
            ("cfg", &[("a//b", "", 0o644)], "files[0]"),
            ("cfg", &[("./a", "", 0o644)], "files[0]"),
            ("cfg", &[("a/", "", 0o644)], "files[0]"),
            ("cfg", &[("..data", "", 0o644)], "files[0] (\"..data\")"),
            ("cfg", &[("a/..b", "", 0o644)], "files[0]"),
            ("cfg", &[("a\0b", "", 0o644)], "files[0]"),
            ("cfg", &[(long.as_str(), "", 0o644)], "files[0]"),
            ("cfg", &[("a", "", 0o1777)], "files[0] (\"a\").mode"),
            (
                "cfg",
                &[("a", "", 0o644), ("a", "", 0o644)],
                "files[1] (\"a\")",
            ),
            (
                "cfg",
                &[("a/b", "", 0o644), ("a", "", 0o644)],
                "files[0] (\"a/b\")",
            ),
        ];
        for (name, list, field) in cases {
            let err = write(&v.0, &files(name, list)).unwrap_err();
            match &err {
                VolumeError::Invalid { field: f, .. } => assert!(f.starts_with(field), "{err}"),
                other => panic!("{name} {list:?}: {other:?}"),
            }
        }
        let too_many: Vec<(String, &str, u32)> = (0..=MAX_VOLUME_FILES)
            .map(|i| (format!("f{i}"), "", 0o644))
            .collect();
        let too_big = "x".repeat(MAX_VOLUME_BYTES + 1);
        for list in [
            too_many
                .iter()
                .map(|(p, d, m)| (p.as_str(), *d, *m))
                .collect::<Vec<_>>(),
            vec![("big", too_big.as_str(), 0o644)],
        ] {
            let err = write(&v.0, &files("cfg", &list)).unwrap_err();
            assert!(
                matches!(&err, VolumeError::Invalid { field, .. } if field == "files"),
                "{err}"
            );
        }
        assert!(v.names("").is_empty(), "nothing was created");
    }

    #[test]
    fn data_directories_are_named_by_utc_time() {
        assert_eq!(utc_stamp(0), "1970_01_01_00_00_00");
        assert_eq!(utc_stamp(951_825_600), "2000_02_29_12_00_00");
        assert_eq!(utc_stamp(1_796_615_997), "2026_12_07_03_59_57");
        let v = Volumes::new();
        let now = UNIX_EPOCH + std::time::Duration::new(1_796_615_997, 42);
        assert_eq!(
            new_data_dir(&v.0, now).unwrap().0,
            "..2026_12_07_03_59_57.42"
        );
        assert_eq!(
            new_data_dir(&v.0, now).unwrap().0,
            "..2026_12_07_03_59_57.43"
        );
        assert_eq!(v.mode("..2026_12_07_03_59_57.43"), 0o755);
    }

    #[test]
    fn sub_paths_follow_symlinks_inside_the_volume_only() {
        let v = Volumes::new();
        write(
            &v.0,
            &files("cfg", &[("key", "v1", 0o644), ("d/k", "", 0o644)]),
        )
        .unwrap();
        let cfg = v.0.join("cfg");

        // A key: a file, through the key's link and ..data.
        let (fd, dir) = open_sub_path(&cfg, "key").unwrap();
        assert!(!dir);
        let via_fd = fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        let data = data_dir(&v, "cfg");
        assert_eq!(via_fd.unwrap(), cfg.join(&data).join("key"));
        assert!(open_sub_path(&cfg, "d").unwrap().1, "a directory");

        // Missing directories are made, in the directory they resolve to.
        let (_, dir) = open_sub_path(&cfg, "d/new/deeper").unwrap();
        assert!(dir);
        assert!(cfg.join(&data).join("d/new/deeper").is_dir());

        // Links out of the volume are refused, absolute or relative.
        std::os::unix::fs::symlink("/etc", cfg.join("abs")).unwrap();
        std::os::unix::fs::symlink("../", cfg.join("rel")).unwrap();
        for sub in ["abs", "abs/passwd", "rel", "rel/x/y", "d/../../../x"] {
            match open_sub_path(&cfg, sub) {
                Err(e @ VolumeError::Escapes { .. }) => {
                    assert_eq!(
                        e.to_string(),
                        format!("{sub:?} leads outside the volume (through a symlink)")
                    )
                }
                other => panic!("{sub}: {other:?}"),
            }
        }
        assert!(!v.0.join("x").exists(), "nothing made outside");

        // A file on the way is no directory.
        assert!(matches!(
            open_sub_path(&cfg, "key/x"),
            Err(VolumeError::Io { .. })
        ));
    }
}
