//! Starting a pod VM, shared by every front end: its directory, its
//! network attachment, the VMM child restored from the warm-start snapshot
//! (or booted cold), and the agent link with the pod's identity.
//!
//! # Design
//! The VMM runs as a child process (`unipod boot --vsock-uds ...`) so that a
//! VMM crash is observable and cannot take the supervisor with it. All
//! per-pod state lives in one directory under the state dir (`PodDir`);
//! the VMM child gets PR_SET_PDEATHSIG, so even a SIGKILLed supervisor
//! leaves no VM behind.
//!
//! The VM is restored from the warm-start snapshot of its kernel, initramfs
//! and memory size (made on first use, see [`super::warm_start`]); `cold`
//! boots it instead. A snapshot the VMM refuses is removed and the pod
//! boots cold. Either way the agent then gets the pod's identity
//! (`pod_config`: UID, hostname, clock, fresh entropy, network) before
//! any container.
//!
//! With [`NetworkMode::Bridge`] the pod first gets an IP, a tap on the
//! bridge and its port forwards ([`crate::net::Attachment`]); the VMM
//! inherits the tap fd. All of it is undone when the pod ends (see
//! docs/NETWORK.md).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use guest_agent::protocol::{Limits, NetworkConfig, PodConfig, AGENT_VSOCK_PORT};

use super::agent_client::{AgentError, AgentLink};
use super::options::{NetworkMode, RunOptions};
use super::phase::PodPhase;
use super::run::RunError;
use super::vm_inputs::{BootMode, GuestInputs, NetBackend, VmmFiles};
use super::vmm_process;
use super::warm_start::{self, WarmStartError};
use crate::exit_code::{EXIT_INTERRUPTED, EXIT_RUN_ERROR, EXIT_SNAPSHOT_REJECTED};
use crate::net::attachment::AttachRequest;
use crate::net::{Attachment, PodNetwork, PublishedPort};
use crate::snapshot::cache::SnapshotCache;

/// SIGINT and SIGTERM received so far (see [`install_signal_handlers`]).
pub(crate) static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

/// Sets up the pod's network, unless `--network none`.
pub(crate) fn attach_network(
    args: &RunOptions,
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
    network.subnet6 = args.pod_cidr6;
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
pub(crate) fn dns_servers(args: &RunOptions) -> Vec<std::net::Ipv4Addr> {
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
        match find_snapshot(&cache, inputs, deadline, &mut not_interrupted) {
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
                crate::error_chain::error_chain(&e, ": ")
            ),
        }
    }
    pod.report(PodPhase::Pending, Some("booting the VM"));
    launch(dir, inputs, BootMode::Cold, net, deadline)
}

/// Runs `work` (a pod's image pulls) while another thread makes sure the
/// warm-start snapshot for `inputs` exists, so that a first pod's template
/// boot overlaps its downloads instead of following them. When `work`
/// fails, the template boot is abandoned and its VM stopped before this
/// returns. A snapshot that cannot be made is left for [`start_vm`], which
/// reports it and boots cold.
pub(crate) fn while_snapshot_is_made<T, E>(
    state: &Path,
    inputs: &GuestInputs,
    deadline: Instant,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let abandoned = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut check = || {
                if abandoned.load(Ordering::SeqCst) {
                    return Err("the pod could not be prepared".to_string());
                }
                not_interrupted()
            };
            let cache = SnapshotCache::new(state);
            if let Err(e) = find_snapshot(&cache, inputs, deadline, &mut check) {
                log::debug!(
                    "no snapshot while pulling: {}",
                    crate::error_chain::error_chain(&e, ": ")
                );
            }
        });
        let result = work();
        if result.is_err() {
            abandoned.store(true, Ordering::SeqCst);
        }
        result
    })
}

/// The snapshot for `inputs` and its key, made first if needed; `check`
/// aborts the making (see [`warm_start::snapshot_for`]).
fn find_snapshot(
    cache: &SnapshotCache,
    inputs: &GuestInputs,
    deadline: Instant,
    check: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(String, PathBuf), WarmStartError> {
    let key = warm_start::key(inputs, cache)?;
    let dir = warm_start::snapshot_for(cache, &key, inputs, deadline, check)?;
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
        pod_limits: Limits::default(),
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

/// A pod VM's inputs of `mem_mib` MiB, its kernel and initramfs from the
/// flags' values or found with [`artifact`].
pub fn guest_inputs(
    kernel: Option<&Path>,
    initrd: Option<&Path>,
    mem_mib: u32,
) -> Result<GuestInputs, RunError> {
    Ok(GuestInputs::new(
        artifact(kernel, "vmlinux", "--kernel", "make kernel")?,
        artifact(initrd, "initramfs.cpio", "--initrd", "make images")?,
        mem_mib,
    ))
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
/// pod's, which stays until `unipod rm` (a command pod's goes with it).
pub(crate) struct PodDir {
    pub(crate) path: PathBuf,
    keep: bool,
}

impl PodDir {
    pub(crate) fn create(root: &Path, name: &str) -> Result<PodDir, RunError> {
        let path = root.join(name);
        // A manifest pod's directory (it keeps its manifest) stays until
        // `unipod rm`; a command pod's has no manifest and goes with it.
        if path.join("pod.yaml").exists() {
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
    pub(crate) fn record_network(&self, net: &Attachment, bridge: &str) {
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

    /// Removes `network.json` once the pod's network is gone.
    pub(crate) fn forget_network(&self) {
        let _ = std::fs::remove_file(self.path.join("network.json"));
    }

    pub(crate) fn record_pid(&self, pid: u32) {
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

pub(crate) fn not_interrupted() -> Result<(), String> {
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
    fn pod_uids_are_version_4_uuids() {
        let uid = uuid_v4([0xff; 16]);
        assert_eq!(uid, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let uid = uuid_v4([0; 16]);
        assert_eq!(uid, "00000000-0000-4000-8000-000000000000");
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
