//! `unipod run -- CMD`: a pod of one command (and its sidecars), run in
//! the agent's own root file system; its output is streamed, its phases
//! reported, and its exit code returned.
//!
//! # Design
//! The VM is started by [`super::start`], as every pod's; this module
//! follows the one container to its end on a [`PhaseTracker`]. The pod
//! directory goes when it ends (`PodDir`'s Drop).
//!
//! # Limitations
//! It is not yet a manifest pod with one container (see
//! [`super::supervisor`]): it has its own, smaller loop.

use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use guest_agent::protocol::{AgentMessage, Event, NetworkConfig, Reply, Request, RunSpec, Stream};

use super::agent_client::AgentLink;
use super::options::{is_dns_label, RunOptions, Sidecar};
use super::phase::{PhaseTracker, PodPhase};
use super::start::{
    artifact, attach_network, dns_servers, host_dns_search, install_signal_handlers, pod_config,
    start_vm, state_root, Pod, PodDir, SIGNALS,
};
use super::vm_inputs::{GuestInputs, NetBackend};
use super::vmm_process;
use crate::exit_code::{EXIT_INTERRUPTED, EXIT_RUN_ERROR};
use crate::net::NetError;

const TICK: Duration = Duration::from_millis(100);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

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

/// Runs `unipod run`; returns the exit code.
pub fn run(args: &RunOptions) -> Result<i32, RunError> {
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

/// Configures the pod, runs the container and follows it. Returns the exit
/// code.
fn supervise(
    pod: &Pod,
    dir: &PodDir,
    vmm: &mut Child,
    mut link: AgentLink,
    phase: &mut PhaseTracker,
    args: &RunOptions,
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
                        #[cfg(feature = "test-hooks")]
                        if args.debug_stop_heartbeat {
                            let debug = guest_agent::protocol::DebugCommand::StopHeartbeat;
                            let _ = link.send(Request::Debug(debug));
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
    fn container_env_gets_a_default_path() {
        assert_eq!(
            container_env(&["A=1".into()]),
            ["PATH=/usr/local/bin:/usr/bin:/bin", "A=1"]
        );
        assert_eq!(container_env(&["PATH=/x".into()]), ["PATH=/x"]);
    }
}
