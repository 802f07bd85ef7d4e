//! A runtime spec's `mounts`, parsed into what `mount(2)` takes, as runc
//! parses them.
//!
//! # Design
//!
//! Each option is either a flag (`ro`, `nosuid`, `bind`, ... and their
//! opposites, which clear it), a propagation (`rprivate`, `rslave`,
//! `rshared`, ...), applied with a second `mount` after the first, or file
//! system data (`mode=755`, `newinstance`, ...) passed as it is. Pure
//! functions, so each rule is unit-tested without mounting anything.
//!
//! # Limitations
//!
//! The types are those a container in a pod VM can have: `proc`, `sysfs`,
//! `tmpfs`, `devpts`, `mqueue`, `cgroup`/`cgroup2` (the guest's unified
//! hierarchy), `devtmpfs` (the guest's devices, for privileged containers)
//! and `bind`/`rbind` of a guest path. Anything else is refused with the
//! mount named, not skipped.

#![forbid(unsafe_code)]

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::OciError;

/// One parsed `mounts[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecMount {
    /// Absolute path inside the container.
    pub target: String,
    /// What to mount: a file system or a guest path to bind.
    pub kind: MountKind,
    /// `MS_*` flags of the mount itself (`MS_BIND` not included).
    pub flags: MsFlags,
    /// File system data (`mode=755,size=65536k`).
    pub data: Option<String>,
    /// `MS_PRIVATE`, `MS_SLAVE`, `MS_SHARED` or `MS_UNBINDABLE`, with
    /// `MS_REC` for the `r` forms; empty when the spec sets none.
    pub propagation: MsFlags,
}

/// A mount's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A file system of this type, with this source string.
    Fs {
        /// `proc`, `tmpfs`, ...
        fstype: String,
        /// The mount's source (a label for virtual file systems).
        source: String,
    },
    /// A bind of this guest path (`rbind`: with the mounts below it).
    Bind {
        /// The guest path.
        source: String,
        /// `rbind`.
        recursive: bool,
    },
}

/// File system types a spec may mount (see the module's limitations).
const FS_TYPES: [&str; 8] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "devtmpfs",
];

/// Parses `mounts[index]`.
pub fn parse(index: usize, m: &Mount) -> Result<SpecMount, OciError> {
    let target = m.destination().to_str().unwrap_or_default().to_string();
    let bad = |problem: String| OciError::Mount {
        index,
        target: target.clone(),
        problem,
    };
    if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
        return Err(bad(
            "the destination must be an absolute path without ..".into()
        ));
    }
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = None;
    for opt in m.options().iter().flatten() {
        if let Some((set, flag)) = flag(opt) {
            flags.set(flag, set);
        } else if let Some(p) = propagation_flag(opt) {
            propagation = p;
        } else if opt == "bind" || opt == "rbind" {
            bind = Some(opt == "rbind");
        } else {
            data.push(opt.as_str());
        }
    }
    let typ = m.typ().as_deref().unwrap_or("none");
    let source = m
        .source()
        .as_ref()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let kind = match (typ, bind) {
        ("bind", None) => MountKind::Bind {
            source,
            recursive: false,
        },
        (_, Some(recursive)) => MountKind::Bind { source, recursive },
        (t, None) if FS_TYPES.contains(&t) => MountKind::Fs {
            fstype: if t == "cgroup" {
                "cgroup2".into()
            } else {
                t.into()
            },
            source: if source.is_empty() { t.into() } else { source },
        },
        (t, None) => {
            return Err(bad(format!(
                "type {t:?} cannot be mounted in the pod VM (supported: bind, {})",
                FS_TYPES.join(", ")
            )))
        }
    };
    if let MountKind::Bind { source, .. } = &kind {
        if !source.starts_with('/') {
            return Err(bad(format!(
                "a bind's source must be an absolute guest path, not {source:?}"
            )));
        }
    }
    Ok(SpecMount {
        target,
        kind,
        flags,
        data: (!data.is_empty()).then(|| data.join(",")),
        propagation,
    })
}

/// `(set, flag)` for a flag option: `ro` sets `MS_RDONLY`, `rw` clears it.
fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "atime" => (false, MsFlags::MS_NOATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        _ => return None,
    })
}

/// The propagation an option asks for.
fn propagation_flag(opt: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(json: serde_json::Value) -> Mount {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn flags_data_and_propagation_are_split_as_runc_splits_them() {
        let m = mount(serde_json::json!({
            "destination": "/dev/pts", "type": "devpts", "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5", "rslave"]
        }));
        let p = parse(2, &m).unwrap();
        assert_eq!(p.target, "/dev/pts");
        assert_eq!(p.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(
            p.data.as_deref(),
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5")
        );
        assert_eq!(p.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(
            p.kind,
            MountKind::Fs {
                fstype: "devpts".into(),
                source: "devpts".into()
            }
        );
    }

    #[test]
    fn a_later_opposite_option_clears_the_flag() {
        let m = mount(serde_json::json!({
            "destination": "/sys", "type": "sysfs", "options": ["ro", "nosuid", "rw"]
        }));
        let p = parse(0, &m).unwrap();
        assert_eq!(p.flags, MsFlags::MS_NOSUID);
        assert!(matches!(p.kind, MountKind::Fs { ref source, .. } if source == "sysfs"));
    }

    #[test]
    fn binds_and_cgroups() {
        let m = mount(serde_json::json!({
            "destination": "/data", "type": "none", "source": "/run/x", "options": ["rbind", "ro"]
        }));
        let p = parse(0, &m).unwrap();
        assert_eq!(
            p.kind,
            MountKind::Bind {
                source: "/run/x".into(),
                recursive: true
            }
        );
        assert_eq!(p.flags, MsFlags::MS_RDONLY);
        let m = mount(serde_json::json!({"destination": "/sys/fs/cgroup", "type": "cgroup"}));
        assert!(
            matches!(parse(0, &m).unwrap().kind, MountKind::Fs { ref fstype, .. } if fstype == "cgroup2")
        );
    }

    #[test]
    fn what_cannot_be_mounted_is_refused_with_the_mount_named() {
        let m = mount(serde_json::json!({"destination": "/mnt", "type": "nfs", "source": "h:/x"}));
        let err = parse(4, &m).unwrap_err().to_string();
        assert!(
            err.contains("mounts[4]") && err.contains("/mnt") && err.contains("nfs"),
            "{err}"
        );
        let m = mount(serde_json::json!({"destination": "rel", "type": "tmpfs"}));
        assert!(parse(0, &m).is_err());
        let m = mount(serde_json::json!({"destination": "/x", "type": "bind", "source": "rel"}));
        assert!(parse(0, &m).is_err());
    }
}
