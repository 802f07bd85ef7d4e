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
//! fails. `tcpSocket` and `httpGet` checks run on a short-lived thread each
//! (`net.rs`), bounded by the timeout, which hands its result back through
//! a channel and wakes the poll loop through a socket pair.
//!
//! Cost: a pod without probes has nothing scheduled; with probes, the
//! agent wakes once per period per probe, and nothing crosses vsock unless
//! a result changes.
//!
//! # Limitations
//!
//! No initial jitter (the kubelet spreads a node's probes; one pod has few).
//! HTTP probes do not follow redirects and have no HTTPS; grpc probes are
//! refused by the host.

pub mod net;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    Event, ExecSpec, ProbeHandler, ProbeKind, ProbeSpec, Probes, MAX_PROBE_OUTPUT,
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

/// An exec check in flight.
#[derive(Debug)]
struct ExecCheck {
    container: String,
    kind: ProbeKind,
    seq: u64,
    output: Vec<u8>,
}

/// The probes of the pod's containers (see the module doc).
pub struct Prober {
    containers: BTreeMap<String, ContainerProbes>,
    /// Exec checks by exec name.
    execs: BTreeMap<String, ExecCheck>,
    seq: u64,
    tx: Sender<(String, ProbeKind, u64, Check)>,
    rx: Receiver<(String, ProbeKind, u64, Check)>,
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
                let w = self
                    .containers
                    .get(&e.container)
                    .and_then(|c| c.workers.iter().find(|w| w.kind == e.kind));
                // Gone or no longer in flight: only the process is left.
                w.and_then(|w| w.in_flight)
                    .is_some_and(|(seq, deadline)| seq == e.seq && deadline <= now)
            })
            .map(|(name, e)| (name.clone(), e.seq))
            .collect();
        let mut reports = Vec::new();
        for (name, _) in &expired {
            let Some(e) = self.execs.get(name) else {
                continue;
            };
            let (container, kind, seq) = (e.container.clone(), e.kind, e.seq);
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
        (reports, expired.into_iter().map(|(n, _)| n).collect())
    }

    /// Registers exec `name` as check `start`.
    fn exec_started(&mut self, name: &str, start: &Start) {
        self.execs.insert(
            name.to_string(),
            ExecCheck {
                container: start.container.clone(),
                kind: start.kind,
                seq: start.seq,
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
        let check = if exit_code == 0 {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&e.output).trim_end().to_string())
        };
        self.finish(&e.container, e.kind, e.seq, check, now)
    }

    /// Runs a network check on a thread of its own; its result comes back
    /// through [`Prober::take_results`].
    fn spawn_net(&mut self, start: Start, now: Instant) -> Option<Report> {
        let tx = self.tx.clone();
        let wake = self.wake.as_ref().and_then(|(_, w)| w.try_clone().ok());
        let Start {
            container,
            kind,
            seq,
            handler,
            timeout,
        } = start;
        let (c, k) = (container.clone(), kind);
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .stack_size(64 * 1024)
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
                    } => net::http_get(host.as_deref(), *port, path, headers, timeout),
                    ProbeHandler::Exec { .. } => Err("an exec check on a thread".into()),
                };
                if tx.send((c, k, seq, check)).is_ok() {
                    if let Some(mut w) = wake {
                        let _ = w.write(&[1]);
                    }
                }
            });
        match spawned {
            Ok(_) => None,
            Err(e) => self.finish(
                &container,
                kind,
                seq,
                Err(format!("cannot start the check: {e}")),
                now,
            ),
        }
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
        results
            .into_iter()
            .filter_map(|(c, k, seq, check)| self.finish(&c, k, seq, check, now))
            .collect()
    }
}

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
        let spec = ExecSpec {
            id: name.clone(),
            container: start.container.clone(),
            argv,
            env: Vec::new(),
            stdin: false,
            tty: false,
        };
        let target = self
            .containers
            .get(&start.container)
            .filter(|c| c.is_running() && !c.is_exec());
        let started = match target {
            Some(target) => Container::exec(&spec, target).map_err(|e| Chain(&e).to_string()),
            None => Err(format!("container {:?} is not running", start.container)),
        };
        match started {
            Ok(c) => {
                self.prober.exec_started(&name, start);
                self.containers.insert(c);
                None
            }
            Err(why) => self
                .prober
                .finish(&start.container, start.kind, start.seq, Err(why), now),
        }
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
        p.exec_started("_probe-1", &start);
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
        p.exec_started("_probe-1", &start);
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
}
