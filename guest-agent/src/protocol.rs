//! The host<->agent protocol: messages and their framing on the vsock stream.
//!
//! The host (VMM or CLI) connects to the agent on vsock port
//! [`AGENT_VSOCK_PORT`]. The agent speaks first with [`Event::Ready`]; then the
//! host sends [`HostMessage`]s and the agent answers each with an
//! [`AgentMessage::Reply`] carrying the same `id`, interleaved with
//! [`AgentMessage::Event`]s (heartbeats, container output and lifecycle).
//!
//! # Design
//!
//! A frame is `[u32 BE N][u16 BE version][N - 2 bytes of JSON]`: `N` counts
//! everything after the length word, so a reader can skip or reject a frame
//! before parsing it. JSON keeps the protocol debuggable with `socat` and easy
//! to evolve; the version word lets either side refuse a peer it does not
//! understand instead of misparsing it. Enums are externally tagged with
//! snake_case names (`{"run": {...}}`, `"ping"`).
//!
//! Unknown fields are ignored, so a newer peer may add optional fields without
//! a version bump; new variants need one (or a reply error: see below).
//!
//! Both codecs bound memory: a frame longer than [`MAX_FRAME_LEN`] is rejected
//! from its header, before any of its body is buffered.
//!
//! # Limitations
//!
//! [`Event::Output`] data is a JSON array of numbers: simple and lossless for
//! arbitrary bytes, but up to 4x larger than the raw output. The agent sends
//! output in chunks of at most a few KiB, far below [`MAX_FRAME_LEN`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod probe;
pub use probe::{
    HookKind, HookSpec, ProbeHandler, ProbeKind, ProbeSpec, Probes, MAX_GRPC_SERVICE,
    MAX_PROBE_OUTPUT,
};

/// Version word carried by every frame; a peer with another version is refused.
///
/// 2: a container's `Run` carries its OCI runtime spec (`RunSpec::spec`).
pub const PROTOCOL_VERSION: u16 = 2;
/// The vsock port the agent listens on (any CID).
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The vsock port of port forwarding into the pod. Not framed like the
/// agent link: the host sends one line, the TCP port in decimal (`8080\n`);
/// the agent connects to it on the guest's loopback and answers `OK\n` or
/// `ERR reason\n`; after `OK` the connection carries the TCP stream's bytes.
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1025;

/// The port a port-forward request line names.
pub fn parse_port_forward_request(line: &str) -> Result<u16, String> {
    let text = line
        .strip_suffix('\n')
        .ok_or("the request is not one line ending in a newline")?;
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{text:?} is not a TCP port (1-65535)")),
    }
}

/// Largest accepted value of a frame's length word (version word + JSON).
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// Heartbeat period when the kernel command line has no `unipod.heartbeat_ms=`,
/// and `unipod run`'s default. As kubelet's node status period: each
/// heartbeat wakes the guest, which on nested PVM hosts costs about 40 ms of
/// host CPU (docs/PERFORMANCE.md), so 1 s kept 4% of a CPU busy per idle pod.
pub const DEFAULT_HEARTBEAT_MS: u64 = 10_000;
/// Bytes before the JSON body: the length word and the version word.
pub const HEADER_LEN: usize = 6;
/// Most bytes a [`FrameDecoder`] buffers: one largest frame plus as much again
/// of pushed-but-not-yet-decoded input.
pub const DECODER_CAPACITY: usize = 2 * (MAX_FRAME_LEN as usize + 4);

/// [`Event::ContainerExited`] reason for exit code 0.
pub const REASON_COMPLETED: &str = "Completed";
/// [`Event::ContainerExited`] reason for a non-zero exit or a failed start.
pub const REASON_ERROR: &str = "Error";
/// [`Event::ContainerExited`] reason when the container's cgroup saw an OOM kill.
pub const REASON_OOM_KILLED: &str = "OOMKilled";
/// [`Event::ContainerExited`] reason for death by a signal (not OOM).
pub const REASON_SIGNALED: &str = "Signaled";
/// Exit code of a container whose program was not found (ENOENT), as in shells.
pub const EXIT_CODE_NOT_FOUND: i32 = 127;
/// Exit code of a container whose program could not be started for another
/// reason (EACCES, ENOEXEC, a bad cwd, ...), as in shells.
pub const EXIT_CODE_CANNOT_EXECUTE: i32 = 126;

/// A request from the host, tagged with an id the reply echoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostMessage {
    /// Chosen by the host; echoed in [`AgentMessage::Reply::id`].
    pub id: u64,
    /// What the host asks for.
    pub request: Request,
}

/// What the host can ask the agent to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Start a container process; replies [`Reply::Started`]. Several
    /// containers may run at once: a `Run` is refused only while a container
    /// of the same name is running or its [`Event::ContainerExited`] is not
    /// yet sent; after that the name may be run again.
    Run(RunSpec),
    /// Send `signal` (a Linux signal number) to the main process of the
    /// container (or exec) `name`, and to no other container. A container
    /// in its own pid namespace is that namespace's init, which the kernel
    /// spares signals it has no handler for (SIGKILL always works).
    Signal {
        /// The container's name, as in its [`RunSpec`].
        name: String,
        /// Linux signal number, e.g. 15 for SIGTERM.
        signal: i32,
    },
    /// Stop every running container (SIGTERM, then SIGKILL after a short
    /// grace), report each one's exit and power the guest off; replies
    /// [`Reply::Ok`] first.
    Shutdown,
    /// Run a process inside a running container's namespaces, cgroup and
    /// root (`kubectl exec`), with its environment (plus the exec's), user
    /// and working directory; replies [`Reply::Started`]. Its output and exit
    /// come as [`Event::Output`] and [`Event::ContainerExited`] named by
    /// [`ExecSpec::id`]; there is no [`Event::ContainerStarted`], and an exec
    /// that cannot start gets only an error reply (naming the running
    /// containers when `container` is not one of them). The exec ends
    /// (SIGKILL) with its container when that has a pid namespace of its
    /// own.
    Exec(ExecSpec),
    /// Bytes for the stdin of an exec started with [`ExecSpec::stdin`]; an
    /// empty `data` closes it (on a tty: sends the EOF character). Replies
    /// [`Reply::Ok`] once the bytes are written or buffered; an error when
    /// the exec has no stdin, it is closed, or more than 1 MiB would wait
    /// for the process to read.
    Stdin {
        /// The exec's [`ExecSpec::id`].
        name: String,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Liveness check; replies [`Reply::Pong`].
    Ping,
    /// Fault injection for tests.
    Debug(DebugCommand),
    /// Give the guest its pod identity and fresh host facts (clock, entropy);
    /// sent once right after [`Event::Ready`], to cold-booted and
    /// snapshot-restored guests alike. Replies [`Reply::Ok`], or an error
    /// naming the invalid field or the step that failed.
    Configure(PodConfig),
    /// The resource use of a container's cgroup (its main process and
    /// execs); replies [`Reply::Stats`], or an error when it has no cgroup.
    Stats {
        /// The container's name.
        name: String,
    },
    /// Freeze every process of a container, execs included (cgroup v2
    /// `cgroup.freeze`); replies [`Reply::Ok`] once the kernel reports the
    /// cgroup frozen. SIGKILL still ends a frozen container.
    Pause {
        /// The container's name.
        name: String,
    },
    /// Thaw a container frozen by [`Request::Pause`]; replies [`Reply::Ok`].
    Resume {
        /// The container's name.
        name: String,
    },
    /// Fill a pod volume with files, or replace all its files at once
    /// (ConfigMap, Secret, downward API and projected volumes); replies
    /// [`Reply::Ok`] once the new files are in place, or an error naming
    /// the file that could not be written. The files go in a fresh hidden
    /// directory that a `..data` symlink then points to, swapped by one
    /// rename, and each top-level name is a symlink through `..data`, as the
    /// kubelet's atomic writer lays them out: a container that has the volume
    /// mounted sees either every old file or every new one, and a `subPath`
    /// mount (bound once to the file it names) keeps the file it had.
    WriteVolume(VolumeFiles),
    /// Set the window size of the terminal of a container or exec started
    /// with `tty`; replies [`Reply::Ok`].
    ResizePty {
        /// The container's name (an exec's id).
        name: String,
        /// Rows (lines).
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Run a container's lifecycle hook once; replies [`Reply::Ok`] once it
    /// is under way (an error if the container is not running), and its
    /// result comes as [`Event::Hook`].
    RunHook(HookSpec),
}

/// A container to run: its OCI runtime spec plus what only the pod VM knows.
///
/// The spec is the one contract for a container's runtime settings, for the
/// shim (containerd's spec, passed through) and for manifest pods (built as
/// containerd's CRI plugin builds one). The agent applies it as runc does:
/// `process` (args, env, cwd, terminal, user and additional gids, the five
/// capability sets, `noNewPrivileges`, rlimits, `oomScoreAdj`), `root.readonly`,
/// `mounts`, and from `linux`: `resources` (memory, cpu, pids), the `pid`
/// namespace (a new one, or the pod's when it has a `path` or is absent),
/// `seccomp`, `maskedPaths`, `readonlyPaths` and `sysctl`. A field the spec
/// leaves out is left as the agent has it (all capabilities, no seccomp),
/// as runc leaves it; [`process_spec`] builds such a spec. The network, IPC
/// and UTS namespaces are always the pod's: the VM is the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Container name: 1-63 characters of `[A-Za-z0-9_.-]`, not starting with
    /// `.` (it names a cgroup directory); unique among the pod's running
    /// containers, and carried by every event about this one.
    pub name: String,
    /// The OCI runtime spec. `process.args[0]` is looked up in the spec's
    /// `PATH` (or `/usr/local/bin:/bin:/usr/bin`) when it has no `/`; the
    /// environment is exactly `process.env`; nothing is inherited.
    pub spec: Box<Spec>,
    /// The container's image; `None` runs it in the guest's own root file
    /// system (the agent initramfs), as before images existed.
    #[serde(default)]
    pub rootfs: Option<Rootfs>,
    /// Pod volumes (emptyDir) mounted into the container; needs a `rootfs`.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    /// A user to look up in the rootfs, as containerd's CRI plugin looks up
    /// the image's user (which the host cannot, for a manifest pod): `uid`,
    /// `uid:gid`, `name` or `name:group`. It sets `process.user`'s uid and
    /// gid (a bare uid or name takes its `/etc/passwd` group, else 0), and
    /// the groups `/etc/group` lists the user in come before
    /// `additionalGids`. `None` takes `process.user` as it is.
    #[serde(default)]
    pub image_user: Option<String>,
    /// Keep stdin open for [`Request::Stdin`]; otherwise it is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// This container's `/etc/resolv.conf`, in place of the pod's (CRI
    /// writes one per pod and bind-mounts it into each app container);
    /// needs a `rootfs`, at most [`MAX_RESOLV_CONF`] bytes.
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// Health probes the agent runs on this container ([`Probes`]); none
    /// for the shim's containers, whose kubelet probes them itself.
    #[serde(default)]
    pub probes: Box<Probes>,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            spec: Box::new(process_spec(Vec::new(), Vec::new(), None)),
            rootfs: None,
            volume_mounts: Vec::new(),
            image_user: None,
            stdin: false,
            resolv_conf: None,
            probes: Box::default(),
        }
    }
}

/// A runtime spec that runs `argv` with `env` in `cwd` (`/` when `None`) as
/// root and sets nothing else: no mounts, capabilities, seccomp or
/// namespaces, so the agent keeps its own (`unipod run -- CMD`).
pub fn process_spec(argv: Vec<String>, env: Vec<String>, cwd: Option<String>) -> Spec {
    let mut process = Process::default();
    process.set_args(Some(argv));
    process.set_env(Some(env));
    process.set_cwd(cwd.unwrap_or_else(|| "/".into()).into());
    process.set_terminal(None);
    process.set_capabilities(None);
    process.set_rlimits(None);
    process.set_no_new_privileges(None);
    process.set_console_size(None);
    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.into());
    spec.set_process(Some(process));
    spec.set_root(None);
    spec.set_mounts(None);
    spec.set_hostname(None);
    spec.set_annotations(None);
    spec.set_linux(None);
    spec
}

/// The runtime-spec version unipod writes (that of containerd 1.6's specs).
pub const OCI_VERSION: &str = "1.0.2-dev";

impl RunSpec {
    /// `process.args`.
    pub fn argv(&self) -> &[String] {
        self.process()
            .and_then(|p| p.args().as_deref())
            .unwrap_or(&[])
    }

    /// `process.env`.
    pub fn env(&self) -> &[String] {
        self.process()
            .and_then(|p| p.env().as_deref())
            .unwrap_or(&[])
    }

    /// `process.cwd`, unless it is `/` or empty.
    pub fn cwd(&self) -> Option<String> {
        let cwd = self.process()?.cwd().to_str()?;
        (!cwd.is_empty() && cwd != "/").then(|| cwd.to_string())
    }

    /// `process.terminal`.
    pub fn tty(&self) -> bool {
        self.process().and_then(|p| p.terminal()).unwrap_or(false)
    }

    /// Whether the container joins the pod's pid namespace (the guest's):
    /// the spec has no `pid` namespace, or one with a `path` (CRI's
    /// `shareProcessNamespace` names the sandbox's).
    pub fn share_pid_namespace(&self) -> bool {
        let namespaces = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref());
        let pid = namespaces
            .into_iter()
            .flatten()
            .find(|ns| ns.typ() == LinuxNamespaceType::Pid);
        pid.is_none_or(|ns| ns.path().is_some())
    }

    /// The cgroup limits of `linux.resources`.
    pub fn limits(&self) -> Limits {
        let resources = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref());
        let Some(r) = resources else {
            return Limits::default();
        };
        let memory_bytes = r
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .and_then(|l| u64::try_from(l).ok());
        let cpu_millis = r.cpu().as_ref().and_then(|c| {
            let quota = u64::try_from(c.quota()?).ok()?;
            let period = c.period().unwrap_or(CPU_PERIOD_US);
            (period > 0).then(|| quota.saturating_mul(1000) / period)
        });
        let pids = r
            .pids()
            .as_ref()
            .and_then(|p| u64::try_from(p.limit()).ok());
        Limits {
            memory_bytes,
            cpu_millis,
            pids,
        }
    }

    fn process(&self) -> Option<&Process> {
        self.spec.process().as_ref()
    }
}

/// The CFS period the host writes with a CPU limit, in microseconds (as the
/// kubelet does).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The largest [`RunSpec::resolv_conf`] the agent takes.
pub const MAX_RESOLV_CONF: usize = 64 * 1024;

/// A process to run in a running container (see [`Request::Exec`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Names this exec in events and [`Request::Stdin`]; follows the rules
    /// of [`RunSpec::name`] and must not clash with a running container's or
    /// exec's name.
    pub id: String,
    /// The container to enter.
    pub container: String,
    /// Program and arguments, looked up as for [`RunSpec::argv`].
    pub argv: Vec<String>,
    /// Extra `KEY=VALUE` entries on top of the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Keep stdin open for [`Request::Stdin`]; otherwise it is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Run it on a pseudo-terminal (stdout and stderr merge into stdout).
    #[serde(default)]
    pub tty: bool,
}

/// An image's root file system, on a read-only block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// The guest block device holding the image, e.g. `/dev/vda`.
    pub device: String,
    /// Its file system type, e.g. `erofs`.
    pub fstype: String,
}

/// A pod volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name; the agent creates an empty directory for a name on
    /// first use (or [`Request::WriteVolume`] fills it) and shares it between
    /// every container that mounts it.
    pub name: String,
    /// Absolute path inside the container.
    pub path: String,
    /// Mount it read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Mount only this relative path of the volume (`subPath`): normal
    /// components, no `..`. Symlinks in it are followed but must stay inside
    /// the volume. A missing path is created as a directory, as the kubelet
    /// does; an existing file is bound as a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// The files of a [`Request::WriteVolume`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFiles {
    /// The volume's name, as in [`VolumeMount::name`].
    pub name: String,
    /// Every file the volume holds (files not listed go), at most
    /// [`MAX_VOLUME_FILES`] of them and [`MAX_VOLUME_BYTES`] of data.
    pub files: Vec<VolumeFile>,
}

/// One file of a [`VolumeFiles`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFile {
    /// Relative path: normal components separated by `/`, none starting with
    /// `..` (those names are the writer's own), unique within the volume.
    /// Directories on the way are made 0755.
    pub path: String,
    /// The content.
    pub data: Vec<u8>,
    /// Permission bits, at most `0o777`; owner root.
    pub mode: u32,
}

/// Most files in one [`VolumeFiles`].
pub const MAX_VOLUME_FILES: usize = 1024;
/// Most bytes of file data in one [`VolumeFiles`]: the request must fit in
/// one frame, where JSON spends up to 4 bytes per data byte.
pub const MAX_VOLUME_BYTES: usize = 192 * 1024;

/// cgroup v2 limits; `None` is unlimited. Read from a spec's
/// `linux.resources` by [`RunSpec::limits`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `memory.max`, in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU time per period, in thousandths of a CPU (`cpu.max`).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// `pids.max`.
    #[serde(default)]
    pub pids: Option<u64>,
}

impl Limits {
    /// True if no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

/// The pod's identity and the host facts a restored guest must not reuse.
///
/// Every guest restored from one snapshot starts with the same RNG state, a
/// stale wall clock and the same hostname; this is what makes it a distinct
/// pod. `Debug` prints the length of `entropy`, not its bytes: they are the
/// only secret that tells the clones' RNGs apart.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PodConfig {
    /// Kubernetes pod UID (a UUID string): 1-64 characters of `[A-Za-z0-9-]`.
    pub pod_uid: String,
    /// Pod hostname: a DNS label, 1-63 characters of `[a-z0-9-]`, not
    /// starting or ending with `-`.
    pub hostname: String,
    /// Host wall clock when the request was sent: seconds since the Unix
    /// epoch.
    pub unix_secs: i64,
    /// Host wall clock when the request was sent: nanoseconds within the
    /// second (below 1,000,000,000).
    pub unix_nanos: u32,
    /// Fresh host entropy (32 to 512 bytes) to reseed the guest RNG.
    pub entropy: Vec<u8>,
    /// Heartbeat period in milliseconds (at least 10); `None` keeps the
    /// current one.
    pub heartbeat_ms: Option<u64>,
    /// The pod's network interface; `None` leaves the guest with `lo` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// The whole pod's limits (a manifest's pod-level `spec.resources`), on
    /// the cgroup that holds every container's.
    #[serde(default, skip_serializing_if = "Limits::is_unlimited")]
    pub pod_limits: Limits,
}

/// How the agent sets up the pod's `eth0` (the virtio-net device), `lo`,
/// `/etc/hosts` and `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The interface's MAC address (unicast).
    pub mac: [u8; 6],
    /// The pod IP.
    pub address: Ipv4Addr,
    /// The pod network's prefix length (8 to 30).
    pub prefix_len: u8,
    /// The default gateway: the host bridge, inside the pod network.
    pub gateway: Ipv4Addr,
    /// The interface MTU (68 to 65535).
    pub mtu: u32,
    /// `nameserver` lines of `/etc/resolv.conf`, at most 3.
    #[serde(default)]
    pub dns_servers: Vec<Ipv4Addr>,
    /// `search` domains of `/etc/resolv.conf`, at most 6.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// The pod's IPv6 address, when its network has an IPv6 range; without
    /// it `eth0` has IPv6 turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Config>,
}

/// The pod's IPv6 address on `eth0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Config {
    /// The pod's IPv6 address (global or unique local).
    pub address: Ipv6Addr,
    /// The prefix length of its network (1 to 128).
    pub prefix_len: u8,
    /// The IPv6 default route's gateway, if the network has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv6Addr>,
}

impl fmt::Debug for PodConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodConfig")
            .field("pod_uid", &self.pod_uid)
            .field("hostname", &self.hostname)
            .field("unix_secs", &self.unix_secs)
            .field("unix_nanos", &self.unix_nanos)
            .field("entropy", &format_args!("<{} bytes>", self.entropy.len()))
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("network", &self.network)
            .field("pod_limits", &self.pod_limits)
            .finish()
    }
}

/// Test-only behaviours the host can switch on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebugCommand {
    /// Stop sending heartbeats for the rest of the agent's life, to simulate a
    /// hung agent.
    StopHeartbeat,
    /// Reply, then end the agent, PID 1: the guest kernel panics.
    Panic,
}

/// A message from the agent to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMessage {
    /// The answer to the [`HostMessage`] with the same `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The outcome; the error is a human-readable message.
        #[serde(with = "snake_case_result")]
        result: Result<Reply, String>,
    },
    /// Something that happened, not tied to a request.
    Event(Event),
}

/// A successful answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The container process was started (answer to [`Request::Run`]).
    Started {
        /// The process id inside the guest.
        pid: u32,
    },
    /// Done (answer to [`Request::Signal`], [`Request::Shutdown`],
    /// [`Request::Debug`], [`Request::Configure`]).
    Ok,
    /// Answer to [`Request::Ping`].
    Pong,
    /// Answer to [`Request::Stats`].
    Stats(ContainerStats),
}

/// A container cgroup's counters (cgroup v2 file names in brackets); a
/// field is `None` when the guest kernel lacks its controller, and a limit
/// is `None` when unlimited (`max`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU time used, in microseconds (`cpu.stat` `usage_usec`).
    pub cpu_usage_usec: u64,
    /// Of which in user mode (`user_usec`).
    pub cpu_user_usec: u64,
    /// Of which in kernel mode (`system_usec`).
    pub cpu_system_usec: u64,
    /// Memory in use, in bytes (`memory.current`).
    pub memory_bytes: Option<u64>,
    /// The memory limit, in bytes (`memory.max`).
    pub memory_limit_bytes: Option<u64>,
    /// Anonymous memory, in bytes (`memory.stat` `anon`).
    pub memory_anon_bytes: Option<u64>,
    /// Page cache, in bytes (`memory.stat` `file`).
    pub memory_file_bytes: Option<u64>,
    /// OOM kills so far (`memory.events` `oom_kill`).
    pub oom_kills: Option<u64>,
    /// Processes (`pids.current`).
    pub pids: Option<u64>,
    /// The process limit (`pids.max`).
    pub pids_limit: Option<u64>,
}

/// Which output stream an [`Event::Output`] chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

/// Unsolicited news from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// First message on every connection.
    Ready {
        /// The agent's [`PROTOCOL_VERSION`].
        version: u16,
        /// The agent's crate version.
        agent: String,
    },
    /// Sent every heartbeat period while a host is connected.
    Heartbeat {
        /// Increases by one per heartbeat over the agent's life.
        seq: u64,
    },
    /// The container process is running.
    ContainerStarted {
        /// The container's name.
        name: String,
        /// Its process id inside the guest.
        pid: u32,
    },
    /// A chunk of container output, in the order the agent read it; chunks
    /// of different containers interleave.
    Output {
        /// The container's name.
        name: String,
        /// The stream it was written to.
        stream: Stream,
        /// The raw bytes.
        data: Vec<u8>,
        /// When the agent read them: nanoseconds since the Unix epoch on
        /// the guest's wall clock (which the host sets at `Configure`).
        /// Absent from an agent that does not stamp; the host then stamps
        /// the chunk on arrival.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time: Option<u64>,
    },
    /// The container process exited and its output is fully forwarded: this
    /// follows the container's last [`Event::Output`].
    ContainerExited {
        /// The container's name.
        name: String,
        /// Kubernetes-style: the exit status, or 128 + N when killed by signal N.
        exit_code: i32,
        /// [`REASON_COMPLETED`], [`REASON_ERROR`], [`REASON_OOM_KILLED`] or
        /// [`REASON_SIGNALED`].
        reason: String,
        /// The signal that killed the process, if one did.
        signal: Option<i32>,
    },
    /// The container's cgroup saw an OOM kill (sent just before its
    /// [`Event::ContainerExited`]).
    Oom {
        /// The container's name.
        name: String,
    },
    /// A probe's result changed (thresholds applied): sent for the
    /// containers whose `RunSpec::probes` has one, only on a change.
    Probe {
        /// The container's name.
        name: String,
        /// Which probe.
        kind: ProbeKind,
        /// Its result now.
        success: bool,
        /// A failure's output or error, as the kubelet words it (e.g. the
        /// exec's output, `HTTP probe failed with statuscode: 500`);
        /// empty on success.
        message: String,
    },
    /// A [`Request::RunHook`] finished.
    Hook {
        /// The container's name.
        name: String,
        /// Which hook.
        hook: HookKind,
        /// It succeeded: an exec exited 0, an HTTP server answered.
        success: bool,
        /// A failure's output or error; empty on success.
        message: String,
    },
}

/// Serde for `Result<Reply, String>` as `{"ok": ...}` / `{"err": "..."}`, in
/// line with the other snake_case tags (serde's default is `Ok`/`Err`).
mod snake_case_result {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Reply;

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Ser<'a> {
        Ok(&'a Reply),
        Err(&'a str),
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum De {
        Ok(Reply),
        Err(String),
    }

    pub fn serialize<S: Serializer>(r: &Result<Reply, String>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Ok(reply) => Ser::Ok(reply),
            Err(e) => Ser::Err(e),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Result<Reply, String>, D::Error> {
        Ok(match De::deserialize(d)? {
            De::Ok(reply) => Ok(reply),
            De::Err(e) => Err(e),
        })
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream ended cleanly, between two frames.
    #[error("connection closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The length word exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(u32),
    /// The length word is below 2, too short for the version word.
    #[error("frame too short to hold the version word")]
    TooShort,
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// The frame body is not the expected JSON message. The stream is still in
    /// sync: the next frame can be read.
    #[error("malformed message")]
    Decode(#[source] serde_json::Error),
    /// The message could not be serialised.
    #[error("cannot encode message")]
    Encode(#[source] serde_json::Error),
    /// A [`FrameDecoder`] was pushed more than [`DECODER_CAPACITY`] bytes
    /// without them being taken out with [`FrameDecoder::next_frame`].
    #[error("frame decoder buffer full: call next_frame before pushing more")]
    BufferFull,
    /// Reading or writing the stream failed.
    #[error("I/O error on the agent connection")]
    Io(#[from] io::Error),
}

/// Checks a frame's length word.
fn check_len(n: u32) -> Result<usize, ProtocolError> {
    if n < 2 {
        return Err(ProtocolError::TooShort);
    }
    if n > MAX_FRAME_LEN {
        return Err(ProtocolError::TooLarge(n));
    }
    usize::try_from(n).map_err(|_| ProtocolError::TooLarge(n))
}

/// Checks a frame's version word.
fn check_version(v: u16) -> Result<(), ProtocolError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion(v))
    }
}

/// Serialises `msg` into one complete frame.
///
/// Fails with [`ProtocolError::TooLarge`] if the frame would exceed
/// [`MAX_FRAME_LEN`] (the peer would refuse it).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    serde_json::to_writer(&mut frame, msg).map_err(ProtocolError::Encode)?;
    let n = u32::try_from(frame.len() - 4).unwrap_or(u32::MAX);
    if n > MAX_FRAME_LEN {
        return Err(ProtocolError::TooLarge(n));
    }
    frame[..4].copy_from_slice(&n.to_be_bytes());
    Ok(frame)
}

/// Writes `msg` as one frame and flushes `w`.
pub fn write_frame<W: Write + ?Sized, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), ProtocolError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads into `buf` until it is full or the stream ends; returns the count.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads one frame from a blocking stream and decodes it.
///
/// Returns [`ProtocolError::Closed`] at a clean end of stream and
/// [`ProtocolError::Truncated`] if it ends inside a frame. A bad header is
/// rejected before the body is read, so the allocation is bounded by
/// [`MAX_FRAME_LEN`]. After [`ProtocolError::Decode`] the next frame can still
/// be read; after any other error the stream is out of sync.
pub fn read_frame<R: Read + ?Sized, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtocolError> {
    let mut len = [0; 4];
    match read_full(r, &mut len)? {
        0 => return Err(ProtocolError::Closed),
        4 => {}
        _ => return Err(ProtocolError::Truncated),
    }
    let n = check_len(u32::from_be_bytes(len))?;
    let mut version = [0; 2];
    if read_full(r, &mut version)? != 2 {
        return Err(ProtocolError::Truncated);
    }
    check_version(u16::from_be_bytes(version))?;
    let mut body = vec![0; n - 2];
    if read_full(r, &mut body)? != body.len() {
        return Err(ProtocolError::Truncated);
    }
    serde_json::from_slice(&body).map_err(ProtocolError::Decode)
}

/// A framing error after which a [`FrameDecoder`] cannot resynchronise.
#[derive(Debug, Clone, Copy)]
enum Fatal {
    TooLarge(u32),
    TooShort,
    Version(u16),
    BufferFull,
}

impl From<Fatal> for ProtocolError {
    fn from(f: Fatal) -> Self {
        match f {
            Fatal::TooLarge(n) => ProtocolError::TooLarge(n),
            Fatal::TooShort => ProtocolError::TooShort,
            Fatal::Version(v) => ProtocolError::UnsupportedVersion(v),
            Fatal::BufferFull => ProtocolError::BufferFull,
        }
    }
}

/// Incremental frame decoder for nonblocking streams.
///
/// Push whatever bytes the stream yields with [`push`](Self::push), then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. When the
/// stream reports end of file, [`end_of_stream`](Self::end_of_stream) says
/// whether that was clean.
///
/// # Design
///
/// The header of the first buffered frame is checked as soon as it arrives, so
/// an oversized or foreign frame is refused without buffering its body. The
/// buffer never holds more than [`DECODER_CAPACITY`] bytes: pushing past that
/// fails the decoder with [`ProtocolError::BufferFull`]. Framing errors are
/// sticky (the stream cannot be resynchronised); a [`ProtocolError::Decode`]
/// error consumes only its own frame.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames.
    start: usize,
    failed: Option<Fatal>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream. Errors surface in
    /// [`next_frame`](Self::next_frame); after one, pushed bytes are dropped.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() + bytes.len() > DECODER_CAPACITY {
            self.fail(Fatal::BufferFull);
            return;
        }
        self.buf.extend_from_slice(bytes);
        // Refuse a bad header now rather than buffer up to its claimed length.
        if let Err(f) = self.check_header() {
            self.fail(f);
        }
    }

    /// Bytes pushed but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The error to report when the stream hits end of file:
    /// [`ProtocolError::Closed`] between frames, [`ProtocolError::Truncated`]
    /// inside one.
    pub fn end_of_stream(&self) -> ProtocolError {
        if self.buffered_len() == 0 {
            ProtocolError::Closed
        } else {
            ProtocolError::Truncated
        }
    }

    /// Decodes the next complete frame, if one is buffered.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        if let Some(f) = self.failed {
            return Err(f.into());
        }
        let Some(total) = self.check_header().inspect_err(|f| self.fail(*f))? else {
            return Ok(None);
        };
        if self.buffered_len() < total {
            return Ok(None);
        }
        let body = &self.buf[self.start + HEADER_LEN..self.start + total];
        let msg = serde_json::from_slice(body).map_err(ProtocolError::Decode);
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        msg.map(Some)
    }

    /// Validates the first buffered header; returns the frame's total size
    /// once the whole header is buffered.
    fn check_header(&self) -> Result<Option<usize>, Fatal> {
        let avail = &self.buf[self.start..];
        let Some(len) = avail.first_chunk::<4>() else {
            return Ok(None);
        };
        let n = check_len(u32::from_be_bytes(*len)).map_err(|e| match e {
            ProtocolError::TooShort => Fatal::TooShort,
            _ => Fatal::TooLarge(u32::from_be_bytes(*len)),
        })?;
        let Some(version) = avail.get(4..HEADER_LEN) else {
            return Ok(None);
        };
        let v = u16::from_be_bytes([version[0], version[1]]);
        check_version(v).map_err(|_| Fatal::Version(v))?;
        Ok(Some(4 + n))
    }

    fn fail(&mut self, f: Fatal) {
        self.failed = Some(f);
        self.buf = Vec::new();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_forward_request_is_one_line_naming_a_port() {
        assert_eq!(parse_port_forward_request("8080\n"), Ok(8080));
        for bad in ["8080", "0\n", "65536\n", "http\n", "80 \n", "\n"] {
            assert!(parse_port_forward_request(bad).is_err(), "{bad:?}");
        }
    }

    fn pod_config() -> PodConfig {
        PodConfig {
            pod_uid: "0f3c2a9e-5b1d-4c7e-9a8f-1e2d3c4b5a69".into(),
            hostname: "web-0".into(),
            unix_secs: 1_700_000_000,
            unix_nanos: 999_999_999,
            entropy: (0..=255).chain(0..32).collect(),
            heartbeat_ms: Some(250),
            network: None,
            pod_limits: Limits::default(),
        }
    }

    fn network_config() -> NetworkConfig {
        NetworkConfig {
            mac: [0x02, 0x75, 10, 211, 0, 2],
            address: Ipv4Addr::new(10, 211, 0, 2),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 211, 0, 1),
            mtu: 1500,
            dns_servers: vec![Ipv4Addr::new(10, 0, 0, 53)],
            dns_search: vec!["cluster.local".into()],
            ipv6: None,
        }
    }

    /// A spec as containerd writes one, in part.
    fn web_spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": true,
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                "args": ["/bin/sh", "-c", "echo hi"],
                "env": ["PATH=/bin", "EMPTY="],
                "cwd": "/tmp",
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]},
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "resources": {
                    "memory": {"limit": 67108864},
                    "cpu": {"quota": 50000, "period": 100000},
                    "pids": {"limit": 64}
                },
                "namespaces": [{"type": "pid"}, {"type": "mount"}],
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ERRNO",
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
                },
                "maskedPaths": ["/proc/kcore"]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_run_spec_reads_its_process_and_limits_from_the_oci_spec() {
        let run = RunSpec {
            name: "web".into(),
            spec: Box::new(web_spec()),
            ..RunSpec::default()
        };
        assert_eq!(run.argv(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(run.env(), ["PATH=/bin", "EMPTY="]);
        assert_eq!(run.cwd().as_deref(), Some("/tmp"));
        assert!(run.tty());
        assert!(
            !run.share_pid_namespace(),
            "a pid namespace without a path is new"
        );
        assert_eq!(
            run.limits(),
            Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(500),
                pids: Some(64),
            }
        );
        let bare = RunSpec::default();
        assert!(bare.share_pid_namespace() && !bare.tty());
        assert_eq!((bare.limits(), bare.cwd()), (Limits::default(), None));
    }

    #[test]
    fn a_pid_namespace_with_a_path_is_the_pod_s() {
        let mut spec = web_spec();
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        ns[0].set_path(Some("/proc/1/ns/pid".into()));
        linux.set_namespaces(Some(ns));
        let run = RunSpec {
            spec: Box::new(spec),
            ..RunSpec::default()
        };
        assert!(run.share_pid_namespace());
    }

    fn host_messages() -> Vec<HostMessage> {
        let requests = vec![
            Request::Run(RunSpec {
                name: "web".into(),
                spec: Box::new(web_spec()),
                rootfs: Some(Rootfs {
                    device: "/dev/vda".into(),
                    fstype: "erofs".into(),
                }),
                volume_mounts: vec![VolumeMount {
                    name: "shared".into(),
                    path: "/data".into(),
                    read_only: true,
                    sub_path: None,
                }],
                image_user: Some("65534:65534".into()),
                stdin: true,
                resolv_conf: Some("nameserver 10.0.0.53\n".into()),
                probes: Box::new(Probes {
                    liveness: Some(ProbeSpec {
                        handler: ProbeHandler::HttpGet {
                            host: None,
                            port: 8080,
                            path: "/healthz".into(),
                            headers: vec![("X-Probe".into(), "1".into())],
                            https: false,
                        },
                        initial_delay_secs: 3,
                        period_secs: 10,
                        timeout_secs: 1,
                        success_threshold: 1,
                        failure_threshold: 3,
                    }),
                    ..Probes::default()
                }),
            }),
            Request::Run(RunSpec {
                name: "x".into(),
                ..RunSpec::default()
            }),
            Request::Signal {
                name: "web".into(),
                signal: 15,
            },
            Request::Shutdown,
            Request::Ping,
            Request::Debug(DebugCommand::StopHeartbeat),
            Request::Configure(pod_config()),
            Request::Configure(PodConfig {
                heartbeat_ms: None,
                unix_secs: -1,
                ..pod_config()
            }),
            Request::Configure(PodConfig {
                network: Some(network_config()),
                ..pod_config()
            }),
            Request::Stats { name: "web".into() },
            Request::Pause { name: "web".into() },
            Request::Resume { name: "web".into() },
            Request::ResizePty {
                name: "web".into(),
                rows: 24,
                cols: 80,
            },
            Request::RunHook(HookSpec {
                container: "web".into(),
                hook: HookKind::PreStop,
                handler: ProbeHandler::Exec {
                    command: vec!["nginx".into(), "-s".into(), "quit".into()],
                },
                timeout_secs: Some(30),
            }),
        ];
        requests
            .into_iter()
            .zip(0..)
            .map(|(request, id)| HostMessage {
                id: u64::MAX - id,
                request,
            })
            .collect()
    }

    fn agent_messages() -> Vec<AgentMessage> {
        let events = vec![
            Event::Ready {
                version: PROTOCOL_VERSION,
                agent: "0.1.0".into(),
            },
            Event::Heartbeat { seq: 7 },
            Event::ContainerStarted {
                name: "web".into(),
                pid: 42,
            },
            Event::Output {
                name: "web".into(),
                stream: Stream::Stdout,
                data: b"hi\n".to_vec(),
                time: Some(1_796_677_200_123_456_789),
            },
            Event::Output {
                name: "web".into(),
                stream: Stream::Stderr,
                data: (0..=255).collect(),
                time: None,
            },
            Event::ContainerExited {
                name: "web".into(),
                exit_code: 137,
                reason: REASON_OOM_KILLED.into(),
                signal: Some(9),
            },
            Event::ContainerExited {
                name: "web".into(),
                exit_code: 0,
                reason: REASON_COMPLETED.into(),
                signal: None,
            },
            Event::Oom { name: "web".into() },
            Event::Probe {
                name: "web".into(),
                kind: ProbeKind::Liveness,
                success: false,
                message: "HTTP probe failed with statuscode: 500".into(),
            },
            Event::Hook {
                name: "web".into(),
                hook: HookKind::PostStart,
                success: false,
                message: "exit status 1".into(),
            },
        ];
        let replies = vec![
            Ok(Reply::Started { pid: 1 }),
            Ok(Reply::Ok),
            Ok(Reply::Pong),
            Ok(Reply::Stats(ContainerStats {
                cpu_usage_usec: 10,
                memory_bytes: Some(4096),
                pids: Some(1),
                ..ContainerStats::default()
            })),
            Err("start /nope: No such file or directory".to_string()),
        ];
        events
            .into_iter()
            .map(AgentMessage::Event)
            .chain(
                replies
                    .into_iter()
                    .zip(1..)
                    .map(|(result, id)| AgentMessage::Reply { id, result }),
            )
            .collect()
    }

    fn frame_with_header(n: u32, version: u16, body: &[u8]) -> Vec<u8> {
        let mut f = n.to_be_bytes().to_vec();
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn every_message_kind_round_trips_through_read_and_write() {
        let mut wire = Vec::new();
        for m in host_messages() {
            write_frame(&mut wire, &m).unwrap();
        }
        for m in agent_messages() {
            write_frame(&mut wire, &m).unwrap();
        }
        let mut r = wire.as_slice();
        for m in host_messages() {
            assert_eq!(read_frame::<_, HostMessage>(&mut r).unwrap(), m);
        }
        for m in agent_messages() {
            assert_eq!(read_frame::<_, AgentMessage>(&mut r).unwrap(), m);
        }
        assert!(matches!(
            read_frame::<_, HostMessage>(&mut r),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn wire_format_is_length_version_json() {
        let frame = encode_frame(&HostMessage {
            id: 3,
            request: Request::Ping,
        })
        .unwrap();
        let json = br#"{"id":3,"request":"ping"}"#;
        assert_eq!(frame, frame_with_header(2 + 25, PROTOCOL_VERSION, json));
        let reply = encode_frame(&AgentMessage::Reply {
            id: 3,
            result: Err("no".into()),
        })
        .unwrap();
        assert_eq!(
            &reply[HEADER_LEN..],
            br#"{"reply":{"id":3,"result":{"err":"no"}}}"#
        );
    }

    #[test]
    fn configure_wire_format_is_snake_case_and_heartbeat_is_optional() {
        let config = PodConfig {
            entropy: vec![1, 2, 3],
            ..pod_config()
        };
        let frame = encode_frame(&HostMessage {
            id: 1,
            request: Request::Configure(config.clone()),
        })
        .unwrap();
        let json = concat!(
            r#"{"id":1,"request":{"configure":{"pod_uid":"0f3c2a9e-5b1d-4c7e-9a8f-1e2d3c4b5a69","#,
            r#""hostname":"web-0","unix_secs":1700000000,"unix_nanos":999999999,"#,
            r#""entropy":[1,2,3],"heartbeat_ms":250}}}"#
        );
        assert_eq!(std::str::from_utf8(&frame[HEADER_LEN..]).unwrap(), json);

        let without = json.replace(r#","heartbeat_ms":250"#, "");
        let msg: HostMessage = serde_json::from_str(&without).unwrap();
        let expected = PodConfig {
            heartbeat_ms: None,
            ..config
        };
        assert_eq!(msg.request, Request::Configure(expected));
    }

    #[test]
    fn network_config_wire_format_uses_dotted_quads() {
        let json = serde_json::to_string(&network_config()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"mac":[2,117,10,211,0,2],"address":"10.211.0.2","prefix_len":16,"#,
                r#""gateway":"10.211.0.1","mtu":1500,"dns_servers":["10.0.0.53"],"#,
                r#""dns_search":["cluster.local"]}"#
            )
        );
        let minimal = r#"{"mac":[2,0,0,0,0,1],"address":"10.0.0.2","prefix_len":24,"gateway":"10.0.0.1","mtu":1500}"#;
        let parsed: NetworkConfig = serde_json::from_str(minimal).unwrap();
        assert!(parsed.dns_servers.is_empty() && parsed.dns_search.is_empty());
        assert_eq!(parsed.ipv6, None);

        let dual = NetworkConfig {
            ipv6: Some(Ipv6Config {
                address: "fd00:211::2".parse().unwrap(),
                prefix_len: 64,
                gateway: Some("fd00:211::1".parse().unwrap()),
            }),
            ..network_config()
        };
        let json = serde_json::to_string(&dual).unwrap();
        assert!(
            json.ends_with(
                r#""ipv6":{"address":"fd00:211::2","prefix_len":64,"gateway":"fd00:211::1"}}"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<NetworkConfig>(&json).unwrap(), dual);
    }

    #[test]
    fn pod_config_debug_hides_the_entropy_bytes() {
        let config = PodConfig {
            entropy: vec![0xab; 40],
            ..pod_config()
        };
        let debug = format!("{config:?}");
        assert!(debug.contains("<40 bytes>"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
        assert!(debug.contains("web-0"), "{debug}");
    }

    #[test]
    fn eof_inside_a_frame_is_truncated_not_closed() {
        let frame = encode_frame(&HostMessage {
            id: 1,
            request: Request::Ping,
        })
        .unwrap();
        for cut in 1..frame.len() {
            let mut r = &frame[..cut];
            let err = read_frame::<_, HostMessage>(&mut r).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Truncated),
                "cut {cut}: {err:?}"
            );

            let mut d = FrameDecoder::new();
            d.push(&frame[..cut]);
            assert!(d.next_frame::<HostMessage>().unwrap().is_none());
            assert!(matches!(d.end_of_stream(), ProtocolError::Truncated));
        }
        assert!(matches!(
            FrameDecoder::new().end_of_stream(),
            ProtocolError::Closed
        ));
    }

    #[test]
    fn unknown_version_is_rejected() {
        let frame = frame_with_header(4, PROTOCOL_VERSION + 1, b"{}");
        let err = read_frame::<_, HostMessage>(&mut frame.as_slice()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::UnsupportedVersion(v) if v == PROTOCOL_VERSION + 1),
            "{err:?}"
        );
        let mut d = FrameDecoder::new();
        d.push(&frame[..HEADER_LEN]);
        let err = d.next_frame::<HostMessage>().unwrap_err();
        assert!(
            matches!(err, ProtocolError::UnsupportedVersion(v) if v == PROTOCOL_VERSION + 1),
            "{err:?}"
        );
    }

    #[test]
    fn oversized_and_undersized_lengths_are_rejected_from_the_header() {
        let big = frame_with_header(MAX_FRAME_LEN + 1, PROTOCOL_VERSION, b"");
        let err = read_frame::<_, HostMessage>(&mut big.as_slice()).unwrap_err();
        assert!(
            matches!(err, ProtocolError::TooLarge(n) if n == MAX_FRAME_LEN + 1),
            "{err:?}"
        );
        let mut d = FrameDecoder::new();
        d.push(&big[..4]);
        let err = d.next_frame::<HostMessage>().unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge(_)), "{err:?}");
        // Sticky: the stream cannot be resynchronised.
        d.push(&encode_frame(&Request::Ping).unwrap());
        assert!(d.next_frame::<Request>().is_err());

        for n in [0, 1] {
            let short = frame_with_header(n, PROTOCOL_VERSION, b"");
            let err = read_frame::<_, HostMessage>(&mut short.as_slice()).unwrap_err();
            assert!(matches!(err, ProtocolError::TooShort), "{err:?}");
        }
    }

    #[test]
    fn output_without_a_time_decodes_as_unstamped_and_a_stamp_round_trips() {
        let old = r#"{"output":{"name":"c","stream":"stdout","data":[104,105]}}"#;
        let e: Event = serde_json::from_str(old).unwrap();
        let unstamped = Event::Output {
            name: "c".into(),
            stream: Stream::Stdout,
            data: b"hi".to_vec(),
            time: None,
        };
        assert_eq!(e, unstamped);
        assert_eq!(serde_json::to_string(&unstamped).unwrap(), old);
        let stamped = r#"{"output":{"name":"c","stream":"stdout","data":[104,105],"time":1796677200123456789}}"#;
        let e: Event = serde_json::from_str(stamped).unwrap();
        assert!(
            matches!(
                e,
                Event::Output {
                    time: Some(1_796_677_200_123_456_789),
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn encode_refuses_frames_over_the_limit() {
        let msg = Event::Output {
            name: "big".into(),
            stream: Stream::Stdout,
            data: vec![255; MAX_FRAME_LEN as usize / 4],
            time: None,
        };
        assert!(matches!(
            encode_frame(&msg),
            Err(ProtocolError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_json_is_a_decode_error_and_the_stream_stays_in_sync() {
        let mut wire = frame_with_header(2 + 9, PROTOCOL_VERSION, b"not json!");
        wire.extend(
            encode_frame(&HostMessage {
                id: 9,
                request: Request::Ping,
            })
            .unwrap(),
        );
        let mut r = wire.as_slice();
        let err = read_frame::<_, HostMessage>(&mut r).unwrap_err();
        assert!(matches!(err, ProtocolError::Decode(_)), "{err:?}");
        assert_eq!(read_frame::<_, HostMessage>(&mut r).unwrap().id, 9);

        let mut d = FrameDecoder::new();
        d.push(&wire);
        assert!(matches!(
            d.next_frame::<HostMessage>(),
            Err(ProtocolError::Decode(_))
        ));
        assert_eq!(d.next_frame::<HostMessage>().unwrap().unwrap().id, 9);
        assert_eq!(d.buffered_len(), 0);
    }

    #[test]
    fn unknown_request_variant_is_a_decode_error() {
        let body = br#"{"id":1,"request":"self_destruct"}"#;
        let wire = frame_with_header(
            2 + u32::try_from(body.len()).unwrap(),
            PROTOCOL_VERSION,
            body,
        );
        assert!(matches!(
            read_frame::<_, HostMessage>(&mut wire.as_slice()),
            Err(ProtocolError::Decode(_))
        ));
    }

    #[test]
    fn decoder_fed_one_byte_at_a_time_yields_the_same_frames() {
        let mut wire = Vec::new();
        for m in agent_messages() {
            wire.extend(encode_frame(&m).unwrap());
        }
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_frame::<AgentMessage>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, agent_messages());
        assert_eq!(d.buffered_len(), 0);
        assert!(matches!(d.end_of_stream(), ProtocolError::Closed));
    }

    #[test]
    fn decoder_handles_many_frames_in_one_push() {
        let mut wire = Vec::new();
        for m in host_messages() {
            wire.extend(encode_frame(&m).unwrap());
        }
        let mut d = FrameDecoder::new();
        d.push(&wire);
        let mut got = Vec::new();
        while let Some(m) = d.next_frame::<HostMessage>().unwrap() {
            got.push(m);
        }
        assert_eq!(got, host_messages());
    }

    #[test]
    fn decoder_buffer_is_bounded() {
        let frame = encode_frame(&Request::Ping).unwrap();
        let mut d = FrameDecoder::new();
        let mut pushed = 0;
        while pushed <= DECODER_CAPACITY {
            d.push(&frame);
            pushed += frame.len();
        }
        assert!(matches!(
            d.next_frame::<Request>(),
            Err(ProtocolError::BufferFull)
        ));
        assert_eq!(d.buffered_len(), 0);
    }
}
