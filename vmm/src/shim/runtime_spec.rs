//! containerd's runtime spec for a container, adjusted for the pod VM and
//! passed to the guest agent, which applies it as runc would.
//!
//! # Design
//!
//! Only what cannot mean the same inside a VM changes:
//! - **bind mounts** name host paths the guest cannot see: CRI's
//!   `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` (the agent gives
//!   every container the pod's, and the shim sends the resolv.conf's text),
//!   `/dev/termination-log`, and volumes (issue "Host directories in
//!   pods"). They are dropped; the sandbox's `/dev/shm` bind becomes a
//!   tmpfs of the container's own.
//! - **hooks** would run host programs: dropped.
//! - **host namespaces**: a spec without a `pid`, `ipc` or `network`
//!   namespace asks for the host's (CRI's hostPID, hostIPC, hostNetwork),
//!   which a pod VM cannot give; a guest-local one in its place would
//!   mislead, so the Create fails saying so (Kata Containers refuses them
//!   too). Namespace paths stay: a `pid` namespace with a path (CRI's
//!   shared pid namespace) is the pod's, the VM's own.
//!
//! Everything else (process, capabilities, seccomp, masked and read-only
//! paths, `root.readonly`, sysctls, resources) goes through unchanged.

#![forbid(unsafe_code)]

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

/// Why a spec cannot run in a pod VM: (field, problem).
pub type Refusal = (&'static str, &'static str);

/// `spec` as the guest agent should apply it.
pub fn for_guest(mut spec: Spec) -> Result<Spec, Refusal> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (typ, problem) in [
        (
            LinuxNamespaceType::Pid,
            "no pid namespace means the host's (hostPID), which a pod VM cannot share",
        ),
        (
            LinuxNamespaceType::Ipc,
            "no IPC namespace means the host's (hostIPC), which a pod VM cannot share",
        ),
        (
            LinuxNamespaceType::Network,
            "no network namespace means the host's (hostNetwork), which a pod VM cannot share",
        ),
    ] {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            return Err(("linux.namespaces", problem));
        }
    }
    let mounts: Vec<Mount> = spec
        .mounts()
        .iter()
        .flatten()
        .filter_map(|m| {
            let bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind");
            if !bind {
                return Some(m.clone());
            }
            if m.destination().as_os_str() == "/dev/shm" {
                let mut shm = Mount::default();
                shm.set_destination("/dev/shm".into());
                shm.set_typ(Some("tmpfs".into()));
                shm.set_source(Some("shm".into()));
                let opts = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"];
                shm.set_options(Some(opts.iter().map(|o| o.to_string()).collect()));
                return Some(shm);
            }
            log::debug!(
                "bind mount on {} from host path {:?} left out of the guest",
                m.destination().display(),
                m.source()
            );
            None
        })
        .collect();
    spec.set_mounts(Some(mounts));
    spec.set_hooks(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri_spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/",
                        "capabilities": {"bounding": ["CAP_KILL"]}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/x/hosts", "options": ["rbind", "rprivate", "rw"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/x/shm", "options": ["rbind", "ro"]}
            ],
            "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
            "linux": {"namespaces": namespaces, "maskedPaths": ["/proc/kcore"]}
        }))
        .unwrap()
    }

    #[test]
    fn host_paths_and_hooks_are_left_out_and_the_rest_passes() {
        let all = serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}]);
        let spec = for_guest(cri_spec(all)).unwrap();
        let mounts = spec.mounts().clone().unwrap();
        let dests: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(dests, ["/proc", "/dev/shm"]);
        assert_eq!(mounts[1].typ().as_deref(), Some("tmpfs"));
        assert!(spec.hooks().is_none());
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.masked_paths().as_deref(),
            Some(&["/proc/kcore".to_string()][..])
        );
    }

    #[test]
    fn host_namespaces_are_refused() {
        for missing in ["pid", "ipc", "network"] {
            let ns: Vec<_> = ["pid", "ipc", "network", "mount"]
                .into_iter()
                .filter(|t| *t != missing)
                .map(|t| serde_json::json!({"type": t}))
                .collect();
            let (field, problem) = for_guest(cri_spec(ns.into())).unwrap_err();
            assert_eq!(field, "linux.namespaces");
            assert!(problem.contains("host"), "{problem}");
        }
    }
}
