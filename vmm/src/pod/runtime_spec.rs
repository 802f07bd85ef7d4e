//! A manifest container's OCI runtime spec, built the way containerd 1.6's
//! CRI plugin builds one for runc, before the `securityContext` is applied
//! (`security_context.rs`).
//!
//! # Design
//!
//! What CRI gives every container, and this gives too:
//! - the capabilities of containerd's default set ([`DEFAULT_CAPS`]) as the
//!   bounding, effective and permitted sets (no inheritable or ambient
//!   ones, as since containerd 1.6.2);
//! - the mounts `/proc`, a tmpfs `/dev`, `/dev/pts`, `/dev/shm`,
//!   `/dev/mqueue`, a read-only `/sys` and `/sys/fs/cgroup`;
//! - containerd's masked paths ([`MASKED_PATHS`]) and read-only paths
//!   ([`READONLY_PATHS`]);
//! - `noNewPrivileges` off, and no seccomp: the kubelet's default is
//!   `Unconfined` unless a `seccompProfile` says otherwise.
//!   [`runtime_default_seccomp`] is the profile `RuntimeDefault` stands for,
//!   equivalent to containerd's: every syscall a container needs is allowed,
//!   the rest fails with `EPERM`, and syscalls that need a capability are
//!   allowed only when the bounding set has it.
//!
//! The pid namespace is new unless the pod shares one
//! (`shareProcessNamespace`); network, IPC and UTS are the pod's (the VM's).
//!
//! # Limitations
//!
//! No rlimits and no `oomScoreAdj` (the kubelet's QoS score): the
//! container inherits the agent's.

#![forbid(unsafe_code)]

use std::collections::HashSet;

use guest_agent::protocol::{process_spec, CPU_PERIOD_US};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpu, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall, Mount, Root, Spec,
};

/// containerd's default capability set for a container.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The paths masked in every unprivileged container: the kubelet's default
/// `procMount` list, which it sends in each CRI request (containerd 1.6's
/// CRI masks none by itself).
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// The paths made read-only in every unprivileged container: the
/// kubelet's default `procMount` list, as for [`MASKED_PATHS`].
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What a container runs and its limits, from the manifest and its image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// `resources.limits.memory`, bytes.
    pub memory_bytes: Option<u64>,
    /// `resources.limits.cpu`, thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// Join the pod's pid namespace (`shareProcessNamespace`).
    pub share_pid_namespace: bool,
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some(typ.into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// CRI's mounts for a container, in order; `/sys` and `/sys/fs/cgroup`
/// read-only unless `privileged`.
pub fn default_mounts(privileged: bool) -> Vec<Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ]
}

/// A capability set of `caps`.
pub fn cap_set(caps: impl IntoIterator<Item = Capability>) -> HashSet<Capability> {
    caps.into_iter().collect()
}

/// Bounding, effective and permitted `caps`; no inheritable or ambient.
pub fn capabilities(caps: &HashSet<Capability>) -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps.clone()));
    c.set_inheritable(None);
    c.set_ambient(None);
    c
}

/// The spec CRI would give `process` before its `securityContext`.
pub fn default_spec(process: &Process) -> Spec {
    let mut spec = process_spec(
        process.argv.clone(),
        process.env.clone(),
        process.cwd.clone(),
    );
    if let Some(p) = spec.process_mut().as_mut() {
        p.set_capabilities(Some(capabilities(&cap_set(DEFAULT_CAPS))));
        p.set_no_new_privileges(Some(false));
    }
    let mut root = Root::default();
    root.set_path("rootfs".into());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec.set_mounts(Some(default_mounts(false)));

    let mut namespaces = Vec::new();
    let mut kinds = vec![
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ];
    if !process.share_pid_namespace {
        kinds.insert(0, LinuxNamespaceType::Pid);
    }
    for typ in kinds {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        namespaces.push(ns);
    }
    let mut resources = LinuxResources::default();
    if let Some(bytes) = process.memory_bytes {
        let mut memory = LinuxMemory::default();
        memory.set_limit(i64::try_from(bytes).ok());
        resources.set_memory(Some(memory));
    }
    if let Some(millis) = process.cpu_millis {
        let mut cpu = LinuxCpu::default();
        let quota = millis.saturating_mul(CPU_PERIOD_US) / 1000;
        cpu.set_quota(i64::try_from(quota).ok());
        cpu.set_period(Some(CPU_PERIOD_US));
        resources.set_cpu(Some(cpu));
    }
    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_namespaces(Some(namespaces));
    linux.set_resources(Some(resources));
    linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_seccomp(None);
    linux.set_sysctl(None);
    spec.set_linux(Some(linux));
    spec
}

/// Syscalls every container may make under `RuntimeDefault`.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futimesat",
    "get_mempolicy",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socket",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Syscalls allowed only when the bounding set holds a capability.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "adjtimex", "clock_settime"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &["mbind", "set_mempolicy", "migrate_pages", "move_pages"],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The namespace flags `clone` may not carry without `CAP_SYS_ADMIN`.
const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000 // CLONE_NEWNET
    | 0x0200_0000; // CLONE_NEWCGROUP

fn syscall(
    names: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s.set_errno_ret(errno);
    s.set_args((!args.is_empty()).then_some(args));
    s
}

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let b = match value_two {
        Some(v) => b.value_two(v),
        None => b,
    };
    b.build().expect("every field of a seccomp argument is set")
}

/// The `RuntimeDefault` profile for a container whose bounding set is
/// `bounding` (see the module doc).
pub fn runtime_default_seccomp(bounding: &HashSet<Capability>) -> LinuxSeccomp {
    use LinuxSeccompAction::ScmpActAllow as Allow;
    let mut syscalls = vec![syscall(ALLOWED, Allow, None, Vec::new())];
    for persona in [0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff] {
        let eq = arg(0, LinuxSeccompOperator::ScmpCmpEq, persona, None);
        syscalls.push(syscall(&["personality"], Allow, None, vec![eq]));
    }
    for (cap, names) in BY_CAPABILITY {
        if bounding.contains(cap) {
            syscalls.push(syscall(names, Allow, None, Vec::new()));
        }
    }
    if !bounding.contains(&Capability::SysAdmin) {
        let no_ns = arg(
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACE_FLAGS,
            Some(0),
        );
        syscalls.push(syscall(&["clone"], Allow, None, vec![no_ns]));
        // clone3's flags are behind a pointer, out of seccomp's reach:
        // ENOSYS makes C libraries fall back to clone, which is checked.
        let enosys = Some(u32::try_from(libc::ENOSYS).unwrap_or(38));
        syscalls.push(syscall(
            &["clone3"],
            LinuxSeccompAction::ScmpActErrno,
            enosys,
            Vec::new(),
        ));
    }
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(None);
    profile.set_architectures(Some(vec![
        oci_spec::runtime::Arch::ScmpArchX86_64,
        oci_spec::runtime::Arch::ScmpArchX86,
        oci_spec::runtime::Arch::ScmpArchX32,
    ]));
    profile.set_syscalls(Some(syscalls));
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_allowed(p: &LinuxSeccomp) -> HashSet<String> {
        let groups = p.syscalls().iter().flatten();
        groups
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn the_default_spec_is_cri_s() {
        let spec = default_spec(&Process {
            argv: vec!["sh".into()],
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(250),
            ..Process::default()
        });
        let process = spec.process().as_ref().unwrap();
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::NetRaw));
        assert!(caps.inheritable().is_none() && caps.ambient().is_none());
        assert_eq!(process.no_new_privileges(), Some(false));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none(), "Unconfined unless asked");
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".into()));
        let run = guest_agent::protocol::RunSpec {
            spec: Box::new(spec.clone()),
            ..Default::default()
        };
        assert_eq!(run.limits().memory_bytes, Some(64 << 20));
        assert_eq!(run.limits().cpu_millis, Some(250));
        assert!(!run.share_pid_namespace());
        let destinations: Vec<_> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
    }

    #[test]
    fn runtime_default_blocks_admin_syscalls_without_cap_sys_admin() {
        let p = runtime_default_seccomp(&cap_set(DEFAULT_CAPS));
        let allowed = names_allowed(&p);
        assert!(allowed.contains("read") && allowed.contains("chroot"));
        for blocked in ["sethostname", "unshare", "mount", "reboot", "ptrace"] {
            assert!(!allowed.contains(blocked), "{blocked}");
        }
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        let mut admin = cap_set(DEFAULT_CAPS);
        admin.insert(Capability::SysAdmin);
        let allowed = names_allowed(&runtime_default_seccomp(&admin));
        assert!(allowed.contains("sethostname") && allowed.contains("unshare"));
    }
}
