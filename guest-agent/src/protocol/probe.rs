//! Health probes in the protocol: what the host asks the agent to check on a
//! container ([`Probes`], carried by `RunSpec::probes`) and what the agent
//! reports back (`Event::Probe`).
//!
//! # Design
//!
//! The agent runs the probes on their schedule and applies the thresholds
//! itself, as the kubelet's probe workers do, so nothing crosses vsock while
//! a probe keeps its result: an `Event::Probe` is sent only when a probe's
//! result changes (its first result counts as a change, except a liveness
//! probe's first success, which is what the kubelet assumes anyway). A host
//! that sends no probes never receives the event, which is why it needs no
//! protocol version of its own.
//!
//! Everything here is already validated and defaulted by the host (the
//! manifest's rules are the kubelet's); the agent still checks the bounds
//! that keep it safe ([`Probes::validate`]).

use serde::{Deserialize, Serialize};

/// The kubelet's limit on a probe's output (exec output, HTTP body) kept for
/// the failure message.
pub const MAX_PROBE_OUTPUT: usize = 10 * 1024;

/// The longest grpc `service` name the agent sends (it must fit one small
/// HTTP/2 frame; Kubernetes sets no limit, real names are short).
pub const MAX_GRPC_SERVICE: usize = 1024;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `startupProbe`: holds the other two until it succeeds.
    Startup,
    /// `livenessProbe`: its failure restarts the container.
    Liveness,
    /// `readinessProbe`: decides the container's `ready`.
    Readiness,
}

impl ProbeKind {
    /// As events name it: `Liveness`, `Readiness`, `Startup`.
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// As messages name it: `liveness`, `readiness`, `startup`.
    pub fn lower(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

/// How a probe checks the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeHandler {
    /// Run `command` in the container (as an exec); exit 0 is success.
    Exec {
        /// Program and arguments; not run through a shell.
        command: Vec<String>,
    },
    /// `GET path` over HTTP/1.1, or HTTPS; a status from 200 to 399 is
    /// success.
    HttpGet {
        /// The address to connect to. The host fills in the pod IP when the
        /// manifest names none, as the kubelet does ([`Probes::default_host`]);
        /// `None` (a pod without a network) is the guest's loopback.
        host: Option<String>,
        /// The TCP port (a named port is resolved by the host).
        port: u16,
        /// The request path, starting with `/`.
        path: String,
        /// Extra headers, in order; a `Host`, `User-Agent` or `Accept` here
        /// replaces the default one.
        headers: Vec<(String, String)>,
        /// `scheme: HTTPS`: TLS without verifying the server's certificate,
        /// as the kubelet does.
        #[serde(default)]
        https: bool,
    },
    /// Open a TCP connection; success when it connects.
    TcpSocket {
        /// As for [`ProbeHandler::HttpGet::host`].
        host: Option<String>,
        /// The TCP port.
        port: u16,
    },
    /// Call `grpc.health.v1.Health/Check` over plaintext HTTP/2; success
    /// when the service is `SERVING`.
    Grpc {
        /// As for [`ProbeHandler::HttpGet::host`] (the manifest has no host
        /// for grpc: it is always the pod IP, or loopback).
        host: Option<String>,
        /// The TCP port (a number: Kubernetes has no named port for grpc).
        port: u16,
        /// The `service` of the `HealthCheckRequest`; empty for the server
        /// as a whole.
        service: String,
    },
}

/// A container lifecycle hook that runs in the guest (`sleep` hooks are
/// timed by the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// `lifecycle.postStart`: right after the container started.
    PostStart,
    /// `lifecycle.preStop`: before the container's stop signal.
    PreStop,
}

impl HookKind {
    /// As the kubelet's events name it: `PostStart`, `PreStop`.
    pub fn title(self) -> &'static str {
        match self {
            HookKind::PostStart => "PostStart",
            HookKind::PreStop => "PreStop",
        }
    }
}

/// One run of a lifecycle hook (`Request::RunHook`); its result comes back
/// as `Event::Hook`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// The container (running) whose hook it is.
    pub container: String,
    /// Which hook.
    pub hook: HookKind,
    /// What to run: an exec in the container, or an HTTP GET, whose status
    /// does not matter (the kubelet's hooks only need an answer).
    pub handler: ProbeHandler,
    /// Seconds it may take; `None` for no limit (the kubelet bounds an exec
    /// `postStart` by nothing).
    pub timeout_secs: Option<u32>,
}

/// One probe with its timing, in whole seconds as Kubernetes has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// What to check.
    pub handler: ProbeHandler,
    /// Seconds after the container started before the first check.
    pub initial_delay_secs: u32,
    /// Seconds between checks, at least 1.
    pub period_secs: u32,
    /// Seconds a check may take, at least 1; longer is a failure.
    pub timeout_secs: u32,
    /// Consecutive successes that make a failed probe succeed, at least 1.
    pub success_threshold: u32,
    /// Consecutive failures that make a probe fail, at least 1.
    pub failure_threshold: u32,
}

/// A container's probes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probes {
    /// `startupProbe`.
    #[serde(default)]
    pub startup: Option<ProbeSpec>,
    /// `livenessProbe`.
    #[serde(default)]
    pub liveness: Option<ProbeSpec>,
    /// `readinessProbe`.
    #[serde(default)]
    pub readiness: Option<ProbeSpec>,
}

impl Probes {
    /// Gives every network probe that names no host `host` (the pod IP):
    /// the kubelet probes the pod IP, so a server that listens on loopback
    /// only fails there too.
    pub fn default_host(&mut self, host: &str) {
        for probe in [&mut self.startup, &mut self.liveness, &mut self.readiness]
            .into_iter()
            .flatten()
        {
            match &mut probe.handler {
                ProbeHandler::HttpGet { host: h @ None, .. }
                | ProbeHandler::TcpSocket { host: h @ None, .. }
                | ProbeHandler::Grpc { host: h @ None, .. } => *h = Some(host.to_owned()),
                _ => {}
            }
        }
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }

    /// The probes present, with their kind, startup first.
    pub fn iter(&self) -> impl Iterator<Item = (ProbeKind, &ProbeSpec)> {
        [
            (ProbeKind::Startup, &self.startup),
            (ProbeKind::Liveness, &self.liveness),
            (ProbeKind::Readiness, &self.readiness),
        ]
        .into_iter()
        .filter_map(|(kind, p)| p.as_ref().map(|p| (kind, p)))
    }

    /// Checks what the agent relies on: periods, timeouts and thresholds
    /// of at least 1, a command, a port, a path starting with `/`, header
    /// names and values that cannot break the request.
    pub fn validate(&self) -> Result<(), String> {
        for (kind, p) in self.iter() {
            let bad = |what: &str| Err(format!("{} probe: {what}", kind.lower()));
            if p.period_secs == 0 || p.timeout_secs == 0 {
                return bad("period and timeout must be at least 1 second");
            }
            if p.success_threshold == 0 || p.failure_threshold == 0 {
                return bad("thresholds must be at least 1");
            }
            match &p.handler {
                ProbeHandler::Exec { command } if command.is_empty() => {
                    return bad("exec needs a command")
                }
                ProbeHandler::HttpGet { port: 0, .. }
                | ProbeHandler::TcpSocket { port: 0, .. }
                | ProbeHandler::Grpc { port: 0, .. } => return bad("port 0"),
                ProbeHandler::Grpc { service, .. } if service.len() > MAX_GRPC_SERVICE => {
                    return bad("the grpc service name is too long")
                }
                ProbeHandler::HttpGet { path, headers, .. } => {
                    let clean = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
                    if !path.starts_with('/') || !clean(path) || path.contains(' ') {
                        return bad(
                            "the HTTP path must start with '/' and hold no spaces or newlines",
                        );
                    }
                    if headers
                        .iter()
                        .any(|(k, v)| k.is_empty() || k.contains(':') || !clean(k) || !clean(v))
                    {
                        return bad("an HTTP header has an empty name, a ':' or a newline");
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(handler: ProbeHandler) -> Option<ProbeSpec> {
        Some(ProbeSpec {
            handler,
            initial_delay_secs: 0,
            period_secs: 10,
            timeout_secs: 1,
            success_threshold: 1,
            failure_threshold: 3,
        })
    }

    #[test]
    fn network_probes_without_a_host_get_the_pod_ip() {
        let mut probes = Probes {
            startup: probe(ProbeHandler::TcpSocket {
                host: None,
                port: 80,
            }),
            liveness: probe(ProbeHandler::HttpGet {
                host: Some("10.0.0.9".into()),
                port: 80,
                path: "/".into(),
                headers: vec![],
                https: false,
            }),
            readiness: probe(ProbeHandler::Grpc {
                host: None,
                port: 9090,
                service: String::new(),
            }),
        };
        let before = probes.clone();
        probes.default_host("10.211.0.2");
        let host = |p: &Option<ProbeSpec>| match &p.as_ref().unwrap().handler {
            ProbeHandler::TcpSocket { host, .. }
            | ProbeHandler::HttpGet { host, .. }
            | ProbeHandler::Grpc { host, .. } => host.clone(),
            ProbeHandler::Exec { .. } => None,
        };
        assert_eq!(host(&probes.startup).as_deref(), Some("10.211.0.2"));
        assert_eq!(host(&probes.liveness).as_deref(), Some("10.0.0.9"));
        assert_eq!(host(&probes.readiness).as_deref(), Some("10.211.0.2"));
        assert_ne!(probes.readiness, before.readiness);
    }
}
