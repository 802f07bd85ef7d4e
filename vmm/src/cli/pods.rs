//! The kubectl-like commands on manifest pods: `get`, `describe`, `logs`,
//! `exec`, `stop` and `rm`.
//!
//! # Design
//! They read the pod directory the supervisor keeps (`status.json`,
//! `logs/`, `pod.yaml`) and talk to a live supervisor only through its
//! control socket (see [`crate::pod::control`]); none of them needs the
//! supervisor for reading, so they work on a pod that ended, and `stop`/`rm`
//! also clean up after a supervisor that was killed: the VMM (by pid and
//! start time), the IP lease and the port forwards (by pod name). A killed
//! VMM's tap disappears with its last file descriptor.
//!
//! Exit codes: 0 done, 1 failed (the message says why), 2 bad usage;
//! `exec` exits with the command's exit code, or 125 when unipod could not
//! run it.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_agent::protocol::Stream;

use crate::error_chain::error_chain;
use crate::file_error::FileError;
use crate::pod::cleanup::{clean_up_orphan, wait_gone};
use crate::pod::control::{
    self, ClientLine, ControlReply, ControlRequest, ExecRequest, CONTROL_SOCKET,
};
use crate::pod::kubectl::{describe_text, table};
use crate::pod::manifest;
use crate::pod::phase::PodPhase;
use crate::pod::start::state_root;
use crate::pod::status::{
    human_duration, kubectl_ready, kubectl_restarts, kubectl_status, parse_time, unix_now,
    ContainerState, ContainerStatus, PodRecord, StatusError, STATUS_FILE,
};

/// Exit code: the command failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of `exec` when unipod could not run the command.
pub const EXIT_EXEC_ERROR: i32 = 125;

/// Help after the commands' own.
pub const COMMON_AFTER_HELP: &str = "\
Pods live in <state>/pods/NAME/ (status.json, logs/, pod.yaml).

Exit codes:
  0  done
  1  failed: the pod does not exist, or the message says why
  2  bad command-line usage";

/// Help after `unipod get --help`.
pub const GET_AFTER_HELP: &str = "\
Columns are kubectl's: READY counts ready containers (running, and their
readiness probe passed if they have one), STATUS is computed as 'kubectl
get pod' does (Init:0/1, PodInitializing, CrashLoopBackOff, Completed,
Error, OOMKilled, Running, Terminating, ...), RESTARTS adds up the
container restarts. A pod whose supervisor is gone shows Unknown.

Exit codes:
  0  done
  1  failed: the pod does not exist, or the message says why
  2  bad command-line usage";

/// Help after `unipod exec --help`.
pub const EXEC_AFTER_HELP: &str = "\
Example: unipod exec -it web -- sh

Exit codes:
  N    the command's exit code (128+N if a signal killed it)
  125  unipod could not run it: no such pod or container, the container is
       not running, or the agent refused
  2    bad command-line usage";

/// `--state-dir`, shared by every pod command.
#[derive(Debug, clap::Args)]
pub struct StateArg {
    /// unipod's state directory. Default: $UNIPOD_STATE_DIR, else
    /// /run/unipod as root, else $XDG_RUNTIME_DIR/unipod.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `-o` formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The table plus the pod IP.
    Wide,
    /// The status documents as JSON.
    Json,
    /// The status documents as YAML.
    Yaml,
}

/// `unipod get` arguments.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// POD shows one pod; TYPE lists pods, configmaps (cm) or secrets, and
    /// TYPE NAME shows one of them.
    #[arg(value_name = "[TYPE] [NAME]", num_args = 0..=2)]
    pub words: Vec<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod describe` arguments.
#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod logs` arguments.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The container (an init container too); needed when the pod has
    /// several containers.
    #[arg(short = 'c', long, value_name = "NAME")]
    pub container: Option<String>,
    /// Keep printing as the container writes, until it terminates and no
    /// restart follows.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The logs of the container's previous run (before its last restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod exec` arguments.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The container; needed when the pod has several containers.
    #[arg(short = 'c', long, value_name = "NAME")]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Run the command on a terminal (puts this terminal in raw mode).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod stop` arguments.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// `unipod rm` arguments.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The pod.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// Remove it even if it runs (its VM is killed).
    #[arg(short = 'f', long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// Errors of the pod commands.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    /// A wrong argument, or a failed object command.
    #[error("{0}")]
    Usage(String),
    /// No such pod.
    #[error("pod {0:?} not found (unipod get lists pods)")]
    NotFound(String),
    /// Its status cannot be read.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// A container must be named.
    #[error(
        "a container name must be specified for pod {pod}, choose one of: [{containers}]{init}"
    )]
    ContainerNeeded {
        /// The pod.
        pod: String,
        /// The app containers.
        containers: String,
        /// ` or one of the init containers: [...]`, if any.
        init: String,
    },
    /// No such container.
    #[error("container {container:?} is not valid for pod {pod:?}; its containers are: {all}")]
    NoContainer {
        /// The pod.
        pod: String,
        /// The name given.
        container: String,
        /// Every container.
        all: String,
    },
    /// No log to show.
    #[error("{0}")]
    NoLogs(String),
    /// The pod runs.
    #[error(
        "pod {0:?} is running; stop it first (unipod stop {0}) or force it (unipod rm -f {0})"
    )]
    Running(String),
    /// The pod does not run.
    #[error("pod {pod:?} is not running (it is {phase}); exec needs a running container")]
    NotRunning {
        /// The pod.
        pod: String,
        /// Its phase.
        phase: PodPhase,
    },
    /// The supervisor refused.
    #[error("pod {pod:?}: {message}")]
    Refused {
        /// The pod.
        pod: String,
        /// What it said.
        message: String,
    },
    /// Talking to the supervisor failed.
    #[error("pod {pod:?}: cannot reach its supervisor at {}", path.display())]
    Control {
        /// The pod.
        pod: String,
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// Cleanup failed.
    #[error("pod {pod:?}: cannot remove its network state")]
    Network {
        /// The pod.
        pod: String,
        /// Why.
        #[source]
        source: crate::net::NetError,
    },
    /// The pod did not stop in time.
    #[error("pod {0:?} did not stop in time; 'unipod rm -f {0}' kills it")]
    StopTimeout(String),
}

fn pod_dir(state: &StateArg, pod: &str) -> PathBuf {
    state_root(state.state_dir.as_deref())
        .join("pods")
        .join(pod)
}

fn load(state: &StateArg, pod: &str) -> Result<(PathBuf, PodRecord), PodsError> {
    let dir = pod_dir(state, pod);
    if pod.is_empty() || pod.contains('/') || !dir.join(STATUS_FILE).is_file() {
        return Err(PodsError::NotFound(pod.to_string()));
    }
    let record = PodRecord::read(&dir)?;
    Ok((dir, record))
}

/// Every manifest pod, by name.
fn all_pods(state: &StateArg) -> Vec<PodRecord> {
    let root = state_root(state.state_dir.as_deref()).join("pods");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|n| PodRecord::read(&root.join(n)).ok())
        .collect()
}

/// `unipod get`.
pub fn get(args: &GetArgs) -> Result<i32, PodsError> {
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    let pod = match words[..] {
        [] | ["pods" | "pod" | "po"] => None,
        ["pods" | "pod" | "po", name] => Some(name),
        [kind, name] => return get_objects(kind, Some(name), args),
        [word] => match super::objects::parse_kind(word) {
            Ok(_) => return get_objects(word, None, args),
            Err(_) => Some(word),
        },
        _ => unreachable!("clap takes at most two words"),
    };
    let pod = pod.map(str::to_owned);
    let records = match &pod {
        Some(pod) => vec![load(&args.state, pod)?.1],
        None => all_pods(&args.state),
    };
    if let Some(format @ (Output::Json | Output::Yaml)) = args.output {
        // One pod prints as itself, several as a List, as kubectl does.
        let doc = match &pod {
            Some(_) => serde_json::to_value(&records[0]),
            None => Ok(serde_json::json!({ "kind": "List", "items": records })),
        }
        .expect("the status serializes");
        if format == Output::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("JSON values serialize")
            );
        } else {
            print!(
                "{}",
                serde_norway::to_string(&doc).expect("JSON values serialize")
            );
        }
        return Ok(0);
    }
    if records.is_empty() {
        eprintln!("No resources found");
        return Ok(0);
    }
    let wide = args.output == Some(Output::Wide);
    let now = unix_now();
    let mut rows = vec![vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()];
    if wide {
        rows[0].push("IP".into());
    }
    for r in &records {
        let age = parse_time(&r.creation_timestamp)
            .map_or("<unknown>".into(), |t| human_duration(now - t));
        let mut row = vec![
            r.name.clone(),
            kubectl_ready(&r.status, &r.sidecars),
            kubectl_status(&r.status, r.shown_phase(), &r.sidecars),
            kubectl_restarts(&r.status, now, &r.sidecars),
            age,
        ];
        if wide {
            row.push(r.status.pod_ip.clone().unwrap_or("<none>".into()));
        }
        rows.push(row);
    }
    print!("{}", table(&rows));
    Ok(0)
}

/// `unipod get configmaps|secrets [NAME]`.
fn get_objects(kind: &str, name: Option<&str>, args: &GetArgs) -> Result<i32, PodsError> {
    let kind = super::objects::parse_kind(kind)
        .map_err(|why| PodsError::Usage(format!("{why}, or pods")))?;
    super::objects::get(kind, name, args.output, &args.state)
        .map_err(|e| PodsError::Usage(error_chain(&e, ": ")))
}

/// The pod's manifest, from the copy of the file it came from (which may
/// hold ConfigMaps and Secrets too); `None` for a command pod.
fn stored_manifest(dir: &Path) -> Option<manifest::PodManifest> {
    let documents = manifest::load_documents(&dir.join("pod.yaml")).ok()?;
    documents.pods.into_iter().next().map(|(m, _)| m)
}

/// `unipod describe`.
pub fn describe(args: &DescribeArgs) -> Result<i32, PodsError> {
    let (dir, record) = load(&args.state, &args.pod)?;
    let manifest = stored_manifest(&dir);
    print!("{}", describe_text(&record, manifest.as_ref(), unix_now()));
    Ok(0)
}

/// The container a command is about: `-c`, else the pod's only container.
fn pick_container(record: &PodRecord, given: Option<&str>) -> Result<String, PodsError> {
    let names = |list: &[ContainerStatus]| {
        list.iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let s = &record.status;
    match given {
        Some(c) if record.container(c).is_some() => Ok(c.to_string()),
        Some(c) => Err(PodsError::NoContainer {
            pod: record.name.clone(),
            container: c.to_string(),
            all: format!(
                "{} {}",
                names(&s.init_container_statuses),
                names(&s.container_statuses)
            )
            .trim()
            .to_string(),
        }),
        None if s.container_statuses.len() == 1 => Ok(s.container_statuses[0].name.clone()),
        None => Err(PodsError::ContainerNeeded {
            pod: record.name.clone(),
            containers: names(&s.container_statuses),
            init: if s.init_container_statuses.is_empty() {
                String::new()
            } else {
                format!(
                    " or one of the init containers: [{}]",
                    names(&s.init_container_statuses)
                )
            },
        }),
    }
}

/// `unipod logs`.
pub fn logs(args: &LogsArgs) -> Result<i32, PodsError> {
    let (dir, record) = load(&args.state, &args.pod)?;
    let container = pick_container(&record, args.container.as_deref())?;
    let status = record
        .container(&container)
        .expect("picked from the status");
    let logs = dir.join("logs").join(&container);
    let mut run = status.restart_count;
    if args.previous {
        if run == 0 {
            return Err(PodsError::NoLogs(format!(
                "previous terminated container {container:?} in pod {:?} not found",
                record.name
            )));
        }
        run -= 1;
    }
    let file = |n: u32| logs.join(format!("{n}.log"));
    if !file(run).exists() && !args.follow {
        let state = match &status.state {
            ContainerState::Waiting { reason, .. } => reason.clone(),
            _ => "not started".into(),
        };
        return Err(PodsError::NoLogs(format!(
            "container {container:?} in pod {:?} is waiting to start: {state}",
            record.name
        )));
    }
    let mut out = std::io::stdout().lock();
    let mut offset = 0u64;
    loop {
        let path = file(run);
        offset += copy_from(&path, offset, &mut out)?;
        if !args.follow || args.previous {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
        let Ok(now) = PodRecord::read(&dir) else {
            return Ok(0);
        };
        let Some(c) = now.container(&container) else {
            return Ok(0);
        };
        if c.restart_count > run && file(c.restart_count).exists() {
            copy_from(&path, offset, &mut out)?;
            run = c.restart_count;
            offset = 0;
            continue;
        }
        let ended = matches!(c.state, ContainerState::Terminated { .. });
        if (ended && c.restart_count == run) || !now.supervisor_alive() {
            copy_from(&path, offset, &mut out)?;
            return Ok(0);
        }
    }
}

/// Copies `path` from `offset` to `out`; returns the bytes copied.
fn copy_from(path: &Path, offset: u64, out: &mut dyn Write) -> Result<u64, PodsError> {
    use std::io::{Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(FileError::at("read", path)(source).into()),
    };
    f.seek(SeekFrom::Start(offset))
        .map_err(FileError::at("read", path))?;
    let n = std::io::copy(&mut f, out).map_err(FileError::at("read", path))?;
    let _ = out.flush();
    Ok(n)
}

fn connect(dir: &Path, pod: &str) -> Result<UnixStream, PodsError> {
    let path = dir.join(CONTROL_SOCKET);
    UnixStream::connect(&path).map_err(|source| PodsError::Control {
        pod: pod.to_string(),
        path,
        source,
    })
}

/// Restores the terminal on drop.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// `unipod exec`.
pub fn exec(args: &ExecArgs) -> Result<i32, PodsError> {
    let (dir, record) = load(&args.state, &args.pod)?;
    if !record.supervisor_alive() || record.status.phase.is_terminal() {
        return Err(PodsError::NotRunning {
            pod: record.name.clone(),
            phase: record.shown_phase(),
        });
    }
    let container = pick_container(&record, args.container.as_deref())?;
    let mut stream = connect(&dir, &record.name)?;
    let control_err = |source| PodsError::Control {
        pod: record.name.clone(),
        path: dir.join(CONTROL_SOCKET),
        source,
    };
    let request = ControlRequest::Exec(ExecRequest {
        container,
        argv: args.command.clone(),
        stdin: args.stdin,
        tty: args.tty,
    });
    control::write_line(&mut stream, &request).map_err(control_err)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(control_err)?);
    match control::read_line::<_, ControlReply>(&mut reader).map_err(control_err)? {
        Some(ControlReply::Started { .. }) => {}
        Some(ControlReply::Error(message)) => {
            return Err(PodsError::Refused {
                pod: record.name.clone(),
                message,
            })
        }
        other => {
            return Err(PodsError::Refused {
                pod: record.name.clone(),
                message: format!("unexpected answer {other:?}"),
            })
        }
    }
    let _raw = if args.tty { RawMode::enter() } else { None };
    if args.stdin {
        let mut writer = stream;
        let _ = std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stdin = std::io::stdin().lock();
                loop {
                    let n = stdin.read(&mut buf).unwrap_or(0);
                    let line = ClientLine::Stdin(buf[..n].to_vec());
                    if control::write_line(&mut writer, &line).is_err() || n == 0 {
                        return;
                    }
                }
            });
    }
    loop {
        match control::read_line::<_, ControlReply>(&mut reader) {
            Ok(Some(ControlReply::Output { stream, data })) => {
                let result = match stream {
                    Stream::Stdout => {
                        let mut w = std::io::stdout().lock();
                        w.write_all(&data).and_then(|()| w.flush())
                    }
                    Stream::Stderr => {
                        let mut w = std::io::stderr().lock();
                        w.write_all(&data).and_then(|()| w.flush())
                    }
                };
                if result.is_err() {
                    return Ok(EXIT_EXEC_ERROR);
                }
            }
            Ok(Some(ControlReply::Exit { code, .. })) => return Ok(code),
            Ok(Some(ControlReply::Error(message))) => {
                return Err(PodsError::Refused {
                    pod: record.name.clone(),
                    message,
                })
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(PodsError::Refused {
                    pod: record.name.clone(),
                    message: "the supervisor hung up before the command ended".into(),
                })
            }
            Err(e) => return Err(control_err(e)),
        }
    }
}

/// `unipod stop`.
pub fn stop(args: &StopArgs) -> Result<i32, PodsError> {
    let (dir, mut record) = load(&args.state, &args.pod)?;
    if !record.supervisor_alive() {
        if !record.status.phase.is_terminal() || record.vmm.is_some_and(|v| v.alive()) {
            clean_up_orphan(&dir, &mut record).map_err(|source| PodsError::Network {
                pod: args.pod.clone(),
                source,
            })?;
        }
        println!("pod {:?} stopped ({})", record.name, record.status.phase);
        return Ok(0);
    }
    let mut stream = connect(&dir, &record.name)?;
    let control_err = |source| PodsError::Control {
        pod: record.name.clone(),
        path: dir.join(CONTROL_SOCKET),
        source,
    };
    control::write_line(&mut stream, &ControlRequest::Stop).map_err(control_err)?;
    let mut reader = BufReader::new(stream);
    match control::read_line::<_, ControlReply>(&mut reader).map_err(control_err)? {
        Some(ControlReply::Ok) => {}
        other => {
            return Err(PodsError::Refused {
                pod: record.name.clone(),
                message: format!("unexpected answer {other:?}"),
            })
        }
    }
    let grace = stored_manifest(&dir)
        .map(|m| m.termination_grace_period)
        .unwrap_or(manifest::DEFAULT_TERMINATION_GRACE_PERIOD);
    let supervisor = record.supervisor.expect("alive, hence recorded");
    if !wait_gone(|| supervisor.alive(), grace + Duration::from_secs(60)) {
        return Err(PodsError::StopTimeout(record.name.clone()));
    }
    let record = PodRecord::read(&dir)?;
    println!("pod {:?} stopped ({})", record.name, record.status.phase);
    Ok(0)
}

/// `unipod rm`.
pub fn rm(args: &RmArgs) -> Result<i32, PodsError> {
    let (dir, mut record) = load(&args.state, &args.pod)?;
    if let Some(supervisor) = record.supervisor.filter(|s| s.alive()) {
        if !args.force {
            return Err(PodsError::Running(record.name.clone()));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(supervisor.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        wait_gone(|| supervisor.alive(), Duration::from_secs(5));
    }
    clean_up_orphan(&dir, &mut record).map_err(|source| PodsError::Network {
        pod: args.pod.clone(),
        source,
    })?;
    std::fs::remove_dir_all(&dir).map_err(FileError::at("remove", &dir))?;
    println!("pod {:?} removed", record.name);
    Ok(0)
}
