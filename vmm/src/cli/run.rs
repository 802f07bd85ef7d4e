//! `unipod run`: boot a pod VM, run one container in it, stream its output,
//! report its phases and exit with its exit code.
//!
//! # Design
//! The VMM runs as a child process (`unipod boot --vsock-uds ...`) so that a
//! VMM crash is observable and cannot take this supervisor with it. All
//! per-pod state lives in one directory under the state dir, removed on
//! every exit path by `PodDir`'s Drop; the VMM child gets PR_SET_PDEATHSIG,
//! so even a SIGKILLed `unipod run` leaves no VM behind.
//!
//! The VM is restored from the warm-start snapshot of its kernel, initramfs
//! and memory size (made on first use, see [`crate::pod::warm_start`]);
//! `--cold` boots it instead. A snapshot the VMM refuses is removed and the
//! pod boots cold. Either way the agent then gets the pod's identity
//! (`Configure`: UID, hostname, clock, fresh entropy, network) before the
//! container.
//!
//! With `--network bridge` (the default) the pod first gets an IP, a tap on
//! the bridge and its port forwards ([`crate::net::Attachment`]); the VMM
//! inherits the tap fd. All of it is undone when the pod ends (see
//! docs/NETWORK.md).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest_agent::protocol::{
    AgentMessage, DebugCommand, Event, NetworkConfig, PodConfig, Reply, Request, RunSpec, Stream,
    AGENT_VSOCK_PORT,
};

use crate::exit_code::EXIT_SNAPSHOT_REJECTED;
use crate::net::attachment::AttachRequest;
use crate::net::{
    Attachment, Ipv4Cidr, NetError, PodNetwork, PublishedPort, DEFAULT_BRIDGE, DEFAULT_POD_CIDR,
};
use crate::pod::agent_client::{AgentError, AgentLink};
use crate::pod::phase::{PhaseTracker, PodPhase};
use crate::pod::vm_inputs::{BootMode, GuestInputs, NetBackend, VmmFiles};
use crate::pod::vmm_process;
use crate::pod::warm_start::{self, WarmStartError};
use crate::snapshot::cache::SnapshotCache;

pub use crate::exit_code::{EXIT_INTERRUPTED, EXIT_RUN_ERROR};

const TICK: Duration = Duration::from_millis(100);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// `unipod run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Pod name: a DNS label (lowercase letters, digits and '-', at most 63).
    #[arg(long, value_name = "NAME", default_value = "pod")]
    pub name: String,
    /// Guest kernel. Default: guest/vmlinux next to unipod's build directory
    /// (target/guest/vmlinux, built by 'make kernel').
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs with the agent as /init. Default:
    /// target/guest/initramfs.cpio (built by 'make images').
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "N")]
    pub mem_mib: Option<u32>,
    /// Environment for the container, KEY=VALUE; repeatable. Nothing else is
    /// inherited except PATH=/usr/local/bin:/usr/bin:/bin.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the container.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// How long the guest may take to boot and answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub agent_timeout_secs: u64,
    /// Agent heartbeat period in milliseconds. The pod becomes Unknown after
    /// three missed heartbeats plus a second. Each heartbeat wakes the
    /// guest, which costs host CPU; a shorter period notices a hung guest
    /// sooner.
    #[arg(long, value_name = "MS", default_value_t = guest_agent::protocol::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// How long the pod may stay Unknown before unipod gives up on it,
    /// stops the VM and reports Failed.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        env = "UNIPOD_UNKNOWN_TIMEOUT_SECS"
    )]
    pub unknown_timeout_secs: u64,
    /// Boot the guest from scratch instead of restoring the warm-start
    /// snapshot.
    #[arg(long)]
    pub cold: bool,
    /// unipod's state: pods/NAME/ (vsock socket, logs) and snapshots/.
    /// Default: $UNIPOD_STATE_DIR, else /run/unipod as root, else
    /// $XDG_RUNTIME_DIR/unipod.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The pod's network: "bridge" gives it an IP on --pod-cidr and a tap on
    /// --bridge (created if missing); "none" leaves it only loopback.
    #[arg(long, value_enum, default_value_t = NetworkMode::Bridge)]
    pub network: NetworkMode,
    /// The host bridge of the pod network; its address is the pods'
    /// gateway.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The pod network. Every pod on one bridge must use the same one.
    #[arg(long, value_name = "CIDR", default_value = DEFAULT_POD_CIDR)]
    pub pod_cidr: Ipv4Cidr,
    /// The gateway (the bridge's address). Default: the CIDR's first address.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Forward a host port to the pod (nftables DNAT), as a manifest's
    /// hostPort does: HOST_PORT:POD_PORT[/tcp|/udp]; repeatable.
    #[arg(long, short = 'p', value_name = "HOST:POD")]
    pub publish: Vec<PublishedPort>,
    /// Masquerade the pod network's traffic to the outside (off by default:
    /// pods reach the host and each other only). The rule stays for the
    /// bridge; 'nft delete table ip unipod' removes it.
    #[arg(long)]
    pub nat: bool,
    /// A DNS server for the pod's /etc/resolv.conf; repeatable (at most 3).
    /// Default: the host's non-loopback nameservers.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Another container in the pod, started before the main one:
    /// NAME=COMMAND, where COMMAND runs under /bin/sh -c; repeatable. It
    /// shares the pod's network (localhost), env and working directory; the
    /// pod ends when the main container (CMD) does.
    #[arg(long, value_name = "NAME=COMMAND")]
    pub sidecar: Vec<Sidecar>,
    /// Debug: ask the agent to stop its heartbeats once the container runs,
    /// to exercise the Unknown phase.
    #[arg(long)]
    pub debug_stop_heartbeat: bool,
    /// MANIFEST, or `--` then the container's command and arguments.
    ///
    /// MANIFEST is a Kubernetes Pod manifest (.yaml, .yml or .json) to run
    /// instead of a command: its init containers, containers, images,
    /// volumes, ports (hostPort), restartPolicy and limits. The VM is sized
    /// from the limits; the pod directory stays after the pod ends, until
    /// 'unipod rm NAME'.
    #[arg(value_name = "MANIFEST | -- CMD")]
    pub words: Vec<String>,
    /// The container's command and arguments (the words after `--`); set by
    /// [`RunArgs::split_manifest`].
    #[arg(skip)]
    pub command: Vec<String>,
    /// The manifest (a word before any `--`); set by
    /// [`RunArgs::split_manifest`].
    #[arg(skip)]
    pub manifest: Option<PathBuf>,
    /// With MANIFEST: run the pod in the background, wait until it runs
    /// (or fails), print its name and exit. 'unipod logs/exec/stop/rm' reach
    /// it; its supervisor logs to STATE_DIR/pods/NAME/supervisor.log.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Internal: be the supervisor of a pod whose directory 'unipod run
    /// --detach' made.
    #[arg(long, hide = true)]
    pub supervisor: bool,
}

impl RunArgs {
    /// The agent's silence after which the pod is Unknown: three missed
    /// heartbeats and a second.
    pub fn unknown_after(&self) -> Duration {
        3 * Duration::from_millis(self.heartbeat_ms) + Duration::from_secs(1)
    }

    /// How long the pod may stay Unknown before it is Failed.
    pub fn give_up_after(&self) -> Duration {
        Duration::from_secs(self.unknown_timeout_secs)
    }

    /// Splits the positional words (`raw` is the process's arguments): the
    /// words after `--` are the command, a word before it the manifest. Then
    /// checks that MANIFEST and the flags of the command form are not mixed.
    /// `Err` is a usage error.
    pub fn split_manifest(&mut self, raw: &[std::ffi::OsString]) -> Result<(), String> {
        let after_dashes = raw
            .iter()
            .position(|a| a == "--")
            .map_or(0, |i| raw.len() - i - 1)
            .min(self.words.len());
        let before = self.words.len() - after_dashes;
        self.command = self.words[before..].to_vec();
        self.manifest = match &self.words[..before] {
            [] => None,
            [one] => Some(PathBuf::from(one)),
            [_, second, ..] => {
                return Err(format!(
                    "unexpected argument {second:?}: give one MANIFEST, or a command after '--'"
                ))
            }
        };
        if self.manifest.is_none() && self.command.is_empty() {
            return Err(
                "give a MANIFEST (unipod run pod.yaml) or a command after '--' \
                        (unipod run -- CMD...)"
                    .into(),
            );
        }
        if self.manifest.is_none() {
            return match (self.detach, self.supervisor) {
                (false, false) => Ok(()),
                _ => Err("--detach needs a MANIFEST (unipod run --detach pod.yaml)".into()),
            };
        }
        let mixed = [
            (!self.command.is_empty(), "-- CMD"),
            (
                self.name != "pod",
                "--name (the manifest's metadata.name names the pod)",
            ),
            (!self.env.is_empty(), "--env (use the containers' env)"),
            (
                self.workdir.is_some(),
                "--workdir (use the containers' workingDir)",
            ),
            (
                !self.sidecar.is_empty(),
                "--sidecar (list the containers in the manifest)",
            ),
            (
                !self.publish.is_empty(),
                "--publish (use the ports' hostPort)",
            ),
            (
                self.mem_mib.is_some(),
                "--mem-mib (the VM is sized from the limits)",
            ),
            (self.debug_stop_heartbeat, "--debug-stop-heartbeat"),
        ];
        match mixed.iter().find(|(given, _)| *given) {
            Some((_, flag)) => Err(format!("{flag} cannot be used with a MANIFEST")),
            None => Ok(()),
        }
    }
}

/// A `--sidecar NAME=COMMAND`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    /// The container name (a DNS label).
    pub name: String,
    /// The shell command it runs.
    pub command: String,
}

impl std::str::FromStr for Sidecar {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let (name, command) = value
            .split_once('=')
            .ok_or("expected NAME=COMMAND, e.g. web='nc -l -p 80 -e echo hi'")?;
        if !is_dns_label(name) {
            return Err(format!(
                "{name:?}: a container name is a DNS label: 1-63 lowercase letters, digits or '-'"
            ));
        }
        if command.trim().is_empty() {
            return Err(format!("{name}: the command is empty"));
        }
        Ok(Sidecar {
            name: name.to_string(),
            command: command.to_string(),
        })
    }
}

/// `--network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    /// A tap on the host bridge, and a pod IP.
    Bridge,
    /// Loopback only.
    None,
}

/// Errors before the pod could run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad pod name.
    #[error("--name {0:?}: a pod name is a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit")]
    BadName(String),
    /// Bad env entry.
    #[error("--env {0:?}: expected KEY=VALUE with a non-empty KEY")]
    BadEnv(String),
    /// A guest artifact is missing.
    #[error("{flag} {}: not found; build it with '{make}' or pass {flag}", .path.display())]
    MissingArtifact {
        /// The flag that sets it.
        flag: &'static str,
        /// The path looked at.
        path: PathBuf,
        /// The make target that builds it.
        make: &'static str,
    },
    /// The pod is already running.
    #[error("pod {name:?} is already running (VMM pid {pid}); pick another --name")]
    AlreadyRunning {
        /// The pod name.
        name: String,
        /// Its VMM's pid.
        pid: i32,
    },
    /// The pod directory cannot be created.
    #[error("cannot create the pod directory {}", .0.display())]
    PodDir(PathBuf, #[source] std::io::Error),
    /// The pod network could not be set up; nothing of it was left behind.
    #[error(transparent)]
    Network(#[from] NetError),
    /// Two containers with one name.
    #[error("--sidecar {0:?}: the name is taken (by the pod or another sidecar); container names must be unique")]
    DuplicateContainer(String),
    /// The name belongs to a manifest pod.
    #[error(
        "pod {0:?} already exists (made by 'unipod run MANIFEST'); remove it with: unipod rm {0}"
    )]
    ManifestPodExists(String),
    /// Too many --dns servers.
    #[error("--dns: {0} servers given; the guest resolver reads at most 3")]
    TooManyDns(usize),
}

pub(crate) static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// Runs `unipod run`; returns the exit code.
pub fn run(args: &RunArgs) -> Result<i32, RunError> {
    validate_name(&args.name)?;
    validate_sidecars(&args.name, &args.sidecar)?;
    if let Some(bad) = args
        .env
        .iter()
        .find(|e| !e.contains('=') || e.starts_with('='))
    {
        return Err(RunError::BadEnv(bad.clone()));
    }
    let inputs = GuestInputs::new(
        artifact(args.kernel.as_deref(), "vmlinux", "--kernel", "make kernel")?,
        artifact(
            args.initrd.as_deref(),
            "initramfs.cpio",
            "--initrd",
            "make images",
        )?,
        args.mem_mib.unwrap_or(crate::config::DEFAULT_MEM_MIB),
    );
    install_signal_handlers();

    let pod = Pod {
        name: args.name.clone(),
    };
    let state = state_root(args.state_dir.as_deref());
    let dir = PodDir::create(&state.join("pods"), &args.name)?;
    let net = attach_network(args, &state, &args.name, &args.publish)?;
    if let Some(net) = &net {
        dir.record_network(net, &args.bridge);
        let lease = net.lease();
        eprintln!(
            "unipod: pod {}: IP {}/{} on bridge {} (tap {})",
            args.name,
            lease.ip,
            lease.prefix_len,
            args.bridge,
            net.tap_name()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.agent_timeout_secs);
    let mut phase = PhaseTracker::new(args.unknown_after(), args.give_up_after());
    let backend = match &net {
        Some(net) => NetBackend::Tap {
            fd: net.tap_fd(),
            mac: net.lease().mac,
        },
        None => NetBackend::Detached,
    };
    let (mut vmm, link) = match start_vm(&pod, &dir, &inputs, &state, backend, args.cold, deadline)
    {
        Ok(started) => started,
        Err(failure) => return Ok(pod.fail(&mut phase, &dir, failure.reason, failure.code)),
    };
    let network = net
        .as_ref()
        .map(|n| n.guest_config(dns_servers(args), host_dns_search()));
    let code = supervise(&pod, &dir, &mut vmm, link, &mut phase, args, network);
    // Whatever happened, no VM outlives us.
    vmm_process::stop(&mut vmm);
    Ok(code)
}

/// Sets up the pod's network, unless `--network none`.
pub(crate) fn attach_network(
    args: &RunArgs,
    state: &Path,
    pod: &str,
    ports: &[PublishedPort],
) -> Result<Option<Attachment>, RunError> {
    if args.network == NetworkMode::None {
        return Ok(None);
    }
    if args.dns.len() > 3 {
        return Err(RunError::TooManyDns(args.dns.len()));
    }
    let mut network = PodNetwork::new(args.bridge.clone(), args.pod_cidr);
    if let Some(gateway) = args.gateway {
        network.gateway = gateway;
    }
    let request = AttachRequest {
        state_dir: state,
        network: &network,
        pod,
        ports,
        egress_nat: args.nat,
    };
    Ok(Some(Attachment::create(&request)?))
}

/// `--dns`, else the host's nameservers that a pod can reach (not loopback).
pub(crate) fn dns_servers(args: &RunArgs) -> Vec<std::net::Ipv4Addr> {
    if !args.dns.is_empty() {
        return args.dns.clone();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    crate::net::attachment::resolv_conf_servers(&text)
}

/// The host's `search` domains.
pub(crate) fn host_dns_search() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    crate::net::attachment::resolv_conf_search(&text)
}

pub(crate) struct Pod {
    pub(crate) name: String,
}

impl Pod {
    pub(crate) fn report(&self, phase: PodPhase, reason: Option<&str>) {
        match reason {
            Some(r) => eprintln!("unipod: pod {}: {phase} ({r})", self.name),
            None => eprintln!("unipod: pod {}: {phase}", self.name),
        }
    }

    /// Reports Failed with `reason`; returns `code`.
    fn fail(&self, phase: &mut PhaseTracker, dir: &PodDir, reason: String, code: i32) -> i32 {
        phase.failed(reason);
        self.report(PodPhase::Failed, phase.reason());
        if code == EXIT_RUN_ERROR {
            dir.print_console_tail();
        }
        code
    }
}

/// Why the VM never reached a ready agent.
pub(crate) struct StartFailure {
    pub(crate) reason: String,
    pub(crate) code: i32,
}

/// Restores (or boots) the pod VM and connects to its agent.
pub(crate) fn start_vm(
    pod: &Pod,
    dir: &PodDir,
    inputs: &GuestInputs,
    state: &Path,
    net: NetBackend,
    cold: bool,
    deadline: Instant,
) -> Result<(Child, AgentLink), StartFailure> {
    let cache = SnapshotCache::new(state);
    if !cold {
        match find_snapshot(&cache, inputs, deadline) {
            Ok((key, snapshot)) => {
                pod.report(
                    PodPhase::Pending,
                    Some(&format!("restoring the VM from snapshot {key}")),
                );
                match launch(dir, inputs, BootMode::Restore(&snapshot), net, deadline) {
                    Err(StartFailure {
                        reason,
                        code: EXIT_SNAPSHOT_REJECTED,
                    }) => {
                        eprintln!("unipod: warning: snapshot {key} is unusable: {reason}");
                        eprintln!(
                            "unipod: removing it and booting cold; the next run makes a new one"
                        );
                        let _ = cache.remove(&key);
                    }
                    started => return started,
                }
            }
            Err(_) if SIGNALS.load(Ordering::SeqCst) > 0 => {
                return Err(StartFailure {
                    reason: "interrupted while making the snapshot".into(),
                    code: EXIT_INTERRUPTED,
                })
            }
            Err(e) => eprintln!(
                "unipod: warning: no warm start ({}); booting cold",
                crate::cli::error_chain(&e, ": ")
            ),
        }
    }
    pod.report(PodPhase::Pending, Some("booting the VM"));
    launch(dir, inputs, BootMode::Cold, net, deadline)
}

fn find_snapshot(
    cache: &SnapshotCache,
    inputs: &GuestInputs,
    deadline: Instant,
) -> Result<(String, PathBuf), WarmStartError> {
    let key = warm_start::key(inputs, cache)?;
    let dir = warm_start::snapshot_for(cache, &key, inputs, deadline, &mut not_interrupted)?;
    Ok((key, dir))
}

/// Starts the VMM child and connects to the agent. A VMM that refused its
/// snapshot fails with [`EXIT_SNAPSHOT_REJECTED`] as the code.
fn launch(
    dir: &PodDir,
    inputs: &GuestInputs,
    mode: BootMode,
    net: NetBackend,
    deadline: Instant,
) -> Result<(Child, AgentLink), StartFailure> {
    // A refused restore may have left its sockets behind.
    let _ = std::fs::remove_file(dir.vsock());
    let _ = std::fs::remove_file(dir.api_sock());
    let files = VmmFiles {
        vsock: &dir.vsock(),
        console_log: &dir.console_log(),
        vmm_log: &dir.vmm_log(),
        api: Some(&dir.api_sock()),
    };
    let mut vmm = vmm_process::spawn(inputs, &files, mode, net).map_err(|e| StartFailure {
        reason: format!("cannot start the VMM process: {e}"),
        code: EXIT_RUN_ERROR,
    })?;
    dir.record_pid(vmm.id());
    let mut check = || vmm_process::alive(&mut vmm).and_then(|()| not_interrupted());
    let connected = AgentLink::connect(&dir.vsock(), AGENT_VSOCK_PORT, deadline, &mut check);
    let e = match connected {
        Ok(link) => {
            log::debug!("guest agent {} is ready", link.agent_version);
            return Ok((vmm, link));
        }
        Err(e) => e,
    };
    let interrupted = matches!(e, AgentError::Aborted(_)) && SIGNALS.load(Ordering::SeqCst) > 0;
    let exit = vmm.try_wait().ok().flatten().and_then(|s| s.code());
    vmm_process::stop(&mut vmm);
    Err(match (interrupted, exit) {
        (true, _) => StartFailure {
            reason: e.to_string(),
            code: EXIT_INTERRUPTED,
        },
        (false, Some(EXIT_SNAPSHOT_REJECTED)) => StartFailure {
            reason: format!(
                "the VMM refused it:\n{}",
                vmm_process::log_tail(&dir.vmm_log(), 3).join("\n")
            ),
            code: EXIT_SNAPSHOT_REJECTED,
        },
        (false, _) => StartFailure {
            reason: e.to_string(),
            code: EXIT_RUN_ERROR,
        },
    })
}

/// The pod's identity and what a restored guest must not reuse.
pub(crate) fn pod_config(
    name: &str,
    heartbeat_ms: u64,
    network: Option<NetworkConfig>,
) -> std::io::Result<PodConfig> {
    let mut entropy = vec![0u8; 64];
    let mut uid = [0u8; 16];
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    urandom.read_exact(&mut entropy)?;
    urandom.read_exact(&mut uid)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(PodConfig {
        pod_uid: uuid_v4(uid),
        hostname: name.to_string(),
        unix_secs: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        unix_nanos: now.subsec_nanos(),
        entropy,
        heartbeat_ms: Some(heartbeat_ms),
        network,
    })
}

/// Formats random bytes as an RFC 9562 version-4 UUID.
pub(crate) fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Configures the pod, runs the container and follows it. Returns the exit
/// code.
fn supervise(
    pod: &Pod,
    dir: &PodDir,
    vmm: &mut Child,
    mut link: AgentLink,
    phase: &mut PhaseTracker,
    args: &RunArgs,
    network: Option<NetworkConfig>,
) -> i32 {
    phase.heard_from_agent(Instant::now());
    let messages = match link.subscribe() {
        Ok(rx) => rx,
        Err(e) => return pod.fail(phase, dir, e.to_string(), EXIT_RUN_ERROR),
    };
    let config = match pod_config(&pod.name, args.heartbeat_ms, network) {
        Ok(c) => c,
        Err(e) => {
            return pod.fail(
                phase,
                dir,
                format!("cannot read host entropy: {e}"),
                EXIT_RUN_ERROR,
            )
        }
    };
    let configure_id = match link.send(Request::Configure(config)) {
        Ok(id) => id,
        Err(e) => return pod.fail(phase, dir, e.to_string(), EXIT_RUN_ERROR),
    };
    let mut sidecar_ids = Vec::new();
    for sidecar in &args.sidecar {
        let spec = RunSpec {
            name: sidecar.name.clone(),
            argv: vec!["/bin/sh".into(), "-c".into(), sidecar.command.clone()],
            env: container_env(&args.env),
            cwd: args.workdir.clone(),
            ..RunSpec::default()
        };
        match link.send(Request::Run(spec)) {
            Ok(id) => sidecar_ids.push((id, &sidecar.name)),
            Err(e) => return pod.fail(phase, dir, e.to_string(), EXIT_RUN_ERROR),
        }
    }
    let spec = RunSpec {
        name: pod.name.clone(),
        argv: args.command.clone(),
        env: container_env(&args.env),
        cwd: args.workdir.clone(),
        ..RunSpec::default()
    };
    let run_id = match link.send(Request::Run(spec)) {
        Ok(id) => id,
        Err(e) => return pod.fail(phase, dir, e.to_string(), EXIT_RUN_ERROR),
    };

    let mut signals_seen = 0;
    let exit_code = loop {
        let now = Instant::now();
        match messages.recv_timeout(TICK) {
            Ok(Ok(msg)) => {
                if let Some(p) = phase.heard_from_agent(now) {
                    pod.report(p, None);
                }
                match msg {
                    AgentMessage::Reply { id, result: Err(e) } if id == configure_id => {
                        let why = format!("the agent could not configure the pod: {e}");
                        return pod.fail(phase, dir, why, EXIT_RUN_ERROR);
                    }
                    AgentMessage::Reply { id, result: Err(e) } if id == run_id => {
                        log::error!("the agent could not start {:?}: {e}", args.command[0]);
                    }
                    AgentMessage::Reply { id, result: Err(e) } => {
                        if let Some((_, name)) = sidecar_ids.iter().find(|(s, _)| *s == id) {
                            let why = format!("sidecar {name} could not start: {e}");
                            return pod.fail(phase, dir, why, EXIT_RUN_ERROR);
                        }
                    }
                    AgentMessage::Reply {
                        id,
                        result: Ok(Reply::Started { pid }),
                    } if id == run_id => {
                        log::debug!("container pid {pid} in the guest");
                        if args.debug_stop_heartbeat {
                            let _ = link.send(Request::Debug(DebugCommand::StopHeartbeat));
                        }
                    }
                    AgentMessage::Reply { .. } => {}
                    AgentMessage::Event(event) => {
                        if let Some(code) = on_event(pod, phase, event, now) {
                            break code;
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                // The agent link ended before the container did. If the VMM
                // died, its exit may lag its sockets closing by a moment.
                vmm_process::wait_for_exit(vmm, Duration::from_secs(2));
                let why = vmm_process::alive(vmm)
                    .err()
                    .unwrap_or_else(|| format!("agent link lost: {e}"));
                return pod.fail(phase, dir, why, EXIT_RUN_ERROR);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        if let Err(why) = vmm_process::alive(vmm) {
            return pod.fail(phase, dir, why, EXIT_RUN_ERROR);
        }
        let signals = SIGNALS.load(Ordering::SeqCst);
        if signals > signals_seen {
            signals_seen = signals;
            if signals == 1 {
                eprintln!("unipod: pod {}: stopping the container (SIGTERM); interrupt again to kill the VM", pod.name);
                let _ = link.send(Request::Signal {
                    name: pod.name.clone(),
                    signal: libc::SIGTERM,
                });
            } else {
                return pod.fail(phase, dir, "interrupted".into(), EXIT_INTERRUPTED);
            }
        }
        if let Some(p) = phase.tick(Instant::now()) {
            pod.report(p, phase.reason());
            if p == PodPhase::Failed {
                return EXIT_RUN_ERROR;
            }
        }
    };
    // The container is done: let the agent power the guest off.
    let _ = link.send(Request::Shutdown);
    vmm_process::wait_for_exit(vmm, SHUTDOWN_GRACE);
    exit_code
}

/// Handles one agent event; returns the exit code once the container exited.
fn on_event(pod: &Pod, phase: &mut PhaseTracker, event: Event, now: Instant) -> Option<i32> {
    match event {
        Event::ContainerStarted { .. } => {
            if let Some(p) = phase.container_started(now) {
                pod.report(p, None);
            }
        }
        Event::Output { stream, data, .. } => {
            let result = match stream {
                Stream::Stdout => write_all_flush(&mut std::io::stdout().lock(), &data),
                Stream::Stderr => write_all_flush(&mut std::io::stderr().lock(), &data),
            };
            if let Err(e) = result {
                log::debug!("cannot forward container output: {e}");
            }
        }
        Event::Oom { name } => {
            eprintln!("unipod: pod {}: container {name} was OOM-killed", pod.name)
        }
        Event::ContainerExited {
            name,
            exit_code,
            reason,
            ..
        } if name != pod.name => {
            eprintln!(
                "unipod: pod {}: sidecar {name} exited ({reason}, exit code {exit_code})",
                pod.name
            );
        }
        Event::ContainerExited {
            exit_code, reason, ..
        } => {
            if let Some(p) = phase.container_exited(exit_code, &reason) {
                pod.report(p, phase.reason());
            }
            return Some(exit_code);
        }
        Event::Ready { .. } | Event::Heartbeat { .. } => {}
    }
    None
}

fn write_all_flush(w: &mut dyn Write, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data)?;
    w.flush()
}

fn container_env(user: &[String]) -> Vec<String> {
    let mut env = Vec::with_capacity(user.len() + 1);
    if !user.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/bin:/usr/bin:/bin".to_string());
    }
    env.extend(user.iter().cloned());
    env
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn validate_name(name: &str) -> Result<(), RunError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(RunError::BadName(name.to_string()))
    }
}

/// Sidecar names must differ from the pod's (the main container's) and
/// from each other.
fn validate_sidecars(pod: &str, sidecars: &[Sidecar]) -> Result<(), RunError> {
    let mut seen = std::collections::HashSet::from([pod]);
    match sidecars.iter().find(|s| !seen.insert(&s.name)) {
        Some(dup) => Err(RunError::DuplicateContainer(dup.name.clone())),
        None => Ok(()),
    }
}

/// A guest artifact: the flag's value, else `<exe dir>/../guest/<file>`.
pub fn artifact(
    given: Option<&Path>,
    file: &str,
    flag: &'static str,
    make: &'static str,
) -> Result<PathBuf, RunError> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("guest").join(file)))
            .unwrap_or_else(|| PathBuf::from("target/guest").join(file)),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(RunError::MissingArtifact { flag, path, make })
    }
}

/// unipod's state directory: `given`, else $UNIPOD_STATE_DIR, else
/// /run/unipod as root, else $XDG_RUNTIME_DIR/unipod.
pub fn state_root(given: Option<&Path>) -> PathBuf {
    if let Some(dir) = given {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("UNIPOD_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/unipod");
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("unipod"))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("unipod-{}", nix::unistd::geteuid())))
}

/// The pod's runtime directory; removed on drop unless it is a manifest
/// pod's, which stays until `unipod rm`.
pub(crate) struct PodDir {
    pub(crate) path: PathBuf,
    keep: bool,
}

impl PodDir {
    pub(crate) fn create(root: &Path, name: &str) -> Result<PodDir, RunError> {
        let path = root.join(name);
        if path.join(crate::pod::status::STATUS_FILE).exists() {
            return Err(RunError::ManifestPodExists(name.to_string()));
        }
        if let Some(pid) = std::fs::read_to_string(path.join("vmm.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // Signal 0 only checks that the process exists.
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
                return Err(RunError::AlreadyRunning {
                    name: name.to_string(),
                    pid,
                });
            }
        }
        // A leftover from a killed run: start clean.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| RunError::PodDir(path.clone(), e))?;
        Ok(PodDir { path, keep: false })
    }

    /// A manifest pod's directory, created by `unipod run`; kept on drop.
    pub(crate) fn adopt(path: PathBuf) -> PodDir {
        PodDir { path, keep: true }
    }

    pub(crate) fn vsock(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// The VMM's runtime API socket (see [`crate::api`]).
    pub(crate) fn api_sock(&self) -> PathBuf {
        self.path.join("api.sock")
    }

    pub(crate) fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    pub(crate) fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }

    /// Writes `network.json`: where to find the pod on the network.
    fn record_network(&self, net: &Attachment, bridge: &str) {
        let lease = net.lease();
        let info = serde_json::json!({
            "ip": lease.ip.to_string(),
            "prefix_len": lease.prefix_len,
            "gateway": lease.gateway.to_string(),
            "mac": crate::config::MacAddr(lease.mac).to_string(),
            "bridge": bridge,
            "tap": net.tap_name(),
        });
        let _ = std::fs::write(self.path.join("network.json"), info.to_string());
    }

    fn record_pid(&self, pid: u32) {
        let _ = std::fs::write(self.path.join("vmm.pid"), pid.to_string());
    }

    /// Shows the end of the guest console and VMM log, for failures.
    pub(crate) fn print_console_tail(&self) {
        for (what, file) in [
            ("guest console", self.console_log()),
            ("VMM", self.vmm_log()),
        ] {
            let lines = vmm_process::log_tail(&file, 10);
            if lines.is_empty() {
                continue;
            }
            eprintln!("unipod: last lines of the {what} log:");
            for line in lines {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for PodDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn not_interrupted() -> Result<(), String> {
    if SIGNALS.load(Ordering::SeqCst) > 0 {
        Err("interrupted while the VM was starting".into())
    } else {
        Ok(())
    }
}

pub(crate) fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // No SA_RESTART: a blocking read returns EINTR, so the loops see the flag.
    let action = SigAction::new(
        SigHandler::Handler(count_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            log::warn!("cannot handle {sig}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_dns_labels() {
        for good in ["a", "web-1", "x".repeat(63).as_str()] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Web", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sidecars_parse_and_need_unique_names() {
        let s: Sidecar = "web=nc -l -p 80 -e echo a=b".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.command.as_str()),
            ("web", "nc -l -p 80 -e echo a=b")
        );
        for bad in ["web", "Web=x", "=x", "web=", "web=  "] {
            assert!(bad.parse::<Sidecar>().is_err(), "{bad:?}");
        }
        let sidecars: Vec<Sidecar> = ["a=x", "b=y"].iter().map(|s| s.parse().unwrap()).collect();
        assert!(validate_sidecars("pod", &sidecars).is_ok());
        let err = validate_sidecars("a", &sidecars).unwrap_err().to_string();
        assert!(err.contains("\"a\""), "{err}");
        let twice: Vec<Sidecar> = ["a=x", "a=y"].iter().map(|s| s.parse().unwrap()).collect();
        assert!(validate_sidecars("pod", &twice).is_err());
    }

    #[test]
    fn the_unknown_threshold_follows_the_heartbeat() {
        use clap::Parser;
        let args = |extra: &[&str]| {
            let argv = [&["unipod", "run"], extra, &["--", "true"]].concat();
            match crate::cli::Cli::try_parse_from(argv).unwrap().command {
                crate::cli::Command::Run(args) => args,
                _ => unreachable!("a run command"),
            }
        };
        let default = args(&[]);
        assert_eq!(default.unknown_after(), Duration::from_secs(31));
        let fast = args(&["--heartbeat-ms", "500", "--unknown-timeout-secs", "7"]);
        assert_eq!(fast.unknown_after(), Duration::from_millis(2500));
        assert_eq!(fast.give_up_after(), Duration::from_secs(7));
    }

    #[test]
    fn pod_uids_are_version_4_uuids() {
        let uid = uuid_v4([0xff; 16]);
        assert_eq!(uid, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let uid = uuid_v4([0; 16]);
        assert_eq!(uid, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn container_env_gets_a_default_path() {
        assert_eq!(
            container_env(&["A=1".into()]),
            ["PATH=/usr/local/bin:/usr/bin:/bin", "A=1"]
        );
        assert_eq!(container_env(&["PATH=/x".into()]), ["PATH=/x"]);
    }

    #[test]
    fn a_second_run_of_a_live_pod_is_refused_and_stale_dirs_are_cleared() {
        let root = std::env::temp_dir().join(format!("unipod-poddir-{}", std::process::id()));
        let dir = PodDir::create(&root, "p").unwrap();
        dir.record_pid(std::process::id());
        let err = PodDir::create(&root, "p").err().expect("live pid");
        assert!(err.to_string().contains("already running"), "{err}");
        // A pid that cannot exist: the directory is stale.
        std::fs::write(dir.path.join("vmm.pid"), i32::MAX.to_string()).unwrap();
        let again = PodDir::create(&root, "p").expect("stale dir replaced");
        drop(dir);
        drop(again);
        assert!(!root.join("p").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
