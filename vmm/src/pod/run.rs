//! `unipod run -- CMD`: a pod of one command (and its `--sidecar`s), run
//! in the agent's own root file system by the same supervisor as a
//! manifest pod.
//!
//! # Design
//! The flags become an in-memory [`PodManifest`]: the command is the one
//! app container (named after the pod), each sidecar another one before
//! it, `--env` and `--workdir` their `env` and `workingDir`,
//! `restartPolicy: Never`. Their [`RunSpec`]s are built as a manifest
//! container's are ([`spec::run_spec`]), against the agent root's
//! "image config" (a `PATH` and nothing else) and with no root disk.
//! [`super::supervisor`] then runs the pod, with the command as the main
//! container ([`Lifecycle::with_main`](super::lifecycle::Lifecycle::with_main)):
//! the pod ends when it does, the output is streamed raw, the phase lines
//! give the container's reason and exit code, unipod exits with that code,
//! and the pod directory goes when the pod ends.

use std::path::PathBuf;

use guest_agent::protocol::RunSpec;

use super::lifecycle::ContainerInfo;
use super::manifest::{
    ContainerSpec, EnvVar, ImagePullPolicy, PodManifest, Resources, RestartPolicy,
    DEFAULT_NAMESPACE, DEFAULT_TERMINATION_GRACE_PERIOD,
};
use super::options::{is_dns_label, RunOptions, Sidecar};
use super::start::{guest_inputs, state_root};
use super::supervisor::{self, Origin, Prepared};
use super::{config_sources, spec};
use crate::image::ImageConfig;
use crate::net::NetError;

/// The `PATH` of a container in the agent's root, unless `--env` sets one.
const DEFAULT_PATH: &str = "PATH=/usr/local/bin:/usr/bin:/bin";

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
    /// A container cannot be run (no command after `--`).
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Too many --dns servers.
    #[error("--dns: {0} servers given; the guest resolver reads at most 3")]
    TooManyDns(usize),
}

/// Runs `unipod run -- CMD`; returns the exit code.
pub fn run(args: &RunOptions) -> Result<i32, RunError> {
    let prepared = prepare(args)?;
    supervisor::run_command(&prepared, args)
}

/// Checks the flags and builds the pod, with no side effects.
fn prepare(args: &RunOptions) -> Result<Prepared, RunError> {
    let manifest = command_pod(args)?;
    let inputs = guest_inputs(
        args.kernel.as_deref(),
        args.initrd.as_deref(),
        args.mem_mib.unwrap_or(crate::config::DEFAULT_MEM_MIB),
    )?;
    let root = agent_root();
    let app = manifest
        .containers
        .iter()
        .map(|c| {
            let env = config_sources::literal_env(c);
            let mut run = spec::run_spec(&manifest, c, &root, 0, &env)?;
            run.rootfs = None;
            let info = ContainerInfo {
                name: c.name.clone(),
                image: c.image.clone(),
                image_id: String::new(),
                stop_signal: libc::SIGTERM,
                probes: Default::default(),
                hooks: Default::default(),
                sidecar: false,
            };
            Ok((info, run))
        })
        .collect::<Result<Vec<(ContainerInfo, RunSpec)>, spec::SpecError>>()?;
    let state = state_root(args.state_dir.as_deref());
    Ok(Prepared {
        origin: Origin::Command {
            main: manifest.name.clone(),
        },
        dir: state.join("pods").join(&manifest.name),
        state,
        inputs,
        init: Vec::new(),
        app,
        // Command pods take nothing from objects: their specs are final.
        builds: Default::default(),
        catalog: Default::default(),
        objects: Vec::new(),
        ports: args.publish.clone(),
        unknown_after: args.unknown_after(),
        give_up_after: args.give_up_after(),
        pull_events: Vec::new(),
        manifest,
    })
}

/// The pod `unipod run [FLAGS] -- CMD` asks for: the sidecars, then the
/// command, named after the pod.
fn command_pod(args: &RunOptions) -> Result<PodManifest, RunError> {
    validate_name(&args.name)?;
    validate_sidecars(&args.name, &args.sidecar)?;
    let env = args
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(EnvVar::value(k, v)),
            _ => Err(RunError::BadEnv(e.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let container = |name: &str, command: Vec<String>| ContainerSpec {
        name: name.to_string(),
        image: String::new(),
        // The agent's own root: there is no image to pull.
        image_pull_policy: ImagePullPolicy::Never,
        command,
        args: Vec::new(),
        env: env.clone(),
        env_from: Vec::new(),
        working_dir: args.workdir.as_ref().map(PathBuf::from),
        ports: Vec::new(),
        resources: Resources::default(),
        volume_mounts: Vec::new(),
        security_context: Default::default(),
        probes: Default::default(),
        hooks: Default::default(),
        sidecar: false,
    };
    let sh = |command: &str| vec!["/bin/sh".to_string(), "-c".into(), command.into()];
    let containers = args
        .sidecar
        .iter()
        .map(|s| container(&s.name, sh(&s.command)))
        .chain(std::iter::once(container(&args.name, args.command.clone())))
        .collect();
    Ok(PodManifest {
        name: args.name.clone(),
        namespace: DEFAULT_NAMESPACE.into(),
        resources: Resources::default(),
        labels: Default::default(),
        annotations: Default::default(),
        hostname: None,
        restart_policy: RestartPolicy::Never,
        share_process_namespace: false,
        termination_grace_period: DEFAULT_TERMINATION_GRACE_PERIOD,
        init_containers: Vec::new(),
        containers,
        volumes: Vec::new(),
        security_context: Default::default(),
        image_pull_secrets: Vec::new(),
    })
}

/// The agent root's "image config": a `PATH`, and nothing else.
fn agent_root() -> ImageConfig {
    ImageConfig {
        env: vec![DEFAULT_PATH.into()],
        ..ImageConfig::default()
    }
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
    use crate::pod::options::NetworkMode;

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

    /// `unipod run [--name NAME] [-e ENV]... [--workdir DIR] [--sidecar S]... -- COMMAND`.
    fn options(
        name: &str,
        env: &[&str],
        workdir: Option<&str>,
        sidecars: &[&str],
        command: &[&str],
    ) -> RunOptions {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RunOptions {
            name: name.to_string(),
            kernel: None,
            initrd: None,
            mem_mib: None,
            env: strings(env),
            workdir: workdir.map(str::to_string),
            agent_timeout_secs: 30,
            heartbeat_ms: 10_000,
            unknown_timeout_secs: 60,
            cold: false,
            state_dir: None,
            network: NetworkMode::None,
            bridge: "unipod0".to_string(),
            pod_cidr: "10.211.0.0/16".parse().expect("a CIDR"),
            gateway: None,
            pod_cidr6: None,
            publish: Vec::new(),
            nat: false,
            dns: Vec::new(),
            sidecar: sidecars
                .iter()
                .map(|s| s.parse().expect("a sidecar"))
                .collect(),
            #[cfg(feature = "test-hooks")]
            debug_agent: None,
            command: strings(command),
        }
    }

    #[test]
    fn a_command_is_a_never_restarting_pod_whose_last_container_is_it() {
        let args = options(
            "web",
            &["A=1"],
            Some("/tmp"),
            &["db=sleep 9"],
            &["echo", "hi"],
        );
        let pod = command_pod(&args).expect("valid");
        assert_eq!(pod.restart_policy, RestartPolicy::Never);
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(pod.containers[0].command, ["/bin/sh", "-c", "sleep 9"]);
        assert_eq!(pod.containers[1].command, ["echo", "hi"]);
        let root = agent_root();
        let env = config_sources::literal_env(&pod.containers[1]);
        let run = spec::run_spec(&pod, &pod.containers[1], &root, 0, &env).expect("a spec");
        assert_eq!(run.argv(), ["echo", "hi"]);
        assert_eq!(run.env(), [DEFAULT_PATH, "A=1"]);
        assert_eq!(run.cwd().as_deref(), Some("/tmp"));
        assert_eq!(
            run.image_user.as_deref(),
            Some("0"),
            "root, as the agent root has no user"
        );
    }

    #[test]
    fn env_entries_need_a_key_and_a_path_of_ones_own_replaces_the_default() {
        for bad in ["A", "=1"] {
            let err = command_pod(&options("pod", &[bad], None, &[], &["true"])).unwrap_err();
            assert!(matches!(err, RunError::BadEnv(_)), "{bad}: {err}");
        }
        let pod =
            command_pod(&options("pod", &["PATH=/x", "B="], None, &[], &["true"])).expect("valid");
        let env = config_sources::literal_env(&pod.containers[0]);
        let run = spec::run_spec(&pod, &pod.containers[0], &agent_root(), 0, &env).expect("a spec");
        assert_eq!(run.env(), ["PATH=/x", "B="]);
    }
}
