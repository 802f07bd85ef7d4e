//! The agent proper: PID-1 setup, then one single-threaded poll loop over the
//! vsock listener, the host connection, every container's output pipes, a
//! signalfd and the heartbeat timerfd.
//!
//! # Design
//!
//! One thread and one `poll` keep the ordering questions simple: output is
//! forwarded in the order it is read, a container's `ContainerExited` is
//! queued only after its process is reaped *and* both its pipes hit EOF (so it
//! follows that container's last `Output`), and the reaper
//! (`waitpid(-1, WNOHANG)` on SIGCHLD) is the only place exit statuses come
//! from; it hands each to the container with that pid and drops the orphans'.
//! Nothing blocks: host writes go through a bounded [`host::Outbox`], and
//! while it is over `OUTPUT_HIGH_WATER` no container's pipes are read.
//!
//! The pod's containers and execs live in [`Containers`] (`pod.rs`), by
//! name, from `Run`/`Exec` until their `ContainerExited` is queued; several
//! run at once, each in its own cgroup (an exec joins its container's),
//! process group and pipes, and every event names its container.
//!
//! A container's health probes (`RunSpec::probes`) run here too, on the
//! poll loop's deadlines ([`probe`]): exec checks are execs registered
//! with the containers (their output and exit go to the prober, not the
//! host), network checks run on short-lived threads that wake the loop;
//! only a change of a probe's result is sent (`Event::Probe`).
//!
//! A container with a `rootfs` runs in its own mount namespace on an overlay
//! of its image, with the pod's volumes and `/etc` files bound in
//! ([`rootfs`]), and in its own pid namespace unless it shares the pod's,
//! which is the agent's ([`sandbox`]). One without a `rootfs` runs in the
//! agent's namespaces and file system, as before images existed.
//!
//! Lifecycle rules:
//! - `Run` starts a container unless one of that name is still running or
//!   draining; a name may be run again once its exit was reported.
//! - One host connection at a time; a new connection replaces the current
//!   one (a host that reconnects wins over a stale socket). A dropped host
//!   leaves the containers running.
//! - SIGTERM/SIGINT: SIGTERM every running container, SIGKILL them all after
//!   [`TERM_GRACE`], power off once every exit is reported (or [`KILL_WAIT`]
//!   later regardless). `Shutdown` does the same with [`SHUTDOWN_GRACE`].
//! - The pod is *finished* once at least one container ran and none is still
//!   running or draining. A finished pod powers off when the host sends
//!   `Shutdown`, when it hangs up after receiving every `ContainerExited`, or
//!   when no host has been connected for [`LINGER`]. A new `Run` un-finishes
//!   it.
//!
//! Requests: `Run` starts a container, `Exec` starts a process in a running
//! one, `Stdin` feeds an exec's stdin, `Signal` signals the one it names,
//! `Shutdown` stops the pod, `Ping` answers `Pong`, `Debug(StopHeartbeat)`
//! silences the heartbeat (only in agents built with the `test-hooks`
//! feature; others refuse it), and `Configure` gives the guest its pod identity
//! (clock, RNG, hostname, `/etc/podinfo`, heartbeat period; see
//! [`identity`]); `WriteVolume` fills a volume with files, or swaps them
//! all at once (ConfigMap, Secret, ...; see [`volume`]). The host sends
//! `Configure` right after `Ready`, also to guests restored from a
//! snapshot, which is why the heartbeat period can change after boot (the
//! kernel command line's `unipod.heartbeat_ms` only sets the initial one).
//!
//! # Limitations
//!
//! Containers are independent processes: no start order, init containers or
//! restart policy (the host decides when to `Run` a name again). They share
//! the pod's network, IPC and UTS namespaces (localhost reaches a sibling)
//! and the guest's RAM, within their cgroup limits; containers without a
//! `rootfs` also share the guest's file system.

pub mod cgroup;
pub mod container;
pub mod host;
pub mod identity;
pub mod init;
pub mod logger;
pub mod network;
pub mod oci;
pub mod pod;
pub mod port_forward;
pub mod probe;
pub mod rootfs;
pub mod sandbox;
pub mod user;
pub mod volume;

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

#[cfg(feature = "test-hooks")]
use guest_agent::protocol::DebugCommand;
use guest_agent::protocol::{
    AgentMessage, Event, ExecSpec, HostMessage, PodConfig, ProtocolError, Reply, Request, RunSpec,
    Stream, VolumeFiles, AGENT_VSOCK_PORT, DEFAULT_HEARTBEAT_MS, PROTOCOL_VERSION, REASON_ERROR,
    REASON_OOM_KILLED,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timer::Expiration;
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use self::cgroup::{CgroupError, Cgroups, CGROUP_MOUNT};
use self::container::{Container, ContainerError, PipeRead, Termination};
use self::host::{FrameKind, HostConn, HostError, Incoming, Listener, Outbox};
use self::logger::Chain;
use self::pod::Containers;
use self::probe::Prober;
use self::rootfs::{ContainerRoot, Filesystems, Layout};

/// Grace between SIGTERM and SIGKILL when PID 1 gets SIGTERM/SIGINT.
pub const TERM_GRACE: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL on a `Shutdown` request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// After SIGKILL: time to reap, drain and flush before powering off anyway.
pub const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long a finished pod waits for a host before powering off.
pub const LINGER: Duration = Duration::from_secs(30);
/// Above this many unsent bytes, no container's pipes are read.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Above this many unsent bytes, the host's requests are not read.
const OUTBOX_LIMIT: usize = 1024 * 1024;

/// Errors that stop the agent (which then powers the guest off).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The host link failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The signalfd could not be set up.
    #[error("cannot set up signal handling")]
    Signals(#[source] Errno),
    /// The heartbeat timerfd could not be created.
    #[error("cannot create the heartbeat timer")]
    Timer(#[source] Errno),
    /// poll(2) failed.
    #[error("poll failed")]
    Poll(#[source] Errno),
}

/// Does the PID-1 setup and serves the host until it is time to power off.
/// Returns `Ok` for an orderly power-off.
pub fn run() -> Result<(), AgentError> {
    init::mount_filesystems();
    if init::is_pid1() {
        network::ipv6_off_on_pod_interface();
        // Now rather than at Configure, so that a warm-start snapshot has
        // it: its 127.0.0.1 and ::1 are emulated guest-kernel work that a
        // restored pod then skips (Configure sets it up again, a no-op).
        if let Err(e) = network::loopback_up() {
            log::warn!("cannot set lo up: {}", Chain(&e));
        }
    }
    init::ensure_stdio();
    init::route_ctrl_alt_del_to_sigint();
    log::info!(
        "unipod-agent {} (protocol {PROTOCOL_VERSION}) starting",
        env!("CARGO_PKG_VERSION")
    );
    let default = Duration::from_millis(DEFAULT_HEARTBEAT_MS);
    let period = init::heartbeat_period(&init::read_cmdline(), default).unwrap_or_else(|e| {
        log::warn!("{e}; using {DEFAULT_HEARTBEAT_MS} ms");
        default
    });
    let cgroups = Cgroups::setup(Path::new(CGROUP_MOUNT))
        .inspect_err(|e| {
            log::warn!(
                "cgroups unavailable ({}); running containers without",
                Chain(e)
            )
        })
        .inspect(|c| log::info!("cgroups: controllers {:?} enabled", c.enabled()))
        .ok();
    let mut agent = Agent::new(period, cgroups)?;
    log::info!("listening on vsock port {AGENT_VSOCK_PORT}");
    // After Agent::new blocked the signals, which the thread inherits.
    if let Err(e) = port_forward::spawn() {
        log::warn!("port forwarding into the pod is unavailable: {e}");
    }
    while !agent.power_off {
        agent.poll_once()?;
    }
    Ok(())
}

/// The periodic heartbeat, armed while a host is connected.
struct Heartbeat {
    timer: TimerFd,
    period: Duration,
    /// Set by `Debug(StopHeartbeat)`, for good.
    stopped: bool,
    seq: u64,
}

impl Heartbeat {
    fn arm(&self) {
        if self.stopped {
            return;
        }
        let every = TimeSpec::from_duration(self.period);
        if let Err(e) = self
            .timer
            .set(Expiration::Interval(every), TimerSetTimeFlags::empty())
        {
            log::warn!("cannot arm the heartbeat timer: {e}");
        }
    }

    fn disarm(&self) {
        let _ = self.timer.unset();
    }

    /// Consumes a timer expiry; the next sequence number, unless stopped.
    fn tick(&mut self) -> Option<u64> {
        let _ = self.timer.wait(); // nonblocking: clears the expiry count
        if self.stopped {
            return None;
        }
        self.seq += 1;
        Some(self.seq)
    }
}

/// A stop in progress (SIGTERM or `Shutdown`).
struct Stopping {
    kill_at: Instant,
    killed: bool,
    give_up_at: Instant,
}

/// Which polled fds were ready, copied out so the handlers can borrow `self`.
#[derive(Default)]
struct Ready {
    signal: bool,
    timer: bool,
    listener: bool,
    /// A network probe check finished.
    probes: bool,
    host: Option<PollFlags>,
    /// Container name and stream of each ready pipe.
    pipes: Vec<(String, Stream)>,
    /// Execs whose stdin can take more.
    stdin: Vec<String>,
}

/// The agent's state.
struct Agent {
    listener: Listener,
    host: Option<HostConn>,
    outbox: Outbox,
    signals: SignalFd,
    heartbeat: Heartbeat,
    cgroups: Option<Cgroups>,
    /// Image mounts, container roots and volumes.
    filesystems: Filesystems,
    /// Compiled seccomp profiles, shared by the containers that use one.
    seccomp: oci::seccomp::Cache,
    containers: Containers,
    /// The containers' health probes.
    prober: Prober,
    /// `ContainerExited` frames queued and written, to know when the last one
    /// reached a host.
    exits_queued: u64,
    exits_written: u64,
    /// Set while the pod is finished: when to give up waiting for a host.
    finished: Option<Option<Instant>>,
    stopping: Option<Stopping>,
    power_off: bool,
}

impl Agent {
    fn new(period: Duration, cgroups: Option<Cgroups>) -> Result<Self, AgentError> {
        let mut mask = SigSet::empty();
        for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
            mask.add(sig);
        }
        // Blocked so they queue on the signalfd. std passes the mask on to
        // children; the container's pre_exec clears it (container.rs).
        mask.thread_block().map_err(AgentError::Signals)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(AgentError::Signals)?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(AgentError::Timer)?;
        Ok(Self {
            listener: Listener::bind(AGENT_VSOCK_PORT)?,
            host: None,
            outbox: Outbox::default(),
            signals,
            heartbeat: Heartbeat {
                timer,
                period,
                stopped: false,
                seq: 0,
            },
            cgroups,
            filesystems: Filesystems::new(Layout::default()),
            seccomp: oci::seccomp::Cache::default(),
            containers: Containers::default(),
            prober: Prober::default(),
            exits_queued: 0,
            exits_written: 0,
            finished: None,
            stopping: None,
            power_off: false,
        })
    }

    /// One round: wait for readiness or the next deadline, then handle
    /// everything that is ready.
    fn poll_once(&mut self) -> Result<(), AgentError> {
        let now = Instant::now();
        let read_pipes = self.outbox.pending_bytes() < OUTPUT_HIGH_WATER;
        let read_host = self.outbox.pending_bytes() < OUTBOX_LIMIT;
        if !read_pipes {
            // Output waits for the host, not for a background process.
            for c in self.containers.iter_mut() {
                c.note_activity(now);
            }
        }
        let timeout = match self.next_deadline() {
            Some(d) => {
                // Round up so we do not wake a hair early and spin.
                let ms = d.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let ready = self.wait(timeout, read_pipes, read_host)?;

        let now = Instant::now();
        if ready.signal {
            self.handle_signals(now);
        }
        for (name, stream) in ready.pipes {
            self.read_pipe(&name, stream, now);
        }
        for name in ready.stdin {
            if let Some(c) = self.containers.get_mut(&name) {
                c.flush_stdin();
            }
        }
        if let Some(flags) = ready.host {
            // HUP/ERR are reported unasked; reading is how we see the EOF.
            if flags.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
                || (read_host && flags.intersects(PollFlags::POLLIN))
            {
                self.read_host(now);
            }
        }
        if ready.listener {
            self.accept()?;
        }
        if ready.timer {
            if let Some(seq) = self.heartbeat.tick() {
                if self.host.is_some() {
                    self.queue(FrameKind::Heartbeat, Event::Heartbeat { seq });
                }
            }
        }
        self.check_deadlines(now);
        if ready.probes || self.prober.next_deadline().is_some_and(|t| t <= now) {
            self.run_probes(now);
        }
        self.flush_host(now);
        self.check_stop_complete();
        Ok(())
    }

    /// Polls the fds of interest; returns which were ready.
    fn wait(
        &self,
        timeout: PollTimeout,
        read_pipes: bool,
        read_host: bool,
    ) -> Result<Ready, AgentError> {
        let input = PollFlags::POLLIN;
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), input),
            PollFd::new(self.heartbeat.timer.as_fd(), input),
            PollFd::new(self.listener.as_fd(), input),
        ];
        let mut probe_slot = None;
        if let Some(fd) = self.prober.wake_fd() {
            probe_slot = Some(fds.len());
            fds.push(PollFd::new(fd, input));
        }
        let mut host_slot = None;
        if let Some(h) = &self.host {
            let mut events = PollFlags::empty();
            if read_host {
                events |= input;
            }
            if !self.outbox.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            host_slot = Some(fds.len());
            fds.push(PollFd::new(h.as_fd(), events));
        }
        let mut pipe_slots = Vec::new();
        if read_pipes {
            for (name, stream, fd) in self.containers.pipes() {
                pipe_slots.push((name, stream, fds.len()));
                fds.push(PollFd::new(fd, input));
            }
        }
        let mut stdin_slots = Vec::new();
        for (name, fd) in self.containers.stdin_waiting() {
            stdin_slots.push((name, fds.len()));
            fds.push(PollFd::new(fd, PollFlags::POLLOUT));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Ready::default()),
            Err(e) => return Err(AgentError::Poll(e)),
        }
        // Unknown revent bits count as "ready": the handlers cope with
        // spurious wakeups, not with missed ones.
        let flags = |i: usize| fds[i].revents().unwrap_or(PollFlags::all());
        Ok(Ready {
            signal: !flags(0).is_empty(),
            timer: !flags(1).is_empty(),
            listener: !flags(2).is_empty(),
            probes: probe_slot.is_some_and(|i| !flags(i).is_empty()),
            host: host_slot.map(flags).filter(|f| !f.is_empty()),
            pipes: pipe_slots
                .into_iter()
                .filter(|&(_, _, i)| !flags(i).is_empty())
                .map(|(name, s, _)| (name.to_string(), s))
                .collect(),
            stdin: stdin_slots
                .into_iter()
                .filter(|&(_, i)| !flags(i).is_empty())
                .map(|(name, _)| name.to_string())
                .collect(),
        })
    }

    /// The earliest time-based action.
    fn next_deadline(&self) -> Option<Instant> {
        let stop = self.stopping.as_ref().map(|s| {
            if s.killed {
                s.give_up_at
            } else {
                s.kill_at.min(s.give_up_at)
            }
        });
        let drain = self.containers.drain_deadline();
        let linger = self.finished.flatten();
        let probe = self.prober.next_deadline();
        [stop, drain, linger, probe].into_iter().flatten().min()
    }

    // ---- signals and the reaper ----

    fn handle_signals(&mut self, now: Instant) {
        let mut reap = false;
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let sig = i32::try_from(info.ssi_signo)
                        .ok()
                        .and_then(|n| Signal::try_from(n).ok());
                    match sig {
                        Some(Signal::SIGCHLD) => reap = true,
                        Some(sig @ (Signal::SIGTERM | Signal::SIGINT)) => {
                            log::info!("got {sig}: stopping the pod");
                            self.begin_stop(TERM_GRACE, now);
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::warn!("reading the signalfd: {e}");
                    break;
                }
            }
        }
        if reap {
            self.reap(now);
        }
    }

    /// Collects every exited child: the containers' main processes (routed
    /// by pid), and orphans reparented to PID 1.
    fn reap(&mut self, now: Instant) {
        loop {
            let (pid, t) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Termination::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Termination::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    break;
                }
            };
            match self.containers.running_by_pid(pid.as_raw()) {
                Some(c) => {
                    log::info!("{}: process {pid} ended: {t:?}", c.name());
                    c.on_reaped(t, now);
                }
                None => log::debug!("reaped orphan {pid}: {t:?}"),
            }
        }
    }

    // ---- the containers ----

    fn run_container(&mut self, id: u64, spec: RunSpec, now: Instant) {
        if self.stopping.is_some() {
            return self.reply(id, Err("the agent is shutting down".into()));
        }
        // A container that became done this round is reported before its
        // name is checked, and before the new container's events.
        self.report_done(now);
        if let Some(msg) = self.containers.refuse_run(&spec.name) {
            return self.reply(id, Err(msg));
        }
        if let Err(e) = container::validate(&spec) {
            return self.reply(id, Err(Chain(&e).to_string()));
        }
        if let Err(e) = spec.probes.validate() {
            return self.reply(id, Err(e));
        }
        self.finished = None;
        if let Some(cgroups) = self.cgroups.as_ref().filter(|_| self.containers.is_empty()) {
            // Only in an empty pod: the cgroup of a live container, even one
            // emptied by its exit, still holds its OOM count.
            cgroups.remove_leftovers();
        }
        let started = self.prepare_root(&spec).and_then(|root| {
            Container::start(&spec, self.cgroups.as_ref(), root, &mut self.seccomp)
        });
        match started {
            Ok(c) => {
                let (name, pid) = (c.name().to_string(), c.pid());
                log::info!("{name}: started {:?} as pid {pid}", spec.argv());
                self.containers.insert(c);
                self.prober.add(&name, &spec.probes, now);
                self.reply(id, Ok(Reply::Started { pid }));
                self.queue(FrameKind::Event, Event::ContainerStarted { name, pid });
            }
            Err(e) => {
                let msg = Chain(&e).to_string();
                log::warn!("{}: {msg}", spec.name);
                self.reply(id, Err(msg));
                self.queue_exit(Event::ContainerExited {
                    name: spec.name,
                    exit_code: e.start_exit_code(),
                    reason: REASON_ERROR.into(),
                    signal: None,
                });
                self.containers.note_failed_start();
                self.check_finished(now);
            }
        }
    }

    /// Mounts the spec's image (once per device) and makes the container's
    /// overlay; `None` without a rootfs.
    fn prepare_root(&mut self, spec: &RunSpec) -> Result<Option<ContainerRoot>, ContainerError> {
        let Some(rootfs) = &spec.rootfs else {
            return Ok(None);
        };
        let lower = self.filesystems.mount_image(rootfs)?;
        let root = self.filesystems.prepare(
            &spec.name,
            &lower,
            &spec.volume_mounts,
            spec.resolv_conf.as_deref(),
        )?;
        Ok(Some(root))
    }

    /// Starts an exec in a running container; its output and exit are
    /// reported under its id, like a container's.
    fn exec(&mut self, id: u64, spec: ExecSpec, now: Instant) {
        if self.stopping.is_some() {
            return self.reply(id, Err("the agent is shutting down".into()));
        }
        self.report_done(now);
        if let Err(e) = container::validate_exec(&spec) {
            return self.reply(id, Err(Chain(&e).to_string()));
        }
        if let Some(msg) = self.containers.refuse_run(&spec.id) {
            return self.reply(id, Err(format!("exec id: {msg}")));
        }
        let target = self
            .containers
            .get(&spec.container)
            .filter(|c| c.is_running() && !c.is_exec());
        let Some(target) = target else {
            let running: Vec<&str> = self
                .containers
                .iter()
                .filter(|c| c.is_running() && !c.is_exec())
                .map(Container::name)
                .collect();
            let msg = format!(
                "no running container named {:?} to exec in (running: {running:?})",
                spec.container
            );
            return self.reply(id, Err(msg));
        };
        match Container::exec(&spec, target) {
            Ok(c) => {
                let pid = c.pid();
                log::info!(
                    "{}: exec {:?} in {} as pid {pid}",
                    spec.id,
                    spec.argv,
                    spec.container
                );
                self.finished = None;
                self.containers.insert(c);
                self.reply(id, Ok(Reply::Started { pid }));
            }
            Err(e) => {
                let msg = Chain(&e).to_string();
                log::warn!("{}: {msg}", spec.id);
                self.reply(id, Err(msg));
            }
        }
    }

    /// Forwards stdin data to an exec (empty: EOF).
    fn stdin(&mut self, id: u64, name: &str, data: &[u8]) {
        let result = match self.containers.get_mut(name) {
            Some(c) => c
                .write_stdin(data)
                .map(|()| Reply::Ok)
                .map_err(|e| Chain(&e).to_string()),
            None => Err(format!(
                "no running container or exec named {name:?} (running: {:?})",
                self.containers.running_names()
            )),
        };
        self.reply(id, result);
    }

    fn read_pipe(&mut self, name: &str, stream: Stream, now: Instant) {
        let Some(c) = self.containers.get_mut(name) else {
            return;
        };
        if let PipeRead::Data(data) = c.read(stream, now) {
            if self.prober.is_exec(name) {
                return self.prober.exec_output(name, &data);
            }
            let name = name.to_string();
            let time = Some(wall_clock_nanos());
            self.queue(
                FrameKind::Event,
                Event::Output {
                    name,
                    stream,
                    data,
                    time,
                },
            );
        }
    }

    /// Reports each done container: `Oom` if its cgroup saw one, then
    /// `ContainerExited`.
    fn report_done(&mut self, now: Instant) {
        let done = self.containers.take_done();
        if done.is_empty() {
            return;
        }
        for c in done {
            let report = c.finish();
            let name = c.name().to_string();
            if self.prober.is_exec(&name) {
                if let Some(r) = self.prober.exec_done(&name, report.exit_code, now) {
                    self.report_probe(r);
                }
                self.report_hooks();
                continue;
            }
            if !c.is_exec() {
                self.prober.remove(&name);
            }
            log::info!("{name}: exit code {} ({})", report.exit_code, report.reason);
            if report.reason == REASON_OOM_KILLED {
                self.queue(FrameKind::Event, Event::Oom { name: name.clone() });
            }
            self.queue_exit(Event::ContainerExited {
                name,
                exit_code: report.exit_code,
                reason: report.reason.into(),
                signal: report.signal,
            });
        }
        self.check_finished(now);
    }

    /// After a report: if that was the last live container, the pod is
    /// finished and the wait for a host (re)starts.
    fn check_finished(&mut self, now: Instant) {
        if self.containers.pod_finished() {
            log::info!("pod finished: no container is running");
            self.finished = Some(self.host.is_none().then_some(now + LINGER));
        }
    }

    // ---- stopping ----

    fn begin_stop(&mut self, grace: Duration, now: Instant) {
        let (kill_at, give_up_at) = (now + grace, now + grace + KILL_WAIT);
        if let Some(s) = &mut self.stopping {
            // Already stopping: a shorter grace may hurry it, never delay it.
            s.kill_at = s.kill_at.min(kill_at);
            s.give_up_at = s.give_up_at.min(give_up_at);
            return;
        }
        for c in self.containers.iter().filter(|c| c.is_running()) {
            log::info!("{}: sending SIGTERM, SIGKILL in {grace:?}", c.name());
            if let Err(e) = c.signal(Signal::SIGTERM as i32) {
                log::warn!("{}", Chain(&e));
            }
        }
        self.stopping = Some(Stopping {
            kill_at,
            killed: false,
            give_up_at,
        });
    }

    fn check_deadlines(&mut self, now: Instant) {
        if let Some(s) = &mut self.stopping {
            if !s.killed && now >= s.kill_at {
                s.killed = true;
                for c in self.containers.iter() {
                    log::info!("{}: grace period over, sending SIGKILL", c.name());
                    c.kill_all();
                }
            }
            if now >= s.give_up_at {
                log::warn!("stop: a container or the host is still busy; powering off anyway");
                self.power_off = true;
                // Report exited containers even if something still holds
                // their pipes; the flush that follows sends them if it can.
                for c in self.containers.iter_mut().filter(|c| !c.is_running()) {
                    c.close_pipes();
                }
            }
        }
        for c in self.containers.iter_mut() {
            c.check_drain(now);
        }
        self.report_done(now);
        if self.finished.flatten().is_some_and(|t| now >= t) {
            log::info!("pod finished and no host for {LINGER:?}: powering off");
            self.power_off = true;
        }
    }

    /// During a stop: power off once every container is reported and the
    /// host has everything (or is gone).
    fn check_stop_complete(&mut self) {
        if self.stopping.is_some()
            && self.containers.is_empty()
            && (self.host.is_none() || self.outbox.is_empty())
        {
            self.power_off = true;
        }
    }

    // ---- the host ----

    fn accept(&mut self) -> Result<(), AgentError> {
        let Some(conn) = self.listener.accept()? else {
            return Ok(());
        };
        if self.host.take().is_some() {
            log::warn!("a new host connection replaces the current one");
            self.outbox.on_disconnect();
        }
        log::info!("host connected");
        self.host = Some(conn);
        let ready = Event::Ready {
            version: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").into(),
        };
        self.queue(FrameKind::Ready, ready);
        self.heartbeat.arm();
        if let Some(linger) = &mut self.finished {
            *linger = None;
        }
        Ok(())
    }

    fn read_host(&mut self, now: Instant) {
        let Some(h) = &mut self.host else { return };
        let read_err = h.read_available().err();
        let mut messages = Vec::new();
        // Handle complete frames even if the stream ended right after them.
        let frame_err = loop {
            match h.next_message() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break None,
                Err(ProtocolError::Decode(e)) => log::warn!("ignoring a malformed frame: {e}"),
                Err(e) => break Some(e),
            }
        };
        for m in messages {
            match m {
                Incoming::Request(msg) => self.handle_request(*msg, now),
                Incoming::Unsupported { id, error } => {
                    log::warn!("{error}");
                    if let Some(id) = id {
                        self.reply(id, Err(error));
                    }
                }
            }
        }
        match frame_err.or(read_err) {
            None => {}
            Some(ProtocolError::Closed) => {
                log::info!("host closed the connection");
                self.disconnect(now);
            }
            Some(e) => {
                log::warn!("dropping the host connection: {}", Chain(&e));
                self.disconnect(now);
            }
        }
    }

    fn handle_request(&mut self, msg: HostMessage, now: Instant) {
        let HostMessage { id, request } = msg;
        match request {
            Request::Run(spec) => self.run_container(id, spec, now),
            Request::Ping => self.reply(id, Ok(Reply::Pong)),
            Request::Signal { name, signal } => {
                let result = match self.containers.get(&name) {
                    Some(c) => c
                        .signal(signal)
                        .map(|()| Reply::Ok)
                        .map_err(|e| Chain(&e).to_string()),
                    None => Err(format!(
                        "no running container named {name:?} (running: {:?})",
                        self.containers.running_names()
                    )),
                };
                self.reply(id, result);
            }
            Request::Shutdown => {
                log::info!("shutdown requested by the host");
                self.reply(id, Ok(Reply::Ok));
                self.begin_stop(SHUTDOWN_GRACE, now);
            }
            #[cfg(feature = "test-hooks")]
            Request::Debug(DebugCommand::StopHeartbeat) => {
                log::info!("debug: heartbeats stopped");
                self.heartbeat.stopped = true;
                self.heartbeat.disarm();
                self.reply(id, Ok(Reply::Ok));
            }
            #[cfg(feature = "test-hooks")]
            Request::Debug(DebugCommand::Panic) => {
                log::info!("debug: PID 1 exits, the kernel panics");
                self.reply(id, Ok(Reply::Ok));
                std::process::exit(1);
            }
            // A release agent takes no fault injection from the host.
            #[cfg(not(feature = "test-hooks"))]
            Request::Debug(_) => {
                let why = "debug requests are refused: this agent was built without test-hooks";
                self.reply(id, Err(why.into()));
            }
            Request::Configure(config) => self.configure(id, &config),
            Request::Exec(spec) => self.exec(id, spec, now),
            Request::Stdin { name, data } => self.stdin(id, &name, &data),
            Request::Stats { name } => {
                let result = self.with_container(&name, |c| c.stats().map(Reply::Stats));
                self.reply(id, result);
            }
            Request::Pause { name } => {
                let result = self.with_container(&name, |c| c.freeze(true).map(|()| Reply::Ok));
                self.reply(id, result);
            }
            Request::Resume { name } => {
                let result = self.with_container(&name, |c| c.freeze(false).map(|()| Reply::Ok));
                self.reply(id, result);
            }
            Request::WriteVolume(files) => self.write_volume(id, &files),
            Request::RunHook(spec) => {
                let result = self.run_hook(&spec, now).map(|()| Reply::Ok);
                self.reply(id, result);
            }
            Request::ResizePty { name, rows, cols } => {
                let result =
                    self.with_container(&name, |c| c.resize_pty(rows, cols).map(|()| Reply::Ok));
                self.reply(id, result);
            }
        }
    }

    /// Applies `f` to the running container (or exec) `name`; the error
    /// names the running ones when there is no such container.
    fn with_container(
        &self,
        name: &str,
        f: impl FnOnce(&Container) -> Result<Reply, ContainerError>,
    ) -> Result<Reply, String> {
        match self.containers.get(name).filter(|c| c.is_running()) {
            Some(c) => f(c).map_err(|e| Chain(&e).to_string()),
            None => Err(format!(
                "no running container named {name:?} (running: {:?})",
                self.containers.running_names()
            )),
        }
    }

    /// Fills or replaces the files of a volume ([`volume::write`]); the
    /// files' content is never logged (it may be a Secret's).
    fn write_volume(&mut self, id: u64, files: &VolumeFiles) {
        let result = volume::write(&self.filesystems.volumes_dir(), files);
        match result {
            Ok(()) => {
                log::info!("volume {}: wrote {} files", files.name, files.files.len());
                self.reply(id, Ok(Reply::Ok));
            }
            Err(e) => {
                let msg = Chain(&e).to_string();
                log::warn!("{msg}");
                self.reply(id, Err(msg));
            }
        }
    }

    /// Applies the pod identity, then the heartbeat period (validated with
    /// the rest, so an invalid request changes nothing).
    fn configure(&mut self, id: u64, config: &PodConfig) {
        if let Err(e) = identity::apply(config) {
            let msg = Chain(&e).to_string();
            log::warn!("configure: {msg}");
            return self.reply(id, Err(msg));
        }
        let pod_limits = match &self.cgroups {
            Some(cgroups) => cgroups.set_pod_limits(&config.pod_limits),
            None if config.pod_limits.is_unlimited() => Ok(()),
            None => Err(CgroupError::NotMounted(CGROUP_MOUNT.into())),
        };
        if let Err(e) = pod_limits {
            let msg = format!("the pod's limits: {}", Chain(&e));
            log::warn!("configure: {msg}");
            return self.reply(id, Err(msg));
        }
        if let Some(ms) = config.heartbeat_ms {
            self.heartbeat.period = Duration::from_millis(ms);
            if self.host.is_some() {
                // A no-op once heartbeats are stopped.
                self.heartbeat.arm();
            }
        }
        log::info!(
            "configured pod {} (hostname {})",
            config.pod_uid,
            config.hostname
        );
        self.reply(id, Ok(Reply::Ok));
    }

    fn flush_host(&mut self, now: Instant) {
        let Some(h) = &self.host else { return };
        if self.outbox.is_empty() {
            return;
        }
        match self.outbox.write_to(&mut h.writer()) {
            Ok(exits) => self.exits_written += exits,
            Err(e) => {
                log::warn!("writing to the host failed: {e}; dropping the connection");
                self.disconnect(now);
            }
        }
    }

    fn disconnect(&mut self, now: Instant) {
        self.host = None;
        self.outbox.on_disconnect();
        self.heartbeat.disarm();
        if let Some(linger) = &mut self.finished {
            if self.exits_written == self.exits_queued {
                log::info!("pod finished and the host hung up: powering off");
                self.power_off = true;
            } else {
                *linger = Some(now + LINGER);
            }
        }
    }

    fn reply(&mut self, id: u64, result: Result<Reply, String>) {
        let msg = AgentMessage::Reply { id, result };
        self.push(FrameKind::Reply, &msg);
    }

    fn queue(&mut self, kind: FrameKind, event: Event) {
        self.push(kind, &AgentMessage::Event(event));
    }

    fn queue_exit(&mut self, event: Event) {
        if self.push(FrameKind::Exit, &AgentMessage::Event(event)) {
            self.exits_queued += 1;
        }
    }

    /// Queues a message; false if it could not be encoded.
    fn push(&mut self, kind: FrameKind, msg: &AgentMessage) -> bool {
        // Only an absurdly long name or error could make a frame too large.
        self.outbox
            .push(kind, msg)
            .inspect_err(|e| log::warn!("dropping a message for the host: {}", Chain(e)))
            .is_ok()
    }
}

/// Now on the wall clock, in nanoseconds since the Unix epoch: the stamp of
/// an output chunk (`unipod logs --timestamps`). 0 before 1970; saturates
/// in the year 2554.
fn wall_clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
