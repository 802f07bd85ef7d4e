//! Per-container cgroups (v2): resource limits, OOM-kill detection, and a
//! way to kill whatever a container leaves behind.
//!
//! # Design
//!
//! Each container gets `/sys/fs/cgroup/unipod/<name>`. At boot the agent
//! enables the `memory`, `cpu` and `pids` controllers (those the kernel has)
//! in the root's and `unipod`'s `cgroup.subtree_control`, so each container's
//! cgroup has their interface files. A container's [`Limits`] become
//! `memory.max`, `cpu.max` (`<millis * 100> 100000`: the quota per 100 ms
//! period, at least the kernel's 1 ms minimum) and `pids.max`; an unset limit
//! writes `max`, so a reused directory does not keep an old limit. A limit
//! whose controller is missing is an error naming the controller, never a
//! silent no-op.
//!
//! The child joins its cgroup between fork and exec (see `container.rs`), so
//! every page it touches is charged there. After exit, `oom_kill` in
//! `memory.events` (compared with its value at creation, in case the
//! directory was reused) tells whether the kernel OOM-killed something in the
//! container, be it for the container's own `memory.max` or for the guest's
//! RAM. `memory.oom.group` makes an OOM kill take the whole container.
//!
//! # Limitations
//!
//! Without cgroup2 the agent runs containers anyway, without limits (a limit
//! then fails the `Run`), and cannot tell an OOM kill from any other SIGKILL.
//! No `cpu.weight` (requests) and no `memory.swap.max` (the guest has no
//! swap).

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use guest_agent::protocol::Limits;

/// Where cgroup2 is mounted in the guest.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The directory under [`CGROUP_MOUNT`] holding the containers' cgroups.
const PARENT: &str = "unipod";
/// The controllers the agent enables for containers, when the kernel has them.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The `cpu.max` period, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest `cpu.max` quota the kernel accepts, in microseconds.
pub const CPU_MIN_QUOTA_US: u64 = 1_000;

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
    /// A limit needs a controller the guest kernel does not offer.
    #[error(
        "cannot set the {limit} limit: the guest kernel has no cgroup {controller} controller \
         (available: {available:?}); drop the limit or enable the controller in the kernel"
    )]
    MissingController {
        /// The limit asked for.
        limit: &'static str,
        /// The controller it needs.
        controller: &'static str,
        /// The controllers that are enabled.
        available: Vec<String>,
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
    /// The [`CONTROLLERS`] enabled for the containers' cgroups.
    enabled: Vec<String>,
}

impl Cgroups {
    /// Creates `<mount>/unipod` and enables each of [`CONTROLLERS`] the
    /// kernel has for it and its children; one that cannot be enabled is
    /// logged and left out (a limit that needs it then fails).
    pub fn setup(mount: &Path) -> Result<Self, CgroupError> {
        let controllers_path = mount.join("cgroup.controllers");
        let controllers = fs::read_to_string(&controllers_path)
            .map_err(|_| CgroupError::NotMounted(mount.to_path_buf()))?;
        let parent = mount.join(PARENT);
        match fs::create_dir(&parent) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&parent)(e)),
            _ => {}
        }
        let mut enabled = Vec::new();
        for controller in CONTROLLERS {
            if !controllers.split_whitespace().any(|c| c == controller) {
                log::warn!("cgroups: the kernel has no {controller} controller");
                continue;
            }
            // The agent stays in the root cgroup, which is exempt from the
            // no-internal-processes rule; `unipod` itself holds no processes.
            let result = [mount, parent.as_path()].iter().try_for_each(|dir| {
                let file = dir.join("cgroup.subtree_control");
                fs::write(&file, format!("+{controller}")).map_err(io_err(&file))
            });
            match result {
                Ok(()) => enabled.push(controller.to_string()),
                Err(e) => log::warn!("cgroups: cannot enable {controller}: {e}"),
            }
        }
        if !enabled.iter().any(|c| c == "memory") {
            log::warn!(
                "cgroups: no memory controller; OOM kills will be reported as plain SIGKILLs"
            );
        }
        Ok(Self { parent, enabled })
    }

    /// The controllers enabled for the containers' cgroups.
    pub fn enabled(&self) -> &[String] {
        &self.enabled
    }

    /// Fails if `limits` needs a controller that is not enabled.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        for (setting, limit, controller) in limit_settings(limits) {
            if setting.is_some() && !self.enabled.iter().any(|c| c == controller) {
                return Err(CgroupError::MissingController {
                    limit,
                    controller,
                    available: self.enabled.clone(),
                });
            }
        }
        Ok(())
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
    /// validated single path component, and sets its `limits` (unset ones
    /// to `max`); fails, leaving the directory behind, if one cannot be set.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<ContainerCgroup, CgroupError> {
        self.check_limits(limits)?;
        let dir = self.parent.join(name);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&dir)(e)),
            _ => {}
        }
        for (setting, _, controller) in limit_settings(limits) {
            if !self.enabled.iter().any(|c| c == controller) {
                continue; // Unset (checked above): nothing to reset either.
            }
            let (file, value) = limit_file(controller, setting);
            let path = dir.join(file);
            fs::write(&path, value).map_err(io_err(&path))?;
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

    /// The cgroup's `cgroup.procs`, for an exec to join.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Removes the (empty) cgroup directory.
    pub fn remove(&self) -> Result<(), CgroupError> {
        fs::remove_dir(&self.dir).map_err(io_err(&self.dir))
    }
}

/// Each limit with its name and controller.
fn limit_settings(limits: &Limits) -> [(Option<u64>, &'static str, &'static str); 3] {
    [
        (limits.memory_bytes, "memory", "memory"),
        (limits.cpu_millis, "cpu", "cpu"),
        (limits.pids, "pids", "pids"),
    ]
}

/// The interface file of `controller`'s limit and what to write to it.
fn limit_file(controller: &str, setting: Option<u64>) -> (&'static str, String) {
    let value = |v: Option<u64>| v.map_or_else(|| "max".to_string(), |v| v.to_string());
    match controller {
        "memory" => ("memory.max", value(setting)),
        "cpu" => ("cpu.max", cpu_max(setting)),
        _ => ("pids.max", value(setting)),
    }
}

/// The `cpu.max` line for a limit in thousandths of a CPU: the quota per
/// [`CPU_PERIOD_US`], at least [`CPU_MIN_QUOTA_US`].
pub fn cpu_max(millis: Option<u64>) -> String {
    match millis {
        Some(m) => {
            let quota = m.saturating_mul(CPU_PERIOD_US / 1000).max(CPU_MIN_QUOTA_US);
            format!("{quota} {CPU_PERIOD_US}")
        }
        None => format!("max {CPU_PERIOD_US}"),
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

    /// A fake cgroup2 root in a temporary directory offering `controllers`.
    fn fake_root(tag: &str, controllers: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unipod-cg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        dir
    }

    #[test]
    fn limits_are_written_to_the_container_s_cgroup() {
        let root = fake_root("limits", "cpuset cpu io memory hugetlb pids rdma misc\n");
        let cgroups = Cgroups::setup(&root).unwrap();
        assert_eq!(cgroups.enabled(), ["memory", "cpu", "pids"]);
        // A fake file keeps the last write only; each controller was written.
        assert_eq!(
            fs::read_to_string(root.join("unipod/cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(250),
            pids: Some(100),
        };
        let cg = cgroups.create("web", &limits).unwrap();
        let read = |f: &str| fs::read_to_string(root.join("unipod/web").join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("pids.max"), "100");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(cg.procs_path(), root.join("unipod/web/cgroup.procs"));

        // Reusing the directory without limits lifts the old ones.
        cgroups.create("web", &Limits::default()).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("pids.max"), "max");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_limit_without_its_controller_is_an_error_naming_it() {
        let root = fake_root("missing", "memory io\n");
        let cgroups = Cgroups::setup(&root).unwrap();
        assert_eq!(cgroups.enabled(), ["memory"]);
        let limits = Limits {
            cpu_millis: Some(500),
            ..Limits::default()
        };
        let err = cgroups.create("web", &limits).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                CgroupError::MissingController {
                    controller: "cpu",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("cgroup cpu controller"), "{msg}");
        assert!(!root.join("unipod/web").exists(), "nothing is created");
        let memory_only = Limits {
            memory_bytes: Some(1 << 30),
            ..Limits::default()
        };
        cgroups.create("web", &memory_only).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cpu_quota_is_millis_times_100_and_at_least_1ms() {
        assert_eq!(cpu_max(Some(1000)), "100000 100000");
        assert_eq!(cpu_max(Some(1500)), "150000 100000");
        assert_eq!(cpu_max(Some(1)), "1000 100000");
        assert_eq!(cpu_max(None), "max 100000");
    }
}
