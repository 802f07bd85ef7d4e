//! A container's OCI runtime spec, turned into what the agent does for it,
//! in runc's order.
//!
//! # Design
//!
//! [`ProcessSecurity::new`], [`FsPlan::new`] and [`sysctls`] check the spec
//! and prepare everything that can be done before the fork (parsing mounts,
//! compiling seccomp), so the child (`sandbox.rs`) mostly makes syscalls. The child then, between
//! fork and exec, as runc's `init` does:
//! 1. enters its mount namespace and root, mounts `mounts` in order (with a
//!    tmpfs `/dev`, the guest's default device nodes are bound in, as runc
//!    creates them), then the pod's files and volumes;
//! 2. masks `maskedPaths` (`/dev/null` over a file, an empty read-only tmpfs
//!    over a directory), makes `readonlyPaths` read-only binds, and makes
//!    the root read-only for `root.readonly`;
//! 3. [`ProcessSecurity::before_user`]: rlimits, `oomScoreAdj`, umask; the
//!    seccomp filters when `noNewPrivileges` is off (installing them then
//!    needs `CAP_SYS_ADMIN`, which the user switch may take away); the
//!    bounding set; `PR_SET_KEEPCAPS`;
//! 4. `setgroups` (the user's groups and `additionalGids`), `setgid`,
//!    `setuid`;
//! 5. [`ProcessSecurity::after_user`]: the effective, permitted and
//!    inheritable sets, the ambient set, `PR_SET_NO_NEW_PRIVS`, and then
//!    the seccomp filters when `noNewPrivileges` is on.
//!
//! `linux.sysctl` is written by the agent before the fork: the network, IPC
//! and UTS namespaces the kernel scopes those settings to are the pod's
//! (the guest's), so a sysctl is pod-wide, as in Kubernetes. Only the
//! namespaced ones runc accepts are taken.
//!
//! **Privileged** is what the spec says it is (CRI writes all capabilities,
//! no seccomp, no masked or read-only paths, a writable `/sys`), applied the
//! same way; a `devtmpfs` mount on `/dev` gives it the guest's devices.
//!
//! # Limitations
//!
//! - User namespaces (`linux.uidMappings`), hooks, `linux.devices` (device
//!   nodes beyond the defaults), AppArmor and SELinux labels are not
//!   applied: `uidMappings` is refused, the rest is ignored with the VM as
//!   the boundary (docs/SECURITY.md).
//! - `linux.resources` applies memory, CPU quota and pids only (`cgroup.rs`).

pub mod caps;
pub mod mounts;
pub mod seccomp;
pub mod syscalls;

use std::ffi::CString;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{umask, Mode};
use oci_spec::runtime::{PosixRlimitType, Spec};

use self::caps::CapSets;
use self::mounts::SpecMount;

/// A runtime spec the agent cannot apply; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// A mount cannot be made.
    #[error("mounts[{index}] ({target}): {problem}")]
    Mount {
        /// Its index in `mounts`.
        index: usize,
        /// Its destination.
        target: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// The seccomp profile cannot be compiled.
    #[error("{field}: {problem}")]
    Seccomp {
        /// The JSON path of the field.
        field: String,
        /// What is wrong, and what to do.
        problem: String,
    },
    /// Another field cannot be applied.
    #[error("{field}: {problem}")]
    Field {
        /// The JSON path of the field.
        field: String,
        /// What is wrong, and what to do.
        problem: String,
    },
}

fn field_error(field: impl Into<String>, problem: impl Into<String>) -> OciError {
    OciError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// What a process applies to itself around its user switch.
#[derive(Debug, Clone, Default)]
pub struct ProcessSecurity {
    /// The five capability sets; `None` keeps the agent's (all of them).
    pub caps: Option<CapSets>,
    /// `noNewPrivileges`.
    pub no_new_privileges: bool,
    /// `rlimits`: resource, soft, hard.
    pub rlimits: Vec<(Resource, u64, u64)>,
    /// `oomScoreAdj`, as the text to write.
    pub oom_score_adj: Option<CString>,
    /// `user.umask`.
    pub umask: Option<Mode>,
    /// The compiled `linux.seccomp`, to install in order.
    pub seccomp: Option<seccomp::Programs>,
}

impl ProcessSecurity {
    /// Reads `process` and `linux.seccomp` of `spec`, compiling seccomp
    /// through `cache`.
    pub fn new(spec: &Spec, cache: &mut seccomp::Cache) -> Result<Self, OciError> {
        let mut out = Self::default();
        if let Some(p) = spec.process() {
            out.caps = p.capabilities().as_ref().map(CapSets::from_spec);
            out.no_new_privileges = p.no_new_privileges().unwrap_or(false);
            for (i, r) in p.rlimits().iter().flatten().enumerate() {
                let resource = resource(r.typ()).ok_or_else(|| {
                    field_error(
                        format!("process.rlimits[{i}].type"),
                        format!("{:?} is not a Linux rlimit", r.typ()),
                    )
                })?;
                out.rlimits.push((resource, r.soft(), r.hard()));
            }
            out.oom_score_adj = match p.oom_score_adj() {
                Some(adj) if (-1000..=1000).contains(&adj) => {
                    Some(CString::new(adj.to_string()).unwrap_or_default())
                }
                Some(adj) => {
                    return Err(field_error(
                        "process.oomScoreAdj",
                        format!("{adj} is outside -1000..=1000"),
                    ))
                }
                None => None,
            };
            out.umask = p.user().umask().map(Mode::from_bits_truncate);
        }
        let profile = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        if let Some(profile) = profile {
            let programs = cache.get(profile)?;
            out.seccomp = (!programs.is_empty()).then_some(programs);
        }
        Ok(out)
    }

    /// Step 3 of the module doc: before `setgroups`/`setgid`/`setuid`.
    pub fn before_user(&self) -> nix::Result<()> {
        for (resource, soft, hard) in &self.rlimits {
            setrlimit(*resource, *soft, *hard)?;
        }
        if let Some(adj) = &self.oom_score_adj {
            write_file(c"/proc/self/oom_score_adj", adj)?;
        }
        if let Some(mask) = self.umask {
            umask(mask);
        }
        if !self.no_new_privileges {
            self.install_seccomp()?;
        }
        if let Some(caps) = &self.caps {
            caps.drop_bounding()?;
            nix::sys::prctl::set_keepcaps(true)?;
        }
        Ok(())
    }

    /// Step 5 of the module doc: after the user switch.
    pub fn after_user(&self) -> nix::Result<()> {
        if let Some(caps) = &self.caps {
            nix::sys::prctl::set_keepcaps(false)?;
            caps.apply()?;
        }
        if self.no_new_privileges {
            nix::sys::prctl::set_no_new_privs()?;
            self.install_seccomp()?;
        }
        Ok(())
    }

    fn install_seccomp(&self) -> nix::Result<()> {
        for program in self.seccomp.iter().flat_map(|p| p.iter()) {
            install_filter(program)?;
        }
        Ok(())
    }
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const seccompiler::sock_filter,
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, program)`. Unlike
/// `seccompiler::apply_filter`, it leaves `PR_SET_NO_NEW_PRIVS` alone: that
/// is the spec's `noNewPrivileges` to decide.
fn install_filter(program: &[seccompiler::sock_filter]) -> nix::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| nix::errno::Errno::E2BIG)?;
    let prog = SockFprog {
        len,
        filter: program.as_ptr(),
    };
    // SAFETY: `prog` points at `len` instructions of `program`, which
    // outlives the call; the kernel copies the program and keeps no pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const SockFprog,
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// Writes `text` to the file at `path` (an existing one).
fn write_file(path: &std::ffi::CStr, text: &CString) -> nix::Result<()> {
    use nix::fcntl::{open, OFlag};
    let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    nix::unistd::write(&fd, text.as_bytes()).map(drop)
}

/// The nix resource of an OCI rlimit type.
fn resource(t: PosixRlimitType) -> Option<Resource> {
    use PosixRlimitType as T;
    Some(match t {
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitStack => Resource::RLIMIT_STACK,
        #[expect(unreachable_patterns, reason = "oci-spec may add non-Linux types")]
        _ => return None,
    })
}

/// Everything about a container's file system view the child sets up.
#[derive(Debug, Clone, Default)]
pub struct FsPlan {
    /// `mounts`, parsed, in order.
    pub mounts: Vec<SpecMount>,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// `root.readonly`.
    pub readonly_root: bool,
}

impl FsPlan {
    /// Reads `mounts`, `linux.maskedPaths`, `linux.readonlyPaths` and
    /// `root.readonly` of `spec`.
    pub fn new(spec: &Spec) -> Result<Self, OciError> {
        let mounts = spec
            .mounts()
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, m)| mounts::parse(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let linux = spec.linux().as_ref();
        let paths = |field: &str, list: Option<&Vec<String>>| {
            list.into_iter()
                .flatten()
                .enumerate()
                .map(|(i, p)| {
                    if p.starts_with('/') && !p.split('/').any(|c| c == "..") {
                        Ok(p.clone())
                    } else {
                        Err(field_error(
                            format!("linux.{field}[{i}]"),
                            format!("{p:?} must be an absolute path without .."),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            mounts,
            masked_paths: paths("maskedPaths", linux.and_then(|l| l.masked_paths().as_ref()))?,
            readonly_paths: paths(
                "readonlyPaths",
                linux.and_then(|l| l.readonly_paths().as_ref()),
            )?,
            readonly_root: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
        })
    }
}

/// Sysctl prefixes that name settings of a namespace a pod owns (runc's
/// list): IPC, POSIX message queues, network, and the UTS names.
const NAMESPACED_SYSCTLS: [&str; 11] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
    "fs.mqueue.",
    "net.",
    "kernel.domainname",
];

/// `linux.sysctl` as `(/proc/sys path, value)` pairs, checked.
pub fn sysctls(spec: &Spec) -> Result<Vec<(String, String)>, OciError> {
    let map = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in map.into_iter().flatten() {
        let field = format!("linux.sysctl[{name:?}]");
        let namespaced = NAMESPACED_SYSCTLS
            .iter()
            .any(|p| name == p.trim_end_matches('.') || (p.ends_with('.') && name.starts_with(p)));
        if !namespaced {
            return Err(field_error(
                field,
                "not a namespaced sysctl (IPC, mqueue, net); a pod cannot set it",
            ));
        }
        let valid = name
            .split('.')
            .all(|c| !c.is_empty() && c != ".." && !c.contains('/'));
        if !valid || value.contains('\n') {
            return Err(field_error(field, "malformed name or value"));
        }
        out.push((
            format!("/proc/sys/{}", name.replace('.', "/")),
            value.clone(),
        ));
    }
    out.sort();
    Ok(out)
}

/// Refuses what the pod VM cannot give a container.
pub fn check_unsupported(spec: &Spec) -> Result<(), OciError> {
    let linux = spec.linux().as_ref();
    let mapped = linux.is_some_and(|l| {
        l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || l.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    });
    if mapped {
        return Err(field_error(
            "linux.uidMappings",
            "user namespaces are not supported in the pod VM; remove the mappings",
        ));
    }
    Ok(())
}

/// Test helpers that edit a [`RunSpec`](guest_agent::protocol::RunSpec)'s spec.
#[cfg(test)]
pub mod test_util {
    use guest_agent::protocol::RunSpec;

    /// Sets `process.cwd`.
    pub fn set_cwd(run: &mut RunSpec, cwd: &str) {
        if let Some(p) = run.spec.process_mut().as_mut() {
            p.set_cwd(cwd.into());
        }
    }

    /// Merges `json` into the spec's JSON (objects merge, the rest replaces).
    pub fn merge(run: &mut RunSpec, json: serde_json::Value) {
        fn merge_value(a: &mut serde_json::Value, b: serde_json::Value) {
            match (a, b) {
                (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                    for (k, v) in b {
                        merge_value(a.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
                (a, b) => *a = b,
            }
        }
        let mut value = serde_json::to_value(&*run.spec).unwrap();
        merge_value(&mut value, json);
        *run.spec = serde_json::from_value(value).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn process_settings_are_read() {
        let s = spec(serde_json::json!({
            "process": {
                "user": {"uid": 0, "gid": 0, "umask": 18},
                "cwd": "/",
                "noNewPrivileges": true,
                "oomScoreAdj": 500,
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
                "capabilities": {"bounding": ["CAP_KILL"]}
            },
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}}
        }));
        let p = ProcessSecurity::new(&s, &mut seccomp::Cache::default()).unwrap();
        assert!(p.no_new_privileges);
        assert_eq!(p.oom_score_adj.as_deref(), Some(c"500"));
        assert_eq!(p.rlimits, vec![(Resource::RLIMIT_NOFILE, 1024, 4096)]);
        assert_eq!(p.umask, Some(Mode::from_bits_truncate(0o022)));
        assert_eq!(p.caps.map(|c| c.bounding), Some(1 << 5));
        assert_eq!(p.seccomp.map(|s| s.len()), Some(1));
    }

    #[test]
    fn an_empty_spec_changes_nothing() {
        let p =
            ProcessSecurity::new(&spec(serde_json::json!({})), &mut Default::default()).unwrap();
        assert!(p.caps.is_none() && p.seccomp.is_none() && !p.no_new_privileges);
        assert!(p.rlimits.is_empty() && p.oom_score_adj.is_none());
    }

    #[test]
    fn a_bad_oom_score_adj_names_the_field() {
        let s = spec(serde_json::json!({"process": {"user": {}, "cwd": "/", "oomScoreAdj": 2000}}));
        let err = ProcessSecurity::new(&s, &mut Default::default()).unwrap_err();
        assert!(err.to_string().starts_with("process.oomScoreAdj"), "{err}");
    }

    #[test]
    fn file_system_settings_are_read_and_checked() {
        let s = spec(serde_json::json!({
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]}
        }));
        let f = FsPlan::new(&s).unwrap();
        assert!(f.readonly_root);
        assert_eq!(f.masked_paths, ["/proc/kcore"]);
        assert_eq!(f.readonly_paths, ["/proc/sys"]);
        assert_eq!(f.mounts.len(), 1);
        let s = spec(serde_json::json!({"linux": {"maskedPaths": ["/proc/../etc"]}}));
        let err = FsPlan::new(&s).unwrap_err().to_string();
        assert!(err.contains("linux.maskedPaths[0]"), "{err}");
    }

    #[test]
    fn only_namespaced_sysctls_are_taken() {
        let s = spec(serde_json::json!({"linux": {"sysctl": {
            "net.ipv4.ip_unprivileged_port_start": "0",
            "kernel.shm_rmid_forced": "1"
        }}}));
        assert_eq!(
            sysctls(&s).unwrap(),
            vec![
                ("/proc/sys/kernel/shm_rmid_forced".into(), "1".into()),
                (
                    "/proc/sys/net/ipv4/ip_unprivileged_port_start".into(),
                    "0".into()
                ),
            ]
        );
        let s = spec(serde_json::json!({"linux": {"sysctl": {"vm.swappiness": "1"}}}));
        let err = sysctls(&s).unwrap_err().to_string();
        assert!(
            err.contains("vm.swappiness") && err.contains("namespaced"),
            "{err}"
        );
    }

    #[test]
    fn user_namespaces_are_refused() {
        let s = spec(serde_json::json!({"linux": {"uidMappings": [
            {"containerID": 0, "hostID": 1000, "size": 1}
        ]}}));
        assert!(check_unsupported(&s).is_err());
        assert!(check_unsupported(&spec(serde_json::json!({}))).is_ok());
    }
}
