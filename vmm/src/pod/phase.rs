//! Kubernetes pod phases, driven by what the agent and the VMM report.
//!
//! # Design
//! A pure state machine with explicit timestamps, so every transition is
//! unit-tested without a VM. Pending lasts until the container starts;
//! Running follows; Succeeded or Failed end it. Unknown means "we cannot
//! tell": the agent has been silent for longer than the heartbeat grace. It
//! is not final: any message from the agent restores the previous phase, and
//! only an Unknown that outlasts `give_up_after` turns into Failed.
//!
//! While Pending, silence must also outlast [`STARTUP_GRACE`]: the agent is
//! single-threaded and sends no heartbeat while it sets the pod up
//! (`Configure`, spawning the container), which takes seconds of emulated
//! system calls on nested-PVM hosts. A VM that dies meanwhile is still seen
//! at once, through the VMM process.

#![forbid(unsafe_code)]

use std::fmt;
use std::time::{Duration, Instant};

/// The least silence that makes a Pending pod Unknown.
pub const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// The Kubernetes pod phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PodPhase {
    /// Accepted, but the container has not started (VM booting, agent starting).
    #[default]
    Pending,
    /// The container is running.
    Running,
    /// Every container exited 0.
    Succeeded,
    /// A container exited non-zero, or the VM or agent failed.
    Failed,
    /// The agent stopped answering; its state cannot be known.
    Unknown,
}

impl PodPhase {
    /// Succeeded and Failed are final.
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

impl fmt::Display for PodPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Tracks one pod's phase.
#[derive(Debug)]
pub struct PhaseTracker {
    phase: PodPhase,
    /// The phase to return to when an Unknown pod is heard from again.
    before_unknown: PodPhase,
    reason: Option<String>,
    last_heard: Option<Instant>,
    unknown_since: Option<Instant>,
    unknown_after: Duration,
    give_up_after: Duration,
}

impl PhaseTracker {
    /// A Pending pod. Silence longer than `unknown_after` makes it Unknown;
    /// Unknown for longer than `give_up_after` makes it Failed.
    pub fn new(unknown_after: Duration, give_up_after: Duration) -> PhaseTracker {
        PhaseTracker {
            phase: PodPhase::Pending,
            before_unknown: PodPhase::Pending,
            reason: None,
            last_heard: None,
            unknown_since: None,
            unknown_after,
            give_up_after,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> PodPhase {
        self.phase
    }

    /// Why the pod is where it is (Failed, Unknown, Succeeded), if known.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    fn set(&mut self, phase: PodPhase, reason: Option<String>) -> Option<PodPhase> {
        if self.phase.is_terminal() || self.phase == phase {
            return None;
        }
        self.phase = phase;
        self.reason = reason;
        Some(phase)
    }

    /// Any message from the agent: it is alive. Returns the new phase if it
    /// changed (Unknown → the phase before it).
    pub fn heard_from_agent(&mut self, now: Instant) -> Option<PodPhase> {
        self.last_heard = Some(now);
        self.unknown_since = None;
        if self.phase == PodPhase::Unknown {
            return self.set(self.before_unknown, None);
        }
        None
    }

    /// The container process started.
    pub fn container_started(&mut self, now: Instant) -> Option<PodPhase> {
        self.heard_from_agent(now);
        self.before_unknown = PodPhase::Running;
        self.set(PodPhase::Running, None)
    }

    /// The container exited with Kubernetes-style `exit_code` and `reason`.
    pub fn container_exited(&mut self, exit_code: i32, reason: &str) -> Option<PodPhase> {
        let phase = if exit_code == 0 {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        };
        self.set(phase, Some(format!("{reason}, exit code {exit_code}")))
    }

    /// The VM or the agent link failed for good.
    pub fn failed(&mut self, reason: impl Into<String>) -> Option<PodPhase> {
        self.set(PodPhase::Failed, Some(reason.into()))
    }

    /// Checks the heartbeat deadlines; call it periodically.
    pub fn tick(&mut self, now: Instant) -> Option<PodPhase> {
        let last = self.last_heard?;
        if self.phase.is_terminal() {
            return None;
        }
        if let Some(since) = self.unknown_since {
            if now.saturating_duration_since(since) > self.give_up_after {
                let silent = now.saturating_duration_since(last).as_secs();
                return self.failed(format!(
                    "AgentUnresponsive: no word from the guest agent for {silent} s"
                ));
            }
            return None;
        }
        let silent = now.saturating_duration_since(last);
        let limit = match self.phase {
            PodPhase::Pending => self.unknown_after.max(STARTUP_GRACE),
            _ => self.unknown_after,
        };
        if silent > limit {
            self.before_unknown = self.phase;
            self.unknown_since = Some(now);
            let reason = format!(
                "no heartbeat from the guest agent for {} ms",
                silent.as_millis()
            );
            return self.set(PodPhase::Unknown, Some(reason));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn tracker() -> (PhaseTracker, Instant) {
        (PhaseTracker::new(3 * S, 10 * S), Instant::now())
    }

    #[test]
    fn pending_running_succeeded() {
        let (mut t, t0) = tracker();
        assert_eq!(t.phase(), PodPhase::Pending);
        assert_eq!(t.heard_from_agent(t0), None);
        assert_eq!(t.container_started(t0), Some(PodPhase::Running));
        assert_eq!(
            t.container_exited(0, "Completed"),
            Some(PodPhase::Succeeded)
        );
        assert_eq!(t.reason(), Some("Completed, exit code 0"));
    }

    #[test]
    fn non_zero_exit_fails_and_terminal_phases_stick() {
        let (mut t, t0) = tracker();
        t.container_started(t0);
        assert_eq!(t.container_exited(3, "Error"), Some(PodPhase::Failed));
        assert_eq!(t.container_started(t0), None);
        assert_eq!(t.container_exited(0, "Completed"), None);
        assert_eq!(t.tick(t0 + 100 * S), None);
        assert_eq!(t.phase(), PodPhase::Failed);
    }

    #[test]
    fn silence_makes_the_pod_unknown_and_a_message_brings_it_back() {
        let (mut t, t0) = tracker();
        t.container_started(t0);
        assert_eq!(t.tick(t0 + 2 * S), None);
        assert_eq!(t.tick(t0 + 4 * S), Some(PodPhase::Unknown));
        assert!(t.reason().unwrap().contains("no heartbeat"));
        assert_eq!(t.tick(t0 + 5 * S), None, "reported once");
        assert_eq!(t.heard_from_agent(t0 + 6 * S), Some(PodPhase::Running));
    }

    #[test]
    fn a_pending_pod_gets_the_startup_grace_then_returns_to_pending() {
        let (mut t, t0) = tracker();
        t.heard_from_agent(t0);
        assert_eq!(t.tick(t0 + 10 * S), None, "setting up, not lost");
        assert_eq!(t.tick(t0 + STARTUP_GRACE + S), Some(PodPhase::Unknown));
        assert_eq!(t.heard_from_agent(t0 + 40 * S), Some(PodPhase::Pending));
    }

    #[test]
    fn unknown_for_too_long_fails() {
        let (mut t, t0) = tracker();
        t.container_started(t0);
        assert_eq!(t.tick(t0 + 4 * S), Some(PodPhase::Unknown));
        assert_eq!(t.tick(t0 + 13 * S), None);
        assert_eq!(t.tick(t0 + 15 * S), Some(PodPhase::Failed));
        assert!(t.reason().unwrap().starts_with("AgentUnresponsive"));
    }

    #[test]
    fn no_heartbeat_deadline_before_the_agent_speaks() {
        let (mut t, t0) = tracker();
        assert_eq!(
            t.tick(t0 + 1000 * S),
            None,
            "booting is Pending, not Unknown"
        );
    }

    #[test]
    fn vmm_death_fails_the_pod() {
        let (mut t, t0) = tracker();
        t.container_started(t0);
        assert_eq!(t.failed("VMM exited"), Some(PodPhase::Failed));
        assert_eq!(t.reason(), Some("VMM exited"));
    }
}
