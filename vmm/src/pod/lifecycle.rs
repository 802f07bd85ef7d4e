//! The lifecycle of a manifest pod, as Kubernetes defines it: init
//! containers one at a time, then the app containers, restarts with
//! back-off, container states and the pod phase.
//!
//! # Design
//! A pure state machine with explicit time (`now: Instant` on every call),
//! so that every transition is unit-tested without a VM. The supervisor
//! feeds it what the agent reports ([`Lifecycle::started`],
//! [`Lifecycle::exited`], [`Lifecycle::heard_from_agent`], ...) and carries
//! out the [`Action`]s that [`Lifecycle::due`] returns (start a container,
//! signal one, shut the VM down). [`Lifecycle::status`] renders the
//! Kubernetes `PodStatus` that goes into `status.json`.
//!
//! Rules (those of the kubelet):
//! - Init containers run one at a time, in order; each must exit 0 before
//!   the next starts. A failed init container is restarted (with back-off)
//!   unless `restartPolicy: Never`, in which case the pod is Failed. The app
//!   containers start together once every init container succeeded.
//! - An app container that exits is restarted under `Always`, under
//!   `OnFailure` only if it failed (non-zero), never under `Never`.
//! - Back-off: the first restart is immediate, the next waits the base
//!   (10 s), doubling each time, at most 300 s (Waiting: CrashLoopBackOff);
//!   a container that ran for 10 minutes starts over at an immediate
//!   restart. `restartCount` counts restarts begun.
//! - Phase: Pending until every init container succeeded and every app
//!   container started; Failed on a failed init container under Never.
//!   Then, over the app containers: one Waiting that never ran makes it
//!   Pending; one running makes it Running; with none running, Always means
//!   Running (a restart is coming), all exited 0 means Succeeded, Never
//!   means Failed and OnFailure Running. A requested stop turns the policy
//!   into Never. Agent silence makes it Unknown (see [`super::phase`]) until
//!   the agent is heard again; too long makes it Failed, and so does a lost
//!   VM (its containers end as ContainerStatusUnknown, exit code 137, as the
//!   kubelet reports containers it can no longer find).
//! - The pod is over once its phase is Succeeded or Failed and nothing runs
//!   or is starting: then [`Action::Shutdown`] is due once.
//! - Stop: SIGTERM to every running container, SIGKILL to those left after
//!   the grace period; containers waiting for a (re)start are not started.
//! - Probes (run by the agent, which reports changes: [`Lifecycle::probe`]):
//!   a container with a readiness probe is not ready until it succeeds,
//!   one with a startup probe is not `started` until that succeeds; a
//!   liveness or startup failure kills the container (its stop signal, then
//!   SIGKILL after the probe's grace period, else the pod's) and the restart
//!   policy decides on a restart, as for any exit. Ready containers make
//!   the ContainersReady and Ready conditions.
//! - A pod with a main container ([`Lifecycle::with_main`], `unipod run --
//!   CMD`) ends when that container ends for good: its exit decides
//!   Succeeded or Failed, and the others are shut down with the VM.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use guest_agent::protocol::{HookKind, ProbeKind};

use super::manifest::RestartPolicy;
use super::phase::{PhaseTracker, PodPhase};
use super::status::{
    format_time, ContainerState, ContainerStatus, PodCondition, PodEvent, PodStatus,
};

/// The kubelet's initial restart back-off.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The kubelet's longest restart back-off.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A container that ran this long gets its back-off reset.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Environment variable: the back-off base in milliseconds (for tests).
pub const BACKOFF_ENV: &str = "UNIPOD_RESTART_BACKOFF_MS";

/// Exit code of a container the kubelet can no longer find.
const LOST_EXIT_CODE: i32 = 137;
/// Exit code of a container that could not be started, as the kubelet
/// reports it (the agent may follow with the shell-style 126 or 127).
const START_ERROR_EXIT_CODE: i32 = 128;

/// How a pod behaves.
#[derive(Clone, Copy, Debug)]
pub struct LifecycleConfig {
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// The back-off after the second exit; doubles each time.
    pub backoff_base: Duration,
    /// The longest back-off.
    pub backoff_cap: Duration,
    /// A run this long resets the back-off.
    pub backoff_reset: Duration,
    /// Silence that makes the pod Unknown.
    pub unknown_after: Duration,
    /// Unknown this long makes it Failed.
    pub give_up_after: Duration,
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
}

impl LifecycleConfig {
    /// Kubernetes' back-off, with the base from [`BACKOFF_ENV`] when set;
    /// the pod is Unknown after `unknown_after` of silence and Failed after
    /// `give_up_after` of Unknown.
    pub fn new(
        restart_policy: RestartPolicy,
        grace: Duration,
        unknown_after: Duration,
        give_up_after: Duration,
    ) -> LifecycleConfig {
        let base = std::env::var(BACKOFF_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(BACKOFF_BASE, Duration::from_millis);
        LifecycleConfig {
            restart_policy,
            backoff_base: base,
            backoff_cap: BACKOFF_CAP.max(base),
            backoff_reset: BACKOFF_RESET,
            unknown_after,
            give_up_after,
            grace,
        }
    }
}

/// What a container is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Its name.
    pub name: String,
    /// The image as the manifest names it.
    pub image: String,
    /// The image's digest.
    pub image_id: String,
    /// The signal that asks it to stop: its image's `StopSignal`, else
    /// SIGTERM.
    pub stop_signal: i32,
    /// Which probes it has.
    pub probes: ProbeInfo,
    /// Which lifecycle hooks it has.
    pub hooks: HookInfo,
    /// An init container with `restartPolicy: Always`.
    pub sidecar: bool,
}

/// What the lifecycle needs to know of a container's hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookInfo {
    /// `lifecycle.postStart`.
    pub post_start: Option<HookRun>,
    /// `lifecycle.preStop`.
    pub pre_stop: Option<HookRun>,
}

impl HookInfo {
    fn get(&self, kind: HookKind) -> Option<&HookRun> {
        match kind {
            HookKind::PostStart => self.post_start.as_ref(),
            HookKind::PreStop => self.pre_stop.as_ref(),
        }
    }
}

/// How a hook runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookRun {
    /// `sleep`: timed here.
    Sleep(Duration),
    /// Anything else: run by the supervisor ([`Action::Hook`]), which
    /// reports back through [`Lifecycle::hook_done`].
    Handler,
}

/// After a `preStop` hook, the stop signal has at least this long before
/// SIGKILL, as the kubelet's minimum grace period.
const MIN_GRACE_AFTER_PRE_STOP: Duration = Duration::from_secs(2);

/// What the lifecycle needs to know of a container's probes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeInfo {
    /// It has a readiness probe: not ready until it succeeds.
    pub readiness: bool,
    /// It has a startup probe: not started until it succeeds.
    pub startup: bool,
    /// The grace of a kill after a liveness failure (else the pod's).
    pub liveness_grace: Option<Duration>,
    /// The grace of a kill after a startup failure (else the pod's).
    pub startup_grace: Option<Duration>,
}

/// The signal number of an image's `StopSignal` (`SIGQUIT`, `QUIT` or
/// `3`), as containerd reads it; `None` when it names no signal.
pub fn parse_stop_signal(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok().map(|s| s as i32);
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// Something the supervisor must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the container (its restart count is already updated).
    Run(String),
    /// Send the signal to the container.
    Signal(String, i32),
    /// Run the container's hook, within the time given (none: unbounded),
    /// and report it with [`Lifecycle::hook_done`].
    Hook(String, HookKind, Option<Duration>),
    /// The pod is over: stop the VM.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Termination {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started: Option<Instant>,
    finished: Instant,
    /// Recorded from a refused start; the agent's exit report may refine it.
    start_error: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not started yet (`PodInitializing` behind init containers, else
    /// `ContainerCreating`).
    Initial,
    /// `Run` sent, no answer yet.
    Starting,
    /// Its configuration cannot be resolved yet (a ConfigMap or Secret is
    /// missing); tried again at `retry_at`, without counting a restart.
    ConfigError { message: String, retry_at: Instant },
    /// Its image could not be pulled (`ErrImagePull`), or the next pull
    /// waits for the back-off (`ImagePullBackOff`); `message` says why.
    ImagePull { backoff: bool, message: String },
    Running {
        since: Instant,
        signalled: Option<i32>,
        /// Its readiness probe passed (or it has none).
        ready: bool,
        /// Its startup probe passed (or it has none).
        started: bool,
        /// A probe or a `postStart` hook failed: SIGKILL is due then (the
        /// stop signal first, after a `preStop` hook).
        kill_at: Option<Instant>,
        post_start: Step,
        pre_stop: Step,
    },
    /// Ended; `restart_at` when a restart is due.
    Terminated {
        t: Termination,
        restart_at: Option<Instant>,
    },
}

/// Where a running container's hook is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Not begun (or the container has no such hook).
    Idle,
    /// To begin at the next [`Lifecycle::due`].
    Due,
    /// Under way; a `sleep` ends by itself then.
    Running { sleep_until: Option<Instant> },
    /// Finished then.
    Done(Instant),
}

impl Step {
    fn pending(self) -> bool {
        matches!(self, Step::Due | Step::Running { .. })
    }
}

#[derive(Clone, Debug)]
struct Track {
    info: ContainerInfo,
    state: State,
    /// The termination before the current run.
    last: Option<Termination>,
    restarts: u32,
    /// Exits since the last long run, for the back-off.
    crashes: u32,
    /// The last configuration error, so that a retry failing the same way
    /// records no new event.
    config_error: Option<String>,
}

impl Track {
    fn new(info: ContainerInfo) -> Track {
        Track {
            info,
            state: State::Initial,
            last: None,
            restarts: 0,
            crashes: 0,
            config_error: None,
        }
    }

    fn is_active(&self) -> bool {
        matches!(self.state, State::Starting | State::Running { .. })
    }

    /// Running, its `postStart` hook done.
    fn is_up(&self) -> bool {
        matches!(self.state, State::Running { post_start, .. } if !post_start.pending())
    }

    /// Up and ready.
    fn is_ready(&self) -> bool {
        self.is_up() && matches!(self.state, State::Running { ready: true, .. })
    }

    /// Its `postStart` hook holds the containers after it: it is being
    /// started or the hook is under way.
    fn holds_next(&self) -> bool {
        self.info.hooks.post_start.is_some()
            && match self.state {
                State::Starting => true,
                State::Running { post_start, .. } => post_start.pending(),
                _ => false,
            }
    }
}

/// One pod's lifecycle.
#[derive(Debug)]
pub struct Lifecycle {
    cfg: LifecycleConfig,
    name: String,
    init: Vec<Track>,
    app: Vec<Track>,
    /// The init container running or next; `init.len()` once all succeeded.
    next_init: usize,
    init_failed: bool,
    /// The agent answered: containers may start.
    agent_ready: bool,
    heartbeat: PhaseTracker,
    failure: Option<(String, String)>,
    stopping: Option<Instant>,
    /// Every app container ended for good: the sidecars are stopped.
    sidecars_stop: Option<Instant>,
    shutdown_sent: bool,
    /// The sandbox was lost: when its successor may start.
    new_sandbox: Option<Instant>,
    /// Sandboxes lost soon after they started, for the back-off.
    sandbox_crashes: u32,
    /// Set once the phase is final and nothing runs.
    over: Option<PodPhase>,
    /// The container whose end ends the pod, if any.
    main: Option<String>,
    /// The main container ended for good: the pod's final phase.
    main_ended: Option<PodPhase>,
    mono0: Instant,
    unix0: i64,
    started: Option<Instant>,
    /// When the current VM started.
    sandbox_since: Option<Instant>,
    conditions: [(bool, Instant); 4],
    events: Vec<PodEvent>,
    changed: bool,
}

const CONDITIONS: [&str; 4] = ["PodScheduled", "Initialized", "ContainersReady", "Ready"];

impl Lifecycle {
    /// A pod accepted at `now` (whose wall-clock time is `unix_now`).
    pub fn new(
        name: &str,
        cfg: LifecycleConfig,
        init: Vec<ContainerInfo>,
        app: Vec<ContainerInfo>,
        now: Instant,
        unix_now: i64,
    ) -> Lifecycle {
        let mut l = Lifecycle {
            cfg,
            name: name.to_string(),
            init: init.into_iter().map(Track::new).collect(),
            app: app.into_iter().map(Track::new).collect(),
            next_init: 0,
            init_failed: false,
            agent_ready: false,
            heartbeat: PhaseTracker::new(cfg.unknown_after, cfg.give_up_after),
            failure: None,
            stopping: None,
            sidecars_stop: None,
            shutdown_sent: false,
            new_sandbox: None,
            sandbox_crashes: 0,
            over: None,
            main: None,
            main_ended: None,
            mono0: now,
            unix0: unix_now,
            started: None,
            sandbox_since: None,
            conditions: [(true, now), (false, now), (false, now), (false, now)],
            events: Vec::new(),
            changed: true,
        };
        l.event(
            now,
            "Normal",
            "Scheduled",
            format!("Successfully assigned {name} to this host"),
        );
        l
    }

    /// Makes app container `name` the pod's main one: when it ends and
    /// will not restart, the pod ends, Succeeded if it exited 0, else
    /// Failed, whatever the other containers are doing.
    pub fn with_main(mut self, name: &str) -> Lifecycle {
        self.main = Some(name.to_string());
        self
    }

    /// The exit code of container `name`'s last run, once it ended.
    pub fn exit_code(&self, name: &str) -> Option<i32> {
        self.init
            .iter()
            .chain(&self.app)
            .find(|t| t.info.name == name)
            .and_then(|t| match &t.state {
                State::Terminated { t, .. } => Some(t.exit_code),
                _ => None,
            })
    }

    /// Ends the pod if `name` is the main container and it ended for good
    /// (a refused start waits for the agent's exit report and its code).
    fn check_main_ended(&mut self, name: &str) {
        if self.main.as_deref() != Some(name) || self.main_ended.is_some() {
            return;
        }
        let Some(track) = self.app.iter().find(|t| t.info.name == name) else {
            return;
        };
        if let State::Terminated {
            t,
            restart_at: None,
        } = &track.state
        {
            if !t.start_error {
                self.main_ended = Some(if t.exit_code == 0 {
                    PodPhase::Succeeded
                } else {
                    PodPhase::Failed
                });
            }
        }
    }

    /// The main container's start was refused and the agent's exit report,
    /// with the exit code to end the pod with, is still to come.
    fn main_awaits_exit_report(&self) -> bool {
        self.main_ended.is_none()
            && self.app.iter().any(|t| {
                Some(&t.info.name) == self.main.as_ref()
                    && matches!(&t.state, State::Terminated { t, .. } if t.start_error)
            })
    }

    fn time(&self, t: Instant) -> String {
        let offset = t.saturating_duration_since(self.mono0).as_secs();
        format_time(
            self.unix0
                .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX)),
        )
    }

    /// Records an event.
    pub fn event(&mut self, now: Instant, kind: &str, reason: &str, message: String) {
        let time = self.time(now);
        self.events.push(PodEvent {
            time,
            kind: kind.into(),
            reason: reason.into(),
            message,
        });
        self.changed = true;
    }

    /// Takes over `earlier`, the events a previous process recorded for
    /// this pod, in place of the ones recorded so far (when there are any).
    pub fn continue_events(&mut self, earlier: &[PodEvent]) {
        if !earlier.is_empty() {
            self.events = earlier.to_vec();
            self.changed = true;
        }
    }

    /// The events so far.
    pub fn events(&self) -> &[PodEvent] {
        &self.events
    }

    /// Whether anything changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// A VM started: the first one's start is `status.startTime`.
    pub fn vm_started(&mut self, now: Instant) {
        self.started.get_or_insert(now);
        self.sandbox_since = Some(now);
        self.changed = true;
    }

    /// The agent answered and the pod is configured: containers may start.
    pub fn agent_ready(&mut self, now: Instant) {
        self.agent_ready = true;
        self.heartbeat.heard_from_agent(now);
        self.changed = true;
    }

    /// Any message from the agent.
    pub fn heard_from_agent(&mut self, now: Instant) {
        if self.heartbeat.heard_from_agent(now).is_some() {
            self.event(
                now,
                "Normal",
                "AgentReachable",
                "the guest agent answers again".into(),
            );
        }
    }

    fn track_mut(&mut self, name: &str) -> Option<(&mut Track, bool)> {
        if let Some(t) = self.init.iter_mut().find(|t| t.info.name == name) {
            return Some((t, true));
        }
        self.app
            .iter_mut()
            .find(|t| t.info.name == name)
            .map(|t| (t, false))
    }

    /// Whether `name` is one of the pod's containers.
    pub fn has_container(&self, name: &str) -> bool {
        self.init
            .iter()
            .chain(&self.app)
            .any(|t| t.info.name == name)
    }

    /// Whether container `name` is running now.
    pub fn is_running(&self, name: &str) -> bool {
        self.init
            .iter()
            .chain(&self.app)
            .any(|t| t.info.name == name && matches!(t.state, State::Running { .. }))
    }

    /// The restart count of container `name` (its current log's number).
    pub fn restart_count(&self, name: &str) -> u32 {
        self.init
            .iter()
            .chain(&self.app)
            .find(|t| t.info.name == name)
            .map_or(0, |t| t.restarts)
    }

    /// The container process started.
    pub fn started(&mut self, name: &str, now: Instant) {
        let Some((track, is_init)) = self.track_mut(name) else {
            return;
        };
        if !matches!(track.state, State::Starting) {
            return;
        }
        track.state = State::Running {
            since: now,
            signalled: None,
            ready: !track.info.probes.readiness,
            started: !track.info.probes.startup,
            kill_at: None,
            post_start: if track.info.hooks.post_start.is_some() {
                Step::Due
            } else {
                Step::Idle
            },
            pre_stop: Step::Idle,
        };
        track.config_error = None;
        if !is_init {
            self.heartbeat.container_started(now);
        }
        let msg = format!("Started container {name}");
        self.event(now, "Normal", "Started", msg);
    }

    /// A probe's result changed, as the agent reports it (`message`: a
    /// failure's output). Readiness sets `ready`; a startup success sets
    /// `started`; a liveness or startup failure kills the container for a
    /// restart. Failures are `Unhealthy` events, as the kubelet records them.
    pub fn probe(
        &mut self,
        name: &str,
        kind: ProbeKind,
        success: bool,
        message: &str,
        now: Instant,
    ) {
        // The kubelet stops probing what it is terminating: a pod being
        // stopped, or sidecars being stopped once the app ended.
        if self.stopping.is_some() || self.over.is_some() || self.sidecars_stop.is_some() {
            return;
        }
        let pod_grace = self.cfg.grace;
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        let probes = track.info.probes.clone();
        let State::Running {
            ready,
            started,
            kill_at,
            ..
        } = &mut track.state
        else {
            return;
        };
        if kill_at.is_some() {
            return;
        }
        let mut events = Vec::new();
        if !success {
            let msg = format!("{} probe failed: {message}", kind.title());
            events.push(("Warning", "Unhealthy", msg));
        }
        match (kind, success) {
            (ProbeKind::Readiness, ok) => *ready = ok,
            (ProbeKind::Startup, true) => *started = true,
            (ProbeKind::Liveness, true) => {}
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                let grace = match kind {
                    ProbeKind::Liveness => probes.liveness_grace,
                    _ => probes.startup_grace,
                };
                *kill_at = Some(now + grace.unwrap_or(pod_grace));
                *ready = false;
                let msg = format!(
                    "Container {name} failed {} probe, will be restarted",
                    kind.lower()
                );
                events.push(("Normal", "Killing", msg));
            }
        }
        for (kind, reason, msg) in events {
            self.event(now, kind, reason, msg);
        }
        self.changed = true;
    }

    /// A hook begun by [`Action::Hook`] finished (`Err`: the kubelet's
    /// message). A failed `postStart` kills the container for a restart
    /// (`FailedPostStartHook`); a failed `preStop` is only recorded.
    pub fn hook_done(
        &mut self,
        name: &str,
        kind: HookKind,
        result: Result<(), String>,
        now: Instant,
    ) {
        let grace = self.cfg.grace;
        let stopping = self.stopping.is_some();
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        let State::Running {
            post_start,
            pre_stop,
            kill_at,
            ready,
            ..
        } = &mut track.state
        else {
            return;
        };
        let step = match kind {
            HookKind::PostStart => post_start,
            HookKind::PreStop => pre_stop,
        };
        if !matches!(step, Step::Running { .. }) {
            return;
        }
        *step = Step::Done(now);
        let mut events = Vec::new();
        if let Err(message) = result {
            let reason = match kind {
                HookKind::PostStart => "FailedPostStartHook",
                HookKind::PreStop => "FailedPreStopHook",
            };
            events.push(("Warning", reason, message));
            if kind == HookKind::PostStart && kill_at.is_none() && !stopping {
                *kill_at = Some(now + grace);
                *ready = false;
                // The kubelet's kill message for it is the reason itself.
                events.push(("Normal", "Killing", "FailedPostStartHook".into()));
            }
        }
        for (kind, reason, msg) in events {
            self.event(now, kind, reason, msg);
        }
        self.changed = true;
    }

    /// The container's configuration cannot be resolved (`message` is the
    /// kubelet's, e.g. `configmap "x" not found`): it waits with
    /// `CreateContainerConfigError` and is tried again after
    /// [`CONFIG_RETRY`]. The event is recorded when the message changes.
    pub fn config_error(&mut self, name: &str, message: &str, now: Instant) {
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        if !matches!(track.state, State::Starting) {
            return;
        }
        let repeated = track.config_error.as_deref() == Some(message);
        track.config_error = Some(message.to_owned());
        track.state = State::ConfigError {
            message: message.to_owned(),
            retry_at: now + CONFIG_RETRY,
        };
        if !repeated {
            self.event(now, "Warning", "Failed", format!("Error: {message}"));
        }
        self.changed = true;
    }

    /// The container's image could not be pulled (`message`: the
    /// registry's reason): it waits with `ErrImagePull` until
    /// [`Lifecycle::image_pull_backoff`].
    pub fn image_pull_failed(&mut self, name: &str, message: &str, now: Instant) {
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        track.state = State::ImagePull {
            backoff: false,
            message: message.to_owned(),
        };
        self.event(now, "Warning", "Failed", "Error: ErrImagePull".into());
        self.changed = true;
    }

    /// The container's next pull waits for the back-off: it waits with
    /// `ImagePullBackOff`, with the kubelet's events.
    pub fn image_pull_backoff(&mut self, name: &str, now: Instant) {
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        if !matches!(track.state, State::ImagePull { backoff: false, .. }) {
            return;
        }
        let message = format!("Back-off pulling image \"{}\"", track.info.image);
        track.state = State::ImagePull {
            backoff: true,
            message: message.clone(),
        };
        self.event(now, "Normal", "BackOff", message);
        self.event(now, "Warning", "Failed", "Error: ImagePullBackOff".into());
        self.changed = true;
    }

    /// The container's image is there now: it waits to be created.
    pub fn image_present(&mut self, name: &str) {
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        if matches!(track.state, State::ImagePull { .. }) {
            track.state = State::Initial;
            self.changed = true;
        }
    }

    /// The agent refused to start the container (`message` says why).
    pub fn start_failed(&mut self, name: &str, message: &str, now: Instant) {
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        if !matches!(track.state, State::Starting) {
            return;
        }
        let t = Termination {
            exit_code: START_ERROR_EXIT_CODE,
            signal: None,
            reason: "StartError".into(),
            message: Some(message.to_string()),
            started: None,
            finished: now,
            start_error: true,
        };
        self.event(now, "Warning", "Failed", format!("Error: {message}"));
        self.terminate(name, t, now);
    }

    /// The container exited (as the agent reports it: Kubernetes exit code,
    /// reason and signal).
    pub fn exited(
        &mut self,
        name: &str,
        exit_code: i32,
        reason: &str,
        signal: Option<i32>,
        now: Instant,
    ) {
        let Some((track, _)) = self.track_mut(name) else {
            return;
        };
        let reason = match reason {
            // Kubernetes has no Signaled reason: a killed container is an Error.
            "Signaled" => "Error",
            r => r,
        };
        match &mut track.state {
            State::Running { since, .. } => {
                let t = Termination {
                    exit_code,
                    signal,
                    reason: reason.to_string(),
                    message: None,
                    started: Some(*since),
                    finished: now,
                    start_error: false,
                };
                self.terminate(name, t, now);
            }
            // The exit report that follows a refused start: keep its code.
            State::Terminated { t, .. } if t.start_error => {
                t.exit_code = exit_code;
                t.start_error = false;
                self.changed = true;
                self.check_main_ended(name);
            }
            _ => {}
        }
    }

    /// Records a termination and decides on the restart.
    fn terminate(&mut self, name: &str, t: Termination, now: Instant) {
        let policy = self.cfg.restart_policy;
        let stopping = self.stopping.is_some();
        let (base, cap, reset) = (
            self.cfg.backoff_base,
            self.cfg.backoff_cap,
            self.cfg.backoff_reset,
        );
        let pod = self.name.clone();
        let finishing = self.sidecars_stop.is_some();
        let Some((track, is_init)) = self.track_mut(name) else {
            return;
        };
        let sidecar = track.info.sidecar;
        let failed = t.exit_code != 0;
        let restart = !stopping
            && match (is_init, policy) {
                // A sidecar restarts whatever the pod's policy, until the
                // app containers are done.
                _ if sidecar => !finishing,
                (_, RestartPolicy::Never) => false,
                (true, _) | (false, RestartPolicy::OnFailure) => failed,
                (false, RestartPolicy::Always) => true,
            };
        let ran = t
            .started
            .map_or(Duration::ZERO, |s| t.finished.saturating_duration_since(s));
        if ran >= reset {
            track.crashes = 0;
        }
        let restart_at = restart.then(|| {
            track.crashes += 1;
            now + backoff(track.crashes, base, cap)
        });
        track.state = State::Terminated { t, restart_at };
        let delayed = restart_at.filter(|at| *at > now).is_some();
        if is_init && !sidecar && !failed {
            self.next_init += 1;
        }
        if is_init && !sidecar && failed && policy == RestartPolicy::Never && !stopping {
            self.init_failed = true;
        }
        if delayed {
            let msg = format!("Back-off restarting failed container {name} in pod {pod}");
            self.event(now, "Warning", "BackOff", msg);
        }
        self.changed = true;
        self.check_main_ended(name);
    }

    /// The VM or the agent link is gone (`reason` and `message` say how),
    /// handled as the kubelet handles a dead sandbox. Unless the policy is
    /// `Never`, the pod is being stopped or nothing is left to start, the
    /// pod gets a new sandbox: its containers are lost
    /// (`ContainerStatusUnknown`) and restart under the policy with their
    /// back-off, the init containers from the first, once the new VM's
    /// agent is ready. Otherwise the pod fails ([`Lifecycle::vm_failed`]).
    /// `killing`: the VM still runs and is killed for it.
    pub fn sandbox_lost(&mut self, reason: &str, message: String, killing: bool, now: Instant) {
        if self.over.is_some() {
            return;
        }
        let policy = self.cfg.restart_policy;
        let initialized = self.next_init >= self.init.len();
        // Under OnFailure a container that succeeded stays done.
        let to_start = self.app.iter().any(|t| match &t.state {
            State::Terminated { restart_at, .. } => restart_at.is_some(),
            _ => true,
        });
        let recreate = policy != RestartPolicy::Never
            && self.stopping.is_none()
            && self.sidecars_stop.is_none()
            && self.main_ended.is_none()
            && (to_start || !initialized);
        if !recreate {
            self.vm_failed(reason, message, now);
            return;
        }
        self.event(now, "Warning", reason, message);
        self.event(
            now,
            "Normal",
            "SandboxChanged",
            "Pod sandbox changed, it will be killed and re-created.".into(),
        );
        let lost: Vec<(String, Option<Instant>)> = (self.init.iter().chain(&self.app))
            .filter(|t| t.is_active())
            .map(|t| {
                let since = match t.state {
                    State::Running { since, .. } => Some(since),
                    _ => None,
                };
                (t.info.name.clone(), since)
            })
            .collect();
        for (name, started) in lost {
            if killing {
                let msg = format!("Stopping container {name}");
                self.event(now, "Normal", "Killing", msg);
            }
            self.terminate(&name, lost_container(started, now), now);
        }
        // The new sandbox runs the init containers again, from the first.
        for track in &mut self.init {
            if let State::Terminated { restart_at, .. } = &mut track.state {
                restart_at.get_or_insert(now);
            }
        }
        self.next_init = 0;
        self.agent_ready = false;
        self.heartbeat = PhaseTracker::new(self.cfg.unknown_after, self.cfg.give_up_after);
        // A VM that keeps dying by itself is replaced ever more slowly, as
        // its containers would be restarted.
        let lived = self.sandbox_since.map_or(Duration::ZERO, |s| now - s);
        if lived >= self.cfg.backoff_reset {
            self.sandbox_crashes = 0;
        }
        self.schedule_new_sandbox(now);
    }

    /// A VM could not be started (`message` says why). The first one fails
    /// the pod (a broken kernel or snapshot shows at once); one that
    /// replaces a lost VM is tried again after the sandbox back-off, as the
    /// kubelet retries a sandbox it fails to create.
    pub fn sandbox_start_failed(&mut self, message: String, now: Instant) {
        if self.over.is_some() {
            return;
        }
        // No VM was lost yet: this is the pod's first.
        if self.sandbox_crashes == 0 || self.stopping.is_some() {
            self.vm_failed("VMStartFailed", message, now);
            return;
        }
        self.event(
            now,
            "Warning",
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: {message}"),
        );
        self.schedule_new_sandbox(now);
    }

    /// Asks for a new sandbox after the VM back-off, one step longer than
    /// the last.
    fn schedule_new_sandbox(&mut self, now: Instant) {
        self.sandbox_crashes += 1;
        let wait = backoff(
            self.sandbox_crashes,
            self.cfg.backoff_base,
            self.cfg.backoff_cap,
        );
        self.new_sandbox = Some(now + wait);
        self.changed = true;
    }

    /// When the new sandbox [`Lifecycle::sandbox_lost`] asked for may
    /// start, once; `None` when none was asked for since the last call.
    pub fn take_new_sandbox(&mut self) -> Option<Instant> {
        self.new_sandbox.take()
    }

    /// The VM or the agent link is gone for good.
    pub fn vm_failed(&mut self, reason: &str, message: String, now: Instant) {
        if self.over.is_some() {
            return;
        }
        for track in self.init.iter_mut().chain(self.app.iter_mut()) {
            if track.is_active() {
                let started = match track.state {
                    State::Running { since, .. } => Some(since),
                    _ => None,
                };
                track.state = State::Terminated {
                    t: lost_container(started, now),
                    restart_at: None,
                };
            }
        }
        self.event(now, "Warning", reason, message.clone());
        self.failure = Some((reason.to_string(), message));
        self.over = Some(PodPhase::Failed);
        self.changed = true;
    }

    /// A graceful stop: each container's stop signal (SIGTERM unless its
    /// image names another) now, SIGKILL after the grace period.
    pub fn stop(&mut self, now: Instant) {
        if self.stopping.is_some() || self.over.is_some() {
            return;
        }
        self.stopping = Some(now);
        let names: Vec<String> = self
            .init
            .iter()
            .chain(&self.app)
            .filter(|t| t.is_active())
            .map(|t| t.info.name.clone())
            .collect();
        for name in names {
            self.event(
                now,
                "Normal",
                "Killing",
                format!("Stopping container {name}"),
            );
        }
        // Pending restarts are off.
        for track in self.init.iter_mut().chain(self.app.iter_mut()) {
            if let State::Terminated { restart_at, .. } = &mut track.state {
                *restart_at = None;
            }
        }
        self.changed = true;
    }

    /// A graceful stop with `grace` in place of
    /// `terminationGracePeriodSeconds` (`unipod delete --grace-period`). A
    /// stop under way keeps its start and may only be shortened, as the
    /// kubelet shortens a pod's termination on a second, shorter delete.
    pub fn stop_with_grace(&mut self, grace: Duration, now: Instant) {
        if self.over.is_some() {
            return;
        }
        if self.stopping.is_some() {
            self.cfg.grace = self.cfg.grace.min(grace);
            return;
        }
        self.cfg.grace = grace;
        self.stop(now);
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// The final phase, once the pod is over.
    pub fn over(&self) -> Option<PodPhase> {
        self.over
    }

    /// Why the pod failed, when the VM or agent did.
    pub fn failure(&self) -> Option<&(String, String)> {
        self.failure.as_ref()
    }

    /// Checks deadlines and returns what is due now.
    pub fn due(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.over.is_none() && self.agent_ready {
            if let Some(p) = self.heartbeat.tick(now) {
                match p {
                    PodPhase::Unknown => {
                        let why = self.heartbeat.reason().unwrap_or_default().to_string();
                        self.event(now, "Warning", "AgentUnresponsive", why);
                    }
                    PodPhase::Failed => {
                        let why = self.heartbeat.reason().unwrap_or_default().to_string();
                        self.sandbox_lost("AgentUnresponsive", why, true, now);
                    }
                    _ => {}
                }
                self.changed = true;
            }
        }
        if self.over.is_some() {
            if !self.shutdown_sent {
                self.shutdown_sent = true;
                actions.push(Action::Shutdown);
            }
            return actions;
        }
        self.check_sidecars_stop(now);
        self.step_hooks(now, &mut actions);
        self.stop_containers(now, &mut actions);
        if self.stopping.is_none() && self.agent_ready {
            self.start_containers(now, &mut actions);
        }
        if !actions.is_empty() {
            self.changed = true;
        }
        if actions.is_empty() {
            let phase = self.base_phase();
            let active = self.init.iter().chain(&self.app).any(Track::is_active);
            if phase.is_terminal()
                && (!active || self.main_ended.is_some())
                && !self.main_awaits_exit_report()
            {
                self.over = Some(phase);
                self.shutdown_sent = true;
                self.changed = true;
                actions.push(Action::Shutdown);
            }
        }
        actions
    }

    /// Once every app container ended for good (not under `Always`), the
    /// sidecars are stopped, as the kubelet stops them.
    fn check_sidecars_stop(&mut self, now: Instant) {
        let done = self.next_init >= self.init.len()
            && !self.app.is_empty()
            && self.app.iter().all(|t| {
                matches!(
                    t.state,
                    State::Terminated {
                        restart_at: None,
                        ..
                    }
                )
            });
        if self.stopping.is_some() || self.sidecars_stop.is_some() || !done {
            return;
        }
        if !self.init.iter().any(|t| t.info.sidecar) {
            return;
        }
        self.sidecars_stop = Some(now);
        for track in self.init.iter_mut().filter(|t| t.info.sidecar) {
            if let State::Terminated { restart_at, .. } = &mut track.state {
                *restart_at = None;
            }
        }
        self.changed = true;
    }

    /// Begins due `postStart` hooks and ends `sleep` hooks whose time is up.
    fn step_hooks(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for track in self.init.iter_mut().chain(self.app.iter_mut()) {
            let State::Running {
                post_start,
                pre_stop,
                ..
            } = &mut track.state
            else {
                continue;
            };
            for step in [&mut *post_start, &mut *pre_stop] {
                if let Step::Running {
                    sleep_until: Some(at),
                } = *step
                {
                    if at <= now {
                        *step = Step::Done(now);
                        self.changed = true;
                    }
                }
            }
            if *post_start == Step::Due {
                actions.extend(begin_hook(
                    &track.info,
                    post_start,
                    HookKind::PostStart,
                    None,
                    now,
                ));
            }
        }
    }

    /// When each running container's SIGKILL is due, if it is being
    /// stopped: after a failed probe or hook, at its own time; in a pod
    /// stop, app and init containers at the end of the grace period, then
    /// the sidecars, last first, each once those after it ended.
    fn kill_deadlines(&self) -> Vec<Option<Instant>> {
        let tracks: Vec<&Track> = self.init.iter().chain(&self.app).collect();
        let grace_end = |since: Instant| since + self.cfg.grace;
        let others_active = tracks.iter().any(|t| !t.info.sidecar && t.is_active());
        tracks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let own = match t.state {
                    State::Running { kill_at, .. } => kill_at,
                    _ => None,
                };
                let later_sidecars_active = tracks[i + 1..]
                    .iter()
                    .any(|l| l.info.sidecar && l.is_active());
                let pod = match (self.stopping, self.sidecars_stop) {
                    (Some(since), _) if !t.info.sidecar => Some(grace_end(since)),
                    (Some(since), _) if !others_active && !later_sidecars_active => {
                        Some(grace_end(since))
                    }
                    (None, Some(since)) if t.info.sidecar && !later_sidecars_active => {
                        Some(grace_end(since))
                    }
                    _ => None,
                };
                match (own, pod) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .collect()
    }

    /// Stops the containers being stopped: the `preStop` hook, then the
    /// stop signal, then SIGKILL at the deadline (at least
    /// [`MIN_GRACE_AFTER_PRE_STOP`] after the hook).
    fn stop_containers(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let deadlines = self.kill_deadlines();
        for (track, deadline) in self
            .init
            .iter_mut()
            .chain(self.app.iter_mut())
            .zip(deadlines)
        {
            let Some(deadline) = deadline else {
                continue;
            };
            let has_pre_stop = track.info.hooks.pre_stop.is_some();
            let State::Running {
                signalled,
                pre_stop,
                ..
            } = &mut track.state
            else {
                continue;
            };
            match *pre_stop {
                Step::Idle if has_pre_stop && deadline > now => {
                    let left = deadline - now;
                    actions.extend(begin_hook(
                        &track.info,
                        pre_stop,
                        HookKind::PreStop,
                        Some(left),
                        now,
                    ));
                    continue;
                }
                Step::Idle | Step::Due => *pre_stop = Step::Done(now),
                Step::Running { .. } if now < deadline => continue,
                Step::Running { .. } => *pre_stop = Step::Done(deadline),
                Step::Done(_) => {}
            }
            let kill_time = match *pre_stop {
                Step::Done(ended) if has_pre_stop => deadline.max(ended + MIN_GRACE_AFTER_PRE_STOP),
                _ => deadline,
            };
            let signal = if now >= kill_time {
                libc::SIGKILL
            } else {
                track.info.stop_signal
            };
            if signalled.is_none_or(|s| s != signal && s != libc::SIGKILL) {
                *signalled = Some(signal);
                actions.push(Action::Signal(track.info.name.clone(), signal));
            }
        }
    }

    /// Starts what is due: init containers one at a time (a sidecar lets
    /// the next one start once it has started and its `postStart` is
    /// done), sidecar restarts, then the app containers in order, each
    /// waiting for the `postStart` hook of those before it.
    fn start_containers(&mut self, now: Instant, actions: &mut Vec<Action>) {
        while let Some(t) = self.init.get(self.next_init) {
            let started = matches!(t.state, State::Running { started: true, .. }) && t.is_up();
            if !(t.info.sidecar && started) {
                break;
            }
            self.next_init += 1;
            self.changed = true;
        }
        let passed = self.next_init.min(self.init.len());
        if self.sidecars_stop.is_none() {
            for track in self.init[..passed].iter_mut().filter(|t| t.info.sidecar) {
                if start_if_due(track, now) {
                    actions.push(Action::Run(track.info.name.clone()));
                }
            }
        }
        if self.next_init < self.init.len() {
            if !self.init_failed {
                let track = &mut self.init[self.next_init];
                if start_if_due(track, now) {
                    actions.push(Action::Run(track.info.name.clone()));
                }
            }
            return;
        }
        for track in &mut self.app {
            if start_if_due(track, now) {
                actions.push(Action::Run(track.info.name.clone()));
            }
            if track.holds_next() {
                break;
            }
        }
    }

    /// The phase without the heartbeat (Unknown) overlay.
    fn base_phase(&self) -> PodPhase {
        if let Some(p) = self.over {
            return p;
        }
        if self.failure.is_some() || self.init_failed {
            return PodPhase::Failed;
        }
        if let Some(p) = self.main_ended {
            return p;
        }
        if self.main_awaits_exit_report() {
            return PodPhase::Pending;
        }
        if self.next_init < self.init.len() {
            return PodPhase::Pending;
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        // Running sidecars keep the pod Running; their exits count for
        // nothing.
        running += self
            .init
            .iter()
            .filter(|t| t.info.sidecar && matches!(t.state, State::Running { .. }))
            .count();
        for t in &self.app {
            match &t.state {
                State::Running { .. } if !t.is_up() && t.last.is_none() => waiting += 1,
                State::Running { .. } => running += 1,
                State::Initial
                | State::Starting
                | State::ConfigError { .. }
                | State::ImagePull { .. }
                    if t.last.is_none() =>
                {
                    waiting += 1
                }
                State::Initial
                | State::Starting
                | State::ConfigError { .. }
                | State::ImagePull { .. } => stopped += 1,
                State::Terminated {
                    t: term,
                    restart_at,
                } => {
                    stopped += 1;
                    if term.exit_code == 0 && restart_at.is_none() {
                        succeeded += 1;
                    }
                }
            }
        }
        let policy = if self.stopping.is_some() {
            RestartPolicy::Never
        } else {
            self.cfg.restart_policy
        };
        if waiting > 0 {
            PodPhase::Pending
        } else if running > 0 {
            PodPhase::Running
        } else if stopped > 0 {
            let will_restart = self.app.iter().any(|t| {
                matches!(
                    t.state,
                    State::Terminated {
                        restart_at: Some(_),
                        ..
                    }
                )
            });
            match policy {
                _ if will_restart => PodPhase::Running,
                RestartPolicy::Always => PodPhase::Running,
                _ if stopped == succeeded => PodPhase::Succeeded,
                RestartPolicy::Never => PodPhase::Failed,
                RestartPolicy::OnFailure => PodPhase::Running,
            }
        } else {
            PodPhase::Pending
        }
    }

    /// The pod phase now.
    pub fn phase(&self) -> PodPhase {
        let base = self.base_phase();
        if !base.is_terminal() && self.heartbeat.phase() == PodPhase::Unknown {
            PodPhase::Unknown
        } else {
            base
        }
    }

    /// The Kubernetes status now.
    pub fn status(&mut self, now: Instant) -> PodStatus {
        let phase = self.phase();
        let initialized = self.next_init >= self.init.len();
        let ready = initialized
            && !self.app.is_empty()
            && self
                .app
                .iter()
                .chain(self.init.iter().filter(|t| t.info.sidecar))
                .all(Track::is_ready)
            && phase == PodPhase::Running
            && self.stopping.is_none();
        let wanted = [true, initialized, ready, ready];
        for (slot, want) in self.conditions.iter_mut().zip(wanted) {
            if slot.0 != want {
                *slot = (want, now);
            }
        }
        let conditions = CONDITIONS
            .iter()
            .zip(self.conditions)
            .map(|(kind, (status, since))| PodCondition {
                kind: (*kind).to_string(),
                status: if status { "True" } else { "False" }.into(),
                last_transition_time: self.time(since),
                reason: match (*kind, status) {
                    ("Initialized", false) => Some("ContainersNotInitialized".into()),
                    ("ContainersReady" | "Ready", false) if phase.is_terminal() => {
                        Some("PodCompleted".into())
                    }
                    ("ContainersReady" | "Ready", false) => Some("ContainersNotReady".into()),
                    _ => None,
                },
            })
            .collect();
        let (reason, message) = match &self.failure {
            Some((r, m)) => (Some(r.clone()), Some(m.clone())),
            None if phase == PodPhase::Unknown => (
                Some("AgentUnresponsive".into()),
                self.heartbeat.reason().map(String::from),
            ),
            None => (None, None),
        };
        let init_statuses = self
            .init
            .iter()
            .enumerate()
            .map(|(i, t)| self.container_status(t, i > self.next_init, now))
            .collect();
        let app_statuses = self
            .app
            .iter()
            .map(|t| self.container_status(t, !initialized, now))
            .collect();
        PodStatus {
            phase,
            reason,
            message,
            conditions,
            pod_ip: None,
            pod_ips: Vec::new(),
            start_time: self.started.map(|t| self.time(t)),
            deletion_timestamp: self.stopping.map(|t| self.time(t)),
            init_container_statuses: init_statuses,
            container_statuses: app_statuses,
        }
    }

    fn termination_state(&self, t: &Termination) -> ContainerState {
        ContainerState::Terminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: t.reason.clone(),
            message: t.message.clone(),
            started_at: t.started.map(|s| self.time(s)),
            finished_at: self.time(t.finished),
        }
    }

    fn container_status(&self, t: &Track, behind_init: bool, now: Instant) -> ContainerStatus {
        let waiting = |reason: &str, message: Option<String>| ContainerState::Waiting {
            reason: reason.into(),
            message,
        };
        let (state, last) = match &t.state {
            State::Initial if behind_init => (waiting("PodInitializing", None), None),
            State::Initial | State::Starting => (
                waiting("ContainerCreating", None),
                t.last.as_ref().map(|l| self.termination_state(l)),
            ),
            State::ConfigError { message, .. } => (
                waiting("CreateContainerConfigError", Some(message.clone())),
                t.last.as_ref().map(|l| self.termination_state(l)),
            ),
            State::ImagePull { backoff, message } => (
                waiting(
                    if *backoff {
                        "ImagePullBackOff"
                    } else {
                        "ErrImagePull"
                    },
                    Some(message.clone()),
                ),
                t.last.as_ref().map(|l| self.termination_state(l)),
            ),
            // The kubelet shows no Running container before its postStart.
            State::Running { .. } if !t.is_up() => (
                waiting("ContainerCreating", None),
                t.last.as_ref().map(|l| self.termination_state(l)),
            ),
            State::Running { since, .. } => (
                ContainerState::Running {
                    started_at: self.time(*since),
                },
                t.last.as_ref().map(|l| self.termination_state(l)),
            ),
            State::Terminated {
                t: term,
                restart_at: Some(at),
            } if *at > now => {
                let delay = backoff(t.crashes, self.cfg.backoff_base, self.cfg.backoff_cap);
                (
                    waiting(
                        "CrashLoopBackOff",
                        Some(format!(
                            "back-off {} restarting failed container={} pod={}",
                            humanish(delay),
                            t.info.name,
                            self.name
                        )),
                    ),
                    Some(self.termination_state(term)),
                )
            }
            State::Terminated { t: term, .. } => (
                self.termination_state(term),
                t.last.as_ref().map(|l| self.termination_state(l)),
            ),
        };
        let running = t.is_up();
        let (ready, started) = match t.state {
            State::Running { ready, started, .. } if running => (ready, started),
            _ => (false, false),
        };
        ContainerStatus {
            name: t.info.name.clone(),
            image: t.info.image.clone(),
            image_id: t.info.image_id.clone(),
            ready: running && ready && self.stopping.is_none(),
            started,
            restart_count: t.restarts,
            state,
            last_state: last,
        }
    }
}

/// How long a container whose configuration could not be resolved waits
/// before the next try.
pub const CONFIG_RETRY: Duration = Duration::from_secs(1);

/// Begins hook `kind` of container `info`: a `sleep` is timed here,
/// anything else is an [`Action::Hook`].
fn begin_hook(
    info: &ContainerInfo,
    step: &mut Step,
    kind: HookKind,
    within: Option<Duration>,
    now: Instant,
) -> Option<Action> {
    match info.hooks.get(kind) {
        None => {
            *step = Step::Done(now);
            None
        }
        Some(HookRun::Sleep(d)) => {
            let d = within.map_or(*d, |w| (*d).min(w));
            *step = Step::Running {
                sleep_until: Some(now + d),
            };
            None
        }
        Some(HookRun::Handler) => {
            *step = Step::Running { sleep_until: None };
            Some(Action::Hook(info.name.clone(), kind, within))
        }
    }
}

/// Starts `track` if it waits for its first start, a due restart, or a
/// retry of its configuration.
/// The end of a container that went with its VM, as the kubelet reports
/// one it can no longer find.
fn lost_container(started: Option<Instant>, now: Instant) -> Termination {
    Termination {
        exit_code: LOST_EXIT_CODE,
        signal: None,
        reason: "ContainerStatusUnknown".into(),
        message: Some("The container could not be located when the pod was terminated".into()),
        started,
        finished: now,
        start_error: false,
    }
}

fn start_if_due(track: &mut Track, now: Instant) -> bool {
    match &track.state {
        State::Initial => {
            track.state = State::Starting;
            true
        }
        State::ConfigError { retry_at, .. } if *retry_at <= now => {
            track.state = State::Starting;
            true
        }
        State::Terminated {
            t,
            restart_at: Some(at),
        } if *at <= now => {
            track.last = Some(t.clone());
            track.restarts += 1;
            track.state = State::Starting;
            true
        }
        _ => false,
    }
}

/// The wait before restart number `crashes` since the last long run: none
/// for the first, then `base`, doubling, at most `cap`.
pub fn backoff(crashes: u32, base: Duration, cap: Duration) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(crashes - 2).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

fn humanish(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn info(name: &str) -> ContainerInfo {
        ContainerInfo {
            name: name.into(),
            image: "busybox:latest".into(),
            image_id: "sha256:ab".into(),
            stop_signal: libc::SIGTERM,
            probes: ProbeInfo::default(),
            hooks: HookInfo::default(),
            sidecar: false,
        }
    }

    /// A pod of app containers `app`, whose `probed` one has these probes.
    fn probed_pod(policy: RestartPolicy, app: &[&str], probes: ProbeInfo) -> (Lifecycle, Instant) {
        let (mut l, t0) = pod(policy, &[], app);
        l.app[0].info.probes = probes;
        l.agent_ready(t0);
        l.due(t0);
        for name in app {
            l.started(name, t0);
        }
        (l, t0)
    }

    fn conditions(l: &mut Lifecycle, now: Instant) -> Vec<(String, String)> {
        l.status(now)
            .conditions
            .into_iter()
            .map(|c| (c.kind, c.status))
            .collect()
    }

    fn ready_condition(l: &mut Lifecycle, now: Instant) -> String {
        let c = conditions(l, now);
        c.into_iter().find(|(k, _)| k == "Ready").unwrap().1
    }

    fn last_event(l: &Lifecycle) -> (String, String, String) {
        let e = l.events().last().unwrap();
        (e.kind.clone(), e.reason.clone(), e.message.clone())
    }

    #[test]
    fn without_a_readiness_probe_a_running_container_is_ready_with_one_after_success() {
        let readiness = ProbeInfo {
            readiness: true,
            ..ProbeInfo::default()
        };
        let (mut l, t0) = probed_pod(RestartPolicy::Always, &["web", "side"], readiness);
        assert!(!state(&mut l, "web", t0).ready);
        assert!(
            state(&mut l, "side", t0).ready,
            "no probe: ready once running"
        );
        assert_eq!(ready_condition(&mut l, t0), "False");
        l.probe("web", ProbeKind::Readiness, true, "", t0 + S);
        assert!(state(&mut l, "web", t0 + S).ready);
        assert_eq!(ready_condition(&mut l, t0 + S), "True");
        l.probe(
            "web",
            ProbeKind::Readiness,
            false,
            "cat: can't open '/tmp/ready'",
            t0 + 2 * S,
        );
        assert!(!state(&mut l, "web", t0 + 2 * S).ready);
        assert_eq!(ready_condition(&mut l, t0 + 2 * S), "False");
        assert_eq!(
            last_event(&l),
            (
                "Warning".into(),
                "Unhealthy".into(),
                "Readiness probe failed: cat: can't open '/tmp/ready'".into()
            )
        );
        assert_eq!(
            l.due(t0 + 10 * S),
            vec![],
            "a readiness failure kills nothing"
        );
    }

    #[test]
    fn a_liveness_failure_kills_after_the_probes_grace_and_restarts_under_the_policy() {
        let live = ProbeInfo {
            liveness_grace: Some(2 * S),
            ..ProbeInfo::default()
        };
        let (mut l, t0) = probed_pod(RestartPolicy::Always, &["web"], live);
        l.probe("web", ProbeKind::Liveness, false, "boom", t0 + S);
        let events: Vec<_> = l
            .events()
            .iter()
            .rev()
            .take(2)
            .map(|e| e.message.clone())
            .collect();
        assert_eq!(
            events,
            vec![
                "Container web failed liveness probe, will be restarted".to_string(),
                "Liveness probe failed: boom".to_string()
            ]
        );
        assert_eq!(
            l.due(t0 + S),
            vec![Action::Signal("web".into(), libc::SIGTERM)]
        );
        assert_eq!(l.due(t0 + 2 * S), vec![]);
        assert_eq!(
            l.due(t0 + 3 * S),
            vec![Action::Signal("web".into(), libc::SIGKILL)],
            "the probe's grace (2 s), not the pod's (5 s)"
        );
        // Further results of the dying container change nothing.
        l.probe("web", ProbeKind::Liveness, false, "again", t0 + 3 * S);
        assert_eq!(l.due(t0 + 3 * S), vec![]);
        l.exited("web", 137, "Signaled", Some(9), t0 + 4 * S);
        assert_eq!(
            l.due(t0 + 4 * S),
            vec![run("web")],
            "Always: restarted at once"
        );
        l.started("web", t0 + 4 * S);
        let st = state(&mut l, "web", t0 + 4 * S);
        assert_eq!((st.restart_count, st.ready), (1, true));
    }

    #[test]
    fn a_liveness_failure_under_never_ends_the_container_for_good() {
        let (mut l, t0) = probed_pod(RestartPolicy::Never, &["web"], ProbeInfo::default());
        l.probe("web", ProbeKind::Liveness, false, "dead", t0);
        assert_eq!(l.due(t0), vec![Action::Signal("web".into(), libc::SIGTERM)]);
        assert_eq!(
            l.due(t0 + 5 * S),
            vec![Action::Signal("web".into(), libc::SIGKILL)],
            "no probe grace: the pod's"
        );
        l.exited("web", 137, "Signaled", Some(9), t0 + 5 * S);
        assert_eq!(l.phase(), PodPhase::Failed);
        assert_eq!(l.due(t0 + 5 * S), vec![Action::Shutdown]);
    }

    #[test]
    fn a_startup_probe_keeps_the_container_unstarted_until_it_passes_or_kills_it() {
        let startup = ProbeInfo {
            startup: true,
            ..ProbeInfo::default()
        };
        let (mut l, t0) = probed_pod(RestartPolicy::Always, &["web"], startup.clone());
        let st = state(&mut l, "web", t0);
        assert!(!st.started && st.ready);
        l.probe("web", ProbeKind::Startup, true, "", t0 + S);
        assert!(state(&mut l, "web", t0 + S).started);

        let (mut l, t0) = probed_pod(RestartPolicy::Always, &["web"], startup);
        l.probe("web", ProbeKind::Startup, false, "not yet", t0 + S);
        assert_eq!(
            last_event(&l).2,
            "Container web failed startup probe, will be restarted"
        );
        assert_eq!(
            l.due(t0 + S),
            vec![Action::Signal("web".into(), libc::SIGTERM)]
        );
    }

    #[test]
    fn probe_results_during_a_stop_change_nothing() {
        let (mut l, t0) = probed_pod(RestartPolicy::Always, &["web"], ProbeInfo::default());
        l.stop(t0);
        let before = l.events().len();
        l.probe("web", ProbeKind::Liveness, false, "x", t0);
        assert_eq!(l.events().len(), before);
    }

    #[test]
    fn stop_signals_parse_as_containerd_reads_them_and_stop_uses_them() {
        assert_eq!(parse_stop_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_stop_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_stop_signal("3"), Some(3));
        assert_eq!(parse_stop_signal("SIGNOPE"), None);
        assert_eq!(parse_stop_signal("99"), None);
        let cfg = LifecycleConfig::new(
            RestartPolicy::Always,
            Duration::from_secs(30),
            Duration::from_secs(4),
            Duration::from_secs(30),
        );
        let t0 = Instant::now();
        let quit = ContainerInfo {
            stop_signal: libc::SIGQUIT,
            ..info("nginx")
        };
        let mut l = Lifecycle::new("p", cfg, vec![], vec![quit], t0, 1_700_000_000);
        l.vm_started(t0);
        l.agent_ready(t0);
        assert_eq!(l.due(t0), vec![run("nginx")]);
        l.started("nginx", t0);
        l.stop(t0);
        assert_eq!(
            l.due(t0),
            vec![Action::Signal("nginx".into(), libc::SIGQUIT)]
        );
    }

    fn pod(policy: RestartPolicy, init: &[&str], app: &[&str]) -> (Lifecycle, Instant) {
        let t0 = Instant::now();
        let cfg = LifecycleConfig {
            restart_policy: policy,
            backoff_base: 10 * S,
            backoff_cap: 300 * S,
            backoff_reset: 600 * S,
            unknown_after: 3 * S,
            give_up_after: 100 * S,
            grace: 5 * S,
        };
        let mut l = Lifecycle::new(
            "p",
            cfg,
            init.iter().map(|n| info(n)).collect(),
            app.iter().map(|n| info(n)).collect(),
            t0,
            1_700_000_000,
        );
        l.vm_started(t0);
        (l, t0)
    }

    fn run(name: &str) -> Action {
        Action::Run(name.into())
    }

    fn state(l: &mut Lifecycle, name: &str, now: Instant) -> ContainerStatus {
        let s = l.status(now);
        s.init_container_statuses
            .into_iter()
            .chain(s.container_statuses)
            .find(|c| c.name == name)
            .unwrap()
    }

    fn reason(c: &ContainerStatus) -> String {
        match &c.state {
            ContainerState::Waiting { reason, .. } | ContainerState::Terminated { reason, .. } => {
                reason.clone()
            }
            ContainerState::Running { .. } => "Running".into(),
        }
    }

    #[test]
    fn nothing_starts_before_the_agent_is_ready() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        assert_eq!(l.due(t0), vec![]);
        assert_eq!(l.phase(), PodPhase::Pending);
        assert_eq!(reason(&state(&mut l, "a", t0)), "ContainerCreating");
        l.agent_ready(t0);
        assert_eq!(l.due(t0), vec![run("a")]);
        assert_eq!(l.due(t0), vec![], "asked once");
    }

    #[test]
    fn a_config_error_waits_and_retries_without_counting_a_restart() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        assert_eq!(l.due(t0), vec![run("a")]);
        l.config_error("a", "configmap \"c\" not found", t0);
        let c = state(&mut l, "a", t0);
        assert_eq!(reason(&c), "CreateContainerConfigError");
        assert_eq!(c.restart_count, 0);
        assert_eq!(l.phase(), PodPhase::Pending);
        assert_eq!(l.due(t0), vec![], "not before the retry");
        let t1 = t0 + CONFIG_RETRY;
        assert_eq!(l.due(t1), vec![run("a")]);
        l.config_error("a", "configmap \"c\" not found", t1);
        let failed = |l: &Lifecycle| l.events().iter().filter(|e| e.reason == "Failed").count();
        assert_eq!(failed(&l), 1, "the same error is one event");
        let t2 = t1 + CONFIG_RETRY;
        assert_eq!(l.due(t2), vec![run("a")]);
        l.started("a", t2);
        let c = state(&mut l, "a", t2);
        assert_eq!((reason(&c).as_str(), c.restart_count), ("Running", 0));
    }

    #[test]
    fn a_failed_pull_shows_err_image_pull_then_back_off_until_the_image_is_there() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a", "b"]);
        l.image_pull_failed("b", "cannot pull busybox:9: not found", t0);
        let c = state(&mut l, "b", t0);
        assert_eq!(reason(&c), "ErrImagePull");
        let ContainerState::Waiting { message, .. } = &c.state else {
            unreachable!("waiting")
        };
        assert_eq!(message.as_deref(), Some("cannot pull busybox:9: not found"));
        assert_eq!(reason(&state(&mut l, "a", t0)), "ContainerCreating");
        assert_eq!(l.phase(), PodPhase::Pending);
        l.image_pull_backoff("b", t0 + S);
        let c = state(&mut l, "b", t0 + S);
        assert_eq!(reason(&c), "ImagePullBackOff");
        let ContainerState::Waiting { message, .. } = &c.state else {
            unreachable!("waiting")
        };
        assert_eq!(
            message.as_deref(),
            Some("Back-off pulling image \"busybox:latest\"")
        );
        l.image_pull_backoff("b", t0 + 2 * S);
        let said: Vec<(&str, &str)> = (l.events().iter())
            .map(|e| (e.reason.as_str(), e.message.as_str()))
            .filter(|(r, _)| *r == "Failed" || *r == "BackOff")
            .collect();
        assert_eq!(
            said,
            vec![
                ("Failed", "Error: ErrImagePull"),
                ("BackOff", "Back-off pulling image \"busybox:latest\""),
                ("Failed", "Error: ImagePullBackOff"),
            ],
            "one back-off per failure"
        );
        l.image_present("b");
        assert_eq!(reason(&state(&mut l, "b", t0 + 3 * S)), "ContainerCreating");
        assert_eq!(c.restart_count, 0);
    }

    #[test]
    fn the_main_containers_end_ends_the_pod_whatever_the_sidecars_do() {
        for (code, reason, phase) in [
            (0, "Completed", PodPhase::Succeeded),
            (3, "Error", PodPhase::Failed),
        ] {
            let (l, t0) = pod(RestartPolicy::Never, &[], &["side", "main"]);
            let mut l = l.with_main("main");
            l.agent_ready(t0);
            assert_eq!(l.due(t0), vec![run("side"), run("main")]);
            l.started("side", t0);
            l.started("main", t0);
            l.exited("main", code, reason, None, t0 + S);
            assert_eq!(l.phase(), phase, "the sidecar still runs");
            assert_eq!(l.due(t0 + S), vec![Action::Shutdown]);
            assert_eq!(l.over(), Some(phase));
            assert_eq!(l.exit_code("main"), Some(code));
            assert_eq!(l.exit_code("side"), None);
        }
        // A sidecar's end does not end the pod.
        let (l, t0) = pod(RestartPolicy::Never, &[], &["side", "main"]);
        let mut l = l.with_main("main");
        l.agent_ready(t0);
        l.due(t0);
        l.started("side", t0);
        l.started("main", t0);
        l.exited("side", 1, "Error", None, t0 + S);
        assert_eq!(l.due(t0 + S), vec![]);
        assert_eq!(l.phase(), PodPhase::Running);
    }

    #[test]
    fn a_refused_main_container_ends_the_pod_with_the_agents_exit_code() {
        let (l, t0) = pod(RestartPolicy::Never, &[], &["main"]);
        let mut l = l.with_main("main");
        l.agent_ready(t0);
        l.due(t0);
        l.start_failed("main", "no such file", t0);
        assert_eq!(l.due(t0), vec![], "waits for the exit report");
        assert_eq!(l.phase(), PodPhase::Pending);
        l.exited("main", 127, "Error", None, t0);
        assert_eq!(l.due(t0), vec![Action::Shutdown]);
        assert_eq!(l.over(), Some(PodPhase::Failed));
        assert_eq!(l.exit_code("main"), Some(127));
    }

    #[test]
    fn init_containers_run_one_at_a_time_then_the_apps_together() {
        let (mut l, t0) = pod(RestartPolicy::Always, &["i1", "i2"], &["a", "b"]);
        l.agent_ready(t0);
        assert_eq!(l.due(t0), vec![run("i1")]);
        assert_eq!(reason(&state(&mut l, "a", t0)), "PodInitializing");
        assert_eq!(reason(&state(&mut l, "i2", t0)), "PodInitializing");
        l.started("i1", t0);
        assert_eq!(l.due(t0), vec![]);
        assert_eq!(l.phase(), PodPhase::Pending);
        l.exited("i1", 0, "Completed", None, t0 + S);
        assert_eq!(l.due(t0 + S), vec![run("i2")]);
        l.started("i2", t0 + S);
        l.exited("i2", 0, "Completed", None, t0 + 2 * S);
        let s = l.status(t0 + 2 * S);
        assert_eq!(s.conditions[1].status, "True", "Initialized");
        assert_eq!(l.due(t0 + 2 * S), vec![run("a"), run("b")]);
        assert_eq!(l.phase(), PodPhase::Pending, "not all apps started yet");
        l.started("a", t0 + 3 * S);
        assert_eq!(l.phase(), PodPhase::Pending);
        l.started("b", t0 + 3 * S);
        assert_eq!(l.phase(), PodPhase::Running);
        let s = l.status(t0 + 3 * S);
        assert!(s.conditions.iter().all(|c| c.status == "True"), "{s:#?}");
    }

    #[test]
    fn a_failed_init_container_is_retried_with_back_off_unless_never() {
        let (mut l, t0) = pod(RestartPolicy::OnFailure, &["i"], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("i", t0);
        l.exited("i", 1, "Error", None, t0 + S);
        assert_eq!(l.due(t0 + S), vec![run("i")], "first restart is immediate");
        assert_eq!(l.restart_count("i"), 1);
        l.started("i", t0 + S);
        l.exited("i", 1, "Error", None, t0 + 2 * S);
        assert_eq!(l.due(t0 + 3 * S), vec![], "backing off");
        assert_eq!(reason(&state(&mut l, "i", t0 + 3 * S)), "CrashLoopBackOff");
        assert_eq!(l.phase(), PodPhase::Pending);
        assert_eq!(l.due(t0 + 12 * S), vec![run("i")]);

        let (mut l, t0) = pod(RestartPolicy::Never, &["i"], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("i", t0);
        l.exited("i", 2, "Error", None, t0 + S);
        assert_eq!(l.phase(), PodPhase::Failed);
        assert_eq!(l.due(t0 + S), vec![Action::Shutdown]);
        assert_eq!(l.over(), Some(PodPhase::Failed));
        assert_eq!(reason(&state(&mut l, "a", t0 + S)), "PodInitializing");
    }

    #[test]
    fn always_restarts_even_a_success() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.exited("a", 0, "Completed", None, t0 + S);
        assert_eq!(l.phase(), PodPhase::Running);
        assert_eq!(l.due(t0 + S), vec![run("a")]);
        l.started("a", t0 + S);
        let c = state(&mut l, "a", t0 + S);
        assert_eq!(c.restart_count, 1);
        assert!(matches!(
            c.last_state,
            Some(ContainerState::Terminated { exit_code: 0, .. })
        ));
    }

    #[test]
    fn on_failure_restarts_failures_only_and_succeeds_at_exit_zero() {
        let (mut l, t0) = pod(RestartPolicy::OnFailure, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.exited("a", 3, "Error", None, t0 + S);
        assert_eq!(l.phase(), PodPhase::Running, "a restart is coming");
        assert_eq!(l.due(t0 + S), vec![run("a")]);
        l.started("a", t0 + S);
        l.exited("a", 0, "Completed", None, t0 + 2 * S);
        assert_eq!(l.phase(), PodPhase::Succeeded);
        assert_eq!(l.due(t0 + 2 * S), vec![Action::Shutdown]);
        assert_eq!(l.due(t0 + 3 * S), vec![], "once");
        assert_eq!(l.restart_count("a"), 1);
    }

    #[test]
    fn never_ends_the_pod_when_every_container_is_done() {
        let (mut l, t0) = pod(RestartPolicy::Never, &[], &["a", "b"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.started("b", t0);
        l.exited("a", 1, "Error", None, t0 + S);
        assert_eq!(l.phase(), PodPhase::Running, "b still runs");
        assert_eq!(l.due(t0 + S), vec![]);
        l.exited("b", 0, "Completed", None, t0 + 2 * S);
        assert_eq!(l.phase(), PodPhase::Failed);
        assert_eq!(l.due(t0 + 2 * S), vec![Action::Shutdown]);

        let (mut l, t0) = pod(RestartPolicy::Never, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.exited("a", 0, "Completed", None, t0 + S);
        assert_eq!(l.phase(), PodPhase::Succeeded);
    }

    #[test]
    fn oom_kills_keep_their_reason() {
        let (mut l, t0) = pod(RestartPolicy::Never, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.exited("a", 137, "OOMKilled", Some(9), t0 + S);
        let c = state(&mut l, "a", t0 + S);
        assert!(matches!(
            c.state,
            ContainerState::Terminated { exit_code: 137, signal: Some(9), ref reason, .. } if reason == "OOMKilled"
        ));
        l.exited("a", 1, "Signaled", Some(15), t0 + S);
        assert_eq!(
            reason(&state(&mut l, "a", t0 + S)),
            "OOMKilled",
            "stale report ignored"
        );
    }

    #[test]
    fn back_off_doubles_up_to_the_cap_and_resets_after_a_long_run() {
        assert_eq!(backoff(1, 10 * S, 300 * S), Duration::ZERO);
        assert_eq!(backoff(2, 10 * S, 300 * S), 10 * S);
        assert_eq!(backoff(3, 10 * S, 300 * S), 20 * S);
        assert_eq!(backoff(6, 10 * S, 300 * S), 160 * S);
        assert_eq!(backoff(7, 10 * S, 300 * S), 300 * S);
        assert_eq!(backoff(60, 10 * S, 300 * S), 300 * S);

        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        let mut now = t0;
        assert_eq!(l.due(now), vec![run("a")]);
        let mut waits = Vec::new();
        for _ in 0..8 {
            l.started("a", now);
            now += S;
            l.exited("a", 1, "Error", None, now);
            let exited_at = now;
            // The agent keeps its heartbeat; the pod must not go Unknown.
            while {
                l.heard_from_agent(now);
                l.due(now).is_empty()
            } {
                now += S;
                assert!(now - exited_at < 400 * S, "no restart after {waits:?}");
            }
            waits.push((now - exited_at).as_secs());
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(l.restart_count("a"), 8);
        l.started("a", now);
        now += S;
        l.exited("a", 1, "Error", None, now);
        let c = state(&mut l, "a", now);
        assert_eq!(reason(&c), "CrashLoopBackOff");
        let ContainerState::Waiting { message, .. } = c.state else {
            panic!("waiting")
        };
        assert!(message.unwrap().contains("back-off 300s"));
        // A 10-minute run resets it: the next restart is immediate again.
        now += 300 * S;
        assert_eq!(l.due(now), vec![run("a")]);
        l.started("a", now);
        now += 600 * S;
        l.heard_from_agent(now);
        l.exited("a", 1, "Error", None, now);
        assert_eq!(l.due(now), vec![run("a")]);
    }

    #[test]
    fn silence_makes_the_pod_unknown_and_a_message_brings_it_back() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.heard_from_agent(t0);
        assert_eq!(l.phase(), PodPhase::Running);
        l.due(t0 + 5 * S);
        assert_eq!(l.phase(), PodPhase::Unknown);
        assert_eq!(
            l.status(t0 + 5 * S).reason.as_deref(),
            Some("AgentUnresponsive")
        );
        l.heard_from_agent(t0 + 6 * S);
        assert_eq!(l.phase(), PodPhase::Running);
        assert!(l.events().iter().any(|e| e.reason == "AgentReachable"));
    }

    #[test]
    fn unknown_for_too_long_fails_the_pod_and_loses_its_containers() {
        let (mut l, t0) = pod(RestartPolicy::Never, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.due(t0 + 5 * S);
        assert_eq!(l.phase(), PodPhase::Unknown);
        assert_eq!(l.due(t0 + 200 * S), vec![Action::Shutdown]);
        assert_eq!(l.phase(), PodPhase::Failed);
        assert_eq!(reason(&state(&mut l, "a", t0)), "ContainerStatusUnknown");
    }

    fn events_of(l: &Lifecycle, reason: &str) -> Vec<String> {
        (l.events().iter())
            .filter(|e| e.reason == reason)
            .map(|e| e.message.clone())
            .collect()
    }

    #[test]
    fn a_lost_sandbox_is_recreated_with_the_init_containers_again_and_counted_restarts() {
        let (mut l, t0) = pod(RestartPolicy::Always, &["i"], &["a", "b"]);
        l.agent_ready(t0);
        assert_eq!(l.due(t0), vec![run("i")]);
        l.started("i", t0);
        l.exited("i", 0, "Completed", None, t0);
        assert_eq!(l.due(t0), vec![run("a"), run("b")]);
        l.started("a", t0);
        l.started("b", t0);
        let t1 = t0 + 700 * S;
        l.sandbox_lost("VMMExited", "VMM exited (signal: 9)".into(), false, t1);
        assert_eq!(l.take_new_sandbox(), Some(t1), "at once");
        assert_eq!(l.take_new_sandbox(), None, "asked once");
        assert_ne!(l.phase(), PodPhase::Failed);
        assert_eq!(l.phase(), PodPhase::Pending, "initializing again");
        let a = state(&mut l, "a", t1);
        assert_eq!(reason(&a), "ContainerStatusUnknown");
        assert_eq!(
            events_of(&l, "SandboxChanged"),
            ["Pod sandbox changed, it will be killed and re-created."]
        );
        assert_eq!(events_of(&l, "VMMExited"), ["VMM exited (signal: 9)"]);
        assert!(
            events_of(&l, "Killing").is_empty(),
            "nothing was left to kill"
        );
        assert!(l.due(t1).is_empty(), "nothing before the new agent");
        l.vm_started(t1);
        assert_eq!(
            l.status(t1).start_time,
            l.status(t0).start_time,
            "the pod's start"
        );
        l.agent_ready(t1);
        assert_eq!(l.due(t1), vec![run("i")]);
        l.started("i", t1);
        l.exited("i", 0, "Completed", None, t1);
        // They had run long: no back-off.
        assert_eq!(l.due(t1), vec![run("a"), run("b")]);
        l.started("a", t1);
        for name in ["i", "a", "b"] {
            assert_eq!(l.restart_count(name), 1, "{name}");
        }
        let a = state(&mut l, "a", t1);
        assert_eq!(a.restart_count, 1);
        assert!(
            matches!(&a.last_state, Some(ContainerState::Terminated { reason, exit_code: 137, .. })
                if reason == "ContainerStatusUnknown"),
            "{:?}",
            a.last_state
        );
        assert_eq!(l.phase(), PodPhase::Running);
    }

    #[test]
    fn a_sandbox_lost_again_soon_restarts_its_containers_after_the_back_off() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        for (i, t) in [t0 + S, t0 + 2 * S].into_iter().enumerate() {
            l.sandbox_lost("VMMExited", "gone".into(), false, t);
            let due = l.take_new_sandbox().expect("a new sandbox");
            assert_eq!(
                due - t,
                [Duration::ZERO, 10 * S][i],
                "the VM's own back-off"
            );
            l.vm_started(t);
            l.agent_ready(t);
            if i == 0 {
                assert_eq!(l.due(t), vec![run("a")], "the first restart is at once");
                l.started("a", t);
            } else {
                assert!(l.due(t).is_empty(), "backing off");
                assert_eq!(l.due(t + 10 * S), vec![run("a")]);
            }
        }
        assert_eq!(l.restart_count("a"), 2);
        assert_eq!(events_of(&l, "BackOff").len(), 1);
    }

    #[test]
    fn a_replacement_vm_that_fails_to_start_is_tried_again_after_the_back_off() {
        let (mut first, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        first.sandbox_start_failed("no snapshot".into(), t0);
        assert_eq!(
            first.phase(),
            PodPhase::Failed,
            "the first VM fails the pod"
        );
        assert_eq!(first.failure().map(|f| f.0.as_str()), Some("VMStartFailed"));

        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.vm_started(t0);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.sandbox_lost("VMMExited", "gone".into(), false, t0 + S);
        assert!(l.take_new_sandbox().is_some());
        for (i, t) in [t0 + 2 * S, t0 + 3 * S].into_iter().enumerate() {
            l.sandbox_start_failed("cannot restore".into(), t);
            let due = l.take_new_sandbox().expect("another try");
            assert_eq!(due - t, [10 * S, 20 * S][i], "the VM back-off doubles");
            assert_ne!(l.phase(), PodPhase::Failed);
        }
        let failed = events_of(&l, "FailedCreatePodSandBox");
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0], "Failed to create pod sandbox: cannot restore");
        l.stop(t0 + 4 * S);
        l.sandbox_start_failed("cannot restore".into(), t0 + 4 * S);
        assert_eq!(l.phase(), PodPhase::Failed, "no new try during a stop");
    }

    #[test]
    fn on_failure_recreates_the_sandbox_only_for_containers_that_did_not_succeed() {
        let (mut l, t0) = pod(RestartPolicy::OnFailure, &[], &["done", "busy"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("done", t0);
        l.started("busy", t0);
        l.exited("done", 0, "Completed", None, t0);
        l.sandbox_lost("VMMExited", "gone".into(), false, t0 + S);
        assert!(l.take_new_sandbox().is_some());
        l.agent_ready(t0 + S);
        assert_eq!(l.due(t0 + S), vec![run("busy")]);

        // Nothing left to start: no new sandbox, the pod is over.
        let (mut l, t0) = pod(RestartPolicy::OnFailure, &[], &["done"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("done", t0);
        l.exited("done", 0, "Completed", None, t0);
        l.sandbox_lost("VMMExited", "gone".into(), false, t0);
        assert!(l.take_new_sandbox().is_none());
        assert!(l.over().is_some());
    }

    #[test]
    fn never_and_a_stop_fail_the_pod_when_its_sandbox_is_lost() {
        for stop in [false, true] {
            let policy = if stop {
                RestartPolicy::Always
            } else {
                RestartPolicy::Never
            };
            let (mut l, t0) = pod(policy, &[], &["a"]);
            l.agent_ready(t0);
            l.due(t0);
            l.started("a", t0);
            if stop {
                l.stop(t0);
            }
            l.sandbox_lost("VMMExited", "gone".into(), false, t0 + S);
            assert!(l.take_new_sandbox().is_none());
            assert_eq!(l.phase(), PodPhase::Failed);
            assert_eq!(l.status(t0 + S).reason.as_deref(), Some("VMMExited"));
            assert!(events_of(&l, "SandboxChanged").is_empty());
        }
    }

    #[test]
    fn a_silent_agent_under_always_gets_its_vm_killed_and_replaced() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.due(t0 + 5 * S);
        assert_eq!(l.phase(), PodPhase::Unknown);
        assert!(l.due(t0 + 200 * S).is_empty());
        assert!(l.take_new_sandbox().is_some());
        assert_eq!(events_of(&l, "Killing"), ["Stopping container a"]);
        assert_eq!(
            events_of(&l, "AgentUnresponsive").len(),
            2,
            "Unknown, then lost"
        );
        assert_eq!(
            l.phase(),
            PodPhase::Running,
            "not Unknown: a new sandbox comes"
        );
    }

    #[test]
    fn a_lost_vm_fails_the_pod() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.vm_failed("VMMExited", "the VMM exited".into(), t0 + S);
        assert_eq!(l.phase(), PodPhase::Failed);
        assert_eq!(l.due(t0 + S), vec![Action::Shutdown]);
        let s = l.status(t0 + S);
        assert_eq!(s.reason.as_deref(), Some("VMMExited"));
    }

    #[test]
    fn stop_terms_then_kills_after_the_grace_and_never_restarts() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a", "b"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.started("b", t0);
        l.stop(t0 + S);
        assert!(l.status(t0 + S).deletion_timestamp.is_some());
        assert_eq!(
            l.due(t0 + S),
            vec![
                Action::Signal("a".into(), libc::SIGTERM),
                Action::Signal("b".into(), libc::SIGTERM)
            ]
        );
        l.exited("a", 0, "Completed", None, t0 + 2 * S);
        assert_eq!(l.due(t0 + 2 * S), vec![]);
        assert_eq!(
            l.due(t0 + 6 * S),
            vec![Action::Signal("b".into(), libc::SIGKILL)]
        );
        l.exited("b", 137, "Signaled", Some(9), t0 + 7 * S);
        assert_eq!(l.phase(), PodPhase::Failed);
        assert_eq!(l.due(t0 + 7 * S), vec![Action::Shutdown]);
        assert_eq!(reason(&state(&mut l, "b", t0)), "Error");
    }

    #[test]
    fn a_stop_with_its_own_grace_kills_at_that_grace_and_may_only_shorten() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.stop_with_grace(S, t0);
        assert_eq!(l.due(t0), vec![Action::Signal("a".into(), libc::SIGTERM)]);
        assert_eq!(l.due(t0 + S / 2), vec![], "before the 1 s grace");
        assert_eq!(
            l.due(t0 + S),
            vec![Action::Signal("a".into(), libc::SIGKILL)],
            "at 1 s, not the pod's 5 s"
        );

        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.stop(t0);
        l.due(t0);
        l.stop_with_grace(60 * S, t0 + S);
        assert_eq!(l.due(t0 + 4 * S), vec![], "a longer grace does not apply");
        assert_eq!(
            l.due(t0 + 5 * S),
            vec![Action::Signal("a".into(), libc::SIGKILL)]
        );
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.stop(t0);
        l.due(t0);
        l.stop_with_grace(2 * S, t0 + S);
        assert_eq!(
            l.due(t0 + 2 * S),
            vec![Action::Signal("a".into(), libc::SIGKILL)],
            "a shorter one counts from the first stop"
        );
    }

    #[test]
    fn a_refused_start_is_a_start_error_refined_by_the_exit_report() {
        let (mut l, t0) = pod(RestartPolicy::Never, &[], &["a"]);
        l.agent_ready(t0);
        l.due(t0);
        l.start_failed("a", "exec /nope: not found", t0);
        let c = state(&mut l, "a", t0);
        assert!(matches!(
            c.state,
            ContainerState::Terminated { exit_code: 128, .. }
        ));
        l.exited("a", 127, "Error", None, t0);
        let c = state(&mut l, "a", t0);
        assert!(matches!(
            c.state,
            ContainerState::Terminated { exit_code: 127, ref reason, .. } if reason == "StartError"
        ));
        assert_eq!(l.phase(), PodPhase::Failed);
        assert!(l.events().iter().any(|e| e.reason == "Failed"));
    }

    /// A pod whose init container `side` is a sidecar.
    fn sidecar_pod(policy: RestartPolicy, init: &[&str], app: &[&str]) -> (Lifecycle, Instant) {
        let (mut l, t0) = pod(policy, init, app);
        for t in &mut l.init {
            t.info.sidecar = t.info.name.starts_with("side");
        }
        l.agent_ready(t0);
        (l, t0)
    }

    #[test]
    fn a_sidecar_lets_the_next_init_start_once_started_and_keeps_running_beside_the_apps() {
        let (mut l, t0) = sidecar_pod(RestartPolicy::Always, &["side", "i1"], &["a"]);
        l.init[0].info.probes.startup = true;
        assert_eq!(l.due(t0), vec![run("side")]);
        l.started("side", t0);
        assert_eq!(l.due(t0), vec![], "its startup probe has not passed");
        assert_eq!(l.phase(), PodPhase::Pending);
        l.probe("side", ProbeKind::Startup, true, "", t0 + S);
        assert_eq!(l.due(t0 + S), vec![run("i1")]);
        l.started("i1", t0 + S);
        l.exited("i1", 0, "Completed", None, t0 + 2 * S);
        assert_eq!(l.due(t0 + 2 * S), vec![run("a")]);
        l.started("a", t0 + 2 * S);
        assert_eq!(l.phase(), PodPhase::Running);
        assert_eq!(ready_condition(&mut l, t0 + 2 * S), "True");
        // A sidecar that exits is restarted, whatever the pod's policy.
        l.exited("side", 1, "Error", None, t0 + 3 * S);
        assert_eq!(
            ready_condition(&mut l, t0 + 3 * S),
            "False",
            "a sidecar counts for Ready"
        );
        assert_eq!(l.due(t0 + 3 * S), vec![run("side")]);
        assert_eq!(l.restart_count("side"), 1);
        assert_eq!(reason(&state(&mut l, "i1", t0 + 3 * S)), "Completed");
    }

    #[test]
    fn sidecars_do_not_keep_a_never_pod_from_ending_and_stop_last_first() {
        let (mut l, t0) = sidecar_pod(RestartPolicy::Never, &["side1", "side2"], &["a"]);
        assert_eq!(l.due(t0), vec![run("side1")]);
        l.started("side1", t0);
        assert_eq!(l.due(t0), vec![run("side2")]);
        l.started("side2", t0);
        assert_eq!(l.due(t0), vec![run("a")]);
        l.started("a", t0);
        l.exited("a", 0, "Completed", None, t0 + S);
        assert_eq!(l.phase(), PodPhase::Running, "the sidecars still run");
        assert_eq!(
            l.due(t0 + S),
            vec![Action::Signal("side2".into(), libc::SIGTERM)],
            "the last sidecar first"
        );
        // A failing probe of a sidecar being stopped kills nothing more.
        let events = l.events().len();
        l.probe("side2", ProbeKind::Liveness, false, "gone", t0 + S);
        assert_eq!(l.events().len(), events, "no Unhealthy, no Killing");
        l.exited("side2", 143, "Error", Some(15), t0 + 2 * S);
        assert_eq!(
            l.due(t0 + 2 * S),
            vec![Action::Signal("side1".into(), libc::SIGTERM)],
            "not restarted; then the one before it"
        );
        l.exited("side1", 143, "Error", Some(15), t0 + 3 * S);
        assert_eq!(l.due(t0 + 3 * S), vec![Action::Shutdown]);
        assert_eq!(
            l.over(),
            Some(PodPhase::Succeeded),
            "the app containers decide"
        );
    }

    #[test]
    fn a_pod_stop_ends_the_app_containers_before_the_sidecars() {
        let (mut l, t0) = sidecar_pod(RestartPolicy::Always, &["side"], &["a"]);
        l.due(t0);
        l.started("side", t0);
        l.due(t0);
        l.started("a", t0);
        l.stop(t0 + S);
        assert_eq!(
            l.due(t0 + S),
            vec![Action::Signal("a".into(), libc::SIGTERM)]
        );
        l.exited("a", 143, "Error", Some(15), t0 + 2 * S);
        assert_eq!(
            l.due(t0 + 2 * S),
            vec![Action::Signal("side".into(), libc::SIGTERM)]
        );
        assert_eq!(
            l.due(t0 + 6 * S),
            vec![Action::Signal("side".into(), libc::SIGKILL)],
            "within the pod's one grace period (5 s)"
        );
    }

    #[test]
    fn post_start_holds_running_and_the_next_container_and_its_failure_kills() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a", "b"]);
        l.app[0].info.hooks.post_start = Some(HookRun::Handler);
        l.agent_ready(t0);
        assert_eq!(l.due(t0), vec![run("a")], "b waits for a's postStart");
        l.started("a", t0);
        assert_eq!(
            l.due(t0),
            vec![Action::Hook("a".into(), HookKind::PostStart, None)]
        );
        assert_eq!(reason(&state(&mut l, "a", t0)), "ContainerCreating");
        assert_eq!(l.phase(), PodPhase::Pending);
        l.hook_done("a", HookKind::PostStart, Ok(()), t0 + S);
        assert_eq!(reason(&state(&mut l, "a", t0 + S)), "Running");
        assert_eq!(l.due(t0 + S), vec![run("b")]);
        l.started("b", t0 + S);
        // A restart runs the hook again; this time it fails.
        l.exited("a", 1, "Error", None, t0 + 2 * S);
        assert_eq!(l.due(t0 + 2 * S), vec![run("a")]);
        l.started("a", t0 + 2 * S);
        l.due(t0 + 2 * S);
        l.hook_done("a", HookKind::PostStart, Err("exit 1".into()), t0 + 3 * S);
        let reasons: Vec<_> = l
            .events()
            .iter()
            .rev()
            .take(2)
            .map(|e| e.reason.clone())
            .collect();
        assert_eq!(
            reasons,
            vec!["Killing".to_string(), "FailedPostStartHook".to_string()]
        );
        assert_eq!(
            l.due(t0 + 3 * S),
            vec![Action::Signal("a".into(), libc::SIGTERM)]
        );
    }

    #[test]
    fn pre_stop_runs_before_the_stop_signal_within_the_grace() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a", "b"]);
        l.app[0].info.hooks.pre_stop = Some(HookRun::Handler);
        l.app[1].info.hooks.pre_stop = Some(HookRun::Sleep(2 * S));
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.started("b", t0);
        l.stop(t0);
        assert_eq!(
            l.due(t0),
            vec![Action::Hook("a".into(), HookKind::PreStop, Some(5 * S))],
            "b sleeps first, a runs its hook; neither is signalled yet"
        );
        assert_eq!(l.due(t0 + S), vec![]);
        l.hook_done("a", HookKind::PreStop, Err("refused".into()), t0 + S);
        assert_eq!(last_event(&l).1, "FailedPreStopHook");
        assert_eq!(
            l.due(t0 + S),
            vec![Action::Signal("a".into(), libc::SIGTERM)]
        );
        assert_eq!(
            l.due(t0 + 2 * S),
            vec![Action::Signal("b".into(), libc::SIGTERM)]
        );
        assert_eq!(
            l.due(t0 + 5 * S),
            vec![
                Action::Signal("a".into(), libc::SIGKILL),
                Action::Signal("b".into(), libc::SIGKILL)
            ]
        );
    }

    #[test]
    fn a_pre_stop_past_the_grace_still_gets_the_stop_signal_before_the_kill() {
        let (mut l, t0) = pod(RestartPolicy::Always, &[], &["a"]);
        l.app[0].info.hooks.pre_stop = Some(HookRun::Handler);
        l.agent_ready(t0);
        l.due(t0);
        l.started("a", t0);
        l.stop(t0);
        l.due(t0);
        assert_eq!(
            l.due(t0 + 5 * S),
            vec![Action::Signal("a".into(), libc::SIGTERM)]
        );
        assert_eq!(
            l.due(t0 + 7 * S),
            vec![Action::Signal("a".into(), libc::SIGKILL)]
        );
    }
}
