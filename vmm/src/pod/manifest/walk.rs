//! The validator: walks a Pod's YAML tree and builds the typed manifest.
//!
//! # Design
//! Each object is checked against its list of known fields (`*_FIELDS`) and
//! of fields ignored with a warning (`*_IGNORED`); any other key is
//! [`ManifestError::Unsupported`] at its full path. Paths are built as the
//! walk descends: `spec.containers[0].env[2].name`, and map entries as
//! `metadata.labels["app"]`.
//!
//! A problem is recorded and the walk goes on, so one run reports them all.
//! A builder returns `None` only after recording why, and the typed result
//! is used only when nothing was recorded. A `null` value counts as absent,
//! as in Kubernetes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::{Mapping, Number, Value};

use super::names::{is_dns_label, is_port_name, suggest};
use super::quantity::{self, QuantityError};
use super::{
    ContainerPort, ContainerSpec, EmptyDir, EnvSource, EnvVar, ImagePullPolicy, ManifestError,
    PodManifest, Protocol, ResourceList, Resources, RestartPolicy, StorageMedium, Volume,
    VolumeMount, VolumeSource, Warning, DEFAULT_TERMINATION_GRACE_PERIOD,
};

/// Fields ignored with a warning, each with the reason it is safe to ignore
/// for a single pod in its own VM. Keep these lists short: a field whose
/// absence could change what the pod does must be an error instead.
type Ignored = &'static [(&'static str, &'static str)];

/// API-server bookkeeping that `kubectl get -o yaml` prints; it describes a
/// stored object, not the pod to run.
const BOOKKEEPING: &str = "set by the Kubernetes API server on stored objects; unipod has none";

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const TOP_IGNORED: Ignored = &[(
    "status",
    "written by the cluster about a running pod; it does not describe the pod to run",
)];

const METADATA_FIELDS: &[&str] = &["name", "namespace", "labels", "annotations"];
const METADATA_IGNORED: Ignored = &[
    ("uid", "unipod gives every pod it runs a fresh UID"),
    ("creationTimestamp", BOOKKEEPING),
    ("resourceVersion", BOOKKEEPING),
    ("generation", BOOKKEEPING),
    ("managedFields", BOOKKEEPING),
    (
        "ownerReferences",
        "they link the pod to its controller for garbage collection; unipod has neither",
    ),
];

const SPEC_FIELDS: &[&str] = &[
    "containers",
    "initContainers",
    "restartPolicy",
    "volumes",
    "hostname",
    "shareProcessNamespace",
    "terminationGracePeriodSeconds",
    "securityContext",
    // Refused when true: see `security::HOST_NAMESPACES`.
    "hostPID",
    "hostIPC",
    "hostNetwork",
    "resources",
    "imagePullSecrets",
];
const SPEC_IGNORED: Ignored = &[
    (
        "dnsPolicy",
        "there is no cluster DNS to choose; unipod's agent writes the guest's resolv.conf",
    ),
    (
        "schedulerName",
        "there is no scheduler; the pod runs on this host",
    ),
    (
        "nodeName",
        "there is no scheduler; the pod runs on this host",
    ),
    (
        "serviceAccountName",
        "there is no API server to issue the account's token",
    ),
    (
        "priority",
        "it only orders scheduling and preemption, which unipod does not do",
    ),
    (
        "enableServiceLinks",
        "there are no Services whose environment variables it would inject",
    ),
    (
        "tolerations",
        "they only let a scheduler place the pod on tainted nodes",
    ),
    (
        "affinity",
        "it only steers a scheduler between nodes; the pod runs on this host",
    ),
    (
        "nodeSelector",
        "it only steers a scheduler between nodes; the pod runs on this host",
    ),
    (
        "topologySpreadConstraints",
        "they only spread a controller's pods across nodes; the pod runs on this host",
    ),
    (
        "schedulingGates",
        "they only hold a pod back from a scheduler; unipod runs it now",
    ),
    (
        "priorityClassName",
        "it only orders scheduling and preemption, which unipod does not do",
    ),
    (
        "preemptionPolicy",
        "it only orders scheduling and preemption, which unipod does not do",
    ),
    (
        "runtimeClassName",
        "it picks the runtime on a Kubernetes node; here the runtime is unipod",
    ),
    (
        "overhead",
        "set from a RuntimeClass for the scheduler; unipod adds its own guest overhead",
    ),
    (
        "readinessGates",
        "their conditions are written by cluster controllers, which unipod has none of",
    ),
    (
        "automountServiceAccountToken",
        "there is no API server, so there is no service account token to mount",
    ),
    (
        "serviceAccount",
        "there is no API server to issue the account's token",
    ),
    ("os", "every pod VM runs Linux"),
];

const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "workingDir",
    "ports",
    "resources",
    "volumeMounts",
    "securityContext",
    "envFrom",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "restartPolicy",
];
const CONTAINER_IGNORED: Ignored = &[
    (
        "terminationMessagePath",
        "unipod reports a container's exit code and reason from the agent, not from a file",
    ),
    (
        "terminationMessagePolicy",
        "unipod reports a container's exit code and reason from the agent, not from a file",
    ),
    (
        "resizePolicy",
        "unipod does not resize a running pod's resources",
    ),
];

/// Fields unipod knows and refuses, with why; any other unknown field is
/// reported as not supported.
const REFUSED: Ignored = &[
    ("hostPath", "host directories are not supported yet"),
    (
        "persistentVolumeClaim",
        "there is no API server to bind a claim to a volume",
    ),
    ("ephemeral", "there is no API server to provision the claim"),
    ("csi", "there are no CSI drivers in unipod"),
    ("nfs", "network file systems are not mounted by unipod"),
    ("image", "image volumes are not supported yet"),
    (
        "serviceAccountToken",
        "it needs an API server to issue the token",
    ),
    (
        "clusterTrustBundle",
        "it needs an API server holding the trust bundles",
    ),
    (
        "podCertificate",
        "it needs an API server to issue the certificate",
    ),
    (
        "stdin",
        "unipod run attaches no stdin to a manifest's containers",
    ),
    (
        "tty",
        "unipod run attaches no terminal to a manifest's containers",
    ),
    (
        "dnsConfig",
        "custom DNS settings are not supported yet; use unipod run --dns",
    ),
    (
        "hostAliases",
        "extra /etc/hosts entries are not supported yet",
    ),
    (
        "activeDeadlineSeconds",
        "pod deadlines are not supported yet",
    ),
    (
        "ephemeralContainers",
        "they are added by the API server to a running pod",
    ),
    ("volumeDevices", "raw block volumes are not supported"),
    (
        "claims",
        "dynamic resource claims need an API server and their drivers",
    ),
    (
        "resourceClaims",
        "dynamic resource claims need an API server and their drivers",
    ),
];

const ENV_FIELDS: &[&str] = &["name", "value", "valueFrom"];
const PORT_FIELDS: &[&str] = &["containerPort", "hostPort", "protocol", "name"];
const RESOURCES_FIELDS: &[&str] = &["limits", "requests"];
const RESOURCE_NAMES: &[&str] = &["cpu", "memory", "ephemeral-storage"];
const MOUNT_FIELDS: &[&str] = &[
    "name",
    "mountPath",
    "readOnly",
    "subPath",
    "subPathExpr",
    "mountPropagation",
];
const VOLUME_FIELDS: &[&str] = &[
    "name",
    "emptyDir",
    "configMap",
    "secret",
    "downwardAPI",
    "projected",
];
const EMPTY_DIR_FIELDS: &[&str] = &["medium", "sizeLimit"];

const DNS_LABEL: &str = "a DNS-1123 label: at most 63 lowercase letters, digits or '-', \
                         starting and ending with a letter or digit, e.g. \"web-1\"";
const PORT_NAME: &str = "an IANA service name: at most 15 lowercase letters, digits or '-', \
                         with a letter, no \"--\" and no '-' at either end, e.g. \"http\"";
const ABSOLUTE_PATH: &str = "an absolute path without \"..\", e.g. \"/data\"";

mod config;
mod hook;
mod probe;
mod security;

pub(super) use config::object;

/// Validates the pod at `root` and builds it.
pub(super) fn pod(root: &Value) -> Result<(PodManifest, Vec<Warning>), ManifestError> {
    let mut walker = Walker::default();
    let pod = walker.pod(root);
    match pod {
        Some(pod) if walker.errors.is_empty() => Ok((pod, walker.warnings)),
        _ if walker.errors.len() == 1 => Err(walker.errors.remove(0)),
        _ => Err(ManifestError::Multiple(walker.errors)),
    }
}

/// A YAML mapping whose keys were checked, and where it is.
struct Obj<'v> {
    path: String,
    map: &'v Mapping,
}

impl<'v> Obj<'v> {
    /// The value of `key`; `None` when absent or null.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The path of `key` in this object.
    fn path(&self, key: &str) -> String {
        field_path(&self.path, key)
    }
}

/// Where a name was first used, to report duplicates.
type Seen = HashMap<String, String>;

/// The pod's `metadata` fields.
struct Metadata {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// The pod's `spec` fields, before the metadata joins them.
struct Spec {
    hostname: Option<String>,
    restart_policy: RestartPolicy,
    share_process_namespace: bool,
    termination_grace_period: Duration,
    init_containers: Vec<ContainerSpec>,
    containers: Vec<ContainerSpec>,
    volumes: Vec<Volume>,
    security_context: crate::pod::security_context::PodSecurityContext,
    resources: Resources,
    image_pull_secrets: Vec<String>,
}

#[derive(Default)]
struct Walker {
    errors: Vec<ManifestError>,
    warnings: Vec<Warning>,
}

impl Walker {
    fn error(&mut self, error: ManifestError) {
        self.errors.push(error);
    }

    fn wrong_type(&mut self, path: String, expected: &'static str, found: &Value) {
        self.error(ManifestError::WrongType {
            path,
            expected,
            found: kind_of(found),
        });
    }

    fn invalid(&mut self, path: String, value: &Value, expected: impl Into<String>) {
        self.error(ManifestError::Invalid {
            path,
            value: show(value),
            expected: expected.into(),
        });
    }

    /// Checks that `value` is a mapping with only `known` or `ignored` keys.
    fn object<'v>(
        &mut self,
        path: String,
        value: &'v Value,
        known: &'static [&'static str],
        ignored: Ignored,
    ) -> Option<Obj<'v>> {
        let Value::Mapping(map) = value else {
            self.wrong_type(path, "a mapping", value);
            return None;
        };
        for key in map.keys() {
            let Value::String(key) = key else {
                self.wrong_type(field_path(&path, &show(key)), "a field name", key);
                continue;
            };
            if known.contains(&key.as_str()) {
                continue;
            }
            let key_path = field_path(&path, key);
            if let Some((_, why)) = ignored.iter().find(|(name, _)| name == key) {
                self.warnings.push(Warning {
                    path: key_path,
                    message: format!("ignored: {why}"),
                });
            } else {
                let reason = REFUSED.iter().find(|(name, _)| name == key).map(|r| r.1);
                self.error(ManifestError::Unsupported {
                    path: key_path,
                    reason,
                    // A typo of a refused field is worth naming too.
                    suggestion: suggest(key, known).or_else(|| {
                        let refused: Vec<&'static str> = REFUSED.iter().map(|r| r.0).collect();
                        reason.is_none().then(|| suggest(key, &refused)).flatten()
                    }),
                });
            }
        }
        Some(Obj { path, map })
    }

    /// As [`Walker::object`] for a resource list, whose extended-resource
    /// and huge-page names `resource_list` has already refused.
    fn object_quiet<'v>(
        &mut self,
        path: String,
        value: &'v Value,
        known: &'static [&'static str],
    ) -> Option<Obj<'v>> {
        let Value::Mapping(map) = value else {
            self.wrong_type(path, "a mapping", value);
            return None;
        };
        let mut rest = map.clone();
        rest.retain(|k, _| {
            k.as_str()
                .is_none_or(|k| !k.contains('/') && !k.starts_with("hugepages-"))
        });
        self.object(path.clone(), &Value::Mapping(rest), known, &[])?;
        Some(Obj { path, map })
    }

    /// A relative path inside a volume: no leading `/`, no `..`.
    fn relative_path(&mut self, path: String, text: String) -> Option<String> {
        if is_relative_path(&text) {
            Some(text)
        } else {
            self.invalid(
                path,
                &Value::String(text),
                "a relative path without \"..\", e.g. \"conf/app.properties\"",
            );
            None
        }
    }

    /// The value of a required field; records it as missing when absent.
    fn required<'v>(&mut self, obj: &Obj<'v>, key: &str) -> Option<&'v Value> {
        let value = obj.get(key);
        if value.is_none() {
            self.error(ManifestError::Missing {
                path: obj.path(key),
            });
        }
        value
    }

    fn as_string(&mut self, path: String, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    fn string(&mut self, obj: &Obj<'_>, key: &str) -> Option<String> {
        let value = obj.get(key)?;
        self.as_string(obj.path(key), value)
    }

    fn required_string(&mut self, obj: &Obj<'_>, key: &str) -> Option<String> {
        let value = self.required(obj, key)?;
        self.as_string(obj.path(key), value)
    }

    fn bool(&mut self, obj: &Obj<'_>, key: &str) -> Option<bool> {
        match obj.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.wrong_type(obj.path(key), "a boolean (true or false)", other);
                None
            }
        }
    }

    fn integer(&mut self, path: String, value: &Value) -> Option<i128> {
        let n = match value {
            Value::Number(n) => n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)),
            _ => None,
        };
        if n.is_none() {
            self.wrong_type(path, "an integer", value);
        }
        n
    }

    /// The items of the list at `key` with their paths; empty when absent.
    fn list<'v>(&mut self, obj: &Obj<'v>, key: &str) -> Vec<(String, &'v Value)> {
        let Some(value) = obj.get(key) else {
            return Vec::new();
        };
        let path = obj.path(key);
        match value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{path}[{i}]"), item))
                .collect(),
            other => {
                self.wrong_type(path, "a list", other);
                Vec::new()
            }
        }
    }

    fn string_list(&mut self, obj: &Obj<'_>, key: &str) -> Vec<String> {
        let path = obj.path(key);
        match obj.get(key) {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.as_string(format!("{path}[{i}]"), item))
                .collect(),
            Some(other) => {
                self.wrong_type(path, "a list of strings", other);
                Vec::new()
            }
        }
    }

    fn string_map(&mut self, obj: &Obj<'_>, key: &str) -> BTreeMap<String, String> {
        let path = obj.path(key);
        let mut map = BTreeMap::new();
        match obj.get(key) {
            None => {}
            Some(Value::Mapping(entries)) => {
                for (k, v) in entries {
                    let Value::String(k) = k else {
                        self.wrong_type(format!("{path}[{}]", show(k)), "a string key", k);
                        continue;
                    };
                    if let Some(v) = self.as_string(format!("{path}[{k:?}]"), v) {
                        map.insert(k.clone(), v);
                    }
                }
            }
            Some(other) => self.wrong_type(path, "a mapping of strings to strings", other),
        }
        map
    }

    fn dns_label(&mut self, path: String, name: String) -> Option<String> {
        if is_dns_label(&name) {
            Some(name)
        } else {
            self.invalid(path, &Value::String(name), DNS_LABEL);
            None
        }
    }

    fn absolute_path(&mut self, path: String, text: String) -> Option<PathBuf> {
        let p = PathBuf::from(&text);
        if p.is_absolute() && !p.components().any(|c| c == std::path::Component::ParentDir) {
            Some(p)
        } else {
            self.invalid(path, &Value::String(text), ABSOLUTE_PATH);
            None
        }
    }

    /// Records `name` at `path` in `seen`, or a duplicate of its first use.
    fn unique(&mut self, seen: &mut Seen, what: &'static str, name: &str, path: String, at: &str) {
        if let Some(first) = seen.get(name) {
            self.error(ManifestError::Duplicate {
                path,
                what,
                name: name.to_owned(),
                first: first.clone(),
            });
        } else {
            seen.insert(name.to_owned(), at.to_owned());
        }
    }

    fn pod(&mut self, root: &Value) -> Option<PodManifest> {
        if !root.is_mapping() {
            self.wrong_type(
                "the document".to_owned(),
                "a mapping with apiVersion, kind, metadata and spec",
                root,
            );
            return None;
        }
        let top = self.object(String::new(), root, TOP_FIELDS, TOP_IGNORED)?;
        self.constant(&top, "apiVersion", "v1");
        self.constant(&top, "kind", "Pod");
        let metadata = self
            .required(&top, "metadata")
            .and_then(|v| self.metadata(top.path("metadata"), v));
        let spec = self
            .required(&top, "spec")
            .and_then(|v| self.spec(top.path("spec"), v));
        let metadata = metadata?;
        let spec = spec?;
        let pod = PodManifest {
            name: metadata.name,
            namespace: metadata.namespace,
            labels: metadata.labels,
            annotations: metadata.annotations,
            hostname: spec.hostname,
            restart_policy: spec.restart_policy,
            share_process_namespace: spec.share_process_namespace,
            termination_grace_period: spec.termination_grace_period,
            init_containers: spec.init_containers,
            containers: spec.containers,
            volumes: spec.volumes,
            security_context: spec.security_context,
            resources: spec.resources,
            image_pull_secrets: spec.image_pull_secrets,
        };
        // Sized here, not when the VM boots: a pod the VMM would refuse
        // must leave nothing behind.
        let mem_mib = pod.vm_size().mem_mib;
        if mem_mib > crate::config::MAX_MEM_MIB {
            self.error(ManifestError::VmTooLarge { mem_mib });
        }
        Some(pod)
    }

    /// A required string field that must be `expected`.
    fn constant(&mut self, obj: &Obj<'_>, key: &str, expected: &str) {
        let Some(value) = self.required_string(obj, key) else {
            return;
        };
        if value != expected {
            self.invalid(
                obj.path(key),
                &Value::String(value),
                format!("{expected:?}"),
            );
        }
    }

    fn metadata(&mut self, path: String, value: &Value) -> Option<Metadata> {
        let obj = self.object(path, value, METADATA_FIELDS, METADATA_IGNORED)?;
        let name = self
            .required_string(&obj, "name")
            .and_then(|n| self.dns_label(obj.path("name"), n));
        let namespace = self
            .string(&obj, "namespace")
            .and_then(|n| self.dns_label(obj.path("namespace"), n))
            .unwrap_or_else(|| super::DEFAULT_NAMESPACE.to_owned());
        let labels = self.string_map(&obj, "labels");
        let annotations = self.string_map(&obj, "annotations");
        Some(Metadata {
            name: name?,
            namespace,
            labels,
            annotations,
        })
    }

    fn spec(&mut self, path: String, value: &Value) -> Option<Spec> {
        let obj = self.object(path, value, SPEC_FIELDS, SPEC_IGNORED)?;
        self.host_namespaces(&obj);
        let security_context = self.pod_security_context(&obj);
        let (volumes, declared) = self.volumes(&obj);

        // Init containers first, so a clash names the app container as the
        // duplicate of the init container that runs before it.
        let mut names = Seen::new();
        let init_containers = self.containers(&obj, "initContainers", &declared, &mut names);
        let containers = match self.required(&obj, "containers") {
            Some(Value::Sequence(items)) if items.is_empty() => {
                self.error(ManifestError::Invalid {
                    path: obj.path("containers"),
                    value: "an empty list".to_owned(),
                    expected: "at least one container".to_owned(),
                });
                None
            }
            Some(_) => Some(self.containers(&obj, "containers", &declared, &mut names)),
            None => None,
        };

        let restart_policy = match self.string(&obj, "restartPolicy").as_deref() {
            None | Some("Always") => Some(RestartPolicy::Always),
            Some("OnFailure") => Some(RestartPolicy::OnFailure),
            Some("Never") => Some(RestartPolicy::Never),
            Some(other) => {
                self.invalid(
                    obj.path("restartPolicy"),
                    &Value::String(other.to_owned()),
                    "one of \"Always\", \"OnFailure\" or \"Never\"",
                );
                None
            }
        };
        let hostname = self
            .string(&obj, "hostname")
            .and_then(|h| self.dns_label(obj.path("hostname"), h));
        let share_process_namespace = self.bool(&obj, "shareProcessNamespace").unwrap_or(false);
        let termination_grace_period = match obj.get("terminationGracePeriodSeconds") {
            None => DEFAULT_TERMINATION_GRACE_PERIOD,
            Some(v) => {
                let path = obj.path("terminationGracePeriodSeconds");
                match self.integer(path.clone(), v).map(u64::try_from) {
                    Some(Ok(secs)) => Duration::from_secs(secs),
                    Some(Err(_)) => {
                        self.invalid(path, v, "a whole number of seconds, 0 or more");
                        DEFAULT_TERMINATION_GRACE_PERIOD
                    }
                    None => DEFAULT_TERMINATION_GRACE_PERIOD,
                }
            }
        };
        let resources = obj
            .get("resources")
            .and_then(|v| self.resources(obj.path("resources"), v))
            .unwrap_or_default();
        let image_pull_secrets = self.image_pull_secrets(&obj);
        if let Some(containers) = &containers {
            self.check_resource_refs(&volumes, containers, &init_containers);
            self.check_sleep_hooks("containers", containers, termination_grace_period);
        }
        self.check_sleep_hooks("initContainers", &init_containers, termination_grace_period);
        // The kubelet mounts these read-only whatever the mount says.
        let files: Vec<&str> = volumes
            .iter()
            .filter(|v| v.source.is_files())
            .map(|v| v.name.as_str())
            .collect();
        let force_read_only = |list: Vec<ContainerSpec>| -> Vec<ContainerSpec> {
            list.into_iter()
                .map(|mut c| {
                    for m in &mut c.volume_mounts {
                        m.read_only |= files.contains(&m.name.as_str());
                    }
                    c
                })
                .collect()
        };
        let init_containers = force_read_only(init_containers);
        let containers = containers.map(force_read_only);
        Some(Spec {
            resources,
            image_pull_secrets,
            hostname,
            restart_policy: restart_policy?,
            share_process_namespace,
            termination_grace_period,
            init_containers,
            containers: containers?,
            volumes,
            security_context,
        })
    }

    /// `imagePullSecrets`: the names of Secrets with registry credentials.
    fn image_pull_secrets(&mut self, spec: &Obj<'_>) -> Vec<String> {
        let mut names = Vec::new();
        for (path, item) in self.list(spec, "imagePullSecrets") {
            let Some(obj) = self.object(path, item, &["name"], &[]) else {
                continue;
            };
            if let Some(name) = self.required_string(&obj, "name") {
                names.push(name);
            }
        }
        names
    }

    /// The volumes, and where each name was declared, invalid ones included
    /// (so that their mounts are not also reported as undeclared).
    fn volumes(&mut self, spec: &Obj<'_>) -> (Vec<Volume>, Seen) {
        let mut volumes = Vec::new();
        let mut declared = Seen::new();
        for (path, item) in self.list(spec, "volumes") {
            let Some(obj) = self.object(path.clone(), item, VOLUME_FIELDS, &[]) else {
                continue;
            };
            let name = self.required_string(&obj, "name");
            if let Some(name) = &name {
                self.unique(&mut declared, "volume name", name, obj.path("name"), &path);
            }
            let name = name.and_then(|n| self.dns_label(obj.path("name"), n));
            let sources: Vec<&str> = VOLUME_FIELDS[1..]
                .iter()
                .copied()
                .filter(|k| obj.get(k).is_some())
                .collect();
            if sources.len() > 1 {
                self.error(ManifestError::Invalid {
                    path: obj.path.clone(),
                    value: sources.join(" and "),
                    expected: "one volume source".to_owned(),
                });
                continue;
            }
            // A volume with no source is an emptyDir, as Kubernetes defaults it.
            let source = match sources.first() {
                None => Some(VolumeSource::EmptyDir(EmptyDir::default())),
                Some(&"emptyDir") => self
                    .empty_dir(obj.path("emptyDir"), obj.get("emptyDir").expect("present"))
                    .map(VolumeSource::EmptyDir),
                Some(key) => self
                    .file_volume(obj.path(key), key, obj.get(key).expect("present"))
                    .map(VolumeSource::Files),
            };
            if let (Some(name), Some(source)) = (name, source) {
                volumes.push(Volume { name, source });
            }
        }
        (volumes, declared)
    }

    fn empty_dir(&mut self, path: String, value: &Value) -> Option<EmptyDir> {
        let obj = self.object(path, value, EMPTY_DIR_FIELDS, &[])?;
        let medium = match self.string(&obj, "medium").as_deref() {
            None | Some("") => StorageMedium::Default,
            Some("Memory") => StorageMedium::Memory,
            Some(other) => {
                self.invalid(
                    obj.path("medium"),
                    &Value::String(other.to_owned()),
                    "\"\" (the default) or \"Memory\"",
                );
                return None;
            }
        };
        let size_limit_bytes = obj
            .get("sizeLimit")
            .and_then(|v| self.quantity(obj.path("sizeLimit"), v, Resource::Memory));
        Some(EmptyDir {
            medium,
            size_limit_bytes,
        })
    }

    fn containers(
        &mut self,
        spec: &Obj<'_>,
        key: &str,
        declared: &Seen,
        names: &mut Seen,
    ) -> Vec<ContainerSpec> {
        self.list(spec, key)
            .into_iter()
            .filter_map(|(path, item)| self.container(path, item, declared, names))
            .collect()
    }

    fn container(
        &mut self,
        path: String,
        value: &Value,
        declared: &Seen,
        names: &mut Seen,
    ) -> Option<ContainerSpec> {
        let obj = self.object(path, value, CONTAINER_FIELDS, CONTAINER_IGNORED)?;
        let name = self
            .required_string(&obj, "name")
            .and_then(|n| self.dns_label(obj.path("name"), n));
        if let Some(name) = &name {
            self.unique(names, "container name", name, obj.path("name"), &obj.path);
        }
        let image = self.required_string(&obj, "image").and_then(|image| {
            if image.is_empty() || image.trim() != image {
                self.invalid(
                    obj.path("image"),
                    &Value::String(image),
                    "an image reference without surrounding spaces, e.g. \"busybox:latest\"",
                );
                None
            } else {
                Some(image)
            }
        });
        let image_pull_policy = match self.string(&obj, "imagePullPolicy").as_deref() {
            None => image.as_deref().map(ImagePullPolicy::default_for),
            Some("Always") => Some(ImagePullPolicy::Always),
            Some("IfNotPresent") => Some(ImagePullPolicy::IfNotPresent),
            Some("Never") => Some(ImagePullPolicy::Never),
            Some(other) => {
                self.invalid(
                    obj.path("imagePullPolicy"),
                    &Value::String(other.to_owned()),
                    "one of \"Always\", \"IfNotPresent\" or \"Never\"",
                );
                None
            }
        };
        let command = self.string_list(&obj, "command");
        let args = self.string_list(&obj, "args");
        let env = self.env(&obj);
        let env_from = self.env_from(&obj);
        let literal = |e: &EnvVar| match &e.source {
            EnvSource::Value(v) => v.len(),
            _ => 0,
        };
        // Values from objects are checked when the container starts.
        let bytes: usize = command
            .iter()
            .chain(&args)
            .map(|s| s.len() + 1)
            .chain(env.iter().map(|e| e.name.len() + literal(e) + 2))
            .sum();
        if bytes > super::MAX_EXEC_BYTES {
            self.error(ManifestError::TooLarge {
                path: obj.path.clone(),
                bytes,
                max: super::MAX_EXEC_BYTES,
            });
        }
        let working_dir = self
            .string(&obj, "workingDir")
            .and_then(|d| self.absolute_path(obj.path("workingDir"), d));
        let ports = self.ports(&obj);
        let resources = obj
            .get("resources")
            .and_then(|v| self.resources(obj.path("resources"), v))
            .unwrap_or_default();
        let volume_mounts = self.volume_mounts(&obj, declared);
        let security_context = self.container_security_context(&obj);
        let init = obj.path.starts_with("spec.initContainers");
        let sidecar = self.container_restart_policy(&obj, init);
        let probes = self.probes(&obj, &ports, !init || sidecar);
        let hooks = self.hooks(&obj, &ports, !init || sidecar);
        Some(ContainerSpec {
            name: name?,
            image: image?,
            image_pull_policy: image_pull_policy?,
            command,
            args,
            env,
            env_from,
            working_dir,
            ports,
            resources,
            volume_mounts,
            security_context,
            probes,
            hooks,
            sidecar,
        })
    }

    fn env(&mut self, container: &Obj<'_>) -> Vec<EnvVar> {
        let mut env = Vec::new();
        let mut seen = Seen::new();
        for (path, item) in self.list(container, "env") {
            let Some(obj) = self.object(path.clone(), item, ENV_FIELDS, &[]) else {
                continue;
            };
            let Some(name) = self.required_string(&obj, "name") else {
                continue;
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
            {
                self.invalid(
                    obj.path("name"),
                    &Value::String(name),
                    "an environment variable name: printable ASCII without '=', e.g. \"LOG_LEVEL\"",
                );
                continue;
            }
            if let Some(first) = seen.get(&name) {
                self.warnings.push(Warning {
                    path: obj.path("name"),
                    message: format!(
                        "{name:?} is also set by {first}; the later value wins, as in Kubernetes"
                    ),
                });
            } else {
                seen.insert(name.clone(), path);
            }
            let source = match (obj.get("value"), obj.get("valueFrom")) {
                (Some(_), Some(_)) => {
                    self.error(ManifestError::Invalid {
                        path: obj.path("valueFrom"),
                        value: "valueFrom with value".to_owned(),
                        expected: "either value or valueFrom, not both".to_owned(),
                    });
                    continue;
                }
                (_, Some(from)) => match self.value_from(obj.path("valueFrom"), from) {
                    Some(source) => source,
                    None => continue,
                },
                _ => EnvSource::Value(self.string(&obj, "value").unwrap_or_default()),
            };
            env.push(EnvVar { name, source });
        }
        env
    }

    fn port(&mut self, path: String, value: &Value) -> Option<u16> {
        let n = self.integer(path.clone(), value)?;
        match u16::try_from(n) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.invalid(path, value, "a port number from 1 to 65535");
                None
            }
        }
    }

    fn ports(&mut self, container: &Obj<'_>) -> Vec<ContainerPort> {
        let mut ports = Vec::new();
        let mut names = Seen::new();
        for (path, item) in self.list(container, "ports") {
            let Some(obj) = self.object(path.clone(), item, PORT_FIELDS, &[]) else {
                continue;
            };
            let container_port = self
                .required(&obj, "containerPort")
                .and_then(|v| self.port(obj.path("containerPort"), v));
            let host_port = obj
                .get("hostPort")
                .and_then(|v| self.port(obj.path("hostPort"), v));
            let protocol = match self.string(&obj, "protocol").as_deref() {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some(other) => {
                    self.invalid(
                        obj.path("protocol"),
                        &Value::String(other.to_owned()),
                        "\"TCP\" or \"UDP\" (SCTP is not supported yet)",
                    );
                    Protocol::Tcp
                }
            };
            let name = self.string(&obj, "name").and_then(|name| {
                if is_port_name(&name) {
                    Some(name)
                } else {
                    self.invalid(obj.path("name"), &Value::String(name), PORT_NAME);
                    None
                }
            });
            if let Some(name) = &name {
                self.unique(&mut names, "port name", name, obj.path("name"), &path);
            }
            if let Some(container_port) = container_port {
                ports.push(ContainerPort {
                    container_port,
                    host_port,
                    protocol,
                    name,
                });
            }
        }
        ports
    }

    fn resources(&mut self, path: String, value: &Value) -> Option<Resources> {
        let obj = self.object(path, value, RESOURCES_FIELDS, &[])?;
        let limits = obj
            .get("limits")
            .map(|v| self.resource_list(obj.path("limits"), v))
            .unwrap_or_default();
        let requests = obj
            .get("requests")
            .map(|v| self.resource_list(obj.path("requests"), v))
            .unwrap_or_default();
        let pairs = [
            ("cpu", requests.cpu_millis, limits.cpu_millis),
            ("memory", requests.memory_bytes, limits.memory_bytes),
        ];
        for (resource, request, limit) in pairs {
            if let (Some(request), Some(limit)) = (request, limit) {
                if request > limit {
                    let written = |list: &str| {
                        obj.get(list)
                            .and_then(|l| l.get(resource))
                            .map_or_else(String::new, show)
                    };
                    self.error(ManifestError::Invalid {
                        path: format!("{}.{resource}", obj.path("requests")),
                        value: written("requests"),
                        expected: format!(
                            "at most the limit {} ({})",
                            written("limits"),
                            format_args!("{}.{resource}", obj.path("limits"))
                        ),
                    });
                }
            }
        }
        Some(Resources { limits, requests })
    }

    fn resource_list(&mut self, path: String, value: &Value) -> ResourceList {
        // Extended resources (`example.com/dongle`) and huge pages are
        // named here, before the generic check refuses them.
        if let Value::Mapping(map) = value {
            for key in map.keys().filter_map(Value::as_str) {
                let reason = if key.contains('/') {
                    "extended resources need a device plugin; unipod has none"
                } else if key.starts_with("hugepages-") {
                    "huge pages are not supported in pod VMs"
                } else {
                    continue;
                };
                self.error(ManifestError::Unsupported {
                    path: format!("{path}[{key:?}]"),
                    reason: Some(reason),
                    suggestion: None,
                });
            }
            if map.contains_key("ephemeral-storage") {
                self.warnings.push(Warning {
                    path: format!("{path}.ephemeral-storage"),
                    message: "ignored: a pod VM keeps containers' writes in its memory, \
                              which memory limits bound"
                        .to_owned(),
                });
            }
        }
        let Some(obj) = self.object_quiet(path, value, RESOURCE_NAMES) else {
            return ResourceList::default();
        };
        ResourceList {
            cpu_millis: obj
                .get("cpu")
                .and_then(|v| self.quantity(obj.path("cpu"), v, Resource::Cpu)),
            memory_bytes: obj
                .get("memory")
                .and_then(|v| self.quantity(obj.path("memory"), v, Resource::Memory)),
        }
    }

    /// A quantity written as a string (`"500m"`) or a YAML number (`0.5`).
    fn quantity(&mut self, path: String, value: &Value, resource: Resource) -> Option<u64> {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => number_text(n),
            other => {
                self.wrong_type(path, resource.expected_type(), other);
                return None;
            }
        };
        let parsed = match resource {
            Resource::Cpu => quantity::cpu_millis(&text),
            Resource::Memory => quantity::memory_bytes(&text),
        };
        match parsed {
            Ok(n) => Some(n),
            Err(e) => {
                self.invalid(path, value, resource.expected(e));
                None
            }
        }
    }

    fn volume_mounts(&mut self, container: &Obj<'_>, declared: &Seen) -> Vec<VolumeMount> {
        let mut mounts = Vec::new();
        let mut mount_paths = Seen::new();
        for (path, item) in self.list(container, "volumeMounts") {
            let Some(obj) = self.object(path.clone(), item, MOUNT_FIELDS, &[]) else {
                continue;
            };
            let name = self.required_string(&obj, "name");
            if let Some(name) = &name {
                if !declared.contains_key(name) {
                    self.error(ManifestError::UndeclaredVolume {
                        path: obj.path("name"),
                        name: name.clone(),
                    });
                }
            }
            let mount_path = self.required_string(&obj, "mountPath").and_then(|p| {
                self.unique(
                    &mut mount_paths,
                    "mount path",
                    &p,
                    obj.path("mountPath"),
                    &path,
                );
                self.absolute_path(obj.path("mountPath"), p)
            });
            let read_only = self.bool(&obj, "readOnly").unwrap_or(false);
            let sub_path = self
                .string(&obj, "subPath")
                .filter(|p| !p.is_empty())
                .and_then(|p| self.relative_path(obj.path("subPath"), p));
            let sub_path_expr = self
                .string(&obj, "subPathExpr")
                .filter(|p| !p.is_empty())
                .and_then(|p| self.relative_path(obj.path("subPathExpr"), p));
            if sub_path.is_some() && sub_path_expr.is_some() {
                self.error(ManifestError::Invalid {
                    path: obj.path("subPathExpr"),
                    value: "subPathExpr with subPath".to_owned(),
                    expected: "either subPath or subPathExpr, not both".to_owned(),
                });
            }
            match self.string(&obj, "mountPropagation").as_deref() {
                None | Some("None") => {}
                Some(other) => self.error(ManifestError::Unsupported {
                    path: obj.path("mountPropagation"),
                    reason: Some(if other == "HostToContainer" || other == "Bidirectional" {
                        "mount propagation needs host directories, which are not supported yet"
                    } else {
                        "the modes are None, HostToContainer and Bidirectional"
                    }),
                    suggestion: None,
                }),
            }
            if let (Some(name), Some(mount_path)) = (name, mount_path) {
                mounts.push(VolumeMount {
                    name,
                    mount_path,
                    read_only,
                    sub_path,
                    sub_path_expr,
                });
            }
        }
        mounts
    }
}

/// Which resource a quantity measures.
#[derive(Clone, Copy)]
enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    fn expected_type(self) -> &'static str {
        match self {
            Resource::Cpu => "a CPU quantity such as \"500m\" or 1",
            Resource::Memory => "a memory quantity such as \"64Mi\"",
        }
    }

    fn expected(self, error: QuantityError) -> &'static str {
        match (self, error) {
            (Resource::Cpu, QuantityError::Malformed) => {
                "a CPU quantity such as \"500m\", \"1\" or \"0.5\""
            }
            (Resource::Memory, QuantityError::Malformed) => {
                "a memory quantity such as \"64Mi\", \"1Gi\", \"128M\" or \"1000000\""
            }
            (Resource::Cpu, QuantityError::Negative) => "a quantity of 0 or more, such as \"500m\"",
            (Resource::Memory, QuantityError::Negative) => {
                "a quantity of 0 or more, such as \"64Mi\""
            }
            (Resource::Cpu, QuantityError::TooLarge) => "a smaller quantity, such as \"2\"",
            (Resource::Memory, QuantityError::TooLarge) => "a smaller quantity, such as \"1Gi\"",
            (_, QuantityError::MilliBytes) => {
                "\"Mi\" (mebibytes) or \"M\" (megabytes), e.g. \"128Mi\": \"m\" means thousandths of a byte"
            }
        }
    }
}

/// The text of a YAML number as a quantity: integers exactly, floats in
/// plain decimal (`1e6` -> `1000000`).
fn number_text(n: &Number) -> String {
    if let Some(u) = n.as_u64() {
        u.to_string()
    } else if let Some(i) = n.as_i64() {
        i.to_string()
    } else {
        // Rust prints finite floats without an exponent; inf and NaN print as
        // words the quantity parser refuses.
        n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string())
    }
}

/// A path relative to a volume: not absolute, no `..` component.
pub(crate) fn is_relative_path(text: &str) -> bool {
    !text.is_empty() && !text.starts_with('/') && !text.split('/').any(|c| c == "..")
}

fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// What kind of YAML value this is, for type errors.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar as written (strings quoted); the kind of anything else.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => kind_of(other).to_owned(),
    }
}
