//! A manifest's `securityContext` (pod and container level) applied to a
//! container's runtime spec with the kubelet's precedence and CRI's
//! meaning, on top of `runtime_spec::default_spec`.
//!
//! # Design
//!
//! The container's `runAsUser`, `runAsGroup`, `runAsNonRoot` and
//! `seccompProfile` override the pod's; `supplementalGroups`, `fsGroup` and
//! `sysctls` are the pod's only. Then, as containerd's CRI plugin:
//! - **user**: `runAsUser` (else the image's user) and `runAsGroup` go to the
//!   agent as `RunSpec::image_user`, which it resolves in the image's
//!   `/etc/passwd` and `/etc/group` (the image's groups for the user come
//!   along); `supplementalGroups` then `fsGroup` are `additionalGids`.
//!   `runAsNonRoot` refuses uid 0 with the kubelet's messages, here on the
//!   host before anything starts.
//! - **capabilities**: `add: [ALL]` gives every capability, `drop: [ALL]`
//!   none, then single ones are added, then dropped (names with or
//!   without `CAP_`), in the bounding, effective and permitted sets.
//! - **privileged**: every capability, no seccomp, no masked or read-only
//!   paths, `/sys` writable and the guest's devices (`devtmpfs` on `/dev`).
//! - `allowPrivilegeEscalation: false` is `noNewPrivileges`;
//!   `readOnlyRootFilesystem` is `root.readonly`; `procMount: Unmasked`
//!   drops the masked and read-only paths; `sysctls` are `linux.sysctl`.
//! - **seccompProfile**: `Unconfined` (the kubelet's default) is none,
//!   `RuntimeDefault` is `runtime_default_seccomp` for the final bounding
//!   set, `Localhost` reads the profile from [`seccomp_dir`].
//!
//! # Limitations
//!
//! `appArmorProfile` and `seLinuxOptions` are accepted by the manifest
//! parser (with a warning) only as `RuntimeDefault`/`Unconfined`: the VM
//! boundary stands in for them, and nothing here applies them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxSeccomp, Spec};

use super::runtime_spec::{
    cap_set, capabilities, default_mounts, runtime_default_seccomp, DEFAULT_CAPS,
};

/// Where `Localhost` seccomp profiles are read: `$UNIPOD_SECCOMP_DIR`, else
/// the kubelet's `/var/lib/kubelet/seccomp`.
pub fn seccomp_dir() -> PathBuf {
    std::env::var_os("UNIPOD_SECCOMP_DIR")
        .map_or_else(|| PathBuf::from("/var/lib/kubelet/seccomp"), PathBuf::from)
}

/// `seccompProfile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeccompProfile {
    /// `RuntimeDefault`.
    RuntimeDefault,
    /// `Unconfined`.
    Unconfined,
    /// `Localhost` with its `localhostProfile`, relative to [`seccomp_dir`].
    Localhost(String),
}

/// `spec.securityContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSecurityContext {
    /// `runAsUser`.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`.
    pub run_as_group: Option<u32>,
    /// `runAsNonRoot`.
    pub run_as_non_root: Option<bool>,
    /// `supplementalGroups`.
    pub supplemental_groups: Vec<u32>,
    /// `fsGroup`.
    pub fs_group: Option<u32>,
    /// `sysctls`, as (name, value).
    pub sysctls: Vec<(String, String)>,
    /// `seccompProfile`.
    pub seccomp_profile: Option<SeccompProfile>,
}

/// A container's `securityContext`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityContext {
    /// `runAsUser`.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`.
    pub run_as_group: Option<u32>,
    /// `runAsNonRoot`.
    pub run_as_non_root: Option<bool>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation`.
    pub allow_privilege_escalation: Option<bool>,
    /// `privileged`.
    pub privileged: bool,
    /// `capabilities.add`, as written.
    pub add_capabilities: Vec<String>,
    /// `capabilities.drop`, as written.
    pub drop_capabilities: Vec<String>,
    /// `seccompProfile`.
    pub seccomp_profile: Option<SeccompProfile>,
    /// `procMount: Unmasked`.
    pub proc_mount_unmasked: bool,
}

/// A `securityContext` that cannot be applied; the message names the field
/// and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// `runAsNonRoot` with a root user, in the kubelet's words.
    #[error("{field}: {message}")]
    NonRoot {
        /// The container's `securityContext.runAsNonRoot` (or the pod's).
        field: String,
        /// The kubelet's message.
        message: String,
    },
    /// A capability name oci-spec does not know.
    #[error(
        "{field}: {name:?} is not a Linux capability; use names such as NET_RAW or CAP_NET_RAW"
    )]
    Capability {
        /// The list's path.
        field: String,
        /// The name.
        name: String,
    },
    /// A combination Kubernetes' API validation refuses.
    #[error("{field}: {message}")]
    Conflict {
        /// The field.
        field: String,
        /// What to change.
        message: String,
    },
    /// A `Localhost` profile could not be read.
    #[error("{field}: cannot read the seccomp profile {}; put it there or use RuntimeDefault", .path.display())]
    ReadProfile {
        /// `...seccompProfile.localhostProfile`.
        field: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `Localhost` profile is not OCI seccomp JSON.
    #[error("{field}: {} is not an OCI seccomp profile (defaultAction, syscalls)", .path.display())]
    ParseProfile {
        /// `...seccompProfile.localhostProfile`.
        field: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Who is asking: for messages.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The pod's name.
    pub pod: &'a str,
    /// The container's name.
    pub container: &'a str,
    /// The container's manifest path, e.g. `spec.containers[0]`.
    pub path: &'a str,
}

fn parse_cap(field: &str, name: &str) -> Result<Capability, SecurityError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full)).map_err(|_| SecurityError::Capability {
        field: field.into(),
        name: name.into(),
    })
}

/// Every capability oci-spec knows (kernel numbers 0 to 40).
pub fn all_capabilities() -> HashSet<Capability> {
    (0..=40)
        .filter_map(|n| {
            ALL_CAP_NAMES
                .get(n)
                .and_then(|name| parse_cap("", name).ok())
        })
        .collect()
}

/// Kernel capability names, by number.
const ALL_CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability set of `sc`, from containerd's default set.
fn capability_set(sc: &SecurityContext, path: &str) -> Result<HashSet<Capability>, SecurityError> {
    if sc.privileged {
        return Ok(all_capabilities());
    }
    let add_field = format!("{path}.securityContext.capabilities.add");
    let drop_field = format!("{path}.securityContext.capabilities.drop");
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    let mut caps = cap_set(DEFAULT_CAPS);
    if sc.add_capabilities.iter().any(is_all) {
        caps = all_capabilities();
    }
    if sc.drop_capabilities.iter().any(is_all) {
        caps.clear();
    }
    for name in sc.add_capabilities.iter().filter(|c| !is_all(c)) {
        caps.insert(parse_cap(&add_field, name)?);
    }
    for name in sc.drop_capabilities.iter().filter(|c| !is_all(c)) {
        caps.remove(&parse_cap(&drop_field, name)?);
    }
    Ok(caps)
}

/// The uid part of an image's `User` (`uid`, `uid:gid`, `name`, ...).
fn image_uid(user: &str) -> Result<u32, &str> {
    let uid_part = user.split(':').next().unwrap_or("");
    if uid_part.is_empty() {
        return Ok(0);
    }
    uid_part.parse().map_err(|_| uid_part)
}

/// Applies `pod` and `container` to `spec`; returns the user the agent
/// resolves in the image (`RunSpec::image_user`).
pub fn apply(
    spec: &mut Spec,
    pod: &PodSecurityContext,
    container: &SecurityContext,
    image_user: Option<&str>,
    seccomp_dir: &Path,
    who: Subject<'_>,
) -> Result<Option<String>, SecurityError> {
    let path = who.path;
    let run_as_user = container.run_as_user.or(pod.run_as_user);
    let run_as_group = container.run_as_group.or(pod.run_as_group);
    let non_root = container.run_as_non_root.or(pod.run_as_non_root) == Some(true);
    let non_root_field = if container.run_as_non_root.is_some() {
        format!("{path}.securityContext.runAsNonRoot")
    } else {
        "spec.securityContext.runAsNonRoot".into()
    };
    let who_text = format!("(pod: {:?}, container: {})", who.pod, who.container);
    if container.allow_privilege_escalation == Some(false) && container.privileged {
        return Err(SecurityError::Conflict {
            field: format!("{path}.securityContext.allowPrivilegeEscalation"),
            message: "cannot set allowPrivilegeEscalation to false and privileged to true".into(),
        });
    }
    let image_user = image_user.filter(|u| !u.is_empty());
    if non_root {
        let refuse = |message: String| SecurityError::NonRoot {
            field: non_root_field.clone(),
            message,
        };
        match run_as_user {
            Some(0) => {
                return Err(refuse(format!(
                    "container's runAsUser breaks non-root policy {who_text}"
                )))
            }
            Some(_) => {}
            None => match image_uid(image_user.unwrap_or("")) {
                Ok(0) => {
                    return Err(refuse(format!(
                        "container has runAsNonRoot and image will run as root {who_text}"
                    )))
                }
                Ok(_) => {}
                Err(name) => {
                    return Err(refuse(format!(
                        "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root {who_text}"
                    )))
                }
            },
        }
    }
    let user_part = match run_as_user {
        Some(uid) => uid.to_string(),
        None => image_user
            .map(|u| u.split(':').next().unwrap_or("").to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0".into()),
    };
    let group_part = match (run_as_group, run_as_user) {
        (Some(gid), _) => Some(gid.to_string()),
        // The image's explicit group stays with the image's user.
        (None, None) => image_user.and_then(|u| u.split_once(':').map(|(_, g)| g.to_string())),
        (None, Some(_)) => None,
    };
    let lookup = match group_part {
        Some(g) => format!("{user_part}:{g}"),
        None => user_part,
    };

    let caps = capability_set(container, path)?;
    let seccomp = match container
        .seccomp_profile
        .as_ref()
        .or(pod.seccomp_profile.as_ref())
    {
        _ if container.privileged => None,
        None | Some(SeccompProfile::Unconfined) => None,
        Some(SeccompProfile::RuntimeDefault) => Some(runtime_default_seccomp(&caps)),
        Some(SeccompProfile::Localhost(name)) => {
            let field = if container.seccomp_profile.is_some() {
                format!("{path}.securityContext.seccompProfile.localhostProfile")
            } else {
                "spec.securityContext.seccompProfile.localhostProfile".into()
            };
            Some(read_localhost_profile(&seccomp_dir.join(name), field)?)
        }
    };
    let groups: Vec<u32> = pod
        .supplemental_groups
        .iter()
        .copied()
        .chain(pod.fs_group)
        .collect();
    if let Some(process) = spec.process_mut().as_mut() {
        process.set_capabilities(Some(capabilities(&caps)));
        process.set_no_new_privileges(Some(container.allow_privilege_escalation == Some(false)));
        let user = process.user_mut();
        user.set_uid(run_as_user.unwrap_or(0));
        user.set_gid(run_as_group.unwrap_or(0));
        user.set_additional_gids((!groups.is_empty()).then_some(groups));
    }
    if let Some(root) = spec.root_mut().as_mut() {
        root.set_readonly(Some(container.read_only_root_filesystem));
    }
    if container.privileged {
        let mut mounts = default_mounts(true);
        if let Some(dev) = mounts
            .iter_mut()
            .find(|m| m.destination() == Path::new("/dev"))
        {
            dev.set_typ(Some("devtmpfs".into()));
            dev.set_source(Some("devtmpfs".into()));
            dev.set_options(Some(vec!["nosuid".into()]));
        }
        spec.set_mounts(Some(mounts));
    }
    if let Some(linux) = spec.linux_mut().as_mut() {
        if container.privileged || container.proc_mount_unmasked {
            linux.set_masked_paths(None);
            linux.set_readonly_paths(None);
        }
        linux.set_seccomp(seccomp);
        if !pod.sysctls.is_empty() {
            linux.set_sysctl(Some(pod.sysctls.iter().cloned().collect()));
        }
    }
    Ok(Some(lookup))
}

fn read_localhost_profile(path: &Path, field: String) -> Result<LinuxSeccomp, SecurityError> {
    let text = std::fs::read(path).map_err(|source| SecurityError::ReadProfile {
        field: field.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| SecurityError::ParseProfile {
        field,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::runtime_spec::{default_spec, Process};

    const WHO: Subject<'static> = Subject {
        pod: "web",
        container: "app",
        path: "spec.containers[0]",
    };

    fn spec() -> Spec {
        default_spec(&Process {
            argv: vec!["sh".into()],
            ..Process::default()
        })
    }

    fn apply_to(
        pod: &PodSecurityContext,
        c: &SecurityContext,
        image_user: Option<&str>,
    ) -> Result<(Spec, Option<String>), SecurityError> {
        let mut s = spec();
        let user = apply(&mut s, pod, c, image_user, Path::new("/nonexistent"), WHO)?;
        Ok((s, user))
    }

    fn bounding(s: &Spec) -> HashSet<Capability> {
        let caps = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        caps.bounding().clone().unwrap_or_default()
    }

    #[test]
    fn run_as_non_root_refuses_root_with_the_kubelet_s_message() {
        let c = SecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        for image_user in [None, Some("0"), Some("0:0"), Some("")] {
            let err = apply_to(&Default::default(), &c, image_user)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "spec.containers[0].securityContext.runAsNonRoot: container has runAsNonRoot and image will run as root (pod: \"web\", container: app)"
            );
        }
        let err = apply_to(&Default::default(), &c, Some("nobody")).unwrap_err();
        assert!(
            err.to_string().contains("non-numeric user (nobody)"),
            "{err}"
        );
        assert!(apply_to(&Default::default(), &c, Some("1000")).is_ok());
        let pod = PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(0),
            ..Default::default()
        };
        let err = apply_to(&pod, &SecurityContext::default(), Some("1000")).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "spec.securityContext.runAsNonRoot: container's runAsUser breaks non-root policy"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_container_s_user_overrides_the_pod_s_and_groups_are_the_pod_s() {
        let pod = PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000],
            fs_group: Some(2000),
            ..Default::default()
        };
        let c = SecurityContext {
            run_as_user: Some(1001),
            ..Default::default()
        };
        let (s, user) = apply_to(&pod, &c, Some("nobody")).unwrap();
        assert_eq!(user.as_deref(), Some("1001:3000"));
        let u = s.process().as_ref().unwrap().user();
        assert_eq!(u.additional_gids().as_deref(), Some(&[4000, 2000][..]));
        let (_, user) =
            apply_to(&Default::default(), &Default::default(), Some("www:web")).unwrap();
        assert_eq!(user.as_deref(), Some("www:web"));
        let (_, user) = apply_to(&Default::default(), &Default::default(), None).unwrap();
        assert_eq!(user.as_deref(), Some("0"));
    }

    #[test]
    fn capabilities_add_and_drop_as_cri_does() {
        let c = SecurityContext {
            drop_capabilities: vec!["NET_RAW".into()],
            add_capabilities: vec!["CAP_SYS_TIME".into()],
            ..Default::default()
        };
        let (s, _) = apply_to(&Default::default(), &c, None).unwrap();
        let b = bounding(&s);
        assert!(!b.contains(&Capability::NetRaw) && b.contains(&Capability::SysTime));
        assert_eq!(b.len(), 14);
        let c = SecurityContext {
            drop_capabilities: vec!["ALL".into()],
            add_capabilities: vec!["kill".into()],
            ..Default::default()
        };
        let (s, _) = apply_to(&Default::default(), &c, None).unwrap();
        assert_eq!(bounding(&s), cap_set([Capability::Kill]));
        let c = SecurityContext {
            add_capabilities: vec!["ALL".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        };
        let (s, _) = apply_to(&Default::default(), &c, None).unwrap();
        assert_eq!(bounding(&s).len(), 40);
        let c = SecurityContext {
            add_capabilities: vec!["FLY".into()],
            ..Default::default()
        };
        let err = apply_to(&Default::default(), &c, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("spec.containers[0].securityContext.capabilities.add: \"FLY\""),
            "{err}"
        );
    }

    #[test]
    fn privileged_means_everything_and_no_confinement() {
        let c = SecurityContext {
            privileged: true,
            seccomp_profile: Some(SeccompProfile::RuntimeDefault),
            ..Default::default()
        };
        let (s, _) = apply_to(&Default::default(), &c, None).unwrap();
        assert_eq!(bounding(&s).len(), 41);
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none() && linux.masked_paths().is_none());
        let dev = s
            .mounts()
            .iter()
            .flatten()
            .find(|m| m.destination() == Path::new("/dev"));
        assert_eq!(dev.unwrap().typ().as_deref(), Some("devtmpfs"));
        let c = SecurityContext {
            privileged: true,
            allow_privilege_escalation: Some(false),
            ..Default::default()
        };
        assert!(matches!(
            apply_to(&Default::default(), &c, None),
            Err(SecurityError::Conflict { .. })
        ));
    }

    #[test]
    fn seccomp_escalation_read_only_root_and_proc_mount() {
        let pod = PodSecurityContext {
            seccomp_profile: Some(SeccompProfile::RuntimeDefault),
            sysctls: vec![("net.ipv4.ping_group_range".into(), "0 2147483647".into())],
            ..Default::default()
        };
        let c = SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: true,
            proc_mount_unmasked: true,
            ..Default::default()
        };
        let (s, _) = apply_to(&pod, &c, None).unwrap();
        assert_eq!(
            s.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some() && linux.masked_paths().is_none());
        assert_eq!(linux.sysctl().as_ref().unwrap().len(), 1);
        let c = SecurityContext {
            seccomp_profile: Some(SeccompProfile::Unconfined),
            ..Default::default()
        };
        let (s, _) = apply_to(&pod, &c, None).unwrap();
        assert!(
            s.linux().as_ref().unwrap().seccomp().is_none(),
            "the container's wins"
        );
        let c = SecurityContext {
            seccomp_profile: Some(SeccompProfile::Localhost("missing.json".into())),
            ..Default::default()
        };
        let err = apply_to(&pod, &c, None).unwrap_err().to_string();
        assert!(
            err.contains("seccompProfile.localhostProfile") && err.contains("missing.json"),
            "{err}"
        );
    }

    #[test]
    fn a_localhost_profile_is_read_from_the_directory() {
        let dir = std::env::temp_dir().join(format!("unipod-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("deny.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let c = SecurityContext {
            seccomp_profile: Some(SeccompProfile::Localhost("deny.json".into())),
            ..Default::default()
        };
        let mut s = spec();
        apply(&mut s, &Default::default(), &c, None, &dir, WHO).unwrap();
        let profile = s.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(
            profile.syscalls().as_ref().unwrap()[0].names(),
            &["sethostname"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
