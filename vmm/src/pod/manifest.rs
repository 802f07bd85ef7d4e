//! Kubernetes `v1` `Pod` manifests (and the ConfigMaps and Secrets beside
//! them): parsed, validated and typed.
//!
//! [`parse_documents`] turns the YAML text of a file (documents separated by
//! `---`) into its Pods, each a [`PodManifest`] plus the [`Warning`]s about
//! fields it ignored, and its ConfigMaps and Secrets; [`load_documents`]
//! does the same for a file, and [`parse`] for the text of one Pod.
//! [`PodManifest::vm_size`] sizes the microVM that runs the pod, and
//! [`PodManifest::host_vm_size`] fits that size to this host's cores.
//!
//! # Design
//! The text is parsed with `serde_norway`, the maintained fork of `serde_yaml`
//! 0.9 (which is archived): same API, YAML 1.2 scalars (`yes` stays a
//! string), duplicate keys rejected, alias expansion
//! bounded. It parses into an untyped `Value`, not into `#[derive(Deserialize)]`
//! structs, because serde's errors for nested sequences carry no path
//! (`unknown field "livenessProbe"`, but in which container?). Instead
//! `walk.rs` visits the tree with an explicit list of known fields per object,
//! so every problem names its full path
//! (`spec.containers[1].lifecycle: lifecycle hooks are not implemented yet`), and builds the
//! typed structs on the way.
//!
//! Every field unipod does not implement is an error, not silently dropped: a
//! pod that asked for a liveness probe or a hostPath must not run
//! without one. The exception is a short list of fields that change nothing
//! for a single pod on its own VM (server bookkeeping, scheduling hints); each
//! gives a [`Warning`] and the reason it is safe to ignore is next to its
//! name in `walk.rs`.
//!
//! Validation collects every problem, not just the first: someone fixing a
//! manifest by hand sees them all at once. One problem is returned as itself;
//! several as [`ManifestError::Multiple`], object by object: an object's
//! unknown fields first, then its fields in a fixed order, from the top of
//! the document down.
//!
//! Defaults are Kubernetes': `restartPolicy: Always`,
//! `terminationGracePeriodSeconds: 30`, port protocol `TCP`, a volume with no
//! source is an `emptyDir`.
//!
//! # Limitations
//! - `metadata.name` must be a DNS-1123 *label* (at most 63 characters, no
//!   dots), stricter than Kubernetes' subdomain, because it becomes the guest's
//!   hostname unless `spec.hostname` is given.
//! - Label and annotation keys and values are checked to be strings, not
//!   against Kubernetes' label syntax.
//! - `memory: 128m` is rejected although Kubernetes accepts it (as 0.128
//!   bytes): it is always a typo for `128Mi` or `128M`.
//! - A YAML tag (`!!str`, `!foo`) on any value is a type error.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use super::objects::{ConfigObject, Kind};
pub use super::security_context::{PodSecurityContext, SecurityContext};

mod names;
mod quantity;
#[cfg(test)]
mod tests;
mod walk;

pub(crate) use walk::is_relative_path;

/// The pod's `terminationGracePeriodSeconds` when the manifest has none, as in
/// Kubernetes.
pub const DEFAULT_TERMINATION_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Guest memory taken by the kernel, the agent and their page cache, added to
/// what the containers ask for: [`crate::config::MIN_MEM_MIB`] boots the
/// kernel and the agent, and the rest is headroom for the guest's page cache
/// and the agent's buffers.
pub const GUEST_OVERHEAD_MIB: u32 = 64;

/// VM memory when no container states a memory limit or request: the
/// overhead plus 192 MiB to share among the containers.
pub const NO_LIMIT_MEM_MIB: u32 = 256;

/// vCPUs when no container states a CPU limit or request.
pub const DEFAULT_VCPUS: u8 = 1;

/// Most vCPUs a pod gets, whatever its containers ask for: the guest
/// kernel's `CONFIG_NR_CPUS` (kernel-config/unipod.config), which starts
/// no more.
pub const MAX_VCPUS: u8 = 2;

const MIB: u64 = 1 << 20;

/// A validated Kubernetes Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodManifest {
    /// `metadata.name`, a DNS-1123 label.
    pub name: String,
    /// `metadata.namespace`: only shown through the downward API;
    /// [`DEFAULT_NAMESPACE`] when absent.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.hostname`, a DNS-1123 label; the pod name when `None`.
    pub hostname: Option<String>,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `spec.shareProcessNamespace`.
    pub share_process_namespace: bool,
    /// `spec.terminationGracePeriodSeconds`.
    pub termination_grace_period: Duration,
    /// `spec.initContainers`, run one after the other before the app
    /// containers.
    pub init_containers: Vec<ContainerSpec>,
    /// `spec.containers`: at least one.
    pub containers: Vec<ContainerSpec>,
    /// `spec.volumes`, with unique names.
    pub volumes: Vec<Volume>,
    /// `spec.securityContext`.
    pub security_context: PodSecurityContext,
    /// `spec.resources`: the whole pod's, which size its VM in place of the
    /// containers' sum when set.
    pub resources: Resources,
    /// `spec.imagePullSecrets`: Secrets of type
    /// `kubernetes.io/dockerconfigjson` whose credentials pulls use.
    pub image_pull_secrets: Vec<String>,
}

/// `imagePullPolicy`: when the kubelet pulls a container's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Ask the registry at every start (the image is reused when the
    /// registry's digest is the one present).
    Always,
    /// Pull only when the image is absent.
    IfNotPresent,
    /// Never pull: the image must be present.
    Never,
}

impl ImagePullPolicy {
    /// The kubelet's default: `Always` for a `:latest` image or one with
    /// neither tag nor digest, else `IfNotPresent`.
    pub fn default_for(image: &str) -> ImagePullPolicy {
        match crate::image::reference::parse(image) {
            Ok(parsed) if parsed.tag_or_latest() == Some("latest") => ImagePullPolicy::Always,
            _ => ImagePullPolicy::IfNotPresent,
        }
    }
}

impl fmt::Display for ImagePullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The namespace of a pod whose manifest names none, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart every container whenever it exits (the Kubernetes default).
    #[default]
    Always,
    /// Restart a container only when it exits non-zero.
    OnFailure,
    /// Never restart a container.
    Never,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One entry of `spec.containers` or `spec.initContainers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// A DNS-1123 label, unique among all the pod's containers.
    pub name: String,
    /// The image reference, non-empty.
    pub image: String,
    /// `imagePullPolicy`, defaulted as the kubelet does.
    pub image_pull_policy: ImagePullPolicy,
    /// `command`: replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// `args`: replaces the image's cmd when not empty.
    pub args: Vec<String>,
    /// `env`, in manifest order; a later duplicate name wins, as in
    /// Kubernetes.
    pub env: Vec<EnvVar>,
    /// `envFrom`, in manifest order; `env` wins over it.
    pub env_from: Vec<EnvFrom>,
    /// `workingDir`, an absolute path.
    pub working_dir: Option<PathBuf>,
    /// `ports`.
    pub ports: Vec<ContainerPort>,
    /// `resources`.
    pub resources: Resources,
    /// `volumeMounts`, each naming one of the pod's volumes.
    pub volume_mounts: Vec<VolumeMount>,
    /// `securityContext`.
    pub security_context: SecurityContext,
    /// `startupProbe`, `livenessProbe`, `readinessProbe`.
    pub probes: ContainerProbes,
    /// `lifecycle`: its `postStart` and `preStop` hooks.
    pub hooks: Hooks,
    /// An init container with `restartPolicy: Always`: a native sidecar,
    /// which keeps running beside the app containers.
    pub sidecar: bool,
}

/// A container's lifecycle hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// `lifecycle.postStart`.
    pub post_start: Option<Hook>,
    /// `lifecycle.preStop`.
    pub pre_stop: Option<Hook>,
}

impl Hooks {
    /// The hook of `kind`.
    pub fn get(&self, kind: guest_agent::protocol::HookKind) -> Option<&Hook> {
        match kind {
            guest_agent::protocol::HookKind::PostStart => self.post_start.as_ref(),
            guest_agent::protocol::HookKind::PreStop => self.pre_stop.as_ref(),
        }
    }
}

/// One lifecycle hook's handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `exec` or `httpGet`, run by the guest agent.
    InGuest(guest_agent::protocol::ProbeHandler),
    /// `sleep`: timed by the host.
    Sleep(Duration),
    /// `tcpSocket`: accepted for compatibility, and failed when run, as
    /// the kubelet does (it runs no such hook).
    TcpSocket,
}

/// A container's health probes: what the agent runs (with the kubelet's
/// defaults filled in, named ports resolved) and the host's part of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerProbes {
    /// The probes, as the agent gets them in the container's `RunSpec`.
    pub probes: guest_agent::protocol::Probes,
    /// `livenessProbe.terminationGracePeriodSeconds`: the grace of a kill
    /// after a liveness failure, in place of the pod's.
    pub liveness_grace: Option<Duration>,
    /// `startupProbe.terminationGracePeriodSeconds`, likewise.
    pub startup_grace: Option<Duration>,
}

/// One entry of a container's `env`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    /// `name`.
    pub name: String,
    /// `value` or `valueFrom`.
    pub source: EnvSource,
}

impl EnvVar {
    /// A variable with a literal value.
    pub fn value(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            source: EnvSource::Value(value.to_owned()),
        }
    }
}

/// Where an environment variable's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvSource {
    /// `value`, in which `$(VAR)` names earlier variables.
    Value(String),
    /// `valueFrom.fieldRef`.
    Field(FieldRef),
    /// `valueFrom.resourceFieldRef`.
    Resource(ResourceFieldRef),
    /// `valueFrom.configMapKeyRef` or `valueFrom.secretKeyRef`.
    Key(KeyRef),
}

/// A key of a ConfigMap or Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    /// ConfigMap or Secret.
    pub kind: Kind,
    /// The object's name.
    pub name: String,
    /// The key.
    pub key: String,
    /// `optional`: a missing object or key leaves the variable unset.
    pub optional: bool,
}

/// One entry of a container's `envFrom`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvFrom {
    /// `configMapRef` or `secretRef`.
    pub kind: Kind,
    /// The object's name.
    pub name: String,
    /// `prefix`, put before every key.
    pub prefix: String,
    /// `optional`.
    pub optional: bool,
}

/// A pod field the downward API exposes (`fieldRef.fieldPath`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldRef {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace`.
    Namespace,
    /// `metadata.uid`.
    Uid,
    /// `metadata.labels`: every label, one `key="value"` per line (volumes
    /// only).
    Labels,
    /// `metadata.annotations`, as `Labels` (volumes only).
    Annotations,
    /// `metadata.labels['key']`.
    Label(String),
    /// `metadata.annotations['key']`.
    Annotation(String),
    /// `spec.nodeName`: this host's name (env only).
    NodeName,
    /// `spec.serviceAccountName` (env only).
    ServiceAccountName,
    /// `status.hostIP` (env only).
    HostIp,
    /// `status.hostIPs` (env only).
    HostIps,
    /// `status.podIP` (env only).
    PodIp,
    /// `status.podIPs` (env only).
    PodIps,
}

impl fmt::Display for FieldRef {
    /// The `fieldPath` as the manifest writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldRef::Name => f.write_str("metadata.name"),
            FieldRef::Namespace => f.write_str("metadata.namespace"),
            FieldRef::Uid => f.write_str("metadata.uid"),
            FieldRef::Labels => f.write_str("metadata.labels"),
            FieldRef::Annotations => f.write_str("metadata.annotations"),
            FieldRef::Label(k) => write!(f, "metadata.labels['{k}']"),
            FieldRef::Annotation(k) => write!(f, "metadata.annotations['{k}']"),
            FieldRef::NodeName => f.write_str("spec.nodeName"),
            FieldRef::ServiceAccountName => f.write_str("spec.serviceAccountName"),
            FieldRef::HostIp => f.write_str("status.hostIP"),
            FieldRef::HostIps => f.write_str("status.hostIPs"),
            FieldRef::PodIp => f.write_str("status.podIP"),
            FieldRef::PodIps => f.write_str("status.podIPs"),
        }
    }
}

/// A container resource the downward API exposes (`resourceFieldRef`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceFieldRef {
    /// `containerName`: the container whose resources to read; the
    /// variable's own container when `None` (env only).
    pub container: Option<String>,
    /// `resource`.
    pub resource: ResourceName,
    /// `divisor`: thousandths of a core for CPU, bytes for memory; at least 1.
    pub divisor: u64,
}

/// `limits.cpu`, `requests.memory`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceName {
    /// `limits` (true) or `requests`.
    pub limit: bool,
    /// `cpu` (true) or `memory`.
    pub cpu: bool,
}

/// One entry of a container's `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// `containerPort`, 1 to 65535.
    pub container_port: u16,
    /// `hostPort`, 1 to 65535.
    pub host_port: Option<u16>,
    /// `protocol`; TCP when absent.
    pub protocol: Protocol,
    /// `name`, an IANA service name unique within the container.
    pub name: Option<String>,
}

/// A port's `protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A container's `resources`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// `resources.limits`.
    pub limits: ResourceList,
    /// `resources.requests`; each is at most the matching limit.
    pub requests: ResourceList,
}

/// The `cpu` and `memory` of `resources.limits` or `resources.requests`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceList {
    /// CPU in thousandths of a core, rounded up (`500m` and `0.5` are 500).
    pub cpu_millis: Option<u64>,
    /// Memory in bytes, rounded up (`64Mi` is 67108864).
    pub memory_bytes: Option<u64>,
}

/// One entry of a container's `volumeMounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMount {
    /// The name of a volume in [`PodManifest::volumes`].
    pub name: String,
    /// `mountPath`, absolute and unique within the container.
    pub mount_path: PathBuf,
    /// `readOnly`; always true for ConfigMap, Secret, downward API and
    /// projected volumes, as the kubelet mounts them.
    pub read_only: bool,
    /// `subPath`: a relative path in the volume to mount instead of its root.
    pub sub_path: Option<String>,
    /// `subPathExpr`: as `subPath`, with `$(VAR)` taken from the
    /// container's environment.
    pub sub_path_expr: Option<String>,
}

/// One entry of `spec.volumes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// A DNS-1123 label, unique among the pod's volumes.
    pub name: String,
    /// Where the volume's data comes from.
    pub source: VolumeSource,
}

/// The kinds of volume unipod supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// `emptyDir`: a directory that starts empty and lives as long as the pod.
    EmptyDir(EmptyDir),
    /// `configMap`, `secret`, `downwardAPI` or `projected`: files the host
    /// writes, read-only in the containers, updated while the pod runs.
    Files(Vec<FileSource>),
}

impl VolumeSource {
    /// Whether the host writes the volume's files.
    pub fn is_files(&self) -> bool {
        matches!(self, VolumeSource::Files(_))
    }
}

/// One source of a files volume: the volume itself for `configMap`,
/// `secret` and `downwardAPI`, each of `projected.sources`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSource {
    /// The keys of a ConfigMap or Secret.
    Keys(KeysSource),
    /// Downward API fields, one file each.
    Downward(Vec<DownwardFile>),
}

/// The files of a `configMap` or `secret` volume (or projection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysSource {
    /// ConfigMap or Secret.
    pub kind: Kind,
    /// The object's name.
    pub name: String,
    /// `items`: only these keys, at these paths; every key when empty.
    pub items: Vec<KeyToPath>,
    /// `defaultMode` (of the volume or the projection), 0644 when absent.
    pub default_mode: u32,
    /// `optional`: a missing object gives no files.
    pub optional: bool,
}

/// One entry of `items`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyToPath {
    /// `key`.
    pub key: String,
    /// `path`, relative.
    pub path: String,
    /// `mode`; the default mode when `None`.
    pub mode: Option<u32>,
}

/// One file of a `downwardAPI` volume (or projection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownwardFile {
    /// `path`, relative.
    pub path: String,
    /// `fieldRef` (metadata fields only) or `resourceFieldRef`.
    pub source: DownwardSource,
    /// `mode`, or the default mode.
    pub mode: u32,
}

/// What a downward API file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownwardSource {
    /// A pod field.
    Field(FieldRef),
    /// A container's resource.
    Resource(ResourceFieldRef),
}

/// The mode of a files volume's files when the manifest gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// An `emptyDir` volume's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmptyDir {
    /// `medium`.
    pub medium: StorageMedium,
    /// `sizeLimit` in bytes.
    pub size_limit_bytes: Option<u64>,
}

/// An `emptyDir`'s `medium`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageMedium {
    /// `""`: the default storage of the guest.
    #[default]
    Default,
    /// `Memory`: a tmpfs.
    Memory,
}

/// The microVM a pod needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSize {
    /// Virtual CPUs, 1 to [`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest memory in MiB, [`GUEST_OVERHEAD_MIB`] included.
    pub mem_mib: u32,
}

impl VmSize {
    /// This size on a host whose VMs can use `host_cores` cores: at most
    /// that many vCPUs, and at least 1. More vCPUs than cores would only
    /// take turns on them, as a pod never gets more CPU than its node has.
    pub fn capped_to_host(self, host_cores: usize) -> VmSize {
        let cap = u8::try_from(host_cores).unwrap_or(u8::MAX).max(1);
        VmSize {
            vcpus: self.vcpus.min(cap),
            ..self
        }
    }
}

/// The cores this process can use: [`std::thread::available_parallelism`],
/// which counts its CPU affinity mask and cgroup CPU quota. When that cannot
/// be told, [`MAX_VCPUS`], which caps nothing.
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(usize::from(MAX_VCPUS), usize::from)
}

impl PodManifest {
    /// Sizes the pod's VM from its containers' resources.
    ///
    /// As in Kubernetes' pod resource accounting, the pod needs, for each
    /// resource, the larger of the sum over its app containers (they run
    /// together) and the largest of its init containers (they run alone,
    /// before them). A container counts with its limit, or its request when
    /// it has no limit; a container with neither counts as 0, unless no
    /// container states that resource at all, in which case the default
    /// applies.
    ///
    /// - Memory: that amount rounded up to MiB plus [`GUEST_OVERHEAD_MIB`], or
    ///   [`NO_LIMIT_MEM_MIB`] in all.
    /// - vCPUs: the CPU rounded up to whole cores (1500m is 2), at least 1 and
    ///   at most [`MAX_VCPUS`], or [`DEFAULT_VCPUS`]; the host's cores cap it
    ///   further in [`PodManifest::host_vm_size`].
    pub fn vm_size(&self) -> VmSize {
        let cpu = self.pod_amount(|l| l.cpu_millis);
        let memory = self.pod_amount(|l| l.memory_bytes);
        let vcpus = match cpu {
            None => DEFAULT_VCPUS,
            Some(millis) => {
                let cores = millis.div_ceil(1000).clamp(1, u64::from(MAX_VCPUS));
                u8::try_from(cores).expect("clamped to MAX_VCPUS, a u8")
            }
        };
        let mem_mib = match memory {
            None => NO_LIMIT_MEM_MIB,
            Some(bytes) => u32::try_from(bytes.div_ceil(MIB))
                .unwrap_or(u32::MAX)
                .saturating_add(GUEST_OVERHEAD_MIB),
        };
        VmSize { vcpus, mem_mib }
    }

    /// [`PodManifest::vm_size`] on this host: no more vCPUs than its cores
    /// ([`host_cores`], [`VmSize::capped_to_host`]). This is the VM a pod
    /// runs in.
    pub fn host_vm_size(&self) -> VmSize {
        self.vm_size().capped_to_host(host_cores())
    }

    /// The pod's need for one resource, picked from a [`ResourceList`]:
    /// `None` when no container states it.
    fn pod_amount(&self, pick: impl Fn(&ResourceList) -> Option<u64>) -> Option<u64> {
        let pod_level = pick(&self.resources.limits).or(pick(&self.resources.requests));
        if pod_level.is_some() {
            return pod_level;
        }
        let of = |c: &ContainerSpec| pick(&c.resources.limits).or(pick(&c.resources.requests));
        if self
            .containers
            .iter()
            .chain(&self.init_containers)
            .all(|c| of(c).is_none())
        {
            return None;
        }
        // As the kubelet sums them: sidecars run beside the app containers
        // and beside every init container after them.
        let mut sidecars = 0u64;
        let mut largest_init = 0u64;
        for c in &self.init_containers {
            let n = of(c).unwrap_or(0);
            if c.sidecar {
                sidecars = sidecars.saturating_add(n);
            } else {
                largest_init = largest_init.max(sidecars.saturating_add(n));
            }
        }
        let app = self.containers.iter().filter_map(of);
        let sum = app.fold(sidecars, u64::saturating_add);
        Some(sum.max(largest_init))
    }
}

/// A field the manifest has but unipod ignores, or a legal but suspicious
/// construct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The field's full path, e.g. `metadata.namespace`.
    pub path: String,
    /// What happens and why.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a manifest was refused. Every variant about a field carries its full
/// path, e.g. `spec.containers[1].name`.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{}: cannot read the pod manifest", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file was read but its manifest is invalid.
    #[error("{}: invalid pod manifest", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ManifestError>,
    },
    /// The text is not YAML (or has duplicate keys, several documents, a bad
    /// merge key); the source gives the line and column.
    #[error("not a valid YAML document")]
    Yaml(#[source] serde_norway::Error),
    /// A required field is absent (or null).
    #[error("{path}: required field is missing")]
    Missing {
        /// The field's path.
        path: String,
    },
    /// A value of the wrong YAML type.
    #[error(
        "{path}: expected {expected}, found {found}{}",
        quote_hint(expected, found)
    )]
    WrongType {
        /// The value's path.
        path: String,
        /// What the field holds, e.g. "a list of strings".
        expected: &'static str,
        /// What it had, e.g. "a string".
        found: &'static str,
    },
    /// A field (or a value, such as a volume source) unipod does not
    /// implement, or does not know.
    #[error("{path}: {}{}", reason.unwrap_or("unknown field, or not supported yet"), did_you_mean(suggestion.as_deref()))]
    Unsupported {
        /// The field's path.
        path: String,
        /// Why it is refused, when unipod knows the field.
        reason: Option<&'static str>,
        /// A supported field with a similar name, when there is one.
        suggestion: Option<&'static str>,
    },
    /// A value of the right type that is not allowed.
    #[error("{path}: {value} is not valid; expected {expected}")]
    Invalid {
        /// The value's path.
        path: String,
        /// The value as written (strings quoted).
        value: String,
        /// What would be valid, with an example.
        expected: String,
    },
    /// A name (or mount path) used twice where it must be unique.
    #[error("{path}: duplicate {what} {name:?} (also {first})")]
    Duplicate {
        /// The path of the second use.
        path: String,
        /// What is duplicated, e.g. "container name".
        what: &'static str,
        /// The duplicated value.
        name: String,
        /// The path of the first use.
        first: String,
    },
    /// A container's command line and environment are too large to send.
    #[error("{path}: command, args and env take {bytes} bytes; at most {max} fit in the message that starts the container")]
    TooLarge {
        /// The container's path.
        path: String,
        /// Their size: each string's bytes plus one.
        bytes: usize,
        /// The limit, [`MAX_EXEC_BYTES`].
        max: usize,
    },
    /// The containers' memory needs a bigger VM than the VMM makes.
    #[error(
        "spec.containers: the memory limits (or requests) need a VM of {mem_mib} MiB with the \
         guest's own {GUEST_OVERHEAD_MIB} MiB; a pod VM has at most {} MiB: lower \
         resources.limits.memory",
        crate::config::MAX_MEM_MIB
    )]
    VmTooLarge {
        /// The VM size the manifest asks for (saturated at `u32::MAX`).
        mem_mib: u32,
    },
    /// A volume mount names a volume that `spec.volumes` does not declare.
    #[error("{path}: volume {name:?} is not declared in spec.volumes")]
    UndeclaredVolume {
        /// The mount's `name` field.
        path: String,
        /// The volume name.
        name: String,
    },
    /// A problem in one document of a file of several.
    #[error("document {index} ({kind}): {source}")]
    InDocument {
        /// 1 for the first document.
        index: usize,
        /// Its `kind`, or "no kind".
        kind: String,
        /// The problem.
        #[source]
        source: Box<ManifestError>,
    },
    /// A file of several documents has no Pod, or more than one.
    #[error("{0}")]
    Pods(String),
    /// Several of the problems above, object by object from the top down.
    #[error("{} problems:{}", .0.len(), list(.0))]
    Multiple(Vec<ManifestError>),
}

impl ManifestError {
    /// Every single problem: the members of [`ManifestError::Multiple`] (also
    /// inside [`ManifestError::File`]), or this error alone.
    pub fn problems(&self) -> Vec<&ManifestError> {
        match self {
            ManifestError::Multiple(all) => all.iter().collect(),
            ManifestError::File { source, .. } => source.problems(),
            other => vec![other],
        }
    }
}

fn quote_hint(expected: &str, found: &str) -> &'static str {
    if expected == "a string" && (found == "a number" || found == "a boolean") {
        " (quote it to make it a string)"
    } else {
        ""
    }
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |s| format!(" (did you mean {s:?}?)"))
}

fn list(errors: &[ManifestError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

/// The most bytes a container's `command`, `args` and `env` may take
/// together (each string plus one). The request that starts a container
/// must fit in one protocol frame (1 MiB); Linux also refuses an exec whose
/// arguments and environment pass a quarter of the stack limit (2 MiB by
/// default). Checked here, so a huge list fails before a VM boots.
pub const MAX_EXEC_BYTES: usize = 256 * 1024;

/// Parses and validates the YAML text of a Kubernetes `v1` `Pod`.
///
/// Returns the pod and the warnings about fields it ignored, or every problem
/// found (see [`ManifestError::problems`]).
pub fn parse(text: &str) -> Result<(PodManifest, Vec<Warning>), ManifestError> {
    let mut value: serde_norway::Value =
        serde_norway::from_str(text).map_err(ManifestError::Yaml)?;
    value.apply_merge().map_err(ManifestError::Yaml)?;
    walk::pod(&value)
}

/// What a manifest file holds: the documents of `kubectl apply -f`.
#[derive(Debug, Default)]
pub struct Documents {
    /// The Pods, each with its warnings.
    pub pods: Vec<(PodManifest, Vec<Warning>)>,
    /// The ConfigMaps and Secrets.
    pub objects: Vec<ConfigObject>,
    /// Warnings about the objects.
    pub warnings: Vec<Warning>,
}

/// Parses every document of a YAML text (separated by `---`): Pods,
/// ConfigMaps and Secrets. Empty documents are skipped. Each problem of a
/// file of several documents names its document.
pub fn parse_documents(text: &str) -> Result<Documents, ManifestError> {
    let mut values = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let mut value = serde_norway::Value::deserialize(document).map_err(ManifestError::Yaml)?;
        value.apply_merge().map_err(ManifestError::Yaml)?;
        if !value.is_null() {
            values.push(value);
        }
    }
    let several = values.len() > 1;
    let mut out = Documents::default();
    let mut errors = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let result = match kind {
            "ConfigMap" | "Secret" => walk::object(value).map(|(o, w)| {
                out.objects.push(o);
                out.warnings.extend(w);
            }),
            _ => walk::pod(value).map(|p| out.pods.push(p)),
        };
        match result {
            Ok(()) => {}
            Err(e) if several => errors.push(ManifestError::InDocument {
                index: i + 1,
                kind: if kind.is_empty() {
                    "no kind".into()
                } else {
                    kind.into()
                },
                source: Box::new(e),
            }),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(out),
        1 => Err(errors.remove(0)),
        _ => Err(ManifestError::Multiple(errors)),
    }
}

/// Reads the file at `path` and [`parse_documents`]s it; errors name the
/// file.
pub fn load_documents(path: &Path) -> Result<Documents, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_documents(&text).map_err(|e| ManifestError::File {
        path: path.to_owned(),
        source: Box::new(e),
    })
}
