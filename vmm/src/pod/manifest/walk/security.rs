//! `spec.securityContext`, each container's `securityContext`, and the host
//! namespace switches (`hostPID`, `hostIPC`, `hostNetwork`), checked as the
//! rest of the manifest is.
//!
//! # Design
//!
//! Fields the pod VM applies become `PodSecurityContext`/`SecurityContext`
//! (see `pod/security_context.rs`). `appArmorProfile` and `seLinuxOptions`
//! are accepted as `RuntimeDefault`/`Unconfined` (SELinux: any options) with
//! a warning, since the VM boundary stands in for them; a `Localhost`
//! AppArmor profile is refused, as is a host namespace: a guest-local one
//! given in its place would mislead. Kata Containers refuses them the same
//! way.

use serde_norway::Value;

use super::{Obj, Walker};
use crate::pod::security_context::{PodSecurityContext, SeccompProfile, SecurityContext};

const POD_FIELDS: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "supplementalGroups",
    "fsGroup",
    "fsGroupChangePolicy",
    "sysctls",
    "seccompProfile",
    "appArmorProfile",
    "seLinuxOptions",
];
const CONTAINER_FIELDS: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
    "seccompProfile",
    "appArmorProfile",
    "seLinuxOptions",
    "procMount",
];
const CAPABILITIES_FIELDS: &[&str] = &["add", "drop"];
const PROFILE_FIELDS: &[&str] = &["type", "localhostProfile"];
const SYSCTL_FIELDS: &[&str] = &["name", "value"];
const SELINUX_FIELDS: &[&str] = &["user", "role", "type", "level"];

/// The pod `spec` switches that would share a host namespace.
pub(super) const HOST_NAMESPACES: [(&str, &str); 3] = [
    ("hostPID", "pid"),
    ("hostIPC", "IPC"),
    ("hostNetwork", "network"),
];

impl Walker {
    /// Refuses `hostPID`, `hostIPC` and `hostNetwork` set to true.
    pub(super) fn host_namespaces(&mut self, spec: &Obj<'_>) {
        for (key, what) in HOST_NAMESPACES {
            if self.bool(spec, key) == Some(true) {
                self.invalid(
                    spec.path(key),
                    &Value::Bool(true),
                    format!(
                        "false: the pod runs in its own VM, which cannot share the host's {what} namespace; remove {key}"
                    ),
                );
            }
        }
    }

    fn id(&mut self, obj: &Obj<'_>, key: &str) -> Option<u32> {
        let value = obj.get(key)?;
        let n = self.integer(obj.path(key), value)?;
        let id = u32::try_from(n).ok().filter(|id| *id < u32::MAX);
        if id.is_none() {
            self.invalid(
                obj.path(key),
                value,
                "a user or group id from 0 to 4294967294",
            );
        }
        id
    }

    fn seccomp_profile(&mut self, obj: &Obj<'_>) -> Option<SeccompProfile> {
        let value = obj.get("seccompProfile")?;
        let p = self.object(obj.path("seccompProfile"), value, PROFILE_FIELDS, &[])?;
        let localhost = self.string(&p, "localhostProfile");
        match self.required_string(&p, "type").as_deref() {
            Some("RuntimeDefault") => Some(SeccompProfile::RuntimeDefault),
            Some("Unconfined") => Some(SeccompProfile::Unconfined),
            Some("Localhost") => match localhost {
                Some(name) if !name.is_empty() && !name.split('/').any(|c| c == "..") => {
                    Some(SeccompProfile::Localhost(name))
                }
                _ => {
                    self.error(super::ManifestError::Missing {
                        path: p.path("localhostProfile"),
                    });
                    None
                }
            },
            Some(other) => {
                self.invalid(
                    p.path("type"),
                    &Value::String(other.to_owned()),
                    "one of \"RuntimeDefault\", \"Unconfined\" or \"Localhost\"",
                );
                None
            }
            None => None,
        }
    }

    /// `appArmorProfile` and `seLinuxOptions`: warnings, or an error for
    /// a profile the VM cannot load.
    fn mac_options(&mut self, obj: &Obj<'_>) {
        if let Some(value) = obj.get("appArmorProfile") {
            if let Some(p) = self.object(obj.path("appArmorProfile"), value, PROFILE_FIELDS, &[]) {
                match self.required_string(&p, "type").as_deref() {
                    Some("RuntimeDefault" | "Unconfined") => self.warnings.push(super::Warning {
                        path: obj.path("appArmorProfile"),
                        message: "accepted, not applied: the pod's VM is its confinement".into(),
                    }),
                    Some(other) => self.invalid(
                        p.path("type"),
                        &Value::String(other.to_owned()),
                        "\"RuntimeDefault\" or \"Unconfined\": the guest has no AppArmor to load a Localhost profile into",
                    ),
                    None => {}
                }
            }
        }
        if let Some(value) = obj.get("seLinuxOptions") {
            if self
                .object(obj.path("seLinuxOptions"), value, SELINUX_FIELDS, &[])
                .is_some()
            {
                self.warnings.push(super::Warning {
                    path: obj.path("seLinuxOptions"),
                    message: "accepted, not applied: the guest has no SELinux; the pod's VM is its confinement".into(),
                });
            }
        }
    }

    /// `spec.securityContext`.
    pub(super) fn pod_security_context(&mut self, spec: &Obj<'_>) -> PodSecurityContext {
        let Some(value) = spec.get("securityContext") else {
            return PodSecurityContext::default();
        };
        let Some(obj) = self.object(spec.path("securityContext"), value, POD_FIELDS, &[]) else {
            return PodSecurityContext::default();
        };
        self.mac_options(&obj);
        let supplemental_groups = self
            .list(&obj, "supplementalGroups")
            .into_iter()
            .filter_map(|(path, v)| {
                let n = self.integer(path.clone(), v)?;
                let id = u32::try_from(n).ok();
                if id.is_none() {
                    self.invalid(path, v, "a group id from 0 to 4294967294");
                }
                id
            })
            .collect();
        let mut sysctls = Vec::new();
        for (path, item) in self.list(&obj, "sysctls") {
            let Some(s) = self.object(path, item, SYSCTL_FIELDS, &[]) else {
                continue;
            };
            let name = self.required_string(&s, "name");
            let value = self.required_string(&s, "value");
            if let (Some(name), Some(value)) = (name, value) {
                sysctls.push((name, value));
            }
        }
        PodSecurityContext {
            run_as_user: self.id(&obj, "runAsUser"),
            run_as_group: self.id(&obj, "runAsGroup"),
            run_as_non_root: self.bool(&obj, "runAsNonRoot"),
            supplemental_groups,
            fs_group: self.id(&obj, "fsGroup"),
            sysctls,
            seccomp_profile: self.seccomp_profile(&obj),
        }
    }

    /// A container's `securityContext`.
    pub(super) fn container_security_context(&mut self, container: &Obj<'_>) -> SecurityContext {
        let Some(value) = container.get("securityContext") else {
            return SecurityContext::default();
        };
        let path = container.path("securityContext");
        let Some(obj) = self.object(path, value, CONTAINER_FIELDS, &[]) else {
            return SecurityContext::default();
        };
        self.mac_options(&obj);
        let (add, drop) = match obj.get("capabilities") {
            Some(v) => match self.object(obj.path("capabilities"), v, CAPABILITIES_FIELDS, &[]) {
                Some(c) => (self.string_list(&c, "add"), self.string_list(&c, "drop")),
                None => (Vec::new(), Vec::new()),
            },
            None => (Vec::new(), Vec::new()),
        };
        let proc_mount_unmasked = match self.string(&obj, "procMount").as_deref() {
            None | Some("Default") => false,
            Some("Unmasked") => true,
            Some(other) => {
                self.invalid(
                    obj.path("procMount"),
                    &Value::String(other.to_owned()),
                    "\"Default\" or \"Unmasked\"",
                );
                false
            }
        };
        SecurityContext {
            run_as_user: self.id(&obj, "runAsUser"),
            run_as_group: self.id(&obj, "runAsGroup"),
            run_as_non_root: self.bool(&obj, "runAsNonRoot"),
            read_only_root_filesystem: self.bool(&obj, "readOnlyRootFilesystem").unwrap_or(false),
            allow_privilege_escalation: self.bool(&obj, "allowPrivilegeEscalation"),
            privileged: self.bool(&obj, "privileged").unwrap_or(false),
            add_capabilities: add,
            drop_capabilities: drop,
            seccomp_profile: self.seccomp_profile(&obj),
            proc_mount_unmasked,
        }
    }
}
