//! Health probes, run inside the pod by the agent: each container's
//! startup, liveness and readiness probes on their schedule, with the
//! kubelet's thresholds, reported to the host only when a result changes.
//!
//! # Design
//!
//! [`Prober`] is the schedule and the arithmetic, with explicit time (unit
//! tested without processes): per container and probe, the next check, the
//! check in flight, the run of equal results and the result last reported.
//! The rules are the kubelet's probe worker's: the first check comes
//! `initialDelaySeconds` after the start, then one every `periodSeconds`
//! (a check still in flight delays the next); while a startup probe has not
//! succeeded the other two do not run, and once it has it stops; a result
//! becomes the probe's after `successThreshold` equal successes or
//! `failureThreshold` equal failures; after a liveness or startup failure
//! the probe holds until the container is run again (the host restarts it).
//!
//! The agent ([`super::Agent::run_probes`]) starts the checks: an `exec`
//! probe is an exec in the container, registered with the pod's
//! containers so that the one reaper collects it, and its output goes to
//! the prober instead of the host; past its timeout it is killed and
//! fails. `tcpSocket`, `httpGet` (`net.rs`, HTTPS through `tls.rs`) and
//! `grpc` (`grpc.rs`) checks run on a short-lived thread each, bounded by
//! the timeout, which hands its result back through a channel and wakes the
//! poll loop through a socket pair.
//!
//! Cost: a pod without probes has nothing scheduled; with probes, the
//! agent wakes once per period per probe, and nothing crosses vsock unless
//! a result changes.
//!
//! # Limitations
//!
//! No initial jitter (the kubelet spreads a node's probes; one pod has few).
//! HTTP probes do not follow redirects; HTTPS ones check no certificate
//! (as the kubelet's); grpc probes are plaintext only (as the kubelet's).

pub mod grpc;
pub mod net;
mod tls;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    Event, ExecSpec, HookKind, HookSpec, ProbeHandler, ProbeKind, ProbeSpec, Probes,
    MAX_PROBE_OUTPUT,
};

use super::container::Container;
use super::host::FrameKind;
use super::logger::Chain;
use super::Agent;

/// A check's outcome: `Err` carries the failure's message.
pub type Check = Result<(), String>;

/// A change of a probe's result, for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The container.
    pub container: String,
    /// The probe.
    pub kind: ProbeKind,
    /// The new result.
    pub success: bool,
    /// The failure's message (empty on success).
    pub message: String,
}

/// A check to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The container.
    pub container: String,
    /// The probe.
    pub kind: ProbeKind,
    /// Identifies the check (see [`Prober::finish`]).
    pub seq: u64,
    /// What to check.
    pub handler: ProbeHandler,
    /// How long it may take.
    pub timeout: Duration,
}

#[derive(Debug)]
struct Worker {
    kind: ProbeKind,
    spec: ProbeSpec,
    next_at: Instant,
    /// The check in flight and its deadline.
    in_flight: Option<(u64, Instant)>,
    last: Option<bool>,
    run: u32,
    reported: Option<bool>,
    /// After a liveness or startup failure: no more checks.
    hold: bool,
}

#[derive(Debug)]
struct ContainerProbes {
    workers: Vec<Worker>,
    /// No startup probe, or it succeeded.
    started: bool,
}

/// What a check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Probe(ProbeKind),
    Hook(HookKind),
}

/// An exec check in flight.
#[derive(Debug)]
struct ExecCheck {
    container: String,
    target: Target,
    seq: u64,
    output: Vec<u8>,
}

/// A lifecycle hook under way (`Request::RunHook`): one check, reported
/// whatever its result.
#[derive(Debug)]
struct HookRun {
    container: String,
    hook: HookKind,
    /// When an exec hook is killed and fails.
    deadline: Option<Instant>,
    /// An exec hook's command, for its messages.
    command: Option<String>,
}

/// A lifecycle hook's result, for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// The container.
    pub container: String,
    /// The hook.
    pub hook: HookKind,
    /// Its outcome: `Err` with the failure's message.
    pub check: Check,
}

/// A check's result as it comes back from its thread.
type Outcome = (String, Target, u64, Check);

/// The probes of the pod's containers (see the module doc).
pub struct Prober {
    containers: BTreeMap<String, ContainerProbes>,
    /// Exec checks by exec name.
    execs: BTreeMap<String, ExecCheck>,
    /// Lifecycle hooks under way, by check number.
    hooks: BTreeMap<u64, HookRun>,
    /// Hooks finished, for [`Prober::take_hook_reports`].
    hook_reports: Vec<HookReport>,
    seq: u64,
    tx: Sender<Outcome>,
    rx: Receiver<Outcome>,
    /// Threads write a byte to `wake.1` when they send; the loop polls
    /// `wake.0`. `None` if the pair could not be made (then results are
    /// picked up at the next deadline).
    wake: Option<(UnixStream, UnixStream)>,
}

impl Default for Prober {
    fn default() -> Self {
        let (tx, rx) = channel();
        let wake = UnixStream::pair()
            .and_then(|(r, w)| {
                r.set_nonblocking(true)?;
                w.set_nonblocking(true)?;
                Ok((r, w))
            })
            .inspect_err(|e| log::warn!("probes: no wake-up socket: {e}"))
            .ok();
        Prober {
            containers: BTreeMap::new(),
            execs: BTreeMap::new(),
            hooks: BTreeMap::new(),
            hook_reports: Vec::new(),
            seq: 0,
            tx,
            rx,
            wake,
        }
    }
}

impl Prober {
    /// Starts probing container `name`, which started at `now`.
    pub fn add(&mut self, name: &str, probes: &Probes, now: Instant) {
        if probes.is_empty() {
            self.containers.remove(name);
            return;
        }
        let workers = probes
            .iter()
            .map(|(kind, spec)| Worker {
                kind,
                spec: spec.clone(),
                next_at: now + secs(spec.initial_delay_secs),
                in_flight: None,
                last: None,
                run: 0,
                // The kubelet's initial value for liveness is success.
                reported: (kind == ProbeKind::Liveness).then_some(true),
                hold: false,
            })
            .collect();
        let started = probes.startup.is_none();
        self.containers
            .insert(name.to_string(), ContainerProbes { workers, started });
    }

    /// Stops probing container `name` (it exited); its checks in flight
    /// are forgotten.
    pub fn remove(&mut self, name: &str) {
        self.containers.remove(name);
        self.hooks.retain(|_, h| h.container != name);
    }

    /// True when exec `name` is a probe's check.
    pub fn is_exec(&self, name: &str) -> bool {
        self.execs.contains_key(name)
    }

    /// The earliest check, or timeout of an exec check. A network check
    /// bounds its own time and wakes the loop when it is done, so its
    /// deadline is not the loop's (a late thread must not make it spin).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.containers
            .values()
            .flat_map(|c| &c.workers)
            .filter_map(|w| match w.in_flight {
                Some((_, deadline)) => {
                    matches!(w.spec.handler, ProbeHandler::Exec { .. }).then_some(deadline)
                }
                None if w.hold => None,
                None => Some(w.next_at),
            })
            .chain(self.hooks.values().filter_map(|h| h.deadline))
            .min()
    }

    /// The checks due at `now`, marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<Start> {
        let mut starts = Vec::new();
        for (name, c) in &mut self.containers {
            for w in &mut c.workers {
                if w.hold || w.in_flight.is_some() || w.next_at > now {
                    continue;
                }
                w.next_at = now + secs(w.spec.period_secs);
                let gated = match w.kind {
                    ProbeKind::Startup => c.started,
                    _ => !c.started,
                };
                if gated {
                    continue;
                }
                self.seq += 1;
                let timeout = secs(w.spec.timeout_secs);
                w.in_flight = Some((self.seq, now + timeout));
                starts.push(Start {
                    container: name.clone(),
                    kind: w.kind,
                    seq: self.seq,
                    handler: w.spec.handler.clone(),
                    timeout,
                });
            }
        }
        starts
    }

    /// Records the outcome of check `seq`; the report when the probe's
    /// result changed. Stale checks (of a container run since) count for
    /// nothing.
    pub fn finish(
        &mut self,
        container: &str,
        kind: ProbeKind,
        seq: u64,
        check: Check,
        now: Instant,
    ) -> Option<Report> {
        let c = self.containers.get_mut(container)?;
        let w = c.workers.iter_mut().find(|w| w.kind == kind)?;
        if w.in_flight.map(|(s, _)| s) != Some(seq) {
            return None;
        }
        w.in_flight = None;
        // A check that took longer than a period delays the next one.
        w.next_at = w.next_at.max(now);
        let ok = check.is_ok();
        if w.last == Some(ok) {
            w.run = w.run.saturating_add(1);
        } else {
            w.last = Some(ok);
            w.run = 1;
        }
        let threshold = if ok {
            w.spec.success_threshold
        } else {
            w.spec.failure_threshold
        };
        if w.run < threshold {
            return None;
        }
        if kind == ProbeKind::Startup && ok {
            c.started = true;
        }
        if !ok && kind != ProbeKind::Readiness {
            w.hold = true;
        }
        if w.reported == Some(ok) {
            return None;
        }
        w.reported = Some(ok);
        Some(Report {
            container: container.to_string(),
            kind,
            success: ok,
            message: check.err().unwrap_or_default(),
        })
    }

    /// Exec checks past their timeout, failed: their reports, and the
    /// names of the execs to kill.
    pub fn expire(&mut self, now: Instant) -> (Vec<Report>, Vec<String>) {
        let expired: Vec<(String, u64)> = self
            .execs
            .iter()
            .filter(|(_, e)| {
                let Target::Probe(kind) = e.target else {
                    return false;
                };
                let w = self
                    .containers
                    .get(&e.container)
                    .and_then(|c| c.workers.iter().find(|w| w.kind == kind));
                // Gone or no longer in flight: only the process is left.
                w.and_then(|w| w.in_flight)
                    .is_some_and(|(seq, deadline)| seq == e.seq && deadline <= now)
            })
            .map(|(name, e)| (name.clone(), e.seq))
            .collect();
        let late_hooks: Vec<(String, u64)> = self
            .execs
            .iter()
            .filter(|(_, e)| {
                let deadline = self.hooks.get(&e.seq).and_then(|h| h.deadline);
                matches!(e.target, Target::Hook(_)) && deadline.is_some_and(|d| d <= now)
            })
            .map(|(name, e)| (name.clone(), e.seq))
            .collect();
        for (_, seq) in &late_hooks {
            let command = self.hooks.get(seq).and_then(|h| h.command.clone());
            let why = format!("command '{}' timed out", command.unwrap_or_default());
            self.hook_finished(*seq, Err(why));
        }
        let mut reports = Vec::new();
        for (name, _) in &expired {
            let Some(e) = self.execs.get(name) else {
                continue;
            };
            let Target::Probe(kind) = e.target else {
                continue;
            };
            let (container, seq) = (e.container.clone(), e.seq);
            let command = self
                .containers
                .get(&container)
                .and_then(|c| c.workers.iter().find(|w| w.kind == kind))
                .map(|w| match &w.spec.handler {
                    ProbeHandler::Exec { command } => command.join(" "),
                    _ => String::new(),
                })
                .unwrap_or_default();
            let why = format!("command \"{command}\" timed out");
            reports.extend(self.finish(&container, kind, seq, Err(why), now));
        }
        let kill = expired.into_iter().chain(late_hooks).map(|(n, _)| n);
        (reports, kill.collect())
    }

    /// Registers exec `name` as check `seq` of `container`.
    fn exec_started(&mut self, name: &str, container: &str, target: Target, seq: u64) {
        self.execs.insert(
            name.to_string(),
            ExecCheck {
                container: container.to_string(),
                target,
                seq,
                output: Vec::new(),
            },
        );
    }

    /// Output of exec check `name`, kept up to [`MAX_PROBE_OUTPUT`].
    pub fn exec_output(&mut self, name: &str, data: &[u8]) {
        if let Some(e) = self.execs.get_mut(name) {
            let room = MAX_PROBE_OUTPUT.saturating_sub(e.output.len());
            e.output.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// Exec check `name` exited with `exit_code`: 0 is success, anything
    /// else fails with the command's output.
    pub fn exec_done(&mut self, name: &str, exit_code: i32, now: Instant) -> Option<Report> {
        let e = self.execs.remove(name)?;
        let output = String::from_utf8_lossy(&e.output).trim_end().to_string();
        match e.target {
            Target::Probe(kind) => {
                let check = if exit_code == 0 { Ok(()) } else { Err(output) };
                self.finish(&e.container, kind, e.seq, check, now)
            }
            Target::Hook(_) => {
                let hook = self.hooks.get(&e.seq)?;
                let command = hook.command.clone().unwrap_or_default();
                let why =
                    format!("command '{command}' exited with {exit_code}: , message: {output:?}");
                let check = if exit_code == 0 { Ok(()) } else { Err(why) };
                self.hook_finished(e.seq, check);
                None
            }
        }
    }

    /// Runs a network check on a thread of its own; its result comes back
    /// through [`Prober::take_results`].
    fn spawn_net(&mut self, start: Start, now: Instant) -> Option<Report> {
        let Start {
            container,
            kind,
            seq,
            handler,
            timeout,
        } = start;
        let spawned = self.spawn_check(&container, Target::Probe(kind), seq, handler, timeout);
        let why = spawned.err()?;
        self.finish(&container, kind, seq, Err(why), now)
    }

    /// Runs a network check on a thread of its own, bounded by `timeout`;
    /// its result comes back through [`Prober::take_results`]. A hook's
    /// HTTP check needs only an answer: the kubelet ignores its status.
    fn spawn_check(
        &mut self,
        container: &str,
        target: Target,
        seq: u64,
        handler: ProbeHandler,
        timeout: Duration,
    ) -> Result<(), String> {
        let tx = self.tx.clone();
        let wake = self.wake.as_ref().and_then(|(_, w)| w.try_clone().ok());
        let c = container.to_string();
        // A TLS handshake (rustls, ring) and the HTTP/2 client need more
        // stack than a plain connect; untouched stack costs nothing.
        let stack = match &handler {
            ProbeHandler::HttpGet { https: true, .. } | ProbeHandler::Grpc { .. } => 256 * 1024,
            _ => 64 * 1024,
        };
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .stack_size(stack)
            .spawn(move || {
                let check = match &handler {
                    ProbeHandler::TcpSocket { host, port } => {
                        net::tcp(host.as_deref(), *port, timeout)
                    }
                    ProbeHandler::HttpGet {
                        host,
                        port,
                        path,
                        headers,
                        https,
                    } => {
                        let status =
                            net::http_get(host.as_deref(), *port, path, headers, *https, timeout);
                        match (target, status) {
                            (Target::Probe(_), Ok(code)) if !(200..400).contains(&code) => {
                                Err(format!("HTTP probe failed with statuscode: {code}"))
                            }
                            (_, status) => status.map(drop),
                        }
                    }
                    ProbeHandler::Grpc {
                        host,
                        port,
                        service,
                    } => grpc::check(host.as_deref(), *port, service, timeout),
                    ProbeHandler::Exec { .. } => Err("an exec check on a thread".into()),
                };
                if tx.send((c, target, seq, check)).is_ok() {
                    if let Some(mut w) = wake {
                        let _ = w.write(&[1]);
                    }
                }
            });
        spawned
            .map(drop)
            .map_err(|e| format!("cannot start the check: {e}"))
    }

    /// Starts hook `spec`, as check `seq`, on a thread when it is a network
    /// one; an exec hook is started by the agent and registered with
    /// `exec_started`.
    fn start_hook(&mut self, spec: &HookSpec, now: Instant) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let timeout = spec.timeout_secs.map(secs);
        let command = match &spec.handler {
            ProbeHandler::Exec { command } => Some(command.join(" ")),
            _ => None,
        };
        self.hooks.insert(
            seq,
            HookRun {
                container: spec.container.clone(),
                hook: spec.hook,
                deadline: timeout.filter(|_| command.is_some()).map(|t| now + t),
                command,
            },
        );
        if !matches!(spec.handler, ProbeHandler::Exec { .. }) {
            let target = Target::Hook(spec.hook);
            let timeout = timeout.unwrap_or(NETWORK_HOOK_TIMEOUT);
            if let Err(why) =
                self.spawn_check(&spec.container, target, seq, spec.handler.clone(), timeout)
            {
                self.hook_finished(seq, Err(why));
            }
        }
        seq
    }

    /// Hook check `seq` is done: its report, unless the hook is gone (its
    /// container exited, or it timed out).
    fn hook_finished(&mut self, seq: u64, check: Check) {
        if let Some(h) = self.hooks.remove(&seq) {
            self.hook_reports.push(HookReport {
                container: h.container,
                hook: h.hook,
                check,
            });
        }
    }

    /// The hooks finished since the last call.
    pub fn take_hook_reports(&mut self) -> Vec<HookReport> {
        std::mem::take(&mut self.hook_reports)
    }

    /// The socket the poll loop watches for results of network checks.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(|(r, _)| r.as_fd())
    }

    /// Collects the network checks' results: the reports of changes.
    pub fn take_results(&mut self, now: Instant) -> Vec<Report> {
        if let Some((r, _)) = &mut self.wake {
            let mut buf = [0u8; 64];
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
        }
        let results: Vec<_> = self.rx.try_iter().collect();
        let mut reports = Vec::new();
        for (c, target, seq, check) in results {
            match target {
                Target::Probe(kind) => reports.extend(self.finish(&c, kind, seq, check, now)),
                Target::Hook(_) => self.hook_finished(seq, check),
            }
        }
        reports
    }
}

/// The bound of a network hook without a timeout (a `postStart`): the
/// kubelet's hooks have none, but a thread must end.
const NETWORK_HOOK_TIMEOUT: Duration = Duration::from_secs(600);

fn secs(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

impl Agent {
    /// Collects results, fails exec checks past their timeout and starts
    /// the checks that are due; queues an `Event::Probe` per change.
    pub(super) fn run_probes(&mut self, now: Instant) {
        let mut reports = self.prober.take_results(now);
        let (expired, kill) = self.prober.expire(now);
        reports.extend(expired);
        for name in kill {
            if let Some(c) = self.containers.get(&name) {
                c.kill_all();
            }
        }
        if self.stopping.is_none() {
            for start in self.prober.due(now) {
                let report = match &start.handler {
                    ProbeHandler::Exec { command } => {
                        let command = command.clone();
                        self.start_probe_exec(&start, command, now)
                    }
                    _ => self.prober.spawn_net(start, now),
                };
                reports.extend(report);
            }
        }
        for r in reports {
            self.report_probe(r);
        }
        self.report_hooks();
    }

    /// Queues an `Event::Hook` per hook finished.
    pub(super) fn report_hooks(&mut self) {
        for h in self.prober.take_hook_reports() {
            self.report_hook(h);
        }
    }

    /// Starts a container's lifecycle hook (`Request::RunHook`); its result
    /// is queued as an `Event::Hook` when it finishes.
    pub(super) fn run_hook(&mut self, spec: &HookSpec, now: Instant) -> Result<(), String> {
        let running = self
            .containers
            .get(&spec.container)
            .is_some_and(|c| c.is_running() && !c.is_exec());
        if !running {
            return Err(format!("container {:?} is not running", spec.container));
        }
        let seq = self.prober.start_hook(spec, now);
        if let ProbeHandler::Exec { command } = &spec.handler {
            let name = format!("_hook-{seq}");
            let target = Target::Hook(spec.hook);
            if let Err(why) = self.start_check_exec(&name, &spec.container, command.clone()) {
                self.prober.hook_finished(seq, Err(why));
            } else {
                self.prober
                    .exec_started(&name, &spec.container, target, seq);
            }
        }
        self.run_probes(now);
        Ok(())
    }

    /// Queues the event for a finished hook.
    fn report_hook(&mut self, h: HookReport) {
        log::info!("{}: {} hook {:?}", h.container, h.hook.title(), h.check);
        let event = Event::Hook {
            name: h.container,
            hook: h.hook,
            success: h.check.is_ok(),
            message: h.check.err().unwrap_or_default(),
        };
        self.queue(FrameKind::Event, event);
    }

    /// Queues the event for a probe's change.
    pub(super) fn report_probe(&mut self, r: Report) {
        let result = if r.success { "succeeded" } else { "failed" };
        log::info!(
            "{}: {} probe {result} {}",
            r.container,
            r.kind.lower(),
            r.message
        );
        let event = Event::Probe {
            name: r.container,
            kind: r.kind,
            success: r.success,
            message: r.message,
        };
        self.queue(FrameKind::Event, event);
    }

    /// Starts an exec check in its container; a check that cannot start
    /// fails with the reason.
    fn start_probe_exec(
        &mut self,
        start: &Start,
        argv: Vec<String>,
        now: Instant,
    ) -> Option<Report> {
        let name = format!("_probe-{}", start.seq);
        match self.start_check_exec(&name, &start.container, argv) {
            Ok(()) => {
                let target = Target::Probe(start.kind);
                self.prober
                    .exec_started(&name, &start.container, target, start.seq);
                None
            }
            Err(why) => self
                .prober
                .finish(&start.container, start.kind, start.seq, Err(why), now),
        }
    }

    /// Starts exec `name` of a check in `container`, registered with the
    /// pod's containers so that the one reaper collects it.
    fn start_check_exec(
        &mut self,
        name: &str,
        container: &str,
        argv: Vec<String>,
    ) -> Result<(), String> {
        let spec = ExecSpec {
            id: name.to_string(),
            container: container.to_string(),
            argv,
            env: Vec::new(),
            stdin: false,
            tty: false,
        };
        let target = self
            .containers
            .get(container)
            .filter(|c| c.is_running() && !c.is_exec());
        let c = match target {
            Some(target) => Container::exec(&spec, target).map_err(|e| Chain(&e).to_string())?,
            None => return Err(format!("container {container:?} is not running")),
        };
        self.containers.insert(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(handler: ProbeHandler) -> ProbeSpec {
        ProbeSpec {
            handler,
            initial_delay_secs: 0,
            period_secs: 10,
            timeout_secs: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }
    }

    fn exec(cmd: &str) -> ProbeHandler {
        ProbeHandler::Exec {
            command: vec![cmd.into()],
        }
    }

    const S: Duration = Duration::from_secs(1);

    /// Runs the due check of `kind` with `check`; the report, if any.
    fn check(p: &mut Prober, kind: ProbeKind, check: Check, now: Instant) -> Option<Report> {
        let starts = p.due(now);
        let start = starts
            .iter()
            .find(|s| s.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} check due: {starts:?}"));
        p.finish("web", kind, start.seq, check, now)
    }

    #[test]
    fn the_first_check_waits_the_initial_delay_then_one_per_period() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let mut live = spec(exec("true"));
        live.initial_delay_secs = 5;
        let probes = Probes {
            liveness: Some(live),
            ..Probes::default()
        };
        p.add("web", &probes, t0);
        assert_eq!(p.next_deadline(), Some(t0 + 5 * S));
        assert!(p.due(t0 + 4 * S).is_empty());
        let starts = p.due(t0 + 5 * S);
        assert_eq!(starts.len(), 1);
        assert!(
            p.due(t0 + 6 * S).is_empty(),
            "one check in flight at a time"
        );
        // A liveness success is what the kubelet assumes: nothing to report.
        assert_eq!(
            p.finish(
                "web",
                ProbeKind::Liveness,
                starts[0].seq,
                Ok(()),
                t0 + 6 * S
            ),
            None
        );
        assert_eq!(p.next_deadline(), Some(t0 + 15 * S));
        assert!(p.due(t0 + 14 * S).is_empty());
        assert_eq!(p.due(t0 + 15 * S).len(), 1);
    }

    #[test]
    fn liveness_fails_after_the_threshold_once_and_then_holds() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let probes = Probes {
            liveness: Some(spec(exec("cat"))),
            ..Probes::default()
        };
        p.add("web", &probes, t0);
        let fail = || Err("cat: can't open '/tmp/healthy'".to_string());
        assert_eq!(check(&mut p, ProbeKind::Liveness, fail(), t0), None);
        assert_eq!(
            check(&mut p, ProbeKind::Liveness, fail(), t0 + 10 * S),
            None
        );
        // A success in between starts the count over.
        assert_eq!(
            check(&mut p, ProbeKind::Liveness, Ok(()), t0 + 20 * S),
            None
        );
        assert_eq!(
            check(&mut p, ProbeKind::Liveness, fail(), t0 + 30 * S),
            None
        );
        assert_eq!(
            check(&mut p, ProbeKind::Liveness, fail(), t0 + 40 * S),
            None
        );
        let r = check(&mut p, ProbeKind::Liveness, fail(), t0 + 50 * S).unwrap();
        assert!(!r.success);
        assert_eq!(r.message, "cat: can't open '/tmp/healthy'");
        assert!(
            p.due(t0 + 100 * S).is_empty(),
            "on hold until the container runs again"
        );
        assert_eq!(p.next_deadline(), None);
        p.add("web", &probes, t0 + 101 * S);
        assert_eq!(p.due(t0 + 101 * S).len(), 1, "a new run probes afresh");
    }

    #[test]
    fn readiness_reports_each_change_and_needs_its_success_threshold() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let mut ready = spec(exec("cat"));
        ready.success_threshold = 2;
        ready.failure_threshold = 1;
        p.add(
            "web",
            &Probes {
                readiness: Some(ready),
                ..Probes::default()
            },
            t0,
        );
        let r = check(&mut p, ProbeKind::Readiness, Err("no".into()), t0).unwrap();
        assert!(
            !r.success,
            "the first failure is reported: readiness starts unknown"
        );
        assert_eq!(
            check(&mut p, ProbeKind::Readiness, Err("no".into()), t0 + 10 * S),
            None
        );
        assert_eq!(
            check(&mut p, ProbeKind::Readiness, Ok(()), t0 + 20 * S),
            None
        );
        let r = check(&mut p, ProbeKind::Readiness, Ok(()), t0 + 30 * S).unwrap();
        assert!(r.success && r.message.is_empty());
        assert_eq!(
            check(&mut p, ProbeKind::Readiness, Ok(()), t0 + 40 * S),
            None
        );
        let r = check(
            &mut p,
            ProbeKind::Readiness,
            Err("gone".into()),
            t0 + 50 * S,
        )
        .unwrap();
        assert_eq!((r.success, r.message.as_str()), (false, "gone"));
        assert_eq!(
            p.due(t0 + 60 * S).len(),
            1,
            "readiness keeps probing after a failure"
        );
    }

    #[test]
    fn a_startup_probe_holds_the_others_until_it_succeeds_then_stops() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let mut startup = spec(exec("started"));
        startup.period_secs = 1;
        let probes = Probes {
            startup: Some(startup),
            liveness: Some(spec(exec("live"))),
            readiness: Some(spec(exec("ready"))),
        };
        p.add("web", &probes, t0);
        let starts = p.due(t0);
        assert_eq!(starts.len(), 1);
        assert_eq!(starts[0].kind, ProbeKind::Startup);
        assert_eq!(
            p.finish(
                "web",
                ProbeKind::Startup,
                starts[0].seq,
                Err("no".into()),
                t0
            ),
            None
        );
        let r = check(&mut p, ProbeKind::Startup, Ok(()), t0 + S).unwrap();
        assert!(r.success);
        let kinds: Vec<ProbeKind> = p.due(t0 + 10 * S).iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec![ProbeKind::Liveness, ProbeKind::Readiness]);
    }

    #[test]
    fn stale_and_unknown_checks_count_for_nothing() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let probes = Probes {
            readiness: Some(spec(exec("x"))),
            ..Probes::default()
        };
        p.add("web", &probes, t0);
        let old = p.due(t0)[0].seq;
        p.add("web", &probes, t0 + S);
        assert_eq!(
            p.finish("web", ProbeKind::Readiness, old, Ok(()), t0 + S),
            None
        );
        assert_eq!(
            p.finish("nope", ProbeKind::Readiness, old, Ok(()), t0 + S),
            None
        );
        p.remove("web");
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn an_exec_check_past_its_timeout_fails_and_is_killed() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let mut live = spec(ProbeHandler::Exec {
            command: vec!["sleep".into(), "60".into()],
        });
        live.failure_threshold = 1;
        p.add(
            "web",
            &Probes {
                liveness: Some(live),
                ..Probes::default()
            },
            t0,
        );
        let start = p.due(t0).remove(0);
        p.exec_started("_probe-1", "web", Target::Probe(start.kind), start.seq);
        p.exec_output("_probe-1", b"partial");
        assert_eq!(p.next_deadline(), Some(t0 + S));
        let (reports, kill) = p.expire(t0 + S / 2);
        assert!(reports.is_empty() && kill.is_empty());
        let (reports, kill) = p.expire(t0 + S);
        assert_eq!(kill, vec!["_probe-1".to_string()]);
        assert_eq!(reports[0].message, "command \"sleep 60\" timed out");
        assert!(
            p.is_exec("_probe-1"),
            "its output and exit are still the prober's"
        );
        assert_eq!(p.exec_done("_probe-1", 137, t0 + 2 * S), None);
        assert!(!p.is_exec("_probe-1"));
    }

    #[test]
    fn an_exec_checks_output_is_its_failure_message_bounded() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let mut ready = spec(exec("x"));
        ready.failure_threshold = 1;
        p.add(
            "web",
            &Probes {
                readiness: Some(ready),
                ..Probes::default()
            },
            t0,
        );
        let start = p.due(t0).remove(0);
        p.exec_started("_probe-1", "web", Target::Probe(start.kind), start.seq);
        p.exec_output("_probe-1", &vec![b'x'; MAX_PROBE_OUTPUT + 10]);
        p.exec_output("_probe-1", b"more\n");
        let r = p.exec_done("_probe-1", 1, t0).unwrap();
        assert_eq!(r.message.len(), MAX_PROBE_OUTPUT);
    }

    #[test]
    fn network_checks_come_back_through_the_channel() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut ready = spec(ProbeHandler::TcpSocket { host: None, port });
        ready.failure_threshold = 1;
        p.add(
            "web",
            &Probes {
                readiness: Some(ready),
                ..Probes::default()
            },
            t0,
        );
        let start = p.due(t0).remove(0);
        assert_eq!(p.spawn_net(start, t0), None);
        assert_eq!(
            p.next_deadline(),
            None,
            "the thread wakes the loop, not a deadline"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let reports = loop {
            let r = p.take_results(Instant::now());
            if !r.is_empty() || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(reports.len(), 1);
        assert!(reports[0].success, "{reports:?}");
    }

    #[test]
    fn an_exec_hook_reports_once_with_the_kubelets_words_and_dies_with_its_container() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let hook = |hook| HookSpec {
            container: "web".into(),
            hook,
            handler: exec("false"),
            timeout_secs: Some(5),
        };
        let seq = p.start_hook(&hook(HookKind::PreStop), t0);
        p.exec_started("_hook-1", "web", Target::Hook(HookKind::PreStop), seq);
        assert_eq!(
            p.next_deadline(),
            Some(t0 + 5 * S),
            "its timeout wakes the loop"
        );
        p.exec_output("_hook-1", b"no\n");
        assert_eq!(p.exec_done("_hook-1", 1, t0), None, "hooks are not probes");
        assert_eq!(
            p.take_hook_reports(),
            vec![HookReport {
                container: "web".into(),
                hook: HookKind::PreStop,
                check: Err("command 'false' exited with 1: , message: \"no\"".into()),
            }]
        );
        assert!(p.take_hook_reports().is_empty());
        // The container exits before its hook ends: nothing to report.
        let seq = p.start_hook(&hook(HookKind::PostStart), t0);
        p.exec_started("_hook-2", "web", Target::Hook(HookKind::PostStart), seq);
        p.remove("web");
        p.exec_done("_hook-2", 0, t0);
        assert!(p.take_hook_reports().is_empty());
    }

    #[test]
    fn an_http_hook_needs_only_an_answer_whatever_its_status() {
        use std::io::{BufRead, BufReader};
        let t0 = Instant::now();
        let mut p = Prober::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            s.write_all(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
                .unwrap();
            line
        });
        let spec = HookSpec {
            container: "web".into(),
            hook: HookKind::PreStop,
            handler: ProbeHandler::HttpGet {
                host: None,
                port,
                path: "/shutdown".into(),
                headers: vec![],
                https: false,
            },
            timeout_secs: Some(10),
        };
        p.start_hook(&spec, t0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let reports = loop {
            p.take_results(Instant::now());
            let r = p.take_hook_reports();
            if !r.is_empty() || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(server.join().unwrap(), "GET /shutdown HTTP/1.1\r\n");
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].check, Ok(()), "{reports:?}");
    }
}
