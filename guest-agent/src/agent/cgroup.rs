//! Per-container cgroups (v2), used to notice OOM kills and to kill whatever a
//! container leaves behind.
//!
//! # Design
//!
//! Each container gets `/sys/fs/cgroup/unipod/<name>`, with the memory
//! controller enabled down to it when the kernel has one. The child joins its
//! cgroup between fork and exec (see `container.rs`), so every page it touches
//! is charged there. After exit, `oom_kill` in `memory.events` (compared with
//! its value at creation, in case the directory was reused) tells whether the
//! kernel OOM-killed something in the container; this counts global OOM kills
//! too, which is what a guest without a memory limit gets.
//!
//! # Limitations
//!
//! No memory limit is set: the guest's RAM is the limit. Without cgroup2 or
//! the memory controller the agent runs containers anyway and cannot tell an
//! OOM kill from any other SIGKILL.

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted in the guest.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The directory under [`CGROUP_MOUNT`] holding the containers' cgroups.
const PARENT: &str = "unipod";

/// Errors of cgroup management.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// cgroup2 is not mounted at the given place.
    #[error("no cgroup2 file system at {0}")]
    NotMounted(PathBuf),
    /// A cgroup file could not be read, written or created.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `unipod` cgroup that holds one child cgroup per container.
#[derive(Debug)]
pub struct Cgroups {
    parent: PathBuf,
}

impl Cgroups {
    /// Creates `<mount>/unipod` and enables the memory controller for it and
    /// its children where possible; failing that, logs once and goes on.
    pub fn setup(mount: &Path) -> Result<Self, CgroupError> {
        let controllers_path = mount.join("cgroup.controllers");
        let controllers = fs::read_to_string(&controllers_path)
            .map_err(|_| CgroupError::NotMounted(mount.to_path_buf()))?;
        let parent = mount.join(PARENT);
        match fs::create_dir(&parent) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&parent)(e)),
            _ => {}
        }
        if !controllers.split_whitespace().any(|c| c == "memory") {
            log::warn!(
                "cgroups: no memory controller; OOM kills will be reported as plain SIGKILLs"
            );
            return Ok(Self { parent });
        }
        // The agent stays in the root cgroup, which is exempt from the
        // no-internal-processes rule; `unipod` itself holds no processes.
        for dir in [mount, parent.as_path()] {
            let file = dir.join("cgroup.subtree_control");
            if let Err(e) = fs::write(&file, "+memory") {
                log::warn!(
                    "cgroups: cannot enable memory in {}: {e}; OOM detection is off",
                    file.display()
                );
                break;
            }
        }
        Ok(Self { parent })
    }

    /// Removes the cgroups of earlier containers that could not be removed
    /// when they finished (their killed processes were still exiting).
    pub fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.parent) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }

    /// Creates (or reuses) the cgroup of container `name`, which must be a
    /// validated single path component.
    pub fn create(&self, name: &str) -> Result<ContainerCgroup, CgroupError> {
        let dir = self.parent.join(name);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&dir)(e)),
            _ => {}
        }
        // Kill the whole container on OOM, not one of its processes, as
        // Kubernetes does on cgroup v2. Absent without the memory controller.
        let _ = fs::write(dir.join("memory.oom.group"), "1");
        let baseline_oom_kills = read_oom_kills(&dir);
        Ok(ContainerCgroup {
            dir,
            baseline_oom_kills,
        })
    }
}

/// One container's cgroup.
#[derive(Debug)]
pub struct ContainerCgroup {
    dir: PathBuf,
    /// `oom_kill` at creation; `None` without the memory controller.
    baseline_oom_kills: Option<u64>,
}

impl ContainerCgroup {
    /// Opens `cgroup.procs` for writing (close-on-exec), for the child to
    /// join between fork and exec.
    pub fn open_procs(&self) -> Result<File, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        File::options()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// SIGKILLs every process left in the cgroup (`cgroup.kill`, Linux 5.14).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let path = self.dir.join("cgroup.kill");
        fs::write(&path, "1").map_err(io_err(&path))
    }

    /// True if the kernel OOM-killed a process of this cgroup since it was
    /// created; false when that cannot be known.
    pub fn oom_killed(&self) -> bool {
        match (self.baseline_oom_kills, read_oom_kills(&self.dir)) {
            (Some(before), Some(now)) => now > before,
            _ => false,
        }
    }

    /// Removes the (empty) cgroup directory.
    pub fn remove(&self) -> Result<(), CgroupError> {
        fs::remove_dir(&self.dir).map_err(io_err(&self.dir))
    }
}

fn read_oom_kills(dir: &Path) -> Option<u64> {
    parse_oom_kills(&fs::read_to_string(dir.join("memory.events")).ok()?)
}

/// The `oom_kill` counter of a `memory.events` file.
pub fn parse_oom_kills(memory_events: &str) -> Option<u64> {
    memory_events.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counter_is_parsed() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(parse_oom_kills(events), Some(2));
    }

    #[test]
    fn oom_group_kill_is_not_mistaken_for_oom_kill() {
        assert_eq!(parse_oom_kills("oom_group_kill 1\n"), None);
        assert_eq!(parse_oom_kills(""), None);
        assert_eq!(parse_oom_kills("oom_kill many\n"), None);
    }

    #[test]
    fn setup_without_cgroup2_is_an_error() {
        let dir = std::env::temp_dir().join(format!("unipod-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = Cgroups::setup(&dir).unwrap_err();
        assert!(matches!(err, CgroupError::NotMounted(_)), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
