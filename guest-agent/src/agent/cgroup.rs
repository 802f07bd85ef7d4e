//! Per-container cgroups (v2): resource limits, OOM-kill detection, and a
//! way to kill whatever a container leaves behind.
//!
//! # Design
//!
//! Each container gets `/sys/fs/cgroup/unipod/<name>`, and `unipod` itself
//! is the pod's cgroup: a manifest's pod-level limits go there
//! ([`Cgroups::set_pod_limits`]), as the kubelet puts them on the pod's
//! cgroup, so they bound the containers together. At boot the agent
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
//!
//! Pause is the cgroup v2 freezer (`cgroup.freeze`), which needs no
//! controller: it freezes the container's execs too, as runc's does.

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use guest_agent::protocol::{ContainerStats, Limits};

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
    /// `cgroup.events` did not follow a write to `cgroup.freeze` in time.
    #[error(
        "the kernel did not report the cgroup {} within {} s (cgroup.events: {events}; processes: {tasks}); one may be stuck in an uninterruptible sleep (state D)",
        if *frozen { "frozen" } else { "thawed" },
        FREEZE_TIMEOUT.as_secs()
    )]
    FreezeTimeout {
        /// Whether freezing (or thawing) was asked for.
        frozen: bool,
        /// `cgroup.events`, on one line.
        events: String,
        /// `pid (comm) state` of each process of the cgroup.
        tasks: String,
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

    /// Sets the whole pod's `limits` (unset ones to `max`) on the cgroup
    /// that holds every container's.
    pub fn set_pod_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        self.check_limits(limits)?;
        self.write_limits(&self.parent, limits)
    }

    /// Writes `limits` (checked) into the cgroup `dir`.
    fn write_limits(&self, dir: &Path, limits: &Limits) -> Result<(), CgroupError> {
        for (setting, _, controller) in limit_settings(limits) {
            if !self.enabled.iter().any(|c| c == controller) {
                continue; // Unset (checked before): nothing to reset either.
            }
            let (file, value) = limit_file(controller, setting);
            let path = dir.join(file);
            fs::write(&path, value).map_err(io_err(&path))?;
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
        self.write_limits(&dir, limits)?;
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

    /// Reads the cgroup's counters; a controller's files that are missing
    /// leave its fields `None`.
    pub fn stats(&self) -> Result<ContainerStats, CgroupError> {
        let path = self.dir.join("cpu.stat");
        let cpu = fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(stats_from(|file| {
            if file == "cpu.stat" {
                Some(cpu.clone())
            } else {
                fs::read_to_string(self.dir.join(file)).ok()
            }
        }))
    }

    /// `pid (comm) state` of each process in the cgroup, for errors.
    fn task_states(&self) -> String {
        let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // `pid (comm) S ...`: comm may hold spaces; the state follows its `)`.
                match stat.rsplit_once(')') {
                    Some((head, tail)) => {
                        format!("{head}) {}", tail.trim().split(' ').next().unwrap_or("?"))
                    }
                    None => pid.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Freezes (`true`) or thaws the cgroup, then waits up to
    /// [`FREEZE_TIMEOUT`] for `cgroup.events` to say so: a task in an
    /// uninterruptible sleep delays freezing.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let path = self.dir.join("cgroup.freeze");
        fs::write(&path, if frozen { "1" } else { "0" }).map_err(io_err(&path))?;
        let events = self.dir.join("cgroup.events");
        let deadline = std::time::Instant::now() + FREEZE_TIMEOUT;
        loop {
            let text = fs::read_to_string(&events).map_err(io_err(&events))?;
            if keyed_value(&text, "frozen") == Some(u64::from(frozen)) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(CgroupError::FreezeTimeout {
                    frozen,
                    events: text.split_whitespace().collect::<Vec<_>>().join(" "),
                    tasks: self.task_states(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// How long [`ContainerCgroup::freeze`] waits for the kernel. On a loaded
/// nested-PVM host the guest kernel runs emulated and reaping an exiting
/// task can take seconds: 2 s was seen to fail a pause.
pub const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`ContainerStats`] from a cgroup's interface files, read by `read`
/// (`None`: the file is missing).
pub fn stats_from(read: impl Fn(&str) -> Option<String>) -> ContainerStats {
    let cpu = read("cpu.stat").unwrap_or_default();
    let cpu_field = |key| keyed_value(&cpu, key).unwrap_or(0);
    // A limit of `max` (unlimited) does not parse: `None`.
    let number = |file: &str| read(file).and_then(|t| t.trim().parse().ok());
    let memory_stat = read("memory.stat");
    let stat = |key| memory_stat.as_deref().and_then(|t| keyed_value(t, key));
    ContainerStats {
        cpu_usage_usec: cpu_field("usage_usec"),
        cpu_user_usec: cpu_field("user_usec"),
        cpu_system_usec: cpu_field("system_usec"),
        memory_bytes: number("memory.current"),
        memory_limit_bytes: number("memory.max"),
        memory_anon_bytes: stat("anon"),
        memory_file_bytes: stat("file"),
        oom_kills: read("memory.events").and_then(|t| keyed_value(&t, "oom_kill")),
        pids: number("pids.current"),
        pids_limit: number("pids.max"),
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
    keyed_value(
        &fs::read_to_string(dir.join("memory.events")).ok()?,
        "oom_kill",
    )
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`,
/// `cpu.stat`, ...: `<key> <u64>` lines).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, value) = line.split_once(' ')?;
        (k == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counter_is_parsed() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(2));
    }

    #[test]
    fn oom_group_kill_is_not_mistaken_for_oom_kill() {
        assert_eq!(keyed_value("oom_group_kill 1\n", "oom_kill"), None);
        assert_eq!(keyed_value("", "oom_kill"), None);
        assert_eq!(keyed_value("oom_kill many\n", "oom_kill"), None);
    }

    #[test]
    fn stats_come_from_the_cgroup_files_and_max_is_no_limit() {
        let files = [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n",
            ),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1024\nfile 2048\nanon_thp 0\n"),
            ("memory.events", "oom 1\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
        ];
        let read = |f: &str| {
            files
                .iter()
                .find(|(n, _)| *n == f)
                .map(|(_, t)| t.to_string())
        };
        let s = stats_from(read);
        assert_eq!(
            (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec),
            (1500, 1000, 500)
        );
        assert_eq!(s.memory_bytes, Some(4096));
        assert_eq!(s.memory_limit_bytes, None);
        assert_eq!(
            (s.memory_anon_bytes, s.memory_file_bytes),
            (Some(1024), Some(2048))
        );
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!((s.pids, s.pids_limit), (Some(3), Some(64)));
        // Without the memory and pids controllers: only CPU.
        let cpu_only = stats_from(|f| (f == "cpu.stat").then(|| "usage_usec 7\n".to_string()));
        assert_eq!(cpu_only.cpu_usage_usec, 7);
        assert_eq!((cpu_only.memory_bytes, cpu_only.pids), (None, None));
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

        // The pod's own limits go on the cgroup above the containers'.
        let pod = Limits {
            memory_bytes: Some(128 << 20),
            cpu_millis: Some(1500),
            pids: None,
        };
        cgroups.set_pod_limits(&pod).unwrap();
        let read_pod = |f: &str| fs::read_to_string(root.join("unipod").join(f)).unwrap();
        assert_eq!(read_pod("memory.max"), "134217728");
        assert_eq!(read_pod("cpu.max"), "150000 100000");
        assert_eq!(read_pod("pids.max"), "max");
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
