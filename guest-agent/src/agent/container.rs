//! One container process, or one exec in a running container: validation,
//! spawn, output pipes, stdin and exit status. The agent runs several of
//! these at once, independently (see `agent` and `pod.rs`).
//!
//! # Design
//!
//! The process is started with `std::process::Command` (environment cleared,
//! then exactly the spec's `KEY=VALUE`s; stdin `/dev/null`; stdout and stderr
//! on pipes) and the `Child` is dropped without waiting: its exit status comes
//! from the agent's own `waitpid(-1)` reaper through [`Container::on_reaped`],
//! since PID 1 reaps every orphan and must not race another waiter. Between
//! fork and exec the child runs a [`ChildSetup`] (`sandbox.rs`): signal mask,
//! session, cgroup, and for a container with a root file system its own
//! mount namespace and root, then its working directory and user. Such a
//! container is also born in a new pid namespace, as its pid 1, unless it
//! shares the pod's (see `sandbox.rs`).
//!
//! A container is *done* once its process is reaped and both pipes reached
//! EOF, so `ContainerExited` always follows the last `Output`. When the main
//! process dies, the rest of its cgroup is killed (as a container runtime
//! would), which also closes any pipe copy a background process held; without
//! a cgroup, pipes still open [`DRAIN_IDLE`] after the exit are closed. Its
//! overlay is removed when it is reported ([`Container::finish`]).
//!
//! A spawn that fails reports exit code 127 ([`EXIT_CODE_NOT_FOUND`]) when
//! the program does not exist (ENOENT) and 126 ([`EXIT_CODE_CANNOT_EXECUTE`])
//! for any other reason, including a missing `cwd` or a failed setup step,
//! as shells do.
//!
//! An exec ([`Container::exec`]) enters a running container: its mount and
//! pid namespaces, cgroup, environment (plus the exec's), user and working
//! directory. It is tracked like a container, under its own id, but its end
//! kills only its own process group, not the container's cgroup.
//!
//! Either kind may ask for stdin and a tty. Its stdin is then a pipe (or
//! the pty master) the agent writes [`Request::Stdin`] data to without
//! blocking, through a bounded buffer ([`STDIN_BUFFER`]). On a tty, stdout
//! and stderr are the one pty master, and the host sets its window size.
//!
//! [`Request::Stdin`]: guest_agent::protocol::Request::Stdin
//!
//! # Limitations
//!
//! A container in its own pid namespace is that namespace's init: the kernel
//! drops signals it has no handler for, so a plain `SIGTERM` may do nothing
//! and the stop falls to the `SIGKILL` after the grace period, as in
//! Kubernetes.
//!
//! A `tty` process's pty comes from the agent's `/dev/pts`, not from the
//! container's private one: it works as a terminal (and `/dev/tty`), but
//! `tty` inside an image container cannot name it.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    ContainerStats, ExecSpec, Limits, RunSpec, Stream, EXIT_CODE_CANNOT_EXECUTE,
    EXIT_CODE_NOT_FOUND, MAX_RESOLV_CONF, REASON_COMPLETED, REASON_ERROR, REASON_OOM_KILLED,
    REASON_SIGNALED,
};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::cgroup::{CgroupError, Cgroups, ContainerCgroup};
use super::logger::Chain;
use super::oci::{self, FsPlan, OciError, ProcessSecurity};
use super::rootfs::{is_component, is_mount_path, is_relative_path, ContainerRoot, RootfsError};
use super::sandbox::{self, ChildSetup, MountPlan, PidNsForChildren, Step};
use super::user::{self, User, UserError};

/// Largest output chunk read at once (one `Output` event).
pub const OUTPUT_CHUNK: usize = 8192;
/// How long pipes may stay silent after the process exited before the agent
/// stops waiting for their EOF.
pub const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// Most stdin bytes the agent holds for an exec that is not reading them.
pub const STDIN_BUFFER: usize = 1 << 20;
/// Where the guest's device nodes are, for containers' `/dev`.
const GUEST_DEV: &str = "/dev";

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
    /// A volume mount is unusable.
    #[error("volume mount {name:?} at {path:?}: {problem}")]
    InvalidVolume {
        /// The volume's name.
        name: String,
        /// Its path in the container.
        path: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The working directory is unusable.
    #[error("cannot use cwd {cwd:?}")]
    Cwd {
        /// The directory.
        cwd: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The user could not be resolved.
    #[error(transparent)]
    User(#[from] UserError),
    /// The runtime spec asks for what the agent cannot apply.
    #[error("runtime spec")]
    Spec(#[from] OciError),
    /// A sysctl could not be written.
    #[error("linux.sysctl: write {path}")]
    Sysctl {
        /// The `/proc/sys` file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The root file system could not be prepared.
    #[error("prepare the root file system")]
    Rootfs(#[from] RootfsError),
    /// The limits could not be applied.
    #[error("apply the limits")]
    Limits(#[source] CgroupError),
    /// Limits were asked for in a guest without cgroup2.
    #[error("the guest has no cgroup2, so limits cannot be set; drop the limits")]
    NoCgroups,
    /// A namespace or cgroup of the container to exec in could not be
    /// opened.
    #[error("cannot enter container {container:?}: open {path}")]
    Enter {
        /// The container.
        container: String,
        /// The file.
        path: PathBuf,
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
    /// A setup step between fork and exec failed.
    #[error("cannot start {argv0:?}: {step}")]
    Setup {
        /// The program.
        argv0: String,
        /// The step, and what it was about.
        step: String,
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
    /// A `resolv_conf` the container cannot have.
    #[error("invalid resolv_conf: {0}")]
    InvalidResolvConf(&'static str),
    /// Stdin data for a process started without stdin.
    #[error("{0:?} was not started with stdin: start it with stdin: true")]
    NoStdin(String),
    /// A window size for a process started without a tty.
    #[error("{0:?} was not started with a tty: start it with tty: true")]
    NoTty(String),
    /// TIOCSWINSZ failed.
    #[error("cannot set the terminal size of {name:?}")]
    Resize {
        /// The container or exec.
        name: String,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// Stats or a pause for a container without a cgroup of its own.
    #[error(
        "{0:?} has no cgroup of its own (an exec, or the guest lacks cgroup2): name its container"
    )]
    NoCgroup(String),
    /// Reading the cgroup, or freezing it, failed.
    #[error("container {name:?}")]
    Cgroup {
        /// The container.
        name: String,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// Stdin data after EOF, or after the process closed its stdin.
    #[error("the stdin of {0:?} is closed")]
    StdinClosed(String),
    /// Stdin data beyond the buffer.
    #[error("the stdin of {name:?} has {pending} bytes waiting; {limit} at most may wait: send less until it reads")]
    StdinFull {
        /// The exec.
        name: String,
        /// Bytes already waiting.
        pending: usize,
        /// [`STDIN_BUFFER`].
        limit: usize,
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

/// Checks a name: 1-63 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<(), ContainerError> {
    let name_ok = (1..=63).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return Err(ContainerError::InvalidName(name.to_string()));
    }
    Ok(())
}

fn validate_argv_env(argv: &[String], env: &[String]) -> Result<(), ContainerError> {
    if argv.is_empty() {
        return Err(ContainerError::EmptyArgv);
    }
    if let Some(bad) = env.iter().find(|kv| !kv.contains('=')) {
        return Err(ContainerError::InvalidEnv(bad.clone()));
    }
    Ok(())
}

/// Checks a spec without side effects.
pub fn validate(spec: &RunSpec) -> Result<(), ContainerError> {
    validate_name(&spec.name)?;
    validate_argv_env(spec.argv(), spec.env())?;
    oci::check_unsupported(&spec.spec)?;
    for v in &spec.volume_mounts {
        let problem = if spec.rootfs.is_none() {
            "volumes need a rootfs: the container would share the guest's file system"
        } else if !is_component(&v.name) || v.name.starts_with('.') {
            "the name must be one path component, not starting with '.'"
        } else if !is_mount_path(&v.path) {
            "the path must be absolute, not /, without . or .."
        } else if v.sub_path.as_deref().is_some_and(|s| !is_relative_path(s)) {
            "the subPath must be relative: normal components separated by '/', no . or .."
        } else {
            continue;
        };
        return Err(ContainerError::InvalidVolume {
            name: v.name.clone(),
            path: v.path.clone(),
            problem,
        });
    }
    if let Some(text) = &spec.resolv_conf {
        if spec.rootfs.is_none() {
            return Err(ContainerError::InvalidResolvConf(
                "it needs a rootfs: the container would share the guest's /etc",
            ));
        }
        if text.len() > MAX_RESOLV_CONF {
            return Err(ContainerError::InvalidResolvConf("it is over 64 KiB"));
        }
    }
    Ok(())
}

/// Checks an exec spec without side effects.
pub fn validate_exec(spec: &ExecSpec) -> Result<(), ContainerError> {
    validate_name(&spec.id)?;
    validate_argv_env(&spec.argv, &spec.env)
}

fn has_limits(limits: &Limits) -> bool {
    limits != &Limits::default()
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

/// What an exec into a container inherits from it.
#[derive(Debug, Clone, Default)]
struct ExecContext {
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<User>,
    /// The container's capabilities, seccomp, ...: an exec gets them too,
    /// as runc gives an exec the container's process settings.
    security: ProcessSecurity,
    /// The container has its own mount (and maybe pid) namespace.
    namespaced: bool,
    /// Its cgroup's `cgroup.procs`.
    cgroup_procs: Option<PathBuf>,
}

/// The write side of an exec's stdin, with what it has not read yet.
#[derive(Debug)]
struct StdinPipe {
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    /// EOF was asked for: close once `pending` is written.
    closing: bool,
    /// A pty master: EOF is the terminal's EOF character, not a close.
    tty: bool,
}

impl StdinPipe {
    /// Writes what it can without blocking; closes the fd at EOF or when
    /// the reader is gone.
    fn flush(&mut self) {
        let Some(fd) = &self.fd else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match nix::unistd::write(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    log::debug!("stdin write: {e}; closing it");
                    self.pending.clear();
                    self.fd = None;
                    return;
                }
            }
        }
        if self.closing {
            self.fd = None;
        }
    }
}

/// Whether a [`Container`] is a container's main process or an exec.
#[derive(Debug)]
enum Role {
    Main {
        /// Its overlay, removed with it.
        root: Option<ContainerRoot>,
        exec: Box<ExecContext>,
    },
    Exec,
}

/// A running (or exited but not yet drained) container, or exec.
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
    role: Role,
    /// Output comes from a pty master (EIO is its EOF).
    tty: bool,
    /// Where [`Request::Stdin`] data goes, when started with stdin.
    ///
    /// [`Request::Stdin`]: guest_agent::protocol::Request::Stdin
    stdin: Option<StdinPipe>,
}

/// A process's stdio, from the agent's side: what the child gets, and the
/// pty master when it runs on a terminal.
struct ChildStdio {
    child: [Stdio; 3],
    pty_master: Option<OwnedFd>,
}

impl ChildStdio {
    /// Pipes for stdout and stderr, and one for stdin if `stdin` (else
    /// `/dev/null`); or, with `tty`, one pty for all three.
    fn new(tty: bool, stdin: bool) -> std::io::Result<Self> {
        if tty {
            let pty = nix::pty::openpty(None, None)?;
            // The agent keeps no slave fd once the child has its copies, so
            // the master reads EIO (EOF) when the session is gone.
            let slave = || pty.slave.try_clone().map(Stdio::from);
            return Ok(Self {
                child: [slave()?, slave()?, slave()?],
                pty_master: Some(pty.master),
            });
        }
        let stdin = if stdin { Stdio::piped() } else { Stdio::null() };
        Ok(Self {
            child: [stdin, Stdio::piped(), Stdio::piped()],
            pty_master: None,
        })
    }

    /// The agent's ends, all nonblocking: stdout, stderr and stdin (when
    /// `stdin`), from the pty master or the child's pipes.
    fn parent_ends(
        pty_master: Option<OwnedFd>,
        child: &mut std::process::Child,
        stdin: bool,
        name: &str,
    ) -> std::io::Result<(Option<OwnedFd>, Option<OwnedFd>, Option<StdinPipe>)> {
        let tty = pty_master.is_some();
        let (stdout, stderr, stdin_fd) = match pty_master {
            Some(master) => {
                let writer = if stdin {
                    Some(master.try_clone()?)
                } else {
                    None
                };
                (Some(master), None, writer)
            }
            None => (
                child.stdout.take().map(OwnedFd::from),
                child.stderr.take().map(OwnedFd::from),
                child.stdin.take().map(OwnedFd::from),
            ),
        };
        for fd in stdout.iter().chain(stderr.iter()).chain(stdin_fd.iter()) {
            set_nonblocking(name, fd);
        }
        let stdin = stdin_fd.map(|fd| StdinPipe {
            fd: Some(fd),
            pending: Vec::new(),
            closing: false,
            tty,
        });
        Ok((stdout, stderr, stdin))
    }
}

/// The pid namespace a child is born in.
enum PidNs {
    /// The agent's.
    Inherit,
    /// A new one, as its pid 1.
    New,
    /// An existing one, open on `/proc/<pid>/ns/pid`.
    Join(File),
}

/// How to start one process.
struct Launch<'a> {
    argv: &'a [String],
    /// `KEY=VALUE`s; a later key wins.
    env: Vec<&'a str>,
    stdio: [Stdio; 3],
    setup: ChildSetup,
    pid_ns: PidNs,
}

/// Forks and execs `l`; a failure names the setup step that failed, or
/// the exec's errno.
fn spawn(l: Launch<'_>) -> Result<std::process::Child, ContainerError> {
    let (argv0, args) = l.argv.split_first().ok_or(ContainerError::EmptyArgv)?;
    let [stdin, stdout, stderr] = l.stdio;
    let mut cmd = Command::new(argv0);
    cmd.args(args)
        .env_clear()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    for kv in &l.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let spawn_err = |source| ContainerError::Spawn {
        argv0: argv0.clone(),
        source,
    };
    let (report_read, report_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| spawn_err(e.into()))?;
    let bind_targets: Vec<String> = l.setup.bind_targets();
    let mount_targets: Vec<String> = l.setup.mount_targets();
    let setup = l.setup;
    // SAFETY: the closure runs between fork and exec: `ChildSetup::run`
    // makes raw syscalls through nix on paths and fds the parent prepared,
    // and builds io::Errors from errno. The few allocations it makes
    // (creating mount points) cannot deadlock although the agent has threads
    // (probe checks, port forwards): musl's fork (since 1.2.2) takes the
    // allocator's lock around the fork, so the child may allocate.
    unsafe {
        cmd.pre_exec(move || setup.run(report_write.as_raw_fd()));
    }
    let spawned = {
        let _switched = match &l.pid_ns {
            PidNs::Inherit => None,
            PidNs::New => Some(PidNsForChildren::new_namespace()),
            PidNs::Join(ns) => Some(PidNsForChildren::join(ns)),
        }
        .transpose()
        .map_err(|e| ContainerError::Setup {
            argv0: argv0.clone(),
            step: "enter a pid namespace".into(),
            source: e.into(),
        })?;
        cmd.spawn()
    };
    // The closure (and the report pipe's write end) goes with `cmd`.
    drop(cmd);
    spawned.map_err(|source| match sandbox::read_report(&report_read) {
        Some(f) => {
            let mut step = f.step.describe().to_string();
            let targets = match f.step {
                Step::Bind => &bind_targets,
                Step::Mount => &mount_targets,
                _ => &Vec::new(),
            };
            if let Some(t) = targets.get(f.index) {
                step = format!("{step} {t}");
            }
            ContainerError::Setup {
                argv0: argv0.clone(),
                step,
                source,
            }
        }
        None => spawn_err(source),
    })
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, nix::pty::Winsize);

/// Sets an fd nonblocking, logging a failure.
fn set_nonblocking(name: &str, fd: &OwnedFd) {
    if let Err(e) = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
        log::warn!("{name}: cannot make a pipe nonblocking: {e}");
    }
}

fn cstring(s: &str) -> Result<CString, ContainerError> {
    CString::new(s).map_err(|_| ContainerError::Cwd {
        cwd: s.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

impl Container {
    /// Starts `spec` (already [`validate`]d), in its own cgroup when `cgroups`
    /// is available (reusing a leftover one of the same name), and in `root`
    /// (its prepared overlay, removed again if the start fails) when the spec
    /// has a root file system.
    pub fn start(
        spec: &RunSpec,
        cgroups: Option<&Cgroups>,
        root: Option<ContainerRoot>,
        seccomp: &mut oci::seccomp::Cache,
    ) -> Result<Self, ContainerError> {
        let started = Self::start_in(spec, cgroups, root.as_ref(), seccomp);
        match started {
            Ok(mut c) => {
                if let Role::Main { root: r, .. } = &mut c.role {
                    *r = root;
                }
                Ok(c)
            }
            Err(e) => {
                if let Some(root) = root {
                    if let Err(e) = root.remove() {
                        log::warn!("{}: {}", spec.name, Chain(&e));
                    }
                }
                Err(e)
            }
        }
    }

    fn start_in(
        spec: &RunSpec,
        cgroups: Option<&Cgroups>,
        root: Option<&ContainerRoot>,
        seccomp: &mut oci::seccomp::Cache,
    ) -> Result<Self, ContainerError> {
        let fs_root = root.map_or(Path::new("/"), ContainerRoot::merged);
        let user = Some(user::from_spec(
            &spec.spec,
            spec.image_user.as_deref(),
            fs_root,
        )?);
        let security = ProcessSecurity::new(&spec.spec, seccomp)?;
        let fs_plan = FsPlan::new(&spec.spec)?;
        let (argv, env, limits, tty) = (spec.argv(), spec.env(), spec.limits(), spec.tty());
        let cwd = spec.cwd();
        // Checked here because a bad cwd would otherwise surface as a
        // confusing failure "of the program".
        if let Some(cwd) = &cwd {
            if let Err(source) = std::fs::read_dir(fs_root.join(cwd.trim_start_matches('/'))) {
                return Err(ContainerError::Cwd {
                    cwd: cwd.clone(),
                    source,
                });
            }
        }
        let cgroup = match cgroups {
            None if has_limits(&limits) => return Err(ContainerError::NoCgroups),
            None => None,
            Some(c) if has_limits(&limits) => Some(
                c.create(&spec.name, &limits)
                    .map_err(ContainerError::Limits)?,
            ),
            Some(c) => c
                .create(&spec.name, &limits)
                .inspect_err(|e| {
                    log::warn!("{}: running without a cgroup: {}", spec.name, Chain(e))
                })
                .ok(),
        };
        let procs = cgroup.as_ref().and_then(|c| {
            c.open_procs()
                .inspect_err(|e| {
                    log::warn!("{}: running without a cgroup: {}", spec.name, Chain(e))
                })
                .ok()
        });
        for (path, value) in oci::sysctls(&spec.spec)? {
            std::fs::write(&path, value).map_err(|source| ContainerError::Sysctl {
                path: path.clone(),
                source,
            })?;
        }
        let mounts = match root {
            Some(r) => Some(MountPlan::new(r, Path::new(GUEST_DEV), fs_plan).map_err(
                |(path, e)| {
                    ContainerError::Rootfs(RootfsError::Io {
                        path: path.into(),
                        source: e.into(),
                    })
                },
            )?),
            None => None,
        };
        let pid_ns = match root {
            Some(_) if !spec.share_pid_namespace() => PidNs::New,
            _ => PidNs::Inherit,
        };
        let setup = ChildSetup {
            cgroup_procs: procs,
            mounts,
            join_mounts: None,
            cwd: cwd.as_deref().map(cstring).transpose()?,
            user: user.clone().filter(|u| u != &User::root()),
            controlling_tty: tty,
            security: security.clone(),
        };
        let io_err = |source| ContainerError::Spawn {
            argv0: argv.first().cloned().unwrap_or_default(),
            source,
        };
        let stdio = ChildStdio::new(tty, spec.stdin).map_err(io_err)?;
        let mut child = spawn(Launch {
            argv,
            env: env.iter().map(String::as_str).collect(),
            stdio: stdio.child,
            setup,
            pid_ns,
        })?;
        let pid = child.id();
        let (stdout, stderr, stdin) =
            ChildStdio::parent_ends(stdio.pty_master, &mut child, spec.stdin, &spec.name)
                .map_err(io_err)?;
        // Deliberately not waited on: the agent's waitpid(-1) reaper gets the
        // status. Dropping a Child neither waits nor kills.
        drop(child);
        let exec = ExecContext {
            env: env.to_vec(),
            cwd,
            user,
            security,
            namespaced: root.is_some(),
            cgroup_procs: cgroup.as_ref().map(ContainerCgroup::procs_path),
        };
        Ok(Self {
            name: spec.name.clone(),
            pid,
            stdout,
            stderr,
            termination: None,
            cgroup,
            drain_deadline: None,
            role: Role::Main {
                root: None,
                exec: Box::new(exec),
            },
            tty,
            stdin,
        })
    }

    /// Starts `spec` (already [`validate_exec`]ed) inside `target`, a running
    /// container (not an exec).
    pub fn exec(spec: &ExecSpec, target: &Container) -> Result<Self, ContainerError> {
        let Role::Main { exec: ctx, .. } = &target.role else {
            return Err(ContainerError::InvalidName(spec.container.clone()));
        };
        let enter = |ns: &str| {
            let path = PathBuf::from(format!("/proc/{}/ns/{ns}", target.pid));
            File::open(&path).map_err(|source| ContainerError::Enter {
                container: target.name.clone(),
                path,
                source,
            })
        };
        let (join_mounts, pid_ns) = if ctx.namespaced {
            (
                Some(OwnedFd::from(enter("mnt")?)),
                PidNs::Join(enter("pid")?),
            )
        } else {
            (None, PidNs::Inherit)
        };
        let cgroup_procs = match &ctx.cgroup_procs {
            Some(path) => Some(File::options().write(true).open(path).map_err(|source| {
                ContainerError::Enter {
                    container: target.name.clone(),
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let setup = ChildSetup {
            cgroup_procs,
            mounts: None,
            join_mounts,
            cwd: ctx.cwd.as_deref().map(cstring).transpose()?,
            user: ctx.user.clone().filter(|u| u != &User::root()),
            controlling_tty: spec.tty,
            security: ctx.security.clone(),
        };
        let env = ctx
            .env
            .iter()
            .chain(&spec.env)
            .map(String::as_str)
            .collect();
        let io_err = |source: std::io::Error| ContainerError::Spawn {
            argv0: spec.argv.first().cloned().unwrap_or_default(),
            source,
        };
        let stdio = ChildStdio::new(spec.tty, spec.stdin).map_err(io_err)?;
        let mut child = spawn(Launch {
            argv: &spec.argv,
            env,
            stdio: stdio.child,
            setup,
            pid_ns,
        })?;
        let pid = child.id();
        let (stdout, stderr, stdin) =
            ChildStdio::parent_ends(stdio.pty_master, &mut child, spec.stdin, &spec.id)
                .map_err(io_err)?;
        drop(child);
        Ok(Self {
            name: spec.id.clone(),
            pid,
            stdout,
            stderr,
            termination: None,
            cgroup: None,
            drain_deadline: None,
            role: Role::Exec,
            tty: spec.tty,
            stdin,
        })
    }

    /// The container's name (an exec's id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its main process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True for an exec, false for a container's main process.
    pub fn is_exec(&self) -> bool {
        matches!(self.role, Role::Exec)
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
    /// cgroup, covers what did not start a group of its own). An exec has
    /// no cgroup of its own: only its process group is killed.
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
        self.stdin = None;
        self.kill_all();
    }

    /// Queues `data` for the process's stdin and writes what it can; empty
    /// `data` closes stdin once the queue is written.
    pub fn write_stdin(&mut self, data: &[u8]) -> Result<(), ContainerError> {
        let name = self.name.clone();
        let Some(pipe) = &mut self.stdin else {
            return Err(match self.termination {
                Some(_) => ContainerError::StdinClosed(name),
                None => ContainerError::NoStdin(name),
            });
        };
        if pipe.closing || pipe.fd.is_none() {
            return Err(ContainerError::StdinClosed(name));
        }
        if data.is_empty() {
            pipe.closing = true;
            if pipe.tty {
                // The terminal's EOF (^D): closing the master would hang up
                // the session instead.
                pipe.pending.push(4);
            }
        } else if pipe.pending.len() + data.len() > STDIN_BUFFER {
            return Err(ContainerError::StdinFull {
                name,
                pending: pipe.pending.len(),
                limit: STDIN_BUFFER,
            });
        } else {
            pipe.pending.extend_from_slice(data);
        }
        pipe.flush();
        Ok(())
    }

    /// The stdin fd, while data waits for it to take more.
    pub fn stdin_waiting(&self) -> Option<BorrowedFd<'_>> {
        match &self.stdin {
            Some(p) if !p.pending.is_empty() => p.fd.as_ref().map(AsFd::as_fd),
            _ => None,
        }
    }

    /// Writes waiting stdin data, once the fd can take more.
    pub fn flush_stdin(&mut self) {
        if let Some(p) = &mut self.stdin {
            p.flush();
        }
    }

    /// Sets the window size of the process's terminal.
    pub fn resize_pty(&self, rows: u16, cols: u16) -> Result<(), ContainerError> {
        if !self.tty {
            return Err(ContainerError::NoTty(self.name.clone()));
        }
        let master = self
            .stdout
            .as_ref()
            .or(self.stdin.as_ref().and_then(|p| p.fd.as_ref()));
        let Some(master) = master else {
            // The session is over: no terminal left to size.
            return Err(ContainerError::Resize {
                name: self.name.clone(),
                source: Errno::EIO,
            });
        };
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from a valid pointer; the
        // fd is a pty master this container owns.
        unsafe { set_window_size(master.as_raw_fd(), &size) }
            .map(drop)
            .map_err(|source| ContainerError::Resize {
                name: self.name.clone(),
                source,
            })
    }

    /// The cgroup's counters (a container's main process only).
    pub fn stats(&self) -> Result<ContainerStats, ContainerError> {
        self.own_cgroup()?
            .stats()
            .map_err(|source| ContainerError::Cgroup {
                name: self.name.clone(),
                source,
            })
    }

    /// Freezes or thaws every process of the container (execs too).
    pub fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        self.own_cgroup()?
            .freeze(frozen)
            .map_err(|source| ContainerError::Cgroup {
                name: self.name.clone(),
                source,
            })
    }

    fn own_cgroup(&self) -> Result<&ContainerCgroup, ContainerError> {
        self.cgroup
            .as_ref()
            .ok_or_else(|| ContainerError::NoCgroup(self.name.clone()))
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
            // A pty master reads EIO once every slave fd is closed: its EOF.
            Err(Errno::EIO) if self.tty => {
                *slot = None;
                PipeRead::Nothing
            }
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
    /// kills and removing it and the container's root file system.
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
        if let Role::Main {
            root: Some(root), ..
        } = &self.role
        {
            if let Err(e) = root.remove() {
                log::warn!("{}: {}", self.name, Chain(&e));
            }
        }
        exit_report(t, oom)
    }

    /// Drains both pipes (bounded) while feeding stdin, then reaps the
    /// process by pid, for tests without the agent's reaper.
    #[cfg(test)]
    pub fn wait_output(&mut self) -> (Vec<u8>, Vec<u8>, Termination) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let give_up = Instant::now() + Duration::from_secs(10);
        while self.pipes().count() > 0 && Instant::now() < give_up {
            self.flush_stdin();
            for (stream, buf) in [(Stream::Stdout, &mut out), (Stream::Stderr, &mut err)] {
                if let PipeRead::Data(d) = self.read(stream, Instant::now()) {
                    buf.extend(d);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = Pid::from_raw(i32::try_from(self.pid).expect("a pid fits i32"));
        let t = match nix::sys::wait::waitpid(pid, None).expect("waitpid of a test child") {
            nix::sys::wait::WaitStatus::Exited(_, code) => Termination::Exited(code),
            nix::sys::wait::WaitStatus::Signaled(_, sig, _) => Termination::Signaled(sig as i32),
            other => panic!("unexpected {other:?}"),
        };
        self.on_reaped(t, Instant::now());
        (out, err, t)
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
            role: Role::Main {
                root: None,
                exec: Box::default(),
            },
            tty: false,
            stdin: None,
        };
        (c, write)
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::SigSet;

    use super::*;

    fn spec(name: &str, argv: &[&str], env: &[&str]) -> RunSpec {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        RunSpec {
            name: name.into(),
            spec: Box::new(guest_agent::protocol::process_spec(
                strings(argv),
                strings(env),
                None,
            )),
            ..RunSpec::default()
        }
    }

    fn start(spec: &RunSpec) -> Result<Container, ContainerError> {
        Container::start(spec, None, None, &mut Default::default())
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
    fn volume_mounts_and_their_sub_paths_are_validated() {
        let with = |sub_path: Option<&str>| {
            let mut s = spec("web", &["/bin/true"], &[]);
            s.rootfs = Some(guest_agent::protocol::Rootfs {
                device: "/dev/vdb".into(),
                fstype: "erofs".into(),
            });
            s.volume_mounts = vec![guest_agent::protocol::VolumeMount {
                name: "cfg".into(),
                path: "/etc/app.conf".into(),
                read_only: true,
                sub_path: sub_path.map(Into::into),
            }];
            validate(&s)
        };
        for ok in [None, Some("key"), Some("a/b"), Some("..data/key")] {
            assert!(with(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "/etc", "../x", "a/../b", "a//b", "./a", "a/"] {
            match with(Some(bad)) {
                Err(e @ ContainerError::InvalidVolume { .. }) => {
                    assert!(e.to_string().contains("subPath"), "{e}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_program_is_exit_127_and_names_argv0() {
        let err = start(&spec("t", &["/nonexistent/prog"], &[])).unwrap_err();
        assert_eq!(err.start_exit_code(), 127);
        let msg = Chain(&err).to_string();
        assert!(
            msg.contains("/nonexistent/prog") && msg.contains("os error 2"),
            "{msg}"
        );
    }

    fn run_to_end(c: &mut Container) -> (Vec<u8>, Vec<u8>, Termination) {
        c.wait_output()
    }

    #[test]
    fn runs_with_exactly_the_given_env_and_separate_streams() {
        let script = "env; echo oops >&2; exit 3";
        let mut s = spec("t", &["/bin/sh", "-c", script], &["A=1", "B=x=y"]);
        oci::test_util::set_cwd(&mut s, "/");
        let mut c = start(&s).unwrap();
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
        let started = start(&spec("t", &["/bin/sleep", "30"], &[]));
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
        oci::test_util::set_cwd(&mut s, "/nonexistent-dir");
        let err = start(&s).unwrap_err();
        assert!(matches!(err, ContainerError::Cwd { .. }), "{err:?}");
        assert_eq!(err.start_exit_code(), 126);
    }

    fn exec_spec(id: &str, container: &str, argv: &[&str]) -> ExecSpec {
        ExecSpec {
            id: id.into(),
            container: container.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..ExecSpec::default()
        }
    }

    #[test]
    fn limits_without_cgroups_are_refused() {
        let mut s = spec("t", &["/bin/true"], &[]);
        oci::test_util::merge(
            &mut s,
            serde_json::json!({"linux": {"resources": {"pids": {"limit": 10}}}}),
        );
        let err = start(&s).unwrap_err();
        assert!(matches!(err, ContainerError::NoCgroups), "{err:?}");
        assert_eq!(err.start_exit_code(), 126);
    }

    #[test]
    fn stdin_reaches_an_exec_and_eof_ends_it() {
        let mut c = start(&spec("box", &["/bin/sleep", "30"], &["A=1"])).unwrap();
        let mut cat = exec_spec("e1", "box", &["/bin/cat"]);
        cat.stdin = true;
        let mut e = Container::exec(&cat, &c).unwrap();
        assert!(e.is_exec() && !c.is_exec());
        e.write_stdin(b"hi").unwrap();
        e.write_stdin(b"").unwrap();
        let again = e.write_stdin(b"more").unwrap_err();
        assert!(matches!(again, ContainerError::StdinClosed(_)), "{again:?}");
        let (out, _, t) = e.wait_output();
        assert_eq!((out.as_slice(), t), (&b"hi"[..], Termination::Exited(0)));
        assert!(c.is_running(), "an exec's end leaves its container alone");

        let mut env = exec_spec("e2", "box", &["/bin/sh", "-c", "echo $A$B"]);
        env.env = vec!["B=2".into()];
        let mut e = Container::exec(&env, &c).unwrap();
        let err = e.write_stdin(b"x").unwrap_err();
        assert!(matches!(err, ContainerError::NoStdin(_)), "{err:?}");
        let (out, _, _) = e.wait_output();
        assert_eq!(out, b"12\n", "the container's env plus the exec's");

        c.kill_all();
        let (_, _, t) = c.wait_output();
        assert_eq!(t, Termination::Signaled(9));
    }

    #[test]
    fn a_main_process_can_have_a_sized_tty_and_stdin() {
        let mut tty = spec(
            "term",
            &["/bin/sh", "-c", "read line; stty size; echo got:$line"],
            &["PATH=/usr/bin:/bin"],
        );
        oci::test_util::merge(&mut tty, serde_json::json!({"process": {"terminal": true}}));
        tty.stdin = true;
        let mut c = start(&tty).unwrap();
        c.resize_pty(33, 101).unwrap();
        c.write_stdin(b"hello\n").unwrap();
        let (out, err, t) = c.wait_output();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains("33 101") && out.contains("got:hello"),
            "{out:?}"
        );
        assert!(err.is_empty(), "a tty merges stderr into stdout");
        assert_eq!(t, Termination::Exited(0));

        let plain = spec("plain", &["/bin/true"], &[]);
        let mut c = start(&plain).unwrap();
        let no_tty = c.resize_pty(24, 80).unwrap_err();
        assert!(matches!(no_tty, ContainerError::NoTty(_)), "{no_tty:?}");
        let no_stdin = c.write_stdin(b"x").unwrap_err();
        assert!(
            matches!(no_stdin, ContainerError::NoStdin(_)),
            "{no_stdin:?}"
        );
        let no_cgroup = c.stats().unwrap_err();
        assert!(
            matches!(no_cgroup, ContainerError::NoCgroup(_)),
            "{no_cgroup:?}"
        );
        c.wait_output();
    }

    #[test]
    fn stdin_is_bounded() {
        let mut c = start(&spec("box", &["/bin/sleep", "30"], &[])).unwrap();
        // Reads nothing: everything beyond the pipe's capacity waits.
        let mut stuck = exec_spec("e", "box", &["/bin/sleep", "30"]);
        stuck.stdin = true;
        let mut e = Container::exec(&stuck, &c).unwrap();
        let chunk = vec![b'x'; 256 * 1024];
        let mut sent = 0;
        let err = loop {
            match e.write_stdin(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(err) => break err,
            }
            assert!(sent < 4 * STDIN_BUFFER, "the buffer never filled");
        };
        assert!(matches!(err, ContainerError::StdinFull { .. }), "{err:?}");
        assert!(e.stdin_waiting().is_some(), "data waits for POLLOUT");
        e.kill_all();
        e.wait_output();
        c.kill_all();
        c.wait_output();
    }

    #[test]
    fn a_tty_exec_gets_a_controlling_terminal() {
        let mut c = start(&spec("box", &["/bin/sleep", "30"], &[])).unwrap();
        let script = "tty; echo ok > /dev/tty; read line; echo got $line";
        let mut tty = exec_spec("t", "box", &["/bin/sh", "-c", script]);
        (tty.tty, tty.stdin) = (true, true);
        let mut e = Container::exec(&tty, &c).unwrap();
        e.write_stdin(b"abc\n").unwrap();
        let (out, err, t) = e.wait_output();
        let out = String::from_utf8_lossy(&out);
        assert!(err.is_empty(), "a tty merges stderr into stdout");
        assert!(out.contains("/dev/pts/"), "{out:?}");
        assert!(out.contains("ok\r\n"), "/dev/tty opens: {out:?}");
        assert!(out.contains("got abc"), "{out:?}");
        assert_eq!(t, Termination::Exited(0));
        c.kill_all();
        c.wait_output();
    }
}
