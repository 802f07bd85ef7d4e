//! A manifest pod's recorded state: the `status.json` document its
//! supervisor keeps in the pod directory, and how `kubectl get pod` would
//! show it.
//!
//! # Design
//! The document follows the Kubernetes `PodStatus` shape (camelCase fields,
//! `state: {running: {startedAt}}`, conditions with `status: "True"`), so
//! `unipod get -o json` reads like `kubectl get pod -o json`'s `.status`,
//! plus what unipod needs to find and clean up the pod: the supervisor's and
//! the VMM's pids (with their start times, against pid reuse), the network
//! it was attached to and its events. It is written whole and atomically
//! (temporary file, then rename) on every change, so a reader never sees a
//! torn one and a SIGKILLed supervisor leaves the last consistent state.
//!
//! [`kubectl_status`] is the STATUS column of `kubectl get pod`, computed
//! the way kubectl's printer does (init containers first, then the app
//! containers from the last to the first). Times are RFC 3339 UTC with
//! second precision, as the Kubernetes API writes them.
//!
//! # Limitations
//! Pods have no readiness probes, so a running container is ready.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::civil::civil_from_days;
use serde::{Deserialize, Serialize};

use super::phase::PodPhase;
use crate::file_error::FileError;

/// The status document's file name in the pod directory.
pub const STATUS_FILE: &str = "status.json";

/// Bumped when the document changes shape.
pub const STATUS_VERSION: u32 = 1;

/// `<pod>/status.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// [`STATUS_VERSION`].
    pub version: u32,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: a version-4 UUID.
    pub uid: String,
    /// When unipod accepted the pod (`metadata.creationTimestamp`).
    pub creation_timestamp: String,
    /// The manifest file `unipod run` was given (a copy is `pod.yaml` in
    /// the pod directory).
    pub manifest: PathBuf,
    /// The supervisor process, while it may run.
    #[serde(default)]
    pub supervisor: Option<ProcessRef>,
    /// The VMM process, while it may run.
    #[serde(default)]
    pub vmm: Option<ProcessRef>,
    /// The pod network the pod is attached to, if any.
    #[serde(default)]
    pub network: Option<NetworkRecord>,
    /// The Kubernetes status.
    pub status: PodStatus,
    /// What happened, oldest first.
    #[serde(default)]
    pub events: Vec<PodEvent>,
    /// How long each step of the pod's start took.
    #[serde(default, skip_serializing_if = "StartupTimeline::is_empty")]
    pub startup: StartupTimeline,
    /// The init containers that are native sidecars (`restartPolicy:
    /// Always`), which kubectl's columns count with the app containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<String>,
}

/// The steps of a pod's start, each with the time since `unipod run`
/// accepted the pod, in milliseconds (`unipod describe`, `get -o json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StartupTimeline(Vec<StartupStep>);

/// One step of [`StartupTimeline`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartupStep {
    /// [`StartupTimeline::NETWORK`] and the other step names.
    pub step: String,
    /// Milliseconds since the pod was accepted.
    pub done_at_ms: u64,
}

impl StartupTimeline {
    /// The tap, IP lease and bridge port are set up.
    pub const NETWORK: &'static str = "network";
    /// The VMM runs and the agent is ready: a snapshot restored, or a cold boot.
    pub const VM_READY: &'static str = "vmReady";
    /// The agent has the pod's identity, IP and routes.
    pub const CONFIGURED: &'static str = "configured";
    /// The first container runs: its image mounted, overlay, cgroup, exec.
    pub const FIRST_CONTAINER: &'static str = "firstContainerRunning";

    /// Whether no step is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records `step` as done `since` the start; a step is recorded once
    /// (a restarted container is not a start-up step).
    pub fn mark(&mut self, step: &str, since: Duration) {
        if self.0.iter().all(|s| s.step != step) {
            self.0.push(StartupStep {
                step: step.to_string(),
                done_at_ms: u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            });
        }
    }

    /// "network 4 ms, vmReady 310 ms, ... (1.2 s in all)": each step with
    /// its own duration.
    pub fn summary(&self) -> String {
        let mut prev = 0;
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|s| {
                let took = s.done_at_ms.saturating_sub(prev);
                prev = s.done_at_ms;
                format!("{} {took} ms", s.step)
            })
            .collect();
        format!("{} ({prev} ms in all)", steps.join(", "))
    }
}

/// A process, named by pid and start time so that a reused pid is not
/// mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRef {
    /// The pid.
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22 (clock ticks after boot).
    pub start_ticks: u64,
}

impl ProcessRef {
    /// The running process `pid`, if it runs.
    pub fn of(pid: i32) -> Option<ProcessRef> {
        crate::net::ipam::process_start(pid).map(|start_ticks| ProcessRef { pid, start_ticks })
    }

    /// This process.
    pub fn current() -> ProcessRef {
        let pid = i32::try_from(std::process::id()).expect("pids fit in i32");
        ProcessRef::of(pid).unwrap_or(ProcessRef {
            pid,
            start_ticks: 0,
        })
    }

    /// Whether the process still runs (and is not a zombie).
    pub fn alive(&self) -> bool {
        crate::net::ipam::process_start(self.pid) == Some(self.start_ticks)
    }
}

/// Where the pod sits on the pod network (for `unipod rm` after a crash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRecord {
    /// The host bridge.
    pub bridge: String,
    /// The pod CIDR of the bridge.
    pub pod_cidr: String,
    /// The bridge's IPv6 range, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<String>,
    /// The bridge's address.
    pub gateway: String,
    /// The bridge's IPv6 address, if the network has IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    /// The pod's tap.
    pub tap: String,
    /// Whether host ports were forwarded to the pod.
    pub host_ports: bool,
}

/// The Kubernetes `PodStatus`, minus `hostIP` (there is no node).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// The pod phase.
    pub phase: PodPhase,
    /// A CamelCase reason for the phase, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable message about the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// PodScheduled, Initialized, ContainersReady, Ready.
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
    /// The pod's IP (its IPv4 one).
    #[serde(rename = "podIP", default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// Every pod IP, IPv4 first, as Kubernetes lists them.
    #[serde(rename = "podIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    /// When the VM was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When a stop was requested (kubectl's deletionTimestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// One per init container, in order.
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// One per app container, in order.
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
}

/// One of a pod's addresses, in `status.podIPs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// A pod condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    /// PodScheduled, Initialized, ContainersReady or Ready.
    #[serde(rename = "type")]
    pub kind: String,
    /// "True" or "False".
    pub status: String,
    /// When `status` last changed.
    pub last_transition_time: String,
    /// Why it is False, e.g. ContainersNotReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A container's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container name.
    pub name: String,
    /// The image as the manifest names it.
    pub image: String,
    /// The image's manifest digest.
    #[serde(rename = "imageID")]
    pub image_id: String,
    /// Running (no probes: running means ready).
    pub ready: bool,
    /// Whether it has started and not terminated.
    pub started: bool,
    /// How many times it was restarted.
    pub restart_count: u32,
    /// Its state now.
    pub state: ContainerState,
    /// Its previous termination, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
}

/// A container's state, tagged as in the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    /// Not running yet, or between restarts.
    Waiting {
        /// PodInitializing, ContainerCreating or CrashLoopBackOff.
        reason: String,
        /// More detail (e.g. the back-off).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Running.
    #[serde(rename_all = "camelCase")]
    Running {
        /// When it started.
        started_at: String,
    },
    /// Ended.
    #[serde(rename_all = "camelCase")]
    Terminated {
        /// The exit code (128 + N for signal N).
        exit_code: i32,
        /// The signal that killed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Completed, Error, OOMKilled or StartError.
        reason: String,
        /// More detail (e.g. why it could not start).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// When it started (absent if it never did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_at: Option<String>,
        /// When it ended.
        finished_at: String,
    },
}

/// One event, as `kubectl describe` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodEvent {
    /// When it happened.
    pub time: String,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub kind: String,
    /// CamelCase, e.g. Started, BackOff, Killing.
    pub reason: String,
    /// What happened.
    pub message: String,
}

/// Errors reading or writing the status document.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// The file is not a status document of this version.
    #[error("{}: not a unipod pod status (remove the pod with 'unipod rm -f')", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl PodRecord {
    /// Reads `<dir>/status.json`.
    pub fn read(dir: &Path) -> Result<PodRecord, StatusError> {
        let path = dir.join(STATUS_FILE);
        let text = std::fs::read(&path).map_err(FileError::at("read", &path))?;
        serde_json::from_slice(&text).map_err(|source| StatusError::Parse { path, source })
    }

    /// Writes `<dir>/status.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), StatusError> {
        let path = dir.join(STATUS_FILE);
        let tmp = dir.join(format!(".{STATUS_FILE}.tmp"));
        let io = |action| FileError::at(action, &path);
        let mut text = serde_json::to_vec_pretty(self).expect("the status serializes");
        text.push(b'\n');
        std::fs::write(&tmp, text).map_err(io("write"))?;
        std::fs::rename(&tmp, &path).map_err(io("replace"))?;
        Ok(())
    }

    /// The status of app container `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerStatus> {
        self.status
            .container_statuses
            .iter()
            .chain(&self.status.init_container_statuses)
            .find(|c| c.name == name)
    }

    /// Whether the supervisor still runs.
    pub fn supervisor_alive(&self) -> bool {
        self.supervisor.is_some_and(|p| p.alive())
    }

    /// The phase to show: the recorded one, or Unknown when a pod that had
    /// not finished lost its supervisor (killed, or the host rebooted).
    pub fn shown_phase(&self) -> PodPhase {
        if !self.status.phase.is_terminal() && !self.supervisor_alive() {
            PodPhase::Unknown
        } else {
            self.status.phase
        }
    }

    /// Whether the pod may still run anything: its supervisor lives and it
    /// has not finished.
    pub fn is_active(&self) -> bool {
        self.supervisor_alive()
    }
}

/// The READY column: ready app containers and started sidecars / app
/// containers and sidecars.
pub fn kubectl_ready(status: &PodStatus, sidecars: &[String]) -> String {
    let sidecar = |c: &&ContainerStatus| sidecars.contains(&c.name);
    let ready = status.container_statuses.iter().filter(|c| c.ready).count()
        + (status.init_container_statuses.iter())
            .filter(sidecar)
            .filter(|c| c.started && c.ready)
            .count();
    let total = status.container_statuses.len() + sidecars.len();
    format!("{ready}/{total}")
}

/// The RESTARTS column: the restarts kubectl counts, and how long ago the
/// last one ended (`3 (42s ago)`).
pub fn kubectl_restarts(status: &PodStatus, now_unix: i64, sidecars: &[String]) -> String {
    let initializing = first_unfinished_init(status, sidecars).is_some();
    let counted: Vec<&ContainerStatus> = if initializing {
        status.init_container_statuses.iter().collect()
    } else {
        let sidecar = |c: &&ContainerStatus| sidecars.contains(&c.name);
        let sidecars = status.init_container_statuses.iter().filter(sidecar);
        sidecars.chain(&status.container_statuses).collect()
    };
    let restarts: u32 = counted.iter().map(|c| c.restart_count).sum();
    let last = counted
        .iter()
        .filter_map(|c| match &c.last_state {
            Some(ContainerState::Terminated { finished_at, .. }) => parse_time(finished_at),
            _ => None,
        })
        .max();
    match last {
        Some(t) if restarts > 0 => {
            format!("{restarts} ({} ago)", human_duration(now_unix - t))
        }
        _ => restarts.to_string(),
    }
}

/// The first init container that neither succeeded nor is a started
/// sidecar.
fn first_unfinished_init(status: &PodStatus, sidecars: &[String]) -> Option<usize> {
    status.init_container_statuses.iter().position(|c| {
        let done = matches!(c.state, ContainerState::Terminated { exit_code: 0, .. });
        let started_sidecar = sidecars.contains(&c.name) && c.started;
        !(done || started_sidecar)
    })
}

/// The STATUS column of `kubectl get pod`, computed as kubectl's printer
/// does: the phase (or its reason), overridden by the first init container
/// that has not succeeded (`Init:1/2`, `Init:Error`, `Init:CrashLoopBackOff`),
/// else by the app containers' waiting or terminated reasons (the first
/// container wins), back to Running while one still runs, and Terminating
/// once a stop was requested. `phase` is the phase to show (see
/// [`PodRecord::shown_phase`]).
pub fn kubectl_status(status: &PodStatus, phase: PodPhase, sidecars: &[String]) -> String {
    let mut reason = status.reason.clone().unwrap_or_else(|| phase.to_string());
    let total_init = status.init_container_statuses.len();
    let mut initializing = false;
    if let Some(i) = first_unfinished_init(status, sidecars) {
        initializing = true;
        let c = &status.init_container_statuses[i];
        reason = match &c.state {
            ContainerState::Terminated {
                reason: r,
                signal,
                exit_code,
                ..
            } => match (r.is_empty(), signal) {
                (false, _) => format!("Init:{r}"),
                (true, Some(s)) => format!("Init:Signal:{s}"),
                (true, None) => format!("Init:ExitCode:{exit_code}"),
            },
            ContainerState::Waiting { reason: r, .. }
                if !r.is_empty() && r != "PodInitializing" && r != "ContainerCreating" =>
            {
                format!("Init:{r}")
            }
            _ => format!("Init:{i}/{total_init}"),
        };
    }
    if !initializing {
        let mut has_running = false;
        for c in status.container_statuses.iter().rev() {
            match &c.state {
                ContainerState::Waiting { reason: r, .. } if !r.is_empty() => reason = r.clone(),
                ContainerState::Terminated {
                    reason: r,
                    signal,
                    exit_code,
                    ..
                } => {
                    reason = match (r.is_empty(), signal) {
                        (false, _) => r.clone(),
                        (true, Some(s)) => format!("Signal:{s}"),
                        (true, None) => format!("ExitCode:{exit_code}"),
                    }
                }
                ContainerState::Running { .. } if c.ready => has_running = true,
                _ => {}
            }
        }
        if reason == "Completed" && has_running {
            let ready = status
                .conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True");
            reason = if ready { "Running" } else { "NotReady" }.to_string();
        }
    }
    if status.deletion_timestamp.is_some() && !phase.is_terminal() {
        reason = "Terminating".to_string();
    }
    reason
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC
/// (`2024-05-01T12:00:00Z`).
pub fn format_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses what [`format_time`] writes.
pub fn parse_time(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

/// Days since 1970-01-01 of a proleptic Gregorian date: Howard Hinnant's
/// algorithm; the other direction is `guest_agent::civil`, shared with the
/// agent.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A duration as kubectl's AGE column shows it (`45s`, `3m20s`, `5h`,
/// `2d3h`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        match d % 365 {
            0 => format!("{y}y"),
            r => format!("{y}y{r}d"),
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// Labels as `kubectl describe` prints them (`app=web`), or `<none>`.
pub fn format_map(map: &BTreeMap<String, String>) -> Vec<String> {
    if map.is_empty() {
        return vec!["<none>".into()];
    }
    map.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(reason: &str) -> ContainerState {
        ContainerState::Waiting {
            reason: reason.into(),
            message: None,
        }
    }

    fn running() -> ContainerState {
        ContainerState::Running {
            started_at: format_time(0),
        }
    }

    fn terminated(code: i32, reason: &str) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            signal: None,
            reason: reason.into(),
            message: None,
            started_at: Some(format_time(0)),
            finished_at: format_time(10),
        }
    }

    fn container(name: &str, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: "busybox:latest".into(),
            image_id: "sha256:00".into(),
            ready: matches!(state, ContainerState::Running { .. }),
            started: matches!(state, ContainerState::Running { .. }),
            restart_count: 0,
            state,
            last_state: None,
        }
    }

    fn pod(phase: PodPhase, init: Vec<ContainerState>, app: Vec<ContainerState>) -> PodStatus {
        PodStatus {
            phase,
            init_container_statuses: init
                .into_iter()
                .enumerate()
                .map(|(i, s)| container(&format!("init{i}"), s))
                .collect(),
            container_statuses: app
                .into_iter()
                .enumerate()
                .map(|(i, s)| container(&format!("c{i}"), s))
                .collect(),
            ..PodStatus::default()
        }
    }

    #[test]
    fn status_column_follows_kubectl() {
        use PodPhase::*;
        let cases = [
            (
                pod(Pending, vec![], vec![waiting("ContainerCreating")]),
                "ContainerCreating",
            ),
            (
                pod(
                    Pending,
                    vec![waiting("PodInitializing")],
                    vec![waiting("PodInitializing")],
                ),
                "Init:0/1",
            ),
            (
                pod(
                    Pending,
                    vec![terminated(0, "Completed"), running()],
                    vec![waiting("PodInitializing")],
                ),
                "Init:1/2",
            ),
            (
                pod(
                    Pending,
                    vec![terminated(1, "Error")],
                    vec![waiting("PodInitializing")],
                ),
                "Init:Error",
            ),
            (
                pod(
                    Pending,
                    vec![waiting("CrashLoopBackOff")],
                    vec![waiting("PodInitializing")],
                ),
                "Init:CrashLoopBackOff",
            ),
            (
                pod(
                    Pending,
                    vec![terminated(0, "Completed")],
                    vec![waiting("PodInitializing")],
                ),
                "PodInitializing",
            ),
            (pod(Running, vec![], vec![running(), running()]), "Running"),
            (
                pod(
                    Running,
                    vec![],
                    vec![running(), waiting("CrashLoopBackOff")],
                ),
                "CrashLoopBackOff",
            ),
            (
                pod(Succeeded, vec![], vec![terminated(0, "Completed")]),
                "Completed",
            ),
            (pod(Failed, vec![], vec![terminated(1, "Error")]), "Error"),
            (
                pod(Failed, vec![], vec![terminated(137, "OOMKilled")]),
                "OOMKilled",
            ),
            (pod(Unknown, vec![], vec![running()]), "Unknown"),
            // The first container's reason wins (kubectl walks them backwards).
            (
                pod(
                    Failed,
                    vec![],
                    vec![terminated(1, "Error"), terminated(0, "Completed")],
                ),
                "Error",
            ),
        ];
        for (status, want) in cases {
            assert_eq!(
                kubectl_status(&status, status.phase, &[]),
                want,
                "{status:#?}"
            );
        }
    }

    #[test]
    fn completed_with_a_running_sibling_shows_running_or_not_ready() {
        let mut status = pod(
            PodPhase::Running,
            vec![],
            vec![running(), terminated(0, "Completed")],
        );
        assert_eq!(kubectl_status(&status, PodPhase::Running, &[]), "NotReady");
        status.conditions.push(PodCondition {
            kind: "Ready".into(),
            status: "True".into(),
            last_transition_time: format_time(0),
            reason: None,
        });
        assert_eq!(kubectl_status(&status, PodPhase::Running, &[]), "Running");
    }

    #[test]
    fn a_stopping_pod_is_terminating_until_it_ends() {
        let mut status = pod(PodPhase::Running, vec![], vec![running()]);
        status.deletion_timestamp = Some(format_time(5));
        assert_eq!(
            kubectl_status(&status, PodPhase::Running, &[]),
            "Terminating"
        );
        status.container_statuses[0].state = terminated(143, "Error");
        assert_eq!(kubectl_status(&status, PodPhase::Failed, &[]), "Error");
    }

    #[test]
    fn ready_and_restarts_columns() {
        let mut status = pod(
            PodPhase::Running,
            vec![],
            vec![running(), waiting("CrashLoopBackOff")],
        );
        assert_eq!(kubectl_ready(&status, &[]), "1/2");
        assert_eq!(kubectl_restarts(&status, 100, &[]), "0");
        status.container_statuses[1].restart_count = 3;
        status.container_statuses[1].last_state = Some(terminated(1, "Error"));
        assert_eq!(kubectl_restarts(&status, 52, &[]), "3 (42s ago)");
    }

    #[test]
    fn started_sidecars_count_as_kubectl_counts_them() {
        let sidecars = ["init0".to_string()];
        let mut status = pod(
            PodPhase::Pending,
            vec![running(), waiting("PodInitializing")],
            vec![waiting("PodInitializing")],
        );
        status.init_container_statuses[0].started = false;
        assert_eq!(
            kubectl_status(&status, PodPhase::Pending, &sidecars),
            "Init:0/2"
        );
        status.init_container_statuses[0].started = true;
        assert_eq!(
            kubectl_status(&status, PodPhase::Pending, &sidecars),
            "Init:1/2"
        );
        status.init_container_statuses[1].state = terminated(0, "Completed");
        status.container_statuses[0].state = running();
        status.container_statuses[0].ready = true;
        status.phase = PodPhase::Running;
        assert_eq!(
            kubectl_status(&status, PodPhase::Running, &sidecars),
            "Running"
        );
        assert_eq!(kubectl_ready(&status, &sidecars), "2/2");
        status.init_container_statuses[0].restart_count = 2;
        assert_eq!(kubectl_restarts(&status, 100, &sidecars), "2");
        assert_eq!(
            kubectl_status(&status, PodPhase::Running, &[]),
            "Init:0/2",
            "as a plain init container"
        );
    }

    #[test]
    fn times_round_trip_and_match_known_dates() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        for t in [0, 59, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        for bad in ["", "2023-11-14 22:13:20Z", "2023-13-14T22:13:20Z", "x"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (0, "0s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
            (-5, "<invalid>"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn the_status_document_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("unipod-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = container("web", running());
        c.restart_count = 2;
        c.last_state = Some(terminated(137, "OOMKilled"));
        let mut record = PodRecord {
            version: STATUS_VERSION,
            name: "web".into(),
            uid: "00000000-0000-4000-8000-000000000000".into(),
            creation_timestamp: format_time(1),
            manifest: "pod.yaml".into(),
            supervisor: Some(ProcessRef::current()),
            vmm: None,
            network: Some(NetworkRecord {
                bridge: "unipod0".into(),
                pod_cidr: "10.211.0.0/16".into(),
                pod_cidr6: None,
                gateway6: None,
                gateway: "10.211.0.1".into(),
                tap: "up-10-211-0-2".into(),
                host_ports: true,
            }),
            status: PodStatus {
                phase: PodPhase::Running,
                pod_ip: Some("10.211.0.2".into()),
                init_container_statuses: vec![container("init", terminated(0, "Completed"))],
                container_statuses: vec![c],
                ..PodStatus::default()
            },
            events: vec![PodEvent {
                time: format_time(2),
                kind: "Normal".into(),
                reason: "Started".into(),
                message: "Started container web".into(),
            }],
            startup: StartupTimeline::default(),
            sidecars: vec![],
        };
        record
            .startup
            .mark(StartupTimeline::NETWORK, Duration::from_millis(4));
        record
            .startup
            .mark(StartupTimeline::VM_READY, Duration::from_millis(300));
        record.write(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(STATUS_FILE)).unwrap();
        assert!(text.contains("\"podIP\": \"10.211.0.2\""), "{text}");
        assert!(text.contains("\"running\": {"), "{text}");
        assert!(text.contains("\"restartCount\": 2"), "{text}");
        assert!(text.contains("\"doneAtMs\": 300"), "{text}");
        assert_eq!(PodRecord::read(&dir).unwrap(), record);
        assert!(record.supervisor_alive());
        assert_eq!(record.shown_phase(), PodPhase::Running);
        std::fs::write(dir.join(STATUS_FILE), "{}").unwrap();
        assert!(matches!(
            PodRecord::read(&dir),
            Err(StatusError::Parse { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn startup_steps_are_recorded_once_and_summed_as_durations() {
        let mut t = StartupTimeline::default();
        assert!(t.is_empty());
        t.mark(StartupTimeline::NETWORK, Duration::from_millis(5));
        t.mark(StartupTimeline::VM_READY, Duration::from_millis(305));
        t.mark(StartupTimeline::NETWORK, Duration::from_millis(900));
        t.mark(
            StartupTimeline::FIRST_CONTAINER,
            Duration::from_millis(1305),
        );
        assert_eq!(
            t.summary(),
            "network 5 ms, vmReady 300 ms, firstContainerRunning 1000 ms (1305 ms in all)"
        );
    }

    #[test]
    fn a_pod_whose_supervisor_is_gone_shows_unknown() {
        let record_phase = |phase| PodRecord {
            version: STATUS_VERSION,
            name: "p".into(),
            uid: String::new(),
            creation_timestamp: format_time(0),
            manifest: PathBuf::new(),
            supervisor: Some(ProcessRef {
                pid: i32::MAX,
                start_ticks: 1,
            }),
            vmm: None,
            network: None,
            status: PodStatus {
                phase,
                ..PodStatus::default()
            },
            events: vec![],
            startup: StartupTimeline::default(),
            sidecars: vec![],
        };
        assert_eq!(
            record_phase(PodPhase::Running).shown_phase(),
            PodPhase::Unknown
        );
        assert_eq!(
            record_phase(PodPhase::Failed).shown_phase(),
            PodPhase::Failed
        );
    }
}
