//! The pod's registry of containers and execs: what is running or still
//! draining its output, by name.
//!
//! # Design
//!
//! A container (or exec) is inserted when it starts and taken out once it is
//! done, to be reported; its name is then free for another `Run` or `Exec`.
//! Containers and execs share one name space, since events name them alike.
//! The registry also counts ended ones, which is what makes a pod
//! *finished* (see `agent`).

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use guest_agent::protocol::Stream;

use super::container::Container;

/// The pod's containers that are running or still draining their output,
/// by name. A container is inserted when it starts and taken out once it is
/// done, to be reported; its name is then free for another `Run`.
#[derive(Debug, Default)]
pub struct Containers {
    live: BTreeMap<String, Container>,
    /// Containers reported as exited (or failed to start) so far.
    ended: u64,
}

impl Containers {
    /// Why a `Run` of `name` must be refused now, if it must.
    pub fn refuse_run(&self, name: &str) -> Option<String> {
        let c = self.live.get(name)?;
        Some(if c.is_running() {
            format!(
                "container {name:?} is still running (pid {}); run it again after its \
                 container_exited, or signal it to stop",
                c.pid()
            )
        } else {
            format!(
                "container {name:?} has exited but its output is still being forwarded; \
                 run it again after its container_exited"
            )
        })
    }

    /// Adds a started container; its name must not be live (see
    /// [`Containers::refuse_run`]).
    pub fn insert(&mut self, c: Container) {
        let replaced = self.live.insert(c.name().to_string(), c);
        debug_assert!(replaced.is_none(), "a live container was replaced");
    }

    /// The live container called `name`.
    pub fn get(&self, name: &str) -> Option<&Container> {
        self.live.get(name)
    }

    /// The live container called `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Container> {
        self.live.get_mut(name)
    }

    /// The running container whose main process is `pid`. Exited ones are
    /// skipped: the kernel may already have reused their pid.
    pub fn running_by_pid(&mut self, pid: i32) -> Option<&mut Container> {
        self.live
            .values_mut()
            .find(|c| c.is_running() && i64::from(c.pid()) == i64::from(pid))
    }

    /// The names of the running containers, for error messages.
    pub fn running_names(&self) -> Vec<&str> {
        let running = self.live.values().filter(|c| c.is_running());
        running.map(Container::name).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Container> {
        self.live.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Container> {
        self.live.values_mut()
    }

    /// Every open output pipe, with its container's name, for polling.
    pub fn pipes(&self) -> impl Iterator<Item = (&str, Stream, BorrowedFd<'_>)> {
        self.live
            .iter()
            .flat_map(|(name, c)| c.pipes().map(move |(s, fd)| (name.as_str(), s, fd)))
    }

    /// Every exec's stdin with data waiting for room, for polling.
    pub fn stdin_waiting(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.live
            .iter()
            .filter_map(|(name, c)| c.stdin_waiting().map(|fd| (name.as_str(), fd)))
    }

    /// The earliest drain deadline of an exited container.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.iter().filter_map(Container::drain_deadline).min()
    }

    /// Takes out the done containers (in name order) and counts them as
    /// ended.
    pub fn take_done(&mut self) -> Vec<Container> {
        let names: Vec<String> = self
            .live
            .iter()
            .filter(|(_, c)| c.is_done())
            .map(|(name, _)| name.clone())
            .collect();
        let done: Vec<Container> = names
            .iter()
            .filter_map(|name| self.live.remove(name))
            .collect();
        self.ended += done.len() as u64;
        done
    }

    /// Counts a container that failed to start (reported, never live).
    pub fn note_failed_start(&mut self) {
        self.ended += 1;
    }

    /// True when no container is running or draining.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The pod is finished once at least one container ran (or failed to
    /// start) and none is still running or draining.
    pub fn pod_finished(&self) -> bool {
        self.ended > 0 && self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use std::time::Duration;

    use super::*;
    use crate::agent::container::{self, PipeRead, Termination};

    /// Pids above the kernel's limit (2^22), so no real process is touched.
    const PID_A: u32 = 5_000_001;
    const PID_B: u32 = 5_000_002;

    fn live(containers: &mut Containers, name: &str, pid: u32) -> OwnedFd {
        let (c, writer) = Container::stub(name, pid);
        containers.insert(c);
        writer
    }

    /// What the reaper does for `name`'s main process.
    fn reap(containers: &mut Containers, name: &str, now: Instant) {
        let c = containers.get_mut(name).unwrap();
        c.on_reaped(Termination::Exited(0), now);
    }

    /// Reaps `name` and closes its output: done, as far as the agent knows.
    fn end(containers: &mut Containers, name: &str, writer: OwnedFd) {
        let now = Instant::now();
        reap(containers, name, now);
        drop(writer);
        let c = containers.get_mut(name).unwrap();
        assert!(matches!(c.read(Stream::Stdout, now), PipeRead::Nothing));
        assert!(c.is_done(), "{name} should be done after exit and EOF");
    }

    #[test]
    fn a_live_name_is_refused_until_its_exit_is_reported() {
        let mut cs = Containers::default();
        let writer = live(&mut cs, "web", PID_A);
        let running = cs.refuse_run("web").expect("a running name is refused");
        assert!(
            running.contains("\"web\"") && running.contains("still running"),
            "{running}"
        );
        assert_eq!(cs.refuse_run("db"), None, "other names may run");

        reap(&mut cs, "web", Instant::now());
        let draining = cs.refuse_run("web").expect("a draining name is refused");
        assert!(draining.contains("still being forwarded"), "{draining}");

        end(&mut cs, "web", writer);
        let done = cs.take_done();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].name(), "web");
        assert_eq!(cs.refuse_run("web"), None, "a reported name may run again");
        let _writer = live(&mut cs, "web", PID_B);
        assert_eq!(cs.get("web").map(Container::pid), Some(PID_B));
    }

    #[test]
    fn exit_statuses_go_to_the_running_container_with_that_pid() {
        let mut cs = Containers::default();
        let _a = live(&mut cs, "a", PID_A);
        let _b = live(&mut cs, "b", PID_B);
        let pid = |p: u32| i32::try_from(p).unwrap();
        assert_eq!(cs.running_by_pid(pid(PID_B)).map(|c| c.name()), Some("b"));
        assert_eq!(cs.running_by_pid(pid(PID_A)).map(|c| c.name()), Some("a"));
        assert!(cs.running_by_pid(42).is_none(), "an orphan is nobody's");

        reap(&mut cs, "a", Instant::now());
        assert!(
            cs.running_by_pid(pid(PID_A)).is_none(),
            "an exited container's pid may belong to someone else by now"
        );
        assert_eq!(cs.running_names(), ["b"]);
    }

    #[test]
    fn the_pod_is_finished_once_one_ran_and_none_is_live() {
        let mut cs = Containers::default();
        assert!(!cs.pod_finished(), "nothing ran yet");
        let a = live(&mut cs, "a", PID_A);
        let b = live(&mut cs, "b", PID_B);
        assert!(!cs.pod_finished());

        end(&mut cs, "a", a);
        assert_eq!(cs.take_done().len(), 1);
        assert!(!cs.pod_finished(), "b still runs");

        end(&mut cs, "b", b);
        assert_eq!(cs.take_done().len(), 1);
        assert!(cs.pod_finished());

        let _c = live(&mut cs, "c", PID_A);
        assert!(!cs.pod_finished(), "a new container un-finishes the pod");

        let mut failed = Containers::default();
        failed.note_failed_start();
        assert!(failed.pod_finished(), "a failed start counts as ran");
    }

    #[test]
    fn only_done_containers_are_taken_out() {
        let mut cs = Containers::default();
        let _a = live(&mut cs, "a", PID_A);
        let b = live(&mut cs, "b", PID_B);
        reap(&mut cs, "a", Instant::now());
        assert!(cs.take_done().is_empty(), "a still has an open pipe");
        end(&mut cs, "b", b);
        let done: Vec<_> = cs.take_done().iter().map(|c| c.name().to_owned()).collect();
        assert_eq!(done, ["b"]);
        assert!(cs.get("a").is_some() && cs.get("b").is_none());
    }

    #[test]
    fn every_container_s_pipes_are_polled_and_drained_by_deadline() {
        let mut cs = Containers::default();
        let _a = live(&mut cs, "a", PID_A);
        let _b = live(&mut cs, "b", PID_B);
        let pipes: Vec<_> = cs.pipes().map(|(n, s, _)| (n, s)).collect();
        assert_eq!(pipes, [("a", Stream::Stdout), ("b", Stream::Stdout)]);
        assert_eq!(cs.drain_deadline(), None, "nothing exited yet");

        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        reap(&mut cs, "b", later);
        reap(&mut cs, "a", t0);
        assert_eq!(cs.drain_deadline(), Some(t0 + container::DRAIN_IDLE));
    }
}
