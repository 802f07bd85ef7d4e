//! A container's `startupProbe`, `livenessProbe` and `readinessProbe`,
//! checked with the API server's rules and defaulted as it defaults them.
//!
//! # Design
//! The rules are Kubernetes' (`validateProbe` and `SetDefaults_Probe`):
//! exactly one handler; `initialDelaySeconds`, `periodSeconds`,
//! `timeoutSeconds`, `successThreshold` and `failureThreshold` are 0 or
//! more, and 0 (or absent) takes the default (0, 10, 1, 1, 3); liveness and
//! startup probes need `successThreshold: 1`; a probe-level
//! `terminationGracePeriodSeconds` is more than 0, and not for readiness
//! probes; probes belong to app containers and native sidecars, not to
//! init containers that run to completion. A named
//! port must name one of the container's `ports` (the kubelet would fail
//! every check), and is resolved here. `httpGet.scheme` is `HTTP` or
//! `HTTPS`; `grpc.port` is a number from 1 to 65535 (Kubernetes has no
//! named port for grpc) and `grpc.service` is optional (empty: the server
//! as a whole).

use std::time::Duration;

use serde_norway::Value;

use super::super::{ContainerPort, ContainerProbes, ManifestError};
use super::{Obj, Walker, PORT_NAME};
use crate::pod::manifest::names::is_port_name;
use guest_agent::protocol::{ProbeHandler, ProbeKind, ProbeSpec, MAX_GRPC_SERVICE};

const PROBE_FIELDS: &[&str] = &[
    "exec",
    "httpGet",
    "tcpSocket",
    "grpc",
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
    "terminationGracePeriodSeconds",
];
const HANDLERS: &[&str] = &["exec", "httpGet", "tcpSocket", "grpc"];
const EXEC_FIELDS: &[&str] = &["command"];
const HTTP_GET_FIELDS: &[&str] = &["path", "port", "host", "scheme", "httpHeaders"];
const HEADER_FIELDS: &[&str] = &["name", "value"];
const TCP_SOCKET_FIELDS: &[&str] = &["port", "host"];
const GRPC_FIELDS: &[&str] = &["port", "service"];

/// A probe's number, 0 to 2^31-1 as Kubernetes' int32.
fn probe_number(n: i128) -> Option<u32> {
    u32::try_from(n).ok().filter(|&n| i32::try_from(n).is_ok())
}

impl Walker {
    /// The container's three probes; `may_have` is false for an init
    /// container that is not a sidecar.
    pub(super) fn probes(
        &mut self,
        container: &Obj<'_>,
        ports: &[ContainerPort],
        may_have: bool,
    ) -> ContainerProbes {
        let mut out = ContainerProbes::default();
        let init = !may_have;
        for (key, kind) in [
            ("startupProbe", ProbeKind::Startup),
            ("livenessProbe", ProbeKind::Liveness),
            ("readinessProbe", ProbeKind::Readiness),
        ] {
            let Some(value) = container.get(key) else {
                continue;
            };
            let path = container.path(key);
            if init {
                self.error(ManifestError::Invalid {
                    path,
                    value: "a probe".into(),
                    expected: "no probe: init containers run to completion and are not probed, \
                               unless they are native sidecars (restartPolicy: Always)"
                        .into(),
                });
                continue;
            }
            let Some((spec, grace)) = self.probe(path, value, kind, ports) else {
                continue;
            };
            match kind {
                ProbeKind::Startup => (out.probes.startup, out.startup_grace) = (Some(spec), grace),
                ProbeKind::Liveness => {
                    (out.probes.liveness, out.liveness_grace) = (Some(spec), grace)
                }
                ProbeKind::Readiness => out.probes.readiness = Some(spec),
            }
        }
        out
    }

    fn probe(
        &mut self,
        path: String,
        value: &Value,
        kind: ProbeKind,
        ports: &[ContainerPort],
    ) -> Option<(ProbeSpec, Option<Duration>)> {
        let obj = self.object(path, value, PROBE_FIELDS, &[])?;
        let given: Vec<&str> = HANDLERS
            .iter()
            .copied()
            .filter(|h| obj.get(h).is_some())
            .collect();
        if given.len() > 1 {
            self.error(ManifestError::Invalid {
                path: obj.path(given[1]),
                value: format!("{} and {}", given[0], given[1]),
                expected: "exactly one handler: exec, httpGet, tcpSocket or grpc".into(),
            });
            return None;
        }
        let handler = match given.first() {
            None => {
                self.error(ManifestError::Missing {
                    path: format!("{}.exec|httpGet|tcpSocket|grpc", obj.path),
                });
                return None;
            }
            Some(&"grpc") => self.grpc_handler(&obj)?,
            Some(&"exec") => self.exec_handler(&obj)?,
            Some(&"httpGet") => self.http_get_handler(&obj, ports)?,
            Some(_) => self.tcp_socket_handler(&obj, ports)?,
        };
        let mut number = |key: &str, default: u32| -> Option<u32> {
            let Some(v) = obj.get(key) else {
                return Some(default);
            };
            let n = self.integer(obj.path(key), v)?;
            match probe_number(n) {
                Some(0) => Some(default),
                Some(n) => Some(n),
                None => {
                    self.invalid(
                        obj.path(key),
                        v,
                        "a whole number, 0 or more (0 takes the default)",
                    );
                    None
                }
            }
        };
        let initial_delay_secs = number("initialDelaySeconds", 0);
        let period_secs = number("periodSeconds", 10);
        let timeout_secs = number("timeoutSeconds", 1);
        let success_threshold = number("successThreshold", 1);
        let failure_threshold = number("failureThreshold", 3);
        if kind != ProbeKind::Readiness && success_threshold.is_some_and(|n| n != 1) {
            let v = obj.get("successThreshold").cloned().unwrap_or(Value::Null);
            self.invalid(
                obj.path("successThreshold"),
                &v,
                format!("1: a {} probe succeeds on one success", kind.lower()),
            );
        }
        let grace = match obj.get("terminationGracePeriodSeconds") {
            None => None,
            Some(v) => {
                let key = obj.path("terminationGracePeriodSeconds");
                let n = self.integer(key.clone(), v)?;
                if kind == ProbeKind::Readiness {
                    self.invalid(
                        key,
                        v,
                        "no value: it is not for readiness probes, which kill nothing",
                    );
                    return None;
                }
                match u64::try_from(n).ok().filter(|&n| n > 0) {
                    Some(secs) => Some(Duration::from_secs(secs)),
                    None => {
                        self.invalid(key, v, "a whole number of seconds greater than 0");
                        return None;
                    }
                }
            }
        };
        let spec = ProbeSpec {
            handler,
            initial_delay_secs: initial_delay_secs?,
            period_secs: period_secs?,
            timeout_secs: timeout_secs?,
            success_threshold: success_threshold
                .filter(|&n| kind == ProbeKind::Readiness || n == 1)?,
            failure_threshold: failure_threshold?,
        };
        Some((spec, grace))
    }

    pub(super) fn exec_handler(&mut self, probe: &Obj<'_>) -> Option<ProbeHandler> {
        let obj = self.object(probe.path("exec"), probe.get("exec")?, EXEC_FIELDS, &[])?;
        let command = self.string_list(&obj, "command");
        if command.is_empty() {
            self.error(ManifestError::Missing {
                path: obj.path("command"),
            });
            return None;
        }
        Some(ProbeHandler::Exec { command })
    }

    pub(super) fn http_get_handler(
        &mut self,
        probe: &Obj<'_>,
        ports: &[ContainerPort],
    ) -> Option<ProbeHandler> {
        let obj = self.object(
            probe.path("httpGet"),
            probe.get("httpGet")?,
            HTTP_GET_FIELDS,
            &[],
        )?;
        let port = self.probe_port(&obj, ports);
        let host = self.probe_host(&obj);
        let https = match self.string(&obj, "scheme").as_deref() {
            None | Some("HTTP") => Some(false),
            Some("HTTPS") => Some(true),
            Some(other) => {
                self.invalid(
                    obj.path("scheme"),
                    &Value::String(other.into()),
                    "\"HTTP\" or \"HTTPS\"",
                );
                None
            }
        };
        let path = match self.string(&obj, "path") {
            None => "/".to_string(),
            Some(p) if p.is_empty() => "/".to_string(),
            Some(p) if p.bytes().any(|b| b <= b' ' || b == 0x7f) => {
                self.invalid(
                    obj.path("path"),
                    &Value::String(p),
                    "a URL path without spaces or control characters (escape them: %20)",
                );
                return None;
            }
            Some(p) if p.starts_with('/') => p,
            Some(p) => format!("/{p}"),
        };
        let mut headers = Vec::new();
        for (path, item) in self.list(&obj, "httpHeaders") {
            let Some(h) = self.object(path, item, HEADER_FIELDS, &[]) else {
                continue;
            };
            let name = self.required_string(&h, "name");
            let value = self.required_string(&h, "value");
            let (Some(name), Some(value)) = (name, value) else {
                continue;
            };
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                self.invalid(
                    h.path("name"),
                    &Value::String(name),
                    "an HTTP header name: letters, digits and !#$%&'*+-.^_`|~, e.g. \"X-Custom-Header\"",
                );
                continue;
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                self.invalid(
                    h.path("value"),
                    &Value::String(value),
                    "a header value on one line",
                );
                continue;
            }
            headers.push((name, value));
        }
        Some(ProbeHandler::HttpGet {
            host: host?,
            port: port?,
            path,
            headers,
            https: https?,
        })
    }

    /// `grpc`: a port number (no name, as Kubernetes has it) and an
    /// optional service; the host is always the pod's own address.
    fn grpc_handler(&mut self, probe: &Obj<'_>) -> Option<ProbeHandler> {
        let obj = self.object(probe.path("grpc"), probe.get("grpc")?, GRPC_FIELDS, &[])?;
        let value = self.required(&obj, "port")?;
        let port = if matches!(value, Value::String(_)) {
            self.invalid(
                obj.path("port"),
                value,
                "a port number from 1 to 65535 (a grpc probe takes no named port)",
            );
            None
        } else {
            self.port(obj.path("port"), value)
        };
        let service = self.string(&obj, "service").unwrap_or_default();
        if service.len() > MAX_GRPC_SERVICE {
            self.invalid(
                obj.path("service"),
                &Value::String(service),
                format!("a service name of at most {MAX_GRPC_SERVICE} bytes"),
            );
            return None;
        }
        Some(ProbeHandler::Grpc {
            host: None,
            port: port?,
            service,
        })
    }

    pub(super) fn tcp_socket_handler(
        &mut self,
        probe: &Obj<'_>,
        ports: &[ContainerPort],
    ) -> Option<ProbeHandler> {
        let obj = self.object(
            probe.path("tcpSocket"),
            probe.get("tcpSocket")?,
            TCP_SOCKET_FIELDS,
            &[],
        )?;
        let port = self.probe_port(&obj, ports);
        let host = self.probe_host(&obj);
        Some(ProbeHandler::TcpSocket {
            host: host?,
            port: port?,
        })
    }

    /// `port`: a number, or the name of one of the container's ports.
    fn probe_port(&mut self, obj: &Obj<'_>, ports: &[ContainerPort]) -> Option<u16> {
        let value = self.required(obj, "port")?;
        let path = obj.path("port");
        let Value::String(name) = value else {
            return self.port(path, value);
        };
        if !is_port_name(name) {
            self.invalid(path, value, format!("a port number, or {PORT_NAME}"));
            return None;
        }
        let found = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()));
        if found.is_none() {
            let names: Vec<&str> = ports.iter().filter_map(|p| p.name.as_deref()).collect();
            self.invalid(
                path,
                value,
                format!(
                    "a port number or the name of one of this container's ports (named: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            );
        }
        found.map(|p| p.container_port)
    }

    /// `host`: `None` when absent or empty (the pod's own address).
    fn probe_host(&mut self, obj: &Obj<'_>) -> Option<Option<String>> {
        let Some(host) = self.string(obj, "host") else {
            return Some(None);
        };
        if host.is_empty() {
            return Some(None);
        }
        let ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
        if !ok {
            self.invalid(
                obj.path("host"),
                &Value::String(host.clone()),
                "a host name or IP address, e.g. \"127.0.0.1\"",
            );
            return None;
        }
        Some(Some(host))
    }
}
