//! The supervisor of every `unipod run` pod: admits a Kubernetes Pod
//! manifest (`unipod run MANIFEST`) or the pod [`super::run`] builds from a
//! command (`unipod run -- CMD`), starts its VM and follows the pod to its
//! end.
//!
//! # Design
//! Everything that can be checked without side effects is checked first
//! (`prepare`): the manifest, the name (not taken), every image (resolved
//! in the image store), the commands (image config merged), the guest
//! artifacts. Only then is the pod directory made, so a refused pod leaves
//! no directory, VM, tap or lease. The one exception is a detached pod
//! whose image could not be pulled: it is made, Pending, and its
//! supervisor retries the pull before it prepares the pod
//! ([`super::image_wait`]).
//!
//! The supervisor (`Supervisor`) owns the agent connection and drives
//! [`Lifecycle`]: it starts the containers the lifecycle says are due,
//! feeds it what the agent reports, writes `status.json` on every change and
//! each container's output to `logs/<container>/<restartCount>.log` (CRI log
//! records, see [`crate::pod::container_log`]), and
//! serves `control.sock` (see [`crate::pod::control`]) for `exec` and
//! `stop`. In the foreground it also streams the logs (`[container] line`)
//! and the phases; `--detach` re-executes `unipod run --supervisor` in a new
//! session with its output in `supervisor.log`, and waits until the pod
//! runs.
//!
//! A single thread runs the loop: the agent's reader thread and the control
//! socket's threads send into one channel, so the lifecycle needs no lock.
//!
//! A command pod (`Origin::Command`) differs only in what it shows and
//! keeps: its main container ends it, its output is streamed raw, its phase
//! lines carry the container's reason and exit code (or the VM's failure),
//! unipod exits with the container's code (125 when the VM or agent failed,
//! 130 after a second Ctrl-C), and its directory is removed when it ends.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use guest_agent::protocol::{
    AgentMessage, Event, ExecSpec, HookKind, HookSpec, Limits, ProbeHandler, ProtocolError, Reply,
    Request, RunSpec, Stream, VolumeFile, VolumeFiles,
};

use super::options::{NetworkMode, RunOptions};
use super::run::RunError;
use super::start::{
    self as start, attach_network, dns_servers, guest_inputs, host_dns_search,
    install_signal_handlers, pod_config, start_vm, state_root, uuid_v4, Pod, PodDir, SIGNALS,
};
use crate::error_chain::error_chain;
use crate::exit_code::{EXIT_INTERRUPTED, EXIT_RUN_ERROR};
use crate::file_error::FileError;
use crate::image::registry::auth::Credentials;
use crate::image::{ImageError, ImageStore, StoredImage};
use crate::net::{Attachment, Proto, PublishedPort};
use crate::pod::agent_client::AgentLink;
use crate::pod::config_sources::{self, ConfigError, PodFacts};
use crate::pod::container_log;
use crate::pod::control::{
    self, ClientLine, ControlReply, ControlRequest, ExecRequest, CONTROL_SOCKET,
};
use crate::pod::lifecycle::{
    parse_stop_signal, Action, ContainerInfo, HookInfo, HookRun, Lifecycle, LifecycleConfig,
    ProbeInfo,
};
use crate::pod::manifest::{
    self, Hook, ManifestError, PodManifest, Protocol, VmSize, VolumeSource, Warning,
};
use crate::pod::objects::{Catalog, ConfigObject, ObjectStore};
use crate::pod::phase::PodPhase;
use crate::pod::spec::{self, SpecError};
use crate::pod::status::{
    format_time, unix_now, NetworkRecord, PodIp, PodRecord, PodStatus, ProcessRef, StartupTimeline,
    STATUS_VERSION,
};
use crate::pod::vm_inputs::{GuestInputs, NetBackend, MAX_IMAGES_PER_POD};
use crate::pod::vmm_process;
use crate::pod::{image_wait, images};

pub use crate::exit_code::EXIT_POD_FAILED;

const TICK: Duration = Duration::from_millis(100);
/// How often a running pod's ConfigMap, Secret and downward API volumes are
/// compared with their sources (the kubelet's sync is about a minute; a
/// check here reads a few small files on the host).
const VOLUME_SYNC: Duration = Duration::from_secs(1);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The failure reason of a pod interrupted twice.
const INTERRUPTED: &str = "Interrupted";

/// Why a manifest pod could not be created. Nothing was left behind.
#[derive(Debug, thiserror::Error)]
pub enum PodRunError {
    /// Not a manifest file name.
    #[error("{}: a pod manifest's name ends in .yaml, .yml or .json (to run a command: unipod run [FLAGS] -- CMD...)", .0.display())]
    NotAManifest(PathBuf),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The name is taken.
    #[error("pod {0:?} already exists; remove it with: unipod rm {0}")]
    Exists(String),
    /// An image is missing.
    #[error("{}: {field}", manifest.display())]
    Image {
        /// The manifest file.
        manifest: PathBuf,
        /// `spec.containers[1].image`.
        field: String,
        /// The container.
        container: String,
        /// The reference.
        image: String,
        /// Why.
        #[source]
        source: Box<ImageError>,
    },
    /// A container cannot be run with its image.
    #[error("{}: invalid pod", manifest.display())]
    Spec {
        /// The manifest file.
        manifest: PathBuf,
        /// Why.
        #[source]
        source: SpecError,
    },
    /// `unipod run` setup failed (artifacts, name, network).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The files hold no Pod, or several.
    #[error("the manifest files hold {0} Pods; give exactly one (ConfigMaps and Secrets may come with it)")]
    PodCount(usize),
    /// A ConfigMap or Secret could not be stored.
    #[error(transparent)]
    Object(crate::pod::objects::ObjectError),
    /// The pod directory could not be written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// `--detach`: the pod failed before it ran.
    #[error("pod {name:?} failed: {reason}; see 'unipod describe {name}' and {}", log.display())]
    Detached {
        /// The pod.
        name: String,
        /// Why.
        reason: String,
        /// The supervisor's log.
        log: PathBuf,
    },
}

/// Whether a positional argument names a manifest.
pub fn is_manifest_path(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Where a pod came from, which decides how it is shown and how it ends.
pub(crate) enum Origin {
    /// `unipod run MANIFEST`: the manifest file.
    Manifest(PathBuf),
    /// `unipod run -- CMD`: the pod ends with its `main` container.
    Command {
        /// The command's container (named after the pod).
        main: String,
    },
}

/// A pod checked and ready to run.
pub(crate) struct Prepared {
    pub(crate) manifest: PodManifest,
    pub(crate) origin: Origin,
    pub(crate) state: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) inputs: GuestInputs,
    pub(crate) init: Vec<(ContainerInfo, RunSpec)>,
    pub(crate) app: Vec<(ContainerInfo, RunSpec)>,
    /// What rebuilds a manifest container's spec at each start, by name.
    pub(crate) builds: HashMap<String, ContainerBuild>,
    /// Where the pod's ConfigMaps and Secrets are found.
    pub(crate) catalog: Catalog,
    /// The ConfigMaps and Secrets of the manifest files, applied before the
    /// pod runs.
    pub(crate) objects: Vec<ConfigObject>,
    pub(crate) ports: Vec<PublishedPort>,
    /// Silence that makes the pod Unknown ([`RunOptions::unknown_after`]).
    pub(crate) unknown_after: Duration,
    /// Unknown this long makes it Failed.
    pub(crate) give_up_after: Duration,
    /// What getting the images did, as events after `Scheduled`.
    pub(crate) pull_events: Vec<images::PullEvent>,
}

/// A container's image config and disk, to rebuild its spec when it
/// (re)starts with its configuration resolved.
pub(crate) struct ContainerBuild {
    pub(crate) image: crate::image::ImageConfig,
    pub(crate) disk: usize,
}

/// What the manifest files hold: the one Pod, the file it is in, the
/// ConfigMaps and Secrets, and the warnings about them all.
pub(crate) struct Loaded {
    pub(crate) path: PathBuf,
    pub(crate) manifest: PodManifest,
    pub(crate) objects: Vec<ConfigObject>,
    pub(crate) warnings: Vec<Warning>,
}

/// Reads the manifest files.
pub(crate) fn load(files: &[PathBuf]) -> Result<Loaded, PodRunError> {
    let mut pods = Vec::new();
    let mut objects = Vec::new();
    let mut warnings = Vec::new();
    for file in files {
        if !is_manifest_path(file) {
            return Err(PodRunError::NotAManifest(file.clone()));
        }
        let documents = manifest::load_documents(file)?;
        pods.extend(documents.pods.into_iter().map(|p| (file.clone(), p)));
        objects.extend(documents.objects);
        warnings.extend(documents.warnings);
    }
    let (path, (manifest, pod_warnings)) = match pods.len() {
        1 => pods.remove(0),
        n => return Err(PodRunError::PodCount(n)),
    };
    warnings.extend(pod_warnings);
    Ok(Loaded {
        path,
        manifest,
        objects,
        warnings,
    })
}

/// Checks everything that can be checked without side effects. Images are
/// pulled as their policy says (`adopt`: only looked up, for the
/// supervisor of a pod whose run got them); what that did goes to
/// `pull_events`, also when it fails.
pub(crate) fn prepare(
    args: &RunOptions,
    files: &[PathBuf],
    adopt: bool,
    pull_events: &mut Vec<images::PullEvent>,
) -> Result<(Prepared, Vec<Warning>), PodRunError> {
    let Loaded {
        path,
        manifest,
        objects,
        mut warnings,
    } = load(files)?;
    let path = path.as_path();
    let state = state_root(args.state_dir.as_deref());
    let dir = state.join("pods").join(&manifest.name);
    if !adopt && dir.exists() {
        return Err(PodRunError::Exists(manifest.name.clone()));
    }
    let store = ImageStore::open(&state);
    let catalog = Catalog::new(Some(ObjectStore::open(&state))).with(&objects);
    // The supervisor a detached run starts adopts images the run got.
    let credentials = if adopt {
        Vec::new()
    } else {
        images::pull_credentials(&manifest.image_pull_secrets, &catalog, pull_events)
    };
    let size = manifest.host_vm_size();
    let base_inputs = GuestInputs {
        vcpus: size.vcpus,
        ..guest_inputs(args.kernel.as_deref(), args.initrd.as_deref(), size.mem_mib)?
    };
    let mut pull = || resolve_images(&store, &manifest, path, adopt, &credentials, pull_events);
    let resolved = if adopt || args.cold {
        pull()?
    } else {
        let deadline = Instant::now() + Duration::from_secs(args.agent_timeout_secs);
        start::while_snapshot_is_made(&state, &base_inputs, deadline, pull)?
    };
    let spec_err = |source| PodRunError::Spec {
        manifest: path.to_path_buf(),
        source,
    };
    let images: Vec<&StoredImage> = resolved.iter().map(|(_, _, i)| i).collect();
    let disks = spec::assign_disks(&images, MAX_IMAGES_PER_POD).map_err(spec_err)?;
    let mut image_files: Vec<PathBuf> = Vec::new();
    for (k, &disk) in disks.iter().enumerate() {
        if disk == image_files.len() {
            image_files.push(resolved[k].2.rootfs.clone());
        }
    }
    let mut entries = Vec::new();
    let mut builds = HashMap::new();
    let containers = manifest.init_containers.iter().chain(&manifest.containers);
    for ((c, (_, reference, image)), disk) in containers.zip(&resolved).zip(&disks) {
        // Checked now with the literal env; rebuilt with the resolved one
        // at each start.
        let env = config_sources::literal_env(c);
        let run = spec::run_spec(&manifest, c, &image.config, *disk, &env).map_err(spec_err)?;
        builds.insert(
            c.name.clone(),
            ContainerBuild {
                image: image.config.clone(),
                disk: *disk,
            },
        );
        let stop_signal = match image.config.stop_signal.as_deref() {
            None => libc::SIGTERM,
            Some(text) => parse_stop_signal(text).unwrap_or_else(|| {
                warnings.push(Warning {
                    path: format!("{}.image", spec::container_path(&manifest, &c.name)),
                    message: format!(
                        "the image's StopSignal {text:?} names no signal; SIGTERM stops it"
                    ),
                });
                libc::SIGTERM
            }),
        };
        let info = container_info(c, &image.digest, stop_signal);
        debug_assert_eq!(&info.image, reference);
        entries.push((info, run));
    }
    let app = entries.split_off(manifest.init_containers.len());
    let inputs = GuestInputs {
        images: image_files,
        ..base_inputs
    };
    let ports = manifest
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter_map(|p| {
            Some(PublishedPort {
                host_port: p.host_port?,
                pod_port: p.container_port,
                proto: match p.protocol {
                    Protocol::Tcp => Proto::Tcp,
                    Protocol::Udp => Proto::Udp,
                },
            })
        })
        .collect();
    Ok((
        Prepared {
            catalog: Catalog::new(Some(ObjectStore::open(&state))),
            pull_events: std::mem::take(pull_events),
            manifest,
            origin: Origin::Manifest(path.to_path_buf()),
            state,
            dir,
            inputs,
            init: entries,
            app,
            builds,
            objects,
            ports,
            unknown_after: args.unknown_after(),
            give_up_after: args.give_up_after(),
        },
        warnings,
    ))
}

/// Each container's name, image reference and image, init containers
/// first: pulled as their policy says, or (`adopt`) only looked up.
fn resolve_images(
    store: &ImageStore,
    manifest: &PodManifest,
    path: &Path,
    adopt: bool,
    credentials: &[(String, Credentials)],
    pull_events: &mut Vec<images::PullEvent>,
) -> Result<Vec<(String, String, StoredImage)>, PodRunError> {
    let init = manifest
        .init_containers
        .iter()
        .map(|c| ("initContainers", c));
    let app = manifest.containers.iter().map(|c| ("containers", c));
    let mut resolved = Vec::new();
    for (i, (list, c)) in init.enumerate().chain(app.enumerate()) {
        let image = if adopt {
            store.resolve(&c.image)
        } else {
            images::ensure(store, c, credentials, pull_events)
        };
        let image = image.map_err(|source| PodRunError::Image {
            manifest: path.to_path_buf(),
            field: format!("spec.{list}[{i}].image"),
            container: c.name.clone(),
            image: c.image.clone(),
            source: Box::new(source),
        })?;
        resolved.push((c.name.clone(), c.image.clone(), image));
    }
    Ok(resolved)
}

/// What the lifecycle knows of manifest container `c`, whose image has
/// digest `image_id` and stops with `stop_signal`.
pub(crate) fn container_info(
    c: &manifest::ContainerSpec,
    image_id: &str,
    stop_signal: i32,
) -> ContainerInfo {
    ContainerInfo {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: image_id.to_owned(),
        stop_signal,
        probes: ProbeInfo {
            readiness: c.probes.probes.readiness.is_some(),
            startup: c.probes.probes.startup.is_some(),
            liveness_grace: c.probes.liveness_grace,
            startup_grace: c.probes.startup_grace,
        },
        hooks: HookInfo {
            post_start: c.hooks.post_start.as_ref().map(hook_run),
            pre_stop: c.hooks.pre_stop.as_ref().map(hook_run),
        },
        sidecar: c.sidecar,
    }
}

/// Runs `unipod run MANIFEST`; returns the exit code.
///
/// `supervisor`: be the background supervisor of a pod whose directory
/// `detach` made; `detach`: start that supervisor and return once the pod
/// runs.
pub fn run_manifest(
    args: &RunOptions,
    files: &[PathBuf],
    supervisor: bool,
    detach: bool,
) -> Result<i32, PodRunError> {
    install_signal_handlers();
    if supervisor {
        // A detached run that could not pull an image left it to us.
        if let Some(code) = image_wait::await_images(args, files)? {
            return Ok(code);
        }
    }
    let mut pull_events = Vec::new();
    let (prepared, warnings) = match prepare(args, files, supervisor, &mut pull_events) {
        // Detached, the pod waits for the image as the kubelet's would.
        Err(PodRunError::Image {
            container, source, ..
        }) if detach && !supervisor && source.is_pull_failure() => {
            let loaded = load(files)?;
            let state = state_root(args.state_dir.as_deref());
            admit(&loaded, &state)?;
            let record = image_wait::waiting_record(
                &loaded.manifest,
                &loaded.path,
                args,
                &pull_events,
                &container,
                &source.pull_reason(),
            );
            let dir = state.join("pods").join(&loaded.manifest.name);
            create_pod_dir(&dir, &loaded.manifest.name, &loaded.path, &record)?;
            return run_detached(&dir, &loaded.manifest.name);
        }
        other => other?,
    };
    let Origin::Manifest(path) = &prepared.origin else {
        unreachable!("prepare makes manifest pods");
    };
    let path = path.clone();
    let dir = PodDir::adopt(prepared.dir.clone());
    if supervisor {
        return Ok(Supervisor::run(&prepared, args, &dir, false));
    }
    admit(
        &Loaded {
            path: path.clone(),
            manifest: prepared.manifest.clone(),
            objects: prepared.objects.clone(),
            warnings,
        },
        &prepared.state,
    )?;
    create_pod_dir(
        &prepared.dir,
        &prepared.manifest.name,
        &path,
        &initial_record(&prepared),
    )?;
    if detach {
        return run_detached(&prepared.dir, &prepared.manifest.name);
    }
    Ok(Supervisor::run(&prepared, args, &dir, true))
}

/// Shows the warnings and applies the ConfigMaps and Secrets, as
/// 'kubectl apply -f' would, before the pod that uses them.
fn admit(loaded: &Loaded, state: &Path) -> Result<(), PodRunError> {
    for w in &loaded.warnings {
        eprintln!("unipod: warning: {}: {w}", loaded.path.display());
    }
    let store = ObjectStore::open(state);
    for object in &loaded.objects {
        let applied = store.apply(object).map_err(PodRunError::Object)?;
        eprintln!("unipod: {}/{} {applied}", object.kind.lower(), object.name);
    }
    Ok(())
}

/// Runs a command pod (see [`super::run`]) in the foreground; returns the
/// exit code. Its directory is removed when it ends.
pub(crate) fn run_command(p: &Prepared, args: &RunOptions) -> Result<i32, RunError> {
    install_signal_handlers();
    let root = p.dir.parent().expect("pods/NAME has a parent");
    let dir = PodDir::create(root, &p.manifest.name)?;
    Ok(Supervisor::run(p, args, &dir, true))
}

/// Claims the name `name` with directory `dir` and writes the pod's
/// manifest and first `record`.
fn create_pod_dir(
    dir: &Path,
    name: &str,
    manifest: &Path,
    record: &PodRecord,
) -> Result<(), PodRunError> {
    let pods = dir.parent().expect("pods/NAME has a parent");
    std::fs::create_dir_all(pods).map_err(FileError::at("create", pods))?;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PodRunError::Exists(name.to_owned()))
        }
        Err(e) => return Err(FileError::at("create", dir)(e).into()),
    }
    let result = (|| {
        let copy = dir.join("pod.yaml");
        std::fs::copy(manifest, &copy).map_err(FileError::at("write", &copy))?;
        record.write(dir).map_err(|e| {
            FileError::at("write", dir.join("status.json"))(std::io::Error::other(e)).into()
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn initial_record(p: &Prepared) -> PodRecord {
    let manifest = match &p.origin {
        Origin::Manifest(path) => Some(path.as_path()),
        Origin::Command { .. } => None,
    };
    new_record(&p.manifest, manifest, &mut lifecycle_for(p, Instant::now()))
}

/// The first record of pod `pod` from manifest file `manifest`, with the
/// status and events of `life`.
pub(crate) fn new_record(
    pod: &PodManifest,
    manifest: Option<&Path>,
    life: &mut Lifecycle,
) -> PodRecord {
    let mut uid = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut uid);
    }
    PodRecord {
        version: STATUS_VERSION,
        name: pod.name.clone(),
        uid: uuid_v4(uid),
        creation_timestamp: format_time(unix_now()),
        manifest: manifest
            .map(|path| std::fs::canonicalize(path).unwrap_or(path.to_path_buf()))
            .unwrap_or_default(),
        supervisor: None,
        vmm: None,
        network: None,
        status: life.status(Instant::now()),
        events: life.events().to_vec(),
        startup: StartupTimeline::default(),
        sidecars: (pod.init_containers.iter())
            .filter(|c| c.sidecar)
            .map(|c| c.name.clone())
            .collect(),
    }
}

fn lifecycle_for(p: &Prepared, now: Instant) -> Lifecycle {
    let cfg = lifecycle_config(&p.manifest, p.unknown_after, p.give_up_after);
    let mut life = Lifecycle::new(
        &p.manifest.name,
        cfg,
        p.init.iter().map(|(i, _)| i.clone()).collect(),
        p.app.iter().map(|(i, _)| i.clone()).collect(),
        now,
        unix_now(),
    );
    for (kind, reason, message) in &p.pull_events {
        life.event(now, kind, reason, message.clone());
    }
    match &p.origin {
        Origin::Command { main } => life.with_main(main),
        Origin::Manifest(_) => life,
    }
}

/// How pod `pod` behaves.
pub(crate) fn lifecycle_config(
    pod: &PodManifest,
    unknown_after: Duration,
    give_up_after: Duration,
) -> LifecycleConfig {
    LifecycleConfig::new(
        pod.restart_policy,
        pod.termination_grace_period,
        unknown_after,
        give_up_after,
    )
}

/// `--detach`: starts the supervisor of pod `name` (directory `dir`) in its
/// own session and waits until the pod runs (or fails, or waits for the
/// user).
fn run_detached(dir: &Path, name: &str) -> Result<i32, PodRunError> {
    let log_path = dir.join("supervisor.log");
    let fail = |reason: String| {
        Err(PodRunError::Detached {
            name: name.to_owned(),
            reason,
            log: log_path.clone(),
        })
    };
    let log = match File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create the supervisor log: {e}")),
    };
    let err = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create the supervisor log: {e}")),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("cannot find the unipod binary: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.args(
        std::env::args_os()
            .skip(1)
            .filter(|a| a != "--detach" && a != "-d"),
    )
    .arg("--supervisor")
    .stdin(Stdio::null())
    .stdout(log)
    .stderr(err);
    // SAFETY: runs in the forked child before exec and calls only setsid,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            return fail(format!("cannot start the supervisor: {e}"));
        }
    };
    loop {
        std::thread::sleep(TICK);
        let record = PodRecord::read(dir).ok();
        match record.as_ref().map(|r| r.status.phase) {
            Some(PodPhase::Running | PodPhase::Succeeded) => {
                // The pod runs either way; a closed stdout is no failure.
                let _ = writeln!(std::io::stdout(), "{name}");
                return Ok(0);
            }
            Some(PodPhase::Failed) => {
                let status = record.map(|r| r.status).unwrap_or_default();
                return fail(failure_reason(&status));
            }
            _ => {}
        }
        // A container waiting for a ConfigMap, a Secret or an image waits
        // for the user or the registry: say so and return, as kubectl
        // does, instead of waiting with it.
        if let Some((container, reason, message)) = record.as_ref().and_then(waiting_on_user) {
            let (why, fix) = if reason == "CreateContainerConfigError" {
                (
                    message,
                    "it starts once that is fixed (unipod apply -f ...)".into(),
                )
            } else {
                // The back-off's message does not say why the pull failed.
                let failure = record.as_ref().and_then(|r| {
                    (r.events.iter().rev())
                        .find(|e| e.message.starts_with("Failed to pull image"))
                        .map(|e| e.message.clone())
                });
                (
                    failure.unwrap_or(message),
                    format!("the pull is retried with back-off (see 'unipod describe pod {name}')"),
                )
            };
            eprintln!(
                "unipod: pod {name}: container {container} is waiting: {reason}: {why}; {fix}"
            );
            let _ = writeln!(std::io::stdout(), "{name}");
            return Ok(0);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = vmm_process::log_tail(&log_path, 5).join("\n");
            return fail(format!("the supervisor exited ({status}):\n{tail}"));
        }
        if SIGNALS.load(Ordering::SeqCst) > 0 {
            eprintln!(
                "unipod: pod {name} keeps starting in the background; 'unipod stop {name}' stops it"
            );
            return Ok(EXIT_INTERRUPTED);
        }
    }
}

/// The first container waiting on something only the user or a registry
/// can fix (`CreateContainerConfigError`, `ErrImagePull`,
/// `ImagePullBackOff`): its name, the reason and the message.
fn waiting_on_user(record: &PodRecord) -> Option<(String, String, String)> {
    let status = &record.status;
    status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses)
        .find_map(|c| match &c.state {
            crate::pod::status::ContainerState::Waiting { reason, message }
                if matches!(
                    reason.as_str(),
                    "CreateContainerConfigError" | "ErrImagePull" | "ImagePullBackOff"
                ) =>
            {
                Some((
                    c.name.clone(),
                    reason.clone(),
                    message.clone().unwrap_or_default(),
                ))
            }
            _ => None,
        })
}

/// Why a pod failed, from its status.
pub(crate) fn failure_reason(status: &PodStatus) -> String {
    if let Some(r) = &status.reason {
        return match &status.message {
            // Some messages already lead with their reason.
            Some(m) if m.starts_with(r.as_str()) => m.clone(),
            Some(m) => format!("{r}: {m}"),
            None => r.clone(),
        };
    }
    let all = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses);
    for c in all {
        if let crate::pod::status::ContainerState::Terminated {
            exit_code,
            reason,
            message,
            ..
        } = &c.state
        {
            if *exit_code != 0 {
                let detail = message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return format!(
                    "container {} {reason} (exit code {exit_code}){detail}",
                    c.name
                );
            }
        }
    }
    "Failed".into()
}

/// Why a command pod is where it is, as `unipod run -- CMD` says it: the
/// VM's or agent's failure, the agent's silence, or the main container's
/// reason and exit code.
fn command_reason(status: &PodStatus, main: &str) -> Option<String> {
    if let Some(message) = &status.message {
        return Some(message.clone());
    }
    status
        .container_statuses
        .iter()
        .find(|c| c.name == main)
        .and_then(|c| match &c.state {
            crate::pod::status::ContainerState::Terminated {
                exit_code, reason, ..
            } => Some(format!("{reason}, exit code {exit_code}")),
            _ => None,
        })
}

/// What the loop waits on.
pub(crate) enum Msg {
    /// From the agent of sandbox number `.0` (see [`Supervisor::sandbox`]).
    Agent(u32, Result<AgentMessage, ProtocolError>),
    Control(ControlRequest, UnixStream),
    Stdin(String, Vec<u8>),
}

/// How the pod's time on one VM ended.
enum VmEnd {
    /// The pod is over, with this exit code.
    PodOver(i32),
    /// The VM was lost; the next may start at `next_at`.
    Lost { next_at: Instant },
}

/// What an agent request was for.
enum Pending {
    Configure,
    Run(String),
    /// A [`Request::WriteVolume`] of this volume.
    Volume(String),
    Exec(String),
    /// A [`Request::RunHook`]: its error fails the hook.
    Hook(String, HookKind),
    Other,
}

/// How the lifecycle runs a manifest hook.
fn hook_run(hook: &Hook) -> HookRun {
    match hook {
        Hook::Sleep(d) => HookRun::Sleep(*d),
        Hook::InGuest(_) | Hook::TcpSocket => HookRun::Handler,
    }
}

struct ExecClient {
    stream: UnixStream,
}

/// One pod's supervisor.
pub(crate) struct Supervisor<'a> {
    p: &'a Prepared,
    record: PodRecord,
    life: Lifecycle,
    foreground: bool,
    logs: HashMap<String, File>,
    /// Unfinished output lines, by container and stream (stderr: true).
    partial: HashMap<(String, bool), Vec<u8>>,
    pending: HashMap<u64, Pending>,
    execs: HashMap<String, ExecClient>,
    next_exec: u64,
    last_phase: Option<PodPhase>,
    tx: Sender<Msg>,
    /// When the supervisor took the pod: the start of its [`StartupTimeline`].
    accepted: Instant,
    /// The last status write failed (a full disk): retry on every tick,
    /// not only on the next change, so status.json catches up once there
    /// is room again.
    unsaved: bool,
    /// The files last sent for each files volume.
    volumes: HashMap<String, Vec<VolumeFile>>,
    /// Why a files volume could not be filled, while it cannot.
    volume_errors: HashMap<String, String>,
    /// The next time the files volumes are checked for changes.
    next_volume_sync: Option<Instant>,
    /// The number of the pod's current sandbox (VM), from 0.
    sandbox: u32,
    /// `--debug-agent`, until it is sent (once the first container
    /// started).
    #[cfg(feature = "test-hooks")]
    debug_agent: Option<guest_agent::protocol::DebugCommand>,
}

impl<'a> Supervisor<'a> {
    /// Runs the pod in `dir` to its end; returns the exit code.
    fn run(p: &'a Prepared, args: &RunOptions, dir: &PodDir, foreground: bool) -> i32 {
        let now = Instant::now();
        let mut record = PodRecord::read(&p.dir).unwrap_or_else(|_| initial_record(p));
        record.supervisor = Some(ProcessRef::current());
        let mut life = lifecycle_for(p, now);
        // The events the run recorded before this process took over (a
        // detached run's image pulls).
        life.continue_events(&record.events);
        let (tx, rx) = mpsc::channel();
        let mut sup = Supervisor {
            p,
            record,
            life,
            foreground,
            logs: HashMap::new(),
            partial: HashMap::new(),
            pending: HashMap::new(),
            execs: HashMap::new(),
            next_exec: 1,
            // start_vm reports Pending itself.
            last_phase: Some(PodPhase::Pending),
            tx,
            accepted: now,
            unsaved: false,
            volumes: HashMap::new(),
            volume_errors: HashMap::new(),
            next_volume_sync: None,
            sandbox: 0,
            #[cfg(feature = "test-hooks")]
            debug_agent: args.debug_agent.clone(),
        };
        let code = sup.run_pod(args, dir, &rx);
        sup.flush_partial();
        code
    }

    fn run_pod(&mut self, args: &RunOptions, dir: &PodDir, rx: &Receiver<Msg>) -> i32 {
        let name = self.p.manifest.name.clone();
        let pod = Pod { name: name.clone() };
        self.save(Instant::now());
        let net = match self.attach(args, dir) {
            Ok(net) => net,
            Err(e) => {
                let why = error_chain(&e, ": ");
                self.life
                    .vm_failed("NetworkSetupFailed", why, Instant::now());
                return self.finish(Instant::now());
            }
        };
        self.mark(StartupTimeline::NETWORK);
        let network = net
            .as_ref()
            .map(|n| n.guest_config(dns_servers(args), host_dns_search()));
        let listener = self.listen();
        // One sandbox (VM) after another, while the lifecycle asks for a
        // new one; the network attachment, and so the pod's IP, stays.
        let code = loop {
            let deadline = Instant::now() + Duration::from_secs(args.agent_timeout_secs);
            let backend = match &net {
                Some(net) => NetBackend::Tap {
                    fd: net.tap_fd(),
                    mac: net.lease().mac,
                },
                None => NetBackend::Detached,
            };
            let started = start_vm(
                &pod,
                dir,
                &self.p.inputs,
                &self.p.state,
                backend,
                args.cold,
                deadline,
            );
            let (mut vmm, link) = match started {
                Ok(s) => s,
                Err(failure) if failure.code == EXIT_INTERRUPTED => {
                    self.life
                        .vm_failed("VMStartFailed", failure.reason, Instant::now());
                    self.finish(Instant::now());
                    break EXIT_INTERRUPTED;
                }
                Err(failure) => {
                    dir.print_console_tail();
                    self.life
                        .sandbox_start_failed(failure.reason.clone(), Instant::now());
                    if let Some(next_at) = self.life.take_new_sandbox() {
                        self.say(&format!("the new VM did not start: {}", failure.reason));
                        self.save(Instant::now());
                        if let Some(code) = self.await_new_sandbox(next_at, rx) {
                            break code;
                        }
                        continue;
                    }
                    break self.finish(Instant::now());
                }
            };
            self.life.vm_started(Instant::now());
            self.mark(StartupTimeline::VM_READY);
            self.record.vmm = i32::try_from(vmm.id()).ok().and_then(ProcessRef::of);
            let ended = self.supervise(args, &mut vmm, link, network.clone(), rx);
            if let VmEnd::PodOver(_) = ended {
                // Whatever happened, no VM outlives the supervisor.
                vmm_process::wait_for_exit(&mut vmm, SHUTDOWN_GRACE);
            }
            vmm_process::stop(&mut vmm);
            self.record.vmm = None;
            match ended {
                VmEnd::PodOver(code) => break code,
                VmEnd::Lost { next_at } => {
                    self.sandbox_gone(dir);
                    if let Some(code) = self.await_new_sandbox(next_at, rx) {
                        break code;
                    }
                }
            }
        };
        for (_, mut client) in self.execs.drain() {
            let _ = control::write_line(
                &mut client.stream,
                &ControlReply::Error("the pod ended".into()),
            );
        }
        drop(listener);
        let _ = std::fs::remove_file(self.p.dir.join(CONTROL_SOCKET));
        if matches!(self.p.origin, Origin::Command { .. })
            && self.life.failure().is_some_and(|(r, _)| r != INTERRUPTED)
        {
            dir.print_console_tail();
        }
        drop(net);
        dir.forget_network();
        self.save(Instant::now());
        code
    }

    /// Waits until the next VM may start (the back-off of a VM lost soon
    /// after it started), taking stop requests and signals meanwhile;
    /// `Some(exit code)` when the pod ended instead.
    fn await_new_sandbox(&mut self, at: Instant, rx: &Receiver<Msg>) -> Option<i32> {
        let wait = at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            let msg = format!("back-off: a new VM in {} s", wait.as_secs());
            self.say(&msg);
        }
        loop {
            let now = Instant::now();
            if SIGNALS.load(Ordering::SeqCst) > 0 {
                self.life.stop(now);
            }
            if self.life.due(now).contains(&Action::Shutdown) {
                self.save(now);
                self.report_phase();
                return Some(self.exit_code(SIGNALS.load(Ordering::SeqCst) > 0));
            }
            if now >= at {
                return None;
            }
            if let Ok(Msg::Control(request, stream)) = rx.recv_timeout(TICK.min(at - now)) {
                self.on_control(request, stream, None, Instant::now());
            }
        }
    }

    /// Forgets what the lost sandbox held, before the next one starts: its
    /// requests and execs, the files sent to it, the containers' open
    /// logs. Its console and VMM logs are kept as `*.log.1`.
    fn sandbox_gone(&mut self, dir: &PodDir) {
        self.say("the pod's VM was lost; starting a new one");
        dir.print_console_tail();
        for log in [dir.console_log(), dir.vmm_log()] {
            let _ = std::fs::rename(&log, log.with_extension("log.1"));
        }
        for (_, mut client) in self.execs.drain() {
            let reply = ControlReply::Error("the pod's VM was lost".into());
            let _ = control::write_line(&mut client.stream, &reply);
        }
        self.pending.clear();
        self.volumes.clear();
        self.flush_partial();
        self.logs.clear();
        self.sandbox += 1;
        self.save(Instant::now());
    }

    fn attach(&mut self, args: &RunOptions, dir: &PodDir) -> Result<Option<Attachment>, RunError> {
        let net = attach_network(args, &self.p.state, &self.p.manifest.name, &self.p.ports)?;
        if let Some(net) = &net {
            dir.record_network(net, &args.bridge);
            let lease = net.lease();
            self.record.network = Some(NetworkRecord {
                bridge: args.bridge.clone(),
                pod_cidr: args.pod_cidr.to_string(),
                pod_cidr6: args.pod_cidr6.map(|c| c.to_string()),
                gateway: lease.gateway.to_string(),
                gateway6: lease
                    .ipv6
                    .and_then(|v6| v6.gateway)
                    .map(|gw| gw.to_string()),
                tap: net.tap_name().to_string(),
                host_ports: !self.p.ports.is_empty(),
            });
            self.record.status.pod_ip = Some(lease.ip.to_string());
            let ipv6 = lease
                .ipv6
                .map(|v6| format!("{}/{}", v6.address, v6.prefix_len));
            self.record.status.pod_ips = std::iter::once(lease.ip.to_string())
                .chain(lease.ipv6.map(|v6| v6.address.to_string()))
                .map(|ip| PodIp { ip })
                .collect();
            eprintln!(
                "unipod: pod {}: IP {}/{}{} on bridge {} (tap {})",
                self.p.manifest.name,
                lease.ip,
                lease.prefix_len,
                ipv6.map(|v6| format!(" and {v6}")).unwrap_or_default(),
                args.bridge,
                net.tap_name()
            );
        }
        if args.network == NetworkMode::None {
            self.record.network = None;
        }
        Ok(net)
    }

    /// Marks the pod over and writes its final status; returns the exit
    /// code.
    fn finish(&mut self, now: Instant) -> i32 {
        self.life.due(now);
        self.save(now);
        self.report_phase();
        self.exit_code(false)
    }

    /// The exit code of a pod that is over. A manifest pod's says how it
    /// ended (130 for any Ctrl-C); a command pod's is its container's,
    /// 125 when the VM or agent failed and 130 after a second Ctrl-C.
    fn exit_code(&self, interrupted: bool) -> i32 {
        match &self.p.origin {
            Origin::Manifest(_) if interrupted => EXIT_INTERRUPTED,
            Origin::Manifest(_) => match self.life.over() {
                Some(PodPhase::Succeeded) => 0,
                _ => EXIT_POD_FAILED,
            },
            Origin::Command { main } => match self.life.failure() {
                Some((reason, _)) if reason == INTERRUPTED => EXIT_INTERRUPTED,
                Some(_) => EXIT_RUN_ERROR,
                None => self.life.exit_code(main).unwrap_or(EXIT_RUN_ERROR),
            },
        }
    }

    /// Runs the pod on one VM, until the pod is over or the VM is lost.
    fn supervise(
        &mut self,
        args: &RunOptions,
        vmm: &mut Child,
        mut link: AgentLink,
        network: Option<guest_agent::protocol::NetworkConfig>,
        rx: &Receiver<Msg>,
    ) -> VmEnd {
        let agent_rx = match link.subscribe() {
            Ok(rx) => rx,
            Err(e) => {
                let now = Instant::now();
                self.life
                    .sandbox_lost("AgentLost", e.to_string(), true, now);
                return match self.life.take_new_sandbox() {
                    Some(next_at) => VmEnd::Lost { next_at },
                    None => VmEnd::PodOver(self.finish(now)),
                };
            }
        };
        let tx = self.tx.clone();
        let sandbox = self.sandbox;
        let _ = std::thread::Builder::new()
            .name("agent-forward".into())
            .spawn(move || {
                for msg in agent_rx {
                    if tx.send(Msg::Agent(sandbox, msg)).is_err() {
                        return;
                    }
                }
            });
        let hostname = self
            .p
            .manifest
            .hostname
            .clone()
            .unwrap_or_else(|| self.p.manifest.name.clone());
        match pod_config(&hostname, args.heartbeat_ms, network) {
            Ok(mut config) => {
                config.pod_uid = self.record.uid.clone();
                let limits = &self.p.manifest.resources.limits;
                config.pod_limits = Limits {
                    memory_bytes: limits.memory_bytes,
                    cpu_millis: limits.cpu_millis,
                    pids: None,
                };
                self.send(&mut link, Request::Configure(config), Pending::Configure);
            }
            Err(e) => {
                let why = format!("cannot read host entropy: {e}");
                self.life.vm_failed("ConfigureFailed", why, Instant::now());
            }
        }
        let mut signals_seen = 0;
        let mut interrupted = false;
        loop {
            let now = Instant::now();
            match rx.recv_timeout(TICK) {
                Ok(msg) => self.handle(msg, &mut link, vmm, now),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            self.report_running();
            // Drain what else arrived, then act once.
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg, &mut link, vmm, Instant::now());
                self.report_running();
            }
            let now = Instant::now();
            if self.life.over().is_none() {
                if let Err(why) = vmm_process::alive(vmm) {
                    self.life.sandbox_lost("VMMExited", why, false, now);
                }
            }
            let signals = SIGNALS.load(Ordering::SeqCst);
            if signals > signals_seen {
                signals_seen = signals;
                interrupted = true;
                if signals == 1 {
                    eprintln!(
                        "unipod: pod {}: stopping (SIGTERM to every container, SIGKILL after {} s); interrupt again to kill the VM",
                        self.p.manifest.name,
                        self.p.manifest.termination_grace_period.as_secs()
                    );
                    self.life.stop(now);
                } else {
                    self.life
                        .vm_failed(INTERRUPTED, "interrupted twice".into(), now);
                }
            }
            if self.next_volume_sync.is_some_and(|t| t <= now) && self.life.over().is_none() {
                self.sync_volumes(&mut link, now);
            }
            let mut shutdown = false;
            for action in self.life.due(now) {
                match action {
                    Action::Run(name) => self.start_container(&mut link, &name, now),
                    Action::Signal(name, signal) => {
                        self.send(&mut link, Request::Signal { name, signal }, Pending::Other);
                    }
                    Action::Hook(name, kind, within) => {
                        self.run_hook(&mut link, &name, kind, within, now);
                    }
                    Action::Shutdown => shutdown = true,
                }
            }
            self.save(now);
            self.report_phase();
            if shutdown {
                let _ = self.send_raw(&mut link, Request::Shutdown);
                return VmEnd::PodOver(self.exit_code(interrupted));
            }
            if let Some(next_at) = self.life.take_new_sandbox() {
                return VmEnd::Lost { next_at };
            }
        }
    }

    fn listen(&self) -> Option<UnixListener> {
        listen(&self.p.dir, self.tx.clone())
    }

    fn send_raw(&mut self, link: &mut AgentLink, request: Request) -> Option<u64> {
        match link.send(request) {
            Ok(id) => Some(id),
            Err(e) => {
                log::debug!("cannot write to the agent: {e}");
                None
            }
        }
    }

    fn send(&mut self, link: &mut AgentLink, request: Request, what: Pending) {
        if let Some(id) = self.send_raw(link, request) {
            self.pending.insert(id, what);
        }
    }

    fn start_container(&mut self, link: &mut AgentLink, name: &str, now: Instant) {
        let spec = match self.container_spec(name) {
            Ok(Some(spec)) => spec,
            Ok(None) => return,
            Err(e) => {
                self.life.config_error(name, &e.to_string(), now);
                return;
            }
        };
        let restarts = self.life.restart_count(name);
        if restarts > 0 {
            self.say(&format!("restarting container {name} (restart {restarts})"));
        }
        let dir = self.p.dir.join("logs").join(name);
        let file = std::fs::create_dir_all(&dir)
            .and_then(|()| File::create(dir.join(format!("{restarts}.log"))));
        match file {
            Ok(f) => {
                self.logs.insert(name.to_string(), f);
            }
            Err(e) => log::warn!("container {name}: cannot create its log: {e}"),
        }
        self.send(link, Request::Run(spec), Pending::Run(name.to_string()));
    }

    /// Container `name`'s hook of `kind`, as the manifest has it.
    fn hook_of(&self, name: &str, kind: HookKind) -> Option<&Hook> {
        let manifest = &self.p.manifest;
        let mut containers = manifest.init_containers.iter().chain(&manifest.containers);
        containers.find(|c| c.name == name)?.hooks.get(kind)
    }

    /// Runs container `name`'s hook in the guest; a `tcpSocket` hook fails
    /// here, as the kubelet fails it.
    fn run_hook(
        &mut self,
        link: &mut AgentLink,
        name: &str,
        kind: HookKind,
        within: Option<Duration>,
        now: Instant,
    ) {
        let hook = self.hook_of(name, kind);
        let mut handler = match hook {
            Some(Hook::InGuest(handler)) => handler.clone(),
            _ => {
                let why = "Cannot run handler: invalid handler: tcpSocket is not run as a \
                           lifecycle hook (it is deprecated)";
                self.life.hook_done(name, kind, Err(why.into()), now);
                return;
            }
        };
        if let (ProbeHandler::HttpGet { host: h @ None, .. }, Some(ip)) =
            (&mut handler, &self.record.status.pod_ip)
        {
            *h = Some(ip.clone());
        }
        let spec = HookSpec {
            container: name.to_string(),
            hook: kind,
            handler,
            timeout_secs: within.map(|d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)),
        };
        let pending = Pending::Hook(name.to_string(), kind);
        self.send(link, Request::RunHook(spec), pending);
    }

    /// The kubelet's message for a failed hook of container `name`.
    fn hook_message(&self, name: &str, kind: HookKind, error: &str) -> String {
        let pod = &self.p.manifest.name;
        let hook = self.hook_of(name, kind);
        match hook {
            Some(Hook::InGuest(ProbeHandler::Exec { command })) => format!(
                "Exec lifecycle hook ([{}]) for Container {name:?} in Pod {pod:?} failed - error: {error}",
                command.join(" ")
            ),
            Some(Hook::InGuest(ProbeHandler::HttpGet { path, .. })) => format!(
                "HTTP lifecycle hook ({path}) for Container {name:?} in Pod {pod:?} failed - error: {error}"
            ),
            _ => error.to_string(),
        }
    }

    /// What only the running pod knows, for its downward API.
    fn facts(&self) -> PodFacts {
        PodFacts {
            uid: self.record.uid.clone(),
            pod_ips: self
                .record
                .status
                .pod_ips
                .iter()
                .map(|p| p.ip.clone())
                .collect(),
            host_ips: self
                .record
                .network
                .iter()
                .flat_map(|n| std::iter::once(n.gateway.clone()).chain(n.gateway6.clone()))
                .collect(),
            node_name: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            vm: Some(VmSize {
                vcpus: self.p.inputs.vcpus,
                mem_mib: self.p.inputs.mem_mib,
            }),
        }
    }

    /// The container's spec with its configuration resolved now, as the
    /// kubelet resolves it at each start; `None` for an unknown name.
    fn container_spec(&self, name: &str) -> Result<Option<RunSpec>, ConfigError> {
        let Some(base) = self
            .p
            .init
            .iter()
            .chain(&self.p.app)
            .find(|(i, _)| i.name == name)
            .map(|(_, s)| s)
        else {
            return Ok(None);
        };
        let manifest = &self.p.manifest;
        let Some(container) = manifest
            .init_containers
            .iter()
            .chain(&manifest.containers)
            .find(|c| c.name == name)
        else {
            return Ok(Some(base.clone()));
        };
        for m in &container.volume_mounts {
            if let Some(why) = self.volume_errors.get(&m.name) {
                return Err(ConfigError(why.clone()));
            }
        }
        let Some(build) = self.p.builds.get(name) else {
            return Ok(Some(base.clone()));
        };
        let env =
            config_sources::container_env(manifest, container, &self.facts(), &self.p.catalog)?;
        let mut spec = spec::run_spec(manifest, container, &build.image, build.disk, &env)
            .map_err(|e| ConfigError(e.to_string()))?;
        spec.rootfs.clone_from(&base.rootfs);
        if let Some(ip) = &self.record.status.pod_ip {
            spec.probes.default_host(ip);
        }
        Ok(Some(spec))
    }

    /// Sends each files volume whose content changed (or was never sent);
    /// records why one cannot be filled. Runs once the agent is configured,
    /// then every [`VOLUME_SYNC`], so `unipod apply` reaches mounted files.
    fn sync_volumes(&mut self, link: &mut AgentLink, now: Instant) {
        let manifest = &self.p.manifest;
        let facts = self.facts();
        let mut sends = Vec::new();
        for volume in &manifest.volumes {
            let VolumeSource::Files(sources) = &volume.source else {
                continue;
            };
            let name = volume.name.clone();
            match config_sources::volume_files(manifest, &name, sources, &facts, &self.p.catalog) {
                Ok(files) => {
                    if self.volume_errors.remove(&name).is_some() {
                        log::info!("volume {name}: its sources are back");
                    }
                    if self.volumes.get(&name) != Some(&files) {
                        sends.push(VolumeFiles {
                            name: name.clone(),
                            files: files.clone(),
                        });
                        self.volumes.insert(name, files);
                    }
                }
                Err(e) => {
                    let why = format!("MountVolume.SetUp failed for volume {name:?} : {e}");
                    if self.volume_errors.get(&name) != Some(&why) {
                        self.life.event(now, "Warning", "FailedMount", why.clone());
                    }
                    self.volume_errors.insert(name, why);
                }
            }
        }
        for files in sends {
            let name = files.name.clone();
            self.send(link, Request::WriteVolume(files), Pending::Volume(name));
        }
        let any = manifest.volumes.iter().any(|v| v.source.is_files());
        self.next_volume_sync = any.then(|| now + VOLUME_SYNC);
    }

    fn handle(&mut self, msg: Msg, link: &mut AgentLink, vmm: &mut Child, now: Instant) {
        match msg {
            // What the agent of a lost VM said last.
            Msg::Agent(sandbox, _) if sandbox != self.sandbox => {}
            Msg::Agent(_, Ok(msg)) => {
                self.life.heard_from_agent(now);
                match msg {
                    AgentMessage::Reply { id, result } => self.on_reply(id, result, link, now),
                    AgentMessage::Event(e) => self.on_event(e, now),
                }
            }
            Msg::Agent(_, Err(e)) => {
                if self.life.over().is_none() {
                    vmm_process::wait_for_exit(vmm, Duration::from_secs(2));
                    let (reason, why, killing) = match vmm_process::alive(vmm) {
                        Err(why) => ("VMMExited", why, false),
                        Ok(()) => ("AgentLost", format!("agent link lost: {e}"), true),
                    };
                    self.life.sandbox_lost(reason, why, killing, now);
                }
            }
            Msg::Control(request, stream) => self.on_control(request, stream, Some(link), now),
            Msg::Stdin(id, data) => {
                if self.execs.contains_key(&id) {
                    self.send(link, Request::Stdin { name: id, data }, Pending::Other);
                }
            }
        }
    }

    fn on_reply(
        &mut self,
        id: u64,
        result: Result<Reply, String>,
        link: &mut AgentLink,
        now: Instant,
    ) {
        match (self.pending.remove(&id), result) {
            (Some(Pending::Configure), Ok(_)) => {
                self.mark(StartupTimeline::CONFIGURED);
                // Before any container: the agent serves requests in order.
                self.sync_volumes(link, now);
                self.life.agent_ready(now);
            }
            (Some(Pending::Volume(name)), Err(e)) => {
                let why = format!("MountVolume.SetUp failed for volume {name:?} : {e}");
                self.volumes.remove(&name);
                self.volume_errors.insert(name, why.clone());
                self.life.event(now, "Warning", "FailedMount", why);
            }
            (Some(Pending::Configure), Err(e)) => {
                let why = format!("the agent could not configure the pod: {e}");
                self.life.vm_failed("ConfigureFailed", why, now);
            }
            (Some(Pending::Run(name)), Err(e)) => {
                self.say(&format!("container {name} could not start: {e}"));
                self.logs.remove(&name);
                self.life.start_failed(&name, &e, now);
                if let Origin::Command { main } = &self.p.origin {
                    // A pod without its sidecar is not the pod asked for.
                    if *main != name {
                        let why = format!("sidecar {name} could not start: {e}");
                        self.life.vm_failed("StartError", why, now);
                    }
                }
            }
            (Some(Pending::Run(_)), Ok(_)) => {
                #[cfg(feature = "test-hooks")]
                if let Some(fault) = self.debug_agent.take() {
                    self.send(link, Request::Debug(fault), Pending::Other);
                }
                let _ = link;
            }
            (Some(Pending::Exec(exec)), result) => {
                let reply = match result {
                    Ok(_) => ControlReply::Started { id: exec.clone() },
                    Err(e) => ControlReply::Error(e),
                };
                let failed = matches!(reply, ControlReply::Error(_));
                self.send_to_client(&exec, &reply);
                if failed {
                    self.execs.remove(&exec);
                }
            }
            (Some(Pending::Hook(name, kind)), Err(e)) => {
                let message = self.hook_message(&name, kind, &e);
                self.life.hook_done(&name, kind, Err(message), now);
            }
            (Some(Pending::Other), Err(e)) => log::debug!("agent request {id} failed: {e}"),
            _ => {}
        }
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::ContainerStarted { name, .. } => {
                self.mark(StartupTimeline::FIRST_CONTAINER);
                self.life.started(&name, now);
            }
            Event::Output {
                name,
                stream,
                data,
                time,
            } => {
                if self.execs.contains_key(&name) {
                    self.send_to_client(&name, &ControlReply::Output { stream, data });
                } else if self.life.has_container(&name) {
                    self.output(&name, stream, &data, time);
                }
            }
            Event::Oom { name } => {
                if self.life.has_container(&name) {
                    let msg = format!("Container {name} was OOM-killed (memory limit reached)");
                    self.life.event(now, "Warning", "OOMKilling", msg);
                }
            }
            Event::ContainerExited {
                name,
                exit_code,
                reason,
                signal,
            } => {
                if let Some(mut client) = self.execs.remove(&name) {
                    let _ = control::write_line(
                        &mut client.stream,
                        &ControlReply::Exit {
                            code: exit_code,
                            reason,
                        },
                    );
                } else if self.life.has_container(&name) {
                    self.flush_partial_of(&name);
                    self.logs.remove(&name);
                    let exited = format!("{name} exited ({reason}, exit code {exit_code})");
                    match &self.p.origin {
                        Origin::Manifest(_) => self.say(&format!("container {exited}")),
                        // The pod's own phase line says how the command ended.
                        Origin::Command { main } if *main == name => {}
                        Origin::Command { .. } => self.say(&format!("sidecar {exited}")),
                    }
                    self.life.exited(&name, exit_code, &reason, signal, now);
                }
            }
            Event::Probe {
                name,
                kind,
                success,
                message,
            } => self.life.probe(&name, kind, success, &message, now),
            Event::Hook {
                name,
                hook,
                success,
                message,
            } => {
                let result = if success {
                    Ok(())
                } else {
                    Err(self.hook_message(&name, hook, &message))
                };
                self.life.hook_done(&name, hook, result, now);
            }
            Event::Ready { .. } | Event::Heartbeat { .. } => {}
        }
    }

    fn on_control(
        &mut self,
        request: ControlRequest,
        mut stream: UnixStream,
        link: Option<&mut AgentLink>,
        now: Instant,
    ) {
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        match request {
            ControlRequest::Stop => {
                let _ = control::write_line(&mut stream, &ControlReply::Ok);
                self.say("stop requested");
                self.life.stop(now);
            }
            ControlRequest::StopWithGrace { seconds } => {
                let _ = control::write_line(&mut stream, &ControlReply::Ok);
                self.say(&format!("stop requested, grace period {seconds} s"));
                self.life.stop_with_grace(Duration::from_secs(seconds), now);
            }
            ControlRequest::Exec(ExecRequest {
                container,
                argv,
                stdin,
                tty,
            }) => {
                let refuse = if !self.life.has_container(&container) {
                    Some(format!(
                        "container {container:?} is not in pod {:?}",
                        self.p.manifest.name
                    ))
                } else if !self.life.is_running(&container) {
                    Some(format!("container {container:?} is not running"))
                } else if argv.is_empty() {
                    Some("no command given".into())
                } else {
                    None
                };
                let link = match (refuse, link) {
                    (None, Some(link)) => link,
                    (refused, _) => {
                        let why =
                            refused.unwrap_or_else(|| "the pod's VM is being replaced".into());
                        let _ = control::write_line(&mut stream, &ControlReply::Error(why));
                        return;
                    }
                };
                // '_' never appears in a container name (a DNS label), so
                // exec ids cannot clash with containers.
                let id = format!("exec_{}", self.next_exec);
                self.next_exec += 1;
                if stdin {
                    if let Ok(reader) = stream.try_clone() {
                        let tx = self.tx.clone();
                        let exec = id.clone();
                        let _ = std::thread::Builder::new()
                            .name("exec-stdin".into())
                            .spawn(move || forward_stdin(reader, &exec, &tx));
                    }
                }
                self.execs.insert(id.clone(), ExecClient { stream });
                let spec = ExecSpec {
                    id: id.clone(),
                    container,
                    argv,
                    env: Vec::new(),
                    stdin,
                    tty,
                };
                self.send(link, Request::Exec(spec), Pending::Exec(id));
            }
        }
    }

    fn send_to_client(&mut self, exec: &str, reply: &ControlReply) {
        let Some(client) = self.execs.get_mut(exec) else {
            return;
        };
        if control::write_line(&mut client.stream, reply).is_err() {
            log::debug!("exec {exec}: the client went away");
            self.execs.remove(exec);
        }
    }

    /// Appends a chunk of a container's output to its log, stamped with
    /// `time` (when the agent read it; now, from an agent that sent none),
    /// and in the foreground prints its complete lines.
    fn output(&mut self, name: &str, stream: Stream, data: &[u8], time: Option<u64>) {
        if let Some(log) = self.logs.get_mut(name) {
            let time = time.unwrap_or_else(container_log::now_nanos);
            let mut records = Vec::with_capacity(data.len() + 64);
            container_log::encode(&mut records, time, stream, data);
            // One write per chunk; a reader leaves a record it finds half
            // written for later.
            if let Err(e) = log.write_all(&records) {
                log::debug!("container {name}: cannot write its log: {e}");
            }
        }
        if !self.foreground {
            return;
        }
        if let Origin::Command { .. } = self.p.origin {
            print_raw(stream, data);
            return;
        }
        let buf = self
            .partial
            .entry((name.to_string(), stream == Stream::Stderr))
            .or_default();
        buf.extend_from_slice(data);
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = buf.drain(..=end).collect();
        print_prefixed(name, stream, &complete);
    }

    fn flush_partial_of(&mut self, name: &str) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(mut rest) = self
                .partial
                .remove(&(name.to_string(), stream == Stream::Stderr))
            {
                if !rest.is_empty() {
                    rest.push(b'\n');
                    print_prefixed(name, stream, &rest);
                }
            }
        }
    }

    fn flush_partial(&mut self) {
        let names: Vec<String> = self.partial.keys().map(|(n, _)| n.clone()).collect();
        for name in names {
            self.flush_partial_of(&name);
        }
    }

    fn say(&self, what: &str) {
        eprintln!("unipod: pod {}: {what}", self.p.manifest.name);
    }

    fn report_phase(&mut self) {
        let phase = self.life.phase();
        if self.last_phase == Some(phase) {
            return;
        }
        self.last_phase = Some(phase);
        let status = &self.record.status;
        let reason = match (&self.p.origin, phase) {
            (_, PodPhase::Pending | PodPhase::Running) => None,
            (Origin::Command { main }, _) => command_reason(status, main),
            (Origin::Manifest(_), PodPhase::Failed | PodPhase::Unknown) => {
                Some(failure_reason(status))
            }
            (Origin::Manifest(_), PodPhase::Succeeded) => None,
        };
        match reason {
            Some(reason) => self.say(&format!("{phase} ({reason})")),
            None => self.say(&phase.to_string()),
        }
    }

    /// Reports Running as soon as it is, before the output that follows.
    fn report_running(&mut self) {
        if self.life.phase() == PodPhase::Running {
            self.report_phase();
        }
    }

    /// Records a start-up step as done now.
    fn mark(&mut self, step: &str) {
        self.record.startup.mark(step, self.accepted.elapsed());
    }

    fn save(&mut self, now: Instant) {
        if !self.life.take_changed()
            && !self.unsaved
            && self.record.status.phase == self.life.phase()
        {
            return;
        }
        let pod_ip = self.record.status.pod_ip.take();
        let pod_ips = std::mem::take(&mut self.record.status.pod_ips);
        self.record.status = self.life.status(now);
        self.record.status.pod_ip = pod_ip;
        self.record.status.pod_ips = pod_ips;
        self.record.events = self.life.events().to_vec();
        let result = self.record.write(&self.p.dir);
        if let Err(e) = &result {
            // Once per failure, not once per retry.
            if !self.unsaved {
                log::warn!("{}", error_chain(e, ": "));
            }
        }
        self.unsaved = result.is_err();
    }
}

/// Serves `control.sock` in pod directory `dir`: each client's request goes
/// to `tx` as a [`Msg::Control`]. `None` when it cannot (exec and stop then
/// do not work).
pub(crate) fn listen(dir: &Path, tx: Sender<Msg>) -> Option<UnixListener> {
    let path = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "cannot listen on {}: {e}; exec and stop will not work",
                path.display()
            );
            return None;
        }
    };
    let accept = listener.try_clone().ok()?;
    let _ = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in accept.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || read_request(stream, &tx));
            }
        });
    Some(listener)
}

/// Reads a control client's first line and hands the connection over.
fn read_request(stream: UnixStream, tx: &Sender<Msg>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    // One byte at a time so nothing after the first line is consumed here.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut r = reader;
    while !line.ends_with(b"\n") && line.len() <= control::MAX_LINE {
        match std::io::Read::read(&mut r, &mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return,
        }
    }
    let mut stream = stream;
    match serde_json::from_slice::<ControlRequest>(&line) {
        Ok(request) => {
            let _ = stream.set_read_timeout(None);
            let _ = tx.send(Msg::Control(request, stream));
        }
        Err(e) => {
            let _ = control::write_line(
                &mut stream,
                &ControlReply::Error(format!("bad control request: {e}")),
            );
        }
    }
}

/// Forwards an exec client's stdin lines until it closes them.
fn forward_stdin(stream: UnixStream, exec: &str, tx: &Sender<Msg>) {
    let mut reader = BufReader::new(stream);
    loop {
        match control::read_line::<_, ClientLine>(&mut reader) {
            Ok(Some(ClientLine::Stdin(data))) => {
                let end = data.is_empty();
                if tx.send(Msg::Stdin(exec.to_string(), data)).is_err() || end {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = tx.send(Msg::Stdin(exec.to_string(), Vec::new()));
                return;
            }
        }
    }
}

/// A command pod's output, as the container wrote it.
fn print_raw(stream: Stream, data: &[u8]) {
    let result = match stream {
        Stream::Stdout => {
            let mut w = std::io::stdout().lock();
            w.write_all(data).and_then(|()| w.flush())
        }
        Stream::Stderr => {
            let mut w = std::io::stderr().lock();
            w.write_all(data).and_then(|()| w.flush())
        }
    };
    if let Err(e) = result {
        log::debug!("cannot forward container output: {e}");
    }
}

fn print_prefixed(name: &str, stream: Stream, data: &[u8]) {
    let mut out = Vec::with_capacity(data.len() + 16);
    for line in data.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(format!("[{name}] ").as_bytes());
        out.extend_from_slice(line);
    }
    print_raw(stream, &out);
}

/// The exit code for a `unipod run MANIFEST` that failed with `e`.
pub fn error_code(_e: &PodRunError) -> i32 {
    EXIT_RUN_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_are_recognised_by_their_extension() {
        for yes in ["pod.yaml", "a/b.yml", "x.json"] {
            assert!(is_manifest_path(Path::new(yes)), "{yes}");
        }
        for no in ["pod", "pod.yaml.txt", "/bin/sh"] {
            assert!(!is_manifest_path(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn a_command_pods_phase_line_gives_the_containers_code_or_the_vms_failure() {
        use crate::pod::status::{ContainerState, ContainerStatus};
        let ended = |name: &str, exit_code: i32, reason: &str| ContainerStatus {
            name: name.into(),
            image: String::new(),
            image_id: String::new(),
            ready: false,
            started: false,
            restart_count: 0,
            state: ContainerState::Terminated {
                exit_code,
                signal: None,
                reason: reason.into(),
                message: None,
                started_at: None,
                finished_at: String::new(),
            },
            last_state: None,
        };
        let mut status = PodStatus {
            container_statuses: vec![ended("side", 143, "Error"), ended("main", 3, "Error")],
            ..PodStatus::default()
        };
        assert_eq!(
            command_reason(&status, "main").as_deref(),
            Some("Error, exit code 3")
        );
        status.reason = Some("VMMExited".into());
        status.message = Some("VMM exited (signal: 9 (SIGKILL))".into());
        assert_eq!(
            command_reason(&status, "main").as_deref(),
            Some("VMM exited (signal: 9 (SIGKILL))")
        );
        assert_eq!(command_reason(&PodStatus::default(), "main"), None);
    }

    #[test]
    fn a_failure_reason_names_the_reason_once() {
        let failed = |reason: &str, message: &str| PodStatus {
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..PodStatus::default()
        };
        assert_eq!(
            failure_reason(&failed(
                "AgentUnresponsive",
                "AgentUnresponsive: silent for 60 s"
            )),
            "AgentUnresponsive: silent for 60 s"
        );
        assert_eq!(
            failure_reason(&failed("VMStartFailed", "no kernel")),
            "VMStartFailed: no kernel"
        );
    }
}
