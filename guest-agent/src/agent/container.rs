//! One container process: validation, spawn, output pipes and exit status.
//! The agent runs several of these at once, independently (see `agent`).
//!
//! # Design
//!
//! The process is started with `std::process::Command` (environment cleared,
//! then exactly the spec's `KEY=VALUE`s; stdin `/dev/null`; stdout and stderr
//! on pipes) and the `Child` is dropped without waiting: its exit status comes
//! from the agent's own `waitpid(-1)` reaper through [`Container::on_reaped`],
//! since PID 1 reaps every orphan and must not race another waiter.
//!
//! A container is *done* once its process is reaped and both pipes reached
//! EOF, so `ContainerExited` always follows the last `Output`. When the main
//! process dies, the rest of its cgroup is killed (as a container runtime
//! would), which also closes any pipe copy a background process held; without
//! a cgroup, pipes still open [`DRAIN_IDLE`] after the exit are closed.
//!
//! A spawn that fails reports exit code 127 ([`EXIT_CODE_NOT_FOUND`]) when
//! the program does not exist (ENOENT) and 126 ([`EXIT_CODE_CANNOT_EXECUTE`])
//! for any other reason, including a missing `cwd`, as shells do.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    RunSpec, Stream, EXIT_CODE_CANNOT_EXECUTE, EXIT_CODE_NOT_FOUND, REASON_COMPLETED, REASON_ERROR,
    REASON_OOM_KILLED, REASON_SIGNALED,
};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, killpg, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{setsid, Pid};

use super::cgroup::{Cgroups, ContainerCgroup};
use super::cpu;
use super::logger::Chain;

/// Largest output chunk read at once (one `Output` event).
pub const OUTPUT_CHUNK: usize = 8192;
/// How long pipes may stay silent after the process exited before the agent
/// stops waiting for their EOF.
pub const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// Errors of container management; the reply to the host carries the chain.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The name cannot be used as a cgroup directory.
    #[error("container name {0:?} is invalid: use 1-63 characters of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidName(String),
    /// Nothing to run.
    #[error("argv is empty: give at least the program to run")]
    EmptyArgv,
    /// An environment entry has no `=`.
    #[error("env entry {0:?} is not KEY=VALUE")]
    InvalidEnv(String),
    /// The working directory is unusable.
    #[error("cannot use cwd {cwd:?}")]
    Cwd {
        /// The directory.
        cwd: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// fork/exec failed.
    #[error("cannot start {argv0:?}")]
    Spawn {
        /// The program.
        argv0: String,
        /// The cause, with its errno.
        #[source]
        source: std::io::Error,
    },
    /// The signal number is not a Linux signal.
    #[error("{0} is not a valid signal number")]
    InvalidSignal(i32),
    /// kill(2) failed.
    #[error("cannot signal container {name:?}")]
    Signal {
        /// The container.
        name: String,
        /// The cause.
        #[source]
        source: Errno,
    },
}

impl ContainerError {
    /// The exit code to report for a container that failed to start.
    pub fn start_exit_code(&self) -> i32 {
        match self {
            ContainerError::Spawn { source, .. }
                if source.raw_os_error() == Some(Errno::ENOENT as i32) =>
            {
                EXIT_CODE_NOT_FOUND
            }
            _ => EXIT_CODE_CANNOT_EXECUTE,
        }
    }
}

/// Checks a spec without side effects.
pub fn validate(spec: &RunSpec) -> Result<(), ContainerError> {
    let name = &spec.name;
    let name_ok = (1..=63).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(ContainerError::InvalidName(name.clone()));
    }
    if spec.argv.is_empty() {
        return Err(ContainerError::EmptyArgv);
    }
    if let Some(bad) = spec.env.iter().find(|kv| !kv.contains('=')) {
        return Err(ContainerError::InvalidEnv(bad.clone()));
    }
    Ok(())
}

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

/// The Kubernetes-style outcome reported in `ContainerExited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    /// The exit status, or 128 + signal.
    pub exit_code: i32,
    /// One of the `REASON_*` strings.
    pub reason: &'static str,
    /// The killing signal, if any.
    pub signal: Option<i32>,
}

/// Maps a termination (and whether the cgroup saw an OOM kill) to the
/// reported exit code and reason. OOM wins over everything else, since an
/// OOM kill of any container process explains the failure.
pub fn exit_report(t: Termination, oom_killed: bool) -> ExitReport {
    let (exit_code, signal) = match t {
        Termination::Exited(code) => (code, None),
        Termination::Signaled(sig) => (128 + sig, Some(sig)),
    };
    let reason = match (oom_killed, t) {
        (true, _) => REASON_OOM_KILLED,
        (false, Termination::Exited(0)) => REASON_COMPLETED,
        (false, Termination::Exited(_)) => REASON_ERROR,
        (false, Termination::Signaled(_)) => REASON_SIGNALED,
    };
    ExitReport {
        exit_code,
        reason,
        signal,
    }
}

/// What reading an output pipe gave.
#[derive(Debug)]
pub enum PipeRead {
    /// A chunk of output.
    Data(Vec<u8>),
    /// Nothing right now (or EOF, after which the pipe is closed).
    Nothing,
}

/// A running (or exited but not yet drained) container.
#[derive(Debug)]
pub struct Container {
    name: String,
    pid: u32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    termination: Option<Termination>,
    cgroup: Option<ContainerCgroup>,
    /// Set after exit: when to stop waiting for the pipes' EOF.
    drain_deadline: Option<Instant>,
}

impl Container {
    /// Starts `spec` (already [`validate`]d), in its own cgroup when `cgroups`
    /// is available (reusing a leftover one of the same name).
    pub fn start(spec: &RunSpec, cgroups: Option<&Cgroups>) -> Result<Self, ContainerError> {
        let (argv0, args) = spec.argv.split_first().ok_or(ContainerError::EmptyArgv)?;
        // Checked here because a bad cwd would otherwise surface as a
        // confusing ENOENT "for the program".
        if let Some(cwd) = &spec.cwd {
            if let Err(source) = std::fs::read_dir(cwd) {
                return Err(ContainerError::Cwd {
                    cwd: cwd.clone(),
                    source,
                });
            }
        }
        let cgroup = cgroups.and_then(|c| {
            c.create(&spec.name)
                .inspect_err(|e| {
                    log::warn!("{}: running without a cgroup: {}", spec.name, Chain(e))
                })
                .ok()
        });
        let procs = cgroup.as_ref().and_then(|c| {
            c.open_procs()
                .inspect_err(|e| {
                    log::warn!("{}: running without a cgroup: {}", spec.name, Chain(e))
                })
                .ok()
        });

        let mut cmd = Command::new(argv0);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut own_tunables = None;
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
                if k == "GLIBC_TUNABLES" {
                    own_tunables = Some(v);
                }
            }
        }
        if let Some(tunables) = cpu::glibc_tunables(own_tunables) {
            cmd.env("GLIBC_TUNABLES", tunables);
        }
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let procs_fd = procs.as_ref().map(AsRawFd::as_raw_fd);
        let no_signals = SigSet::empty();
        // SAFETY: the closure runs between fork and exec, where only
        // async-signal-safe calls are allowed: it makes one sigprocmask(2),
        // one setsid(2), at most one write(2), and builds io::Errors from
        // errno, none of which allocates or takes locks.
        unsafe {
            cmd.pre_exec(move || {
                // The agent blocks SIGCHLD/SIGTERM/SIGINT for its signalfd and
                // std passes the mask on: without this the container could
                // not be stopped with SIGTERM.
                sigprocmask(SigmaskHow::SIG_SETMASK, Some(&no_signals), None)?;
                // Its own session and process group, so the container's
                // processes can be killed together even without a cgroup.
                setsid()?;
                match procs_fd {
                    Some(fd) => join_cgroup(fd),
                    None => Ok(()),
                }
            });
        }
        let mut child = cmd.spawn().map_err(|source| ContainerError::Spawn {
            argv0: argv0.clone(),
            source,
        })?;
        drop(procs);
        let pid = child.id();
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        // Deliberately not waited on: the agent's waitpid(-1) reaper gets the
        // status. Dropping a Child neither waits nor kills.
        drop(child);
        for fd in stdout.iter().chain(stderr.iter()) {
            if let Err(e) = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
                log::warn!("{}: cannot make an output pipe nonblocking: {e}", spec.name);
            }
        }
        Ok(Self {
            name: spec.name.clone(),
            pid,
            stdout,
            stderr,
            termination: None,
            cgroup,
            drain_deadline: None,
        })
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its main process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True until the main process has been reaped.
    pub fn is_running(&self) -> bool {
        self.termination.is_none()
    }

    /// True once the process is reaped and both pipes are closed.
    pub fn is_done(&self) -> bool {
        self.termination.is_some() && self.stdout.is_none() && self.stderr.is_none()
    }

    /// Sends `signal` to the main process, if it still runs.
    pub fn signal(&self, signal: i32) -> Result<(), ContainerError> {
        let sig = Signal::try_from(signal).map_err(|_| ContainerError::InvalidSignal(signal))?;
        let err = |source| ContainerError::Signal {
            name: self.name.clone(),
            source,
        };
        if !self.is_running() {
            return Err(err(Errno::ESRCH));
        }
        let pid = i32::try_from(self.pid).map_err(|_| err(Errno::ESRCH))?;
        kill(Pid::from_raw(pid), sig).map_err(err)
    }

    /// Sends SIGKILL to the main process and everything else of the
    /// container: its cgroup, and its process group (which, without a
    /// cgroup, covers what did not start a group of its own).
    pub fn kill_all(&self) {
        if self.is_running() {
            let _ = self.signal(Signal::SIGKILL as i32);
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.kill_all() {
                log::warn!("{}: cannot kill its cgroup: {}", self.name, Chain(&e));
            }
        }
        if let Ok(pgid) = i32::try_from(self.pid) {
            // ESRCH (nothing left in the group) is the usual, fine outcome.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    /// Records the main process's termination (from the reaper) and kills
    /// what is left of the container, as a container runtime would.
    pub fn on_reaped(&mut self, t: Termination, now: Instant) {
        self.termination = Some(t);
        self.drain_deadline = Some(now + DRAIN_IDLE);
        self.kill_all();
    }

    /// Stops waiting for output: closes both pipes.
    pub fn close_pipes(&mut self) {
        self.stdout = None;
        self.stderr = None;
    }

    /// The open output pipes, for polling.
    pub fn pipes(&self) -> impl Iterator<Item = (Stream, BorrowedFd<'_>)> {
        let out = self.stdout.as_ref().map(|fd| (Stream::Stdout, fd.as_fd()));
        let err = self.stderr.as_ref().map(|fd| (Stream::Stderr, fd.as_fd()));
        out.into_iter().chain(err)
    }

    /// Reads one chunk from a pipe, closing it at EOF or on error.
    pub fn read(&mut self, stream: Stream, now: Instant) -> PipeRead {
        let slot = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let Some(fd) = slot else {
            return PipeRead::Nothing;
        };
        let mut buf = vec![0; OUTPUT_CHUNK];
        match nix::unistd::read(&*fd, &mut buf) {
            Ok(0) => {
                *slot = None;
                PipeRead::Nothing
            }
            Ok(n) => {
                buf.truncate(n);
                self.note_activity(now);
                PipeRead::Data(buf)
            }
            Err(Errno::EAGAIN | Errno::EINTR) => PipeRead::Nothing,
            Err(e) => {
                log::warn!("{}: reading {stream:?}: {e}; closing it", self.name);
                *slot = None;
                PipeRead::Nothing
            }
        }
    }

    /// Postpones the drain deadline: output is still flowing (or waiting for
    /// room to flow).
    pub fn note_activity(&mut self, now: Instant) {
        if let Some(d) = &mut self.drain_deadline {
            *d = now + DRAIN_IDLE;
        }
    }

    /// When to give up on the pipes' EOF, once the process has exited.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.filter(|_| !self.is_done())
    }

    /// Closes the pipes once the drain deadline has passed.
    pub fn check_drain(&mut self, now: Instant) {
        if self.drain_deadline().is_some_and(|d| now >= d) {
            log::warn!(
                "{}: output pipes still open {DRAIN_IDLE:?} after exit (held by a background process?); closing them",
                self.name
            );
            self.close_pipes();
        }
    }

    /// For a done container: the report, after checking the cgroup for OOM
    /// kills and removing it.
    pub fn finish(&self) -> ExitReport {
        let t = self
            .termination
            .unwrap_or(Termination::Signaled(Signal::SIGKILL as i32));
        let oom = self.cgroup.as_ref().is_some_and(|cg| {
            let oom = cg.oom_killed();
            if let Err(e) = cg.remove() {
                // Usually EBUSY: killed processes still exiting. The agent
                // removes leftovers when it next starts a container in an
                // otherwise empty pod, and a start of the same name reuses
                // it.
                log::debug!("{}: cgroup not removed yet: {}", self.name, Chain(&e));
            }
            oom
        });
        exit_report(t, oom)
    }

    /// A running container without a process or cgroup whose stdout is a
    /// fresh nonblocking pipe (stderr closed), for tests of the agent's
    /// bookkeeping; also returns the pipe's write end. Give a `pid` above
    /// the kernel's limit (2^22): [`Container::on_reaped`] signals its group.
    #[cfg(test)]
    pub fn stub(name: &str, pid: u32) -> (Self, OwnedFd) {
        let (read, write) = nix::unistd::pipe().expect("pipe(2) for a test stub");
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK on a pipe");
        let c = Self {
            name: name.into(),
            pid,
            stdout: Some(read),
            stderr: None,
            termination: None,
            cgroup: None,
            drain_deadline: None,
        };
        (c, write)
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open on
/// `fd`. Runs in the child between fork and exec.
fn join_cgroup(fd: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is the parent's open `cgroup.procs`, inherited across fork
    // and valid until exec (it is close-on-exec); the buffer is a 1-byte
    // static string.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if written == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, argv: &[&str], env: &[&str]) -> RunSpec {
        RunSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            ..RunSpec::default()
        }
    }

    #[test]
    fn exit_zero_is_completed_and_nonzero_is_error() {
        let r = exit_report(Termination::Exited(0), false);
        assert_eq!((r.exit_code, r.reason, r.signal), (0, "Completed", None));
        let r = exit_report(Termination::Exited(3), false);
        assert_eq!((r.exit_code, r.reason, r.signal), (3, "Error", None));
    }

    #[test]
    fn death_by_signal_is_128_plus_n() {
        let r = exit_report(Termination::Signaled(15), false);
        assert_eq!(
            (r.exit_code, r.reason, r.signal),
            (143, "Signaled", Some(15))
        );
    }

    #[test]
    fn oom_kill_wins_over_other_reasons() {
        let r = exit_report(Termination::Signaled(9), true);
        assert_eq!(
            (r.exit_code, r.reason, r.signal),
            (137, "OOMKilled", Some(9))
        );
        let r = exit_report(Termination::Exited(1), true);
        assert_eq!((r.exit_code, r.reason), (1, "OOMKilled"));
    }

    #[test]
    fn specs_are_validated() {
        assert!(validate(&spec("web-1.a_b", &["/bin/true"], &["A=b", "EMPTY="])).is_ok());
        for name in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(64)] {
            let err = validate(&spec(name, &["/bin/true"], &[])).unwrap_err();
            assert!(matches!(err, ContainerError::InvalidName(_)), "{name:?}");
        }
        assert!(matches!(
            validate(&spec("a", &[], &[])),
            Err(ContainerError::EmptyArgv)
        ));
        assert!(matches!(
            validate(&spec("a", &["x"], &["NOEQUALS"])),
            Err(ContainerError::InvalidEnv(_))
        ));
    }

    #[test]
    fn missing_program_is_exit_127_and_names_argv0() {
        let err = Container::start(&spec("t", &["/nonexistent/prog"], &[]), None).unwrap_err();
        assert_eq!(err.start_exit_code(), 127);
        let msg = Chain(&err).to_string();
        assert!(
            msg.contains("/nonexistent/prog") && msg.contains("os error 2"),
            "{msg}"
        );
    }

    /// Drains both pipes (bounded), then reaps the process by pid.
    fn run_to_end(c: &mut Container) -> (Vec<u8>, Vec<u8>, Termination) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let give_up = Instant::now() + Duration::from_secs(10);
        while c.pipes().count() > 0 && Instant::now() < give_up {
            for (stream, buf) in [(Stream::Stdout, &mut out), (Stream::Stderr, &mut err)] {
                if let PipeRead::Data(d) = c.read(stream, Instant::now()) {
                    buf.extend(d);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = Pid::from_raw(i32::try_from(c.pid()).unwrap());
        let t = match nix::sys::wait::waitpid(pid, None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, code) => Termination::Exited(code),
            nix::sys::wait::WaitStatus::Signaled(_, sig, _) => Termination::Signaled(sig as i32),
            other => panic!("unexpected {other:?}"),
        };
        c.on_reaped(t, Instant::now());
        (out, err, t)
    }

    #[test]
    fn runs_with_exactly_the_given_env_and_separate_streams() {
        let script = "env; echo oops >&2; exit 3";
        let mut s = spec("t", &["/bin/sh", "-c", script], &["A=1", "B=x=y"]);
        s.cwd = Some("/".into());
        let mut c = Container::start(&s, None).unwrap();
        assert!(c.is_running());
        let (out, err, t) = run_to_end(&mut c);
        let mut vars: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
        // sh may export PWD/SHLVL/_ itself; the given ones must be there and
        // nothing from the test's own environment.
        vars.retain(|v| !["PWD=", "SHLVL=", "_="].iter().any(|p| v.starts_with(p)));
        assert_eq!(vars, ["A=1", "B=x=y"]);
        assert_eq!(err, b"oops\n");
        assert_eq!(t, Termination::Exited(3));
        assert!(c.is_done());
        assert_eq!(c.finish().exit_code, 3);
    }

    #[test]
    fn signal_reaches_the_process_even_if_the_agent_blocks_it() {
        // The agent blocks SIGTERM for its signalfd; the child must not be
        // born with it blocked. (Only this test thread's mask changes.)
        let mut term = SigSet::empty();
        term.add(Signal::SIGTERM);
        term.thread_block().unwrap();
        let started = Container::start(&spec("t", &["/bin/sleep", "30"], &[]), None);
        term.thread_unblock().unwrap();
        let mut c = started.unwrap();
        c.signal(15).unwrap();
        assert!(matches!(c.signal(0), Err(ContainerError::InvalidSignal(0))));
        let (_, _, t) = run_to_end(&mut c);
        assert_eq!(t, Termination::Signaled(15));
        assert!(
            c.signal(15).is_err(),
            "signalling an exited container must fail"
        );
    }

    #[test]
    fn missing_cwd_is_exit_126() {
        let mut s = spec("t", &["/bin/true"], &[]);
        s.cwd = Some("/nonexistent-dir".into());
        let err = Container::start(&s, None).unwrap_err();
        assert!(matches!(err, ContainerError::Cwd { .. }), "{err:?}");
        assert_eq!(err.start_exit_code(), 126);
    }
}
