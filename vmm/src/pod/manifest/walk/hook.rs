//! A container's `lifecycle` hooks and its `restartPolicy` (native
//! sidecars), checked with the API server's rules.
//!
//! # Design
//! The rules are Kubernetes' (`validateLifecycle`, `validateHandler`,
//! `validateSleepAction`, `validateInitContainers`): a hook has exactly one
//! handler of `exec`, `httpGet`, `tcpSocket` and `sleep`; `exec` and
//! `httpGet` are checked as a probe's are (a named port must be one of the
//! container's); `sleep.seconds` is 0 or more and at most the pod's
//! `terminationGracePeriodSeconds` (checked once that is known, see
//! [`Walker::check_sleep_hooks`]). `tcpSocket` is accepted, with a warning,
//! and fails when run, as the kubelet runs no such hook. A container-level
//! `restartPolicy` is only for init containers, and only `Always`; only
//! those (native sidecars) may have hooks and probes among the init
//! containers.

use std::time::Duration;

use serde_norway::Value;

use super::super::{ContainerPort, ContainerSpec, Hook, Hooks, ManifestError, Warning};
use super::{Obj, Walker};

const LIFECYCLE_FIELDS: &[&str] = &["postStart", "preStop"];
const HOOK_FIELDS: &[&str] = &["exec", "httpGet", "tcpSocket", "sleep"];
const SLEEP_FIELDS: &[&str] = &["seconds"];

impl Walker {
    /// `restartPolicy` of a container: `true` for an init container with
    /// `Always` (a native sidecar).
    pub(super) fn container_restart_policy(&mut self, container: &Obj<'_>, init: bool) -> bool {
        let Some(value) = container.get("restartPolicy") else {
            return false;
        };
        let path = container.path("restartPolicy");
        if !init {
            self.invalid(
                path,
                value,
                "no value: a container-level restartPolicy is only for init containers \
                 (native sidecars); app containers follow spec.restartPolicy",
            );
            return false;
        }
        match value {
            Value::String(s) if s == "Always" => true,
            _ => {
                self.invalid(
                    path,
                    value,
                    "\"Always\" (a native sidecar), or no value for an init container that runs \
                     to completion",
                );
                false
            }
        }
    }

    /// The container's `lifecycle`; `may_have` is false for an init
    /// container that is not a sidecar.
    pub(super) fn hooks(
        &mut self,
        container: &Obj<'_>,
        ports: &[ContainerPort],
        may_have: bool,
    ) -> Hooks {
        let Some(value) = container.get("lifecycle") else {
            return Hooks::default();
        };
        let path = container.path("lifecycle");
        if !may_have {
            self.invalid(
                path,
                value,
                "no lifecycle: init containers run to completion and have no hooks, \
                 unless they are native sidecars (restartPolicy: Always)",
            );
            return Hooks::default();
        }
        let Some(obj) = self.object(path, value, LIFECYCLE_FIELDS, &[]) else {
            return Hooks::default();
        };
        let mut hook = |key: &str| {
            let value = obj.get(key)?;
            self.hook(obj.path(key), value, ports)
        };
        Hooks {
            post_start: hook("postStart"),
            pre_stop: hook("preStop"),
        }
    }

    fn hook(&mut self, path: String, value: &Value, ports: &[ContainerPort]) -> Option<Hook> {
        let obj = self.object(path, value, HOOK_FIELDS, &[])?;
        let given: Vec<&str> = HOOK_FIELDS
            .iter()
            .copied()
            .filter(|h| obj.get(h).is_some())
            .collect();
        match given.as_slice() {
            [] => {
                self.error(ManifestError::Missing {
                    path: format!("{}.exec|httpGet|sleep", obj.path),
                });
                None
            }
            [_, second, ..] => {
                self.error(ManifestError::Invalid {
                    path: obj.path(second),
                    value: format!("{} and {second}", given[0]),
                    expected: "exactly one handler: exec, httpGet, tcpSocket or sleep".into(),
                });
                None
            }
            ["exec"] => self.exec_handler(&obj).map(Hook::InGuest),
            ["httpGet"] => self.http_get_handler(&obj, ports).map(Hook::InGuest),
            ["tcpSocket"] => {
                self.tcp_socket_handler(&obj, ports)?;
                self.warnings.push(Warning {
                    path: obj.path("tcpSocket"),
                    message: "tcpSocket is deprecated as a lifecycle handler: Kubernetes accepts \
                              it but the kubelet fails the hook when it runs, and so does unipod; \
                              use exec, httpGet or sleep"
                        .into(),
                });
                Some(Hook::TcpSocket)
            }
            _ => {
                let sleep = self.object(obj.path("sleep"), obj.get("sleep")?, SLEEP_FIELDS, &[])?;
                let value = self.required(&sleep, "seconds")?;
                let n = self.integer(sleep.path("seconds"), value)?;
                match u64::try_from(n) {
                    Ok(secs) => Some(Hook::Sleep(Duration::from_secs(secs))),
                    Err(_) => {
                        self.invalid(sleep.path("seconds"), value, "a whole number, 0 or more");
                        None
                    }
                }
            }
        }
    }

    /// A `sleep` hook may not outlast the pod's grace period.
    pub(super) fn check_sleep_hooks(
        &mut self,
        list: &str,
        containers: &[ContainerSpec],
        grace: Duration,
    ) {
        for (i, c) in containers.iter().enumerate() {
            for (key, hook) in [
                ("postStart", &c.hooks.post_start),
                ("preStop", &c.hooks.pre_stop),
            ] {
                if let Some(Hook::Sleep(d)) = hook {
                    if *d > grace {
                        self.error(ManifestError::Invalid {
                            path: format!("spec.{list}[{i}].lifecycle.{key}.sleep.seconds"),
                            value: d.as_secs().to_string(),
                            expected: format!(
                                "at most terminationGracePeriodSeconds ({})",
                                grace.as_secs()
                            ),
                        });
                    }
                }
            }
        }
    }
}
