//! What a container takes from outside its manifest, resolved as the
//! kubelet resolves it when the container starts: `envFrom`, `env[].valueFrom`
//! (ConfigMap and Secret keys, pod fields, resources), `$(VAR)` references,
//! `subPathExpr`, and the files of ConfigMap, Secret, downward API and
//! projected volumes.
//!
//! # Design
//! Pure functions over the manifest, the objects ([`Catalog`]) and the
//! facts only a running pod has ([`PodFacts`]), so every rule is unit-tested.
//! A missing object or key is a [`ConfigError`] carrying the kubelet's
//! message (`configmap "x" not found`); the supervisor keeps the container
//! waiting with `CreateContainerConfigError` and tries again, so applying
//! the object later starts it. An `optional` reference to something missing
//! is skipped instead.
//!
//! Env values are expanded as the kubelet's `expansion` package does:
//! `$(NAME)` becomes an earlier variable's value (`envFrom`'s, then `env`'s
//! in order; the image's are not visible), `$$` becomes `$`, and anything
//! else, an unknown name included, stays as written. `command` and `args`
//! are expanded with the container's whole environment.

use std::collections::BTreeMap;

use guest_agent::protocol::{VolumeFile, MAX_VOLUME_BYTES, MAX_VOLUME_FILES};

use super::manifest::{
    ContainerSpec, DownwardFile, DownwardSource, EnvSource, FieldRef, FileSource, KeysSource, Kind,
    PodManifest, ResourceFieldRef, VmSize,
};
use super::objects::Catalog;

/// What only a running pod knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The pod's UID.
    pub uid: String,
    /// The pod IPs, IPv4 first; none without a network.
    pub pod_ips: Vec<String>,
    /// The host's addresses as the pod sees them (the bridge's), IPv4
    /// first; none without a network.
    pub host_ips: Vec<String>,
    /// The host's name, as `spec.nodeName`.
    pub node_name: String,
    /// The pod VM, whose vCPUs and memory stand for the node's allocatable
    /// resources when a container has no limit.
    pub vm: Option<VmSize>,
}

/// Why a container cannot be created yet, in the kubelet's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn not_found(kind: Kind, name: &str) -> ConfigError {
    ConfigError(format!("{} {name:?} not found", kind.lower()))
}

/// The service account every pod has in Kubernetes unless it names another.
const SERVICE_ACCOUNT: &str = "default";

/// The container's environment from its manifest (without the image's), in
/// order of first definition; a name defined twice keeps its last value.
pub fn container_env(
    pod: &PodManifest,
    container: &ContainerSpec,
    facts: &PodFacts,
    catalog: &Catalog,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Env::default();
    for from in &container.env_from {
        let Some(object) = catalog.get(from.kind, &from.name) else {
            if from.optional {
                continue;
            }
            return Err(not_found(from.kind, &from.name));
        };
        for key in object.data.keys() {
            let name = format!("{}{key}", from.prefix);
            // The kubelet skips names that are not valid variable names and
            // records an event; here they are skipped with a log line.
            if name.contains('=') || name.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
                log::warn!(
                    "envFrom {}: skipping invalid variable name {name:?}",
                    from.name
                );
                continue;
            }
            env.set(name, object.text(key).unwrap_or_default());
        }
    }
    for var in &container.env {
        let value = match &var.source {
            EnvSource::Value(v) => Some(expand(v, |n| env.get(n))),
            EnvSource::Field(f) => Some(field_value(pod, f, facts)),
            EnvSource::Resource(r) => Some(resource_value(pod, &container.name, r, facts)),
            EnvSource::Key(k) => match catalog.get(k.kind, &k.name) {
                None if k.optional => None,
                None => return Err(not_found(k.kind, &k.name)),
                Some(o) => match o.text(&k.key) {
                    Some(v) => Some(v),
                    None if k.optional => None,
                    None => {
                        return Err(ConfigError(format!(
                            "couldn't find key {} in {} {}/{}",
                            k.key, k.kind, pod.namespace, k.name
                        )))
                    }
                },
            },
        };
        if let Some(value) = value {
            env.set(var.name.clone(), value);
        }
    }
    Ok(env.0)
}

/// The container's literal `env` values, expanded (what can be known
/// before the pod runs).
pub fn literal_env(container: &ContainerSpec) -> Vec<(String, String)> {
    let mut env = Env::default();
    for var in &container.env {
        if let EnvSource::Value(v) = &var.source {
            let value = expand(v, |n| env.get(n));
            env.set(var.name.clone(), value);
        }
    }
    env.0
}

/// An ordered environment.
#[derive(Default)]
struct Env(Vec<(String, String)>);

impl Env {
    fn set(&mut self, name: String, value: String) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// Expands `$(NAME)` with `lookup`, and `$$` to `$`, as Kubernetes does.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A pod field's value.
fn field_value(pod: &PodManifest, field: &FieldRef, facts: &PodFacts) -> String {
    match field {
        FieldRef::Name => pod.name.clone(),
        FieldRef::Namespace => pod.namespace.clone(),
        FieldRef::Uid => facts.uid.clone(),
        FieldRef::Labels => format_map(&pod.labels),
        FieldRef::Annotations => format_map(&pod.annotations),
        FieldRef::Label(k) => pod.labels.get(k).cloned().unwrap_or_default(),
        FieldRef::Annotation(k) => pod.annotations.get(k).cloned().unwrap_or_default(),
        FieldRef::NodeName => facts.node_name.clone(),
        FieldRef::ServiceAccountName => SERVICE_ACCOUNT.to_owned(),
        // The kubelet gives the first address, or all of them joined by commas.
        FieldRef::HostIp => facts.host_ips.first().cloned().unwrap_or_default(),
        FieldRef::HostIps => facts.host_ips.join(","),
        FieldRef::PodIp => facts.pod_ips.first().cloned().unwrap_or_default(),
        FieldRef::PodIps => facts.pod_ips.join(","),
    }
}

/// `key="value"` lines, sorted by key, values quoted as Go's `%q` does.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn go_quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A container's resource, divided and rounded up as the kubelet does;
/// with no limit, the VM's size stands for the node's allocatable, and a
/// missing request is the limit when one is set, else 0.
fn resource_value(pod: &PodManifest, own: &str, r: &ResourceFieldRef, facts: &PodFacts) -> String {
    let name = r.container.as_deref().unwrap_or(own);
    let container = pod
        .init_containers
        .iter()
        .chain(&pod.containers)
        .find(|c| c.name == name);
    let pick = |list: &super::manifest::ResourceList| {
        if r.resource.cpu {
            list.cpu_millis
        } else {
            list.memory_bytes
        }
    };
    let vm = facts.vm.unwrap_or(pod.vm_size());
    let allocatable = if r.resource.cpu {
        u64::from(vm.vcpus) * 1000
    } else {
        u64::from(vm.mem_mib) << 20
    };
    let limit = container.and_then(|c| pick(&c.resources.limits));
    let amount = if r.resource.limit {
        limit.unwrap_or(allocatable)
    } else {
        container
            .and_then(|c| pick(&c.resources.requests))
            .or(limit)
            .unwrap_or(0)
    };
    amount.div_ceil(r.divisor.max(1)).to_string()
}

/// The files of a volume, in the order its sources list them; a later file
/// of one path replaces an earlier one, as a projected volume's do.
pub fn volume_files(
    pod: &PodManifest,
    volume: &str,
    sources: &[FileSource],
    facts: &PodFacts,
    catalog: &Catalog,
) -> Result<Vec<VolumeFile>, ConfigError> {
    let mut files: Vec<VolumeFile> = Vec::new();
    let mut add = |path: &str, data: Vec<u8>, mode: u32| {
        files.retain(|f| f.path != path);
        files.push(VolumeFile {
            path: path.to_owned(),
            data,
            mode,
        });
    };
    for source in sources {
        match source {
            FileSource::Keys(keys) => {
                for (path, data, mode) in key_files(pod, keys, catalog)? {
                    add(&path, data, mode);
                }
            }
            FileSource::Downward(list) => {
                for DownwardFile { path, source, mode } in list {
                    let text = match source {
                        DownwardSource::Field(f) => field_value(pod, f, facts),
                        DownwardSource::Resource(r) => resource_value(pod, "", r, facts),
                    };
                    add(path, text.into_bytes(), *mode);
                }
            }
        }
    }
    let bytes: usize = files.iter().map(|f| f.data.len()).sum();
    if files.len() > MAX_VOLUME_FILES || bytes > MAX_VOLUME_BYTES {
        return Err(ConfigError(format!(
            "volume {volume:?}: {} files of {bytes} bytes; a pod VM takes at most \
             {MAX_VOLUME_FILES} files of {MAX_VOLUME_BYTES} bytes per volume",
            files.len()
        )));
    }
    Ok(files)
}

/// The files of one ConfigMap or Secret source: (path, data, mode).
fn key_files(
    pod: &PodManifest,
    keys: &KeysSource,
    catalog: &Catalog,
) -> Result<Vec<(String, Vec<u8>, u32)>, ConfigError> {
    let Some(object) = catalog.get(keys.kind, &keys.name) else {
        if keys.optional {
            return Ok(Vec::new());
        }
        return Err(not_found(keys.kind, &keys.name));
    };
    if keys.items.is_empty() {
        return Ok(object
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), keys.default_mode))
            .collect());
    }
    let mut out = Vec::new();
    for item in &keys.items {
        match object.data.get(&item.key) {
            Some(v) => out.push((
                item.path.clone(),
                v.clone(),
                item.mode.unwrap_or(keys.default_mode),
            )),
            None if keys.optional => {}
            None => {
                return Err(ConfigError(format!(
                    "{} {}/{} references non-existent config key: {}",
                    keys.kind.lower(),
                    pod.namespace,
                    keys.name,
                    item.key
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::manifest;
    use crate::pod::objects::object;

    fn pod(yaml: &str) -> PodManifest {
        manifest::parse(yaml).expect("valid manifest").0
    }

    fn facts() -> PodFacts {
        PodFacts {
            uid: "3f1c-uid".into(),
            pod_ips: vec!["10.88.0.7".into(), "fd00:88::7".into()],
            host_ips: vec!["10.88.0.1".into(), "fd00:88::1".into()],
            node_name: "node-1".into(),
            vm: Some(VmSize {
                vcpus: 1,
                mem_mib: 256,
            }),
        }
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: dapi
  labels: {app: web, tier: "front \"end\""}
  annotations: {build: "42"}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo $(POD_NAME) $$(POD_NAME) $(NOPE)"]
    resources:
      limits: {memory: 64Mi, cpu: 500m}
    envFrom:
    - configMapRef: {name: game}
      prefix: CM_
    - secretRef: {name: absent, optional: true}
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: POD_IPS
      valueFrom: {fieldRef: {fieldPath: status.podIPs}}
    - name: HOST_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
    - name: APP
      valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}
    - name: MEM_MI
      valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
    - name: CPU_REQ
      valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}
    - name: GREETING
      value: "hello $(POD_NAME) from $(CM_lives) $$HOME"
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    - name: MAYBE
      valueFrom: {configMapKeyRef: {name: game, key: nokey, optional: true}}
  - name: other
    image: busybox
"#;

    fn catalog() -> Catalog {
        Catalog::default().with(&[
            object(Kind::ConfigMap, "game", &[("lives", "3"), ("mode", "hard")]),
            object(Kind::Secret, "creds", &[("password", "s3cr3t")]),
        ])
    }

    #[test]
    fn env_comes_from_objects_fields_and_resources_with_expansion() {
        let p = pod(POD);
        let env = container_env(&p, &p.containers[0], &facts(), &catalog()).unwrap();
        let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_lives"), Some("3"));
        assert_eq!(get("CM_mode"), Some("hard"));
        assert_eq!(get("POD_NAME"), Some("dapi"));
        assert_eq!(get("POD_IP"), Some("10.88.0.7"));
        assert_eq!(get("POD_IPS"), Some("10.88.0.7,fd00:88::7"));
        assert_eq!(get("HOST_IP"), Some("10.88.0.1"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("MEM_MI"), Some("64"));
        // No request: the limit stands in for it, as the API server defaults it.
        assert_eq!(get("CPU_REQ"), Some("500"));
        assert_eq!(get("GREETING"), Some("hello dapi from 3 $HOME"));
        assert_eq!(get("PASSWORD"), Some("s3cr3t"));
        assert_eq!(get("MAYBE"), None);
        // envFrom first, then env in order.
        assert_eq!(env[0].0, "CM_lives");
    }

    #[test]
    fn a_missing_object_or_key_gives_the_kubelets_message_unless_optional() {
        let p = pod(POD);
        let only_game = Catalog::default().with(&[object(Kind::ConfigMap, "game", &[])]);
        let err = container_env(&p, &p.containers[0], &facts(), &only_game).unwrap_err();
        assert_eq!(err.to_string(), "secret \"creds\" not found");
        let no_key = catalog().with(&[object(Kind::Secret, "creds", &[("user", "u")])]);
        let err = container_env(&p, &p.containers[0], &facts(), &no_key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key password in Secret default/creds"
        );
        let err = container_env(&p, &p.containers[0], &facts(), &Catalog::default()).unwrap_err();
        assert_eq!(err.to_string(), "configmap \"game\" not found");
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)", lookup), "x-$(B)");
        assert_eq!(expand("$$(A) $$ $", lookup), "$(A) $ $");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("a$b", lookup), "a$b");
    }

    #[test]
    fn limits_default_to_the_vm_and_divisors_round_up() {
        let p = pod(POD);
        let r = |yaml: &str| -> ResourceFieldRef {
            let text = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: c\n    image: i\n    env:\n    - name: X\n      valueFrom: {{resourceFieldRef: {yaml}}}\n"
            );
            match &pod(&text).containers[0].env[0].source {
                EnvSource::Resource(r) => r.clone(),
                other => panic!("{other:?}"),
            }
        };
        let of = |c: &str, yaml: &str| resource_value(&p, c, &r(yaml), &facts());
        assert_eq!(
            of("other", "{resource: limits.memory, divisor: 1Mi}"),
            "256"
        );
        assert_eq!(of("other", "{resource: limits.cpu}"), "1");
        assert_eq!(of("main", "{resource: limits.cpu}"), "1");
        assert_eq!(of("main", "{resource: limits.cpu, divisor: 1m}"), "500");
        assert_eq!(of("main", "{resource: limits.memory}"), "67108864");
        assert_eq!(of("main", "{resource: limits.memory, divisor: 1G}"), "1");
        assert_eq!(of("other", "{resource: requests.memory}"), "0");
    }

    #[test]
    fn volume_files_take_items_modes_and_downward_fields() {
        let p = pod(r#"
apiVersion: v1
kind: Pod
metadata: {name: vols, labels: {app: web, tier: "front \"end\""}}
spec:
  containers:
  - name: c
    image: busybox
    resources: {limits: {memory: 32Mi}}
  volumes:
  - name: cm
    configMap:
      name: game
      defaultMode: 0440
      items: [{key: lives, path: conf/lives, mode: 0600}, {key: mode, path: mode}]
  - name: sec
    secret: {secretName: creds, defaultMode: 256}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: mem, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
  - name: all
    projected:
      defaultMode: 0400
      sources:
      - configMap: {name: game, items: [{key: lives, path: lives}]}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
      - secret: {name: absent, optional: true}
"#);
        let files = |i: usize| {
            let manifest::VolumeSource::Files(sources) = &p.volumes[i].source else {
                panic!("a files volume");
            };
            volume_files(&p, &p.volumes[i].name, sources, &facts(), &catalog()).unwrap()
        };
        let show = |fs: Vec<VolumeFile>| {
            fs.into_iter()
                .map(|f| {
                    format!(
                        "{} {:o} {}",
                        f.path,
                        f.mode,
                        String::from_utf8_lossy(&f.data)
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(show(files(0)), ["conf/lives 600 3", "mode 440 hard"]);
        assert_eq!(show(files(1)), ["password 400 s3cr3t"]);
        assert_eq!(
            show(files(2)),
            [
                "labels 644 app=\"web\"\ntier=\"front \\\"end\\\"\"",
                "mem 644 32"
            ]
        );
        assert_eq!(show(files(3)), ["lives 400 3", "name 400 vols"]);
        // Every volume is read-only where the kubelet makes it so.
        let missing = Catalog::default();
        let manifest::VolumeSource::Files(sources) = &p.volumes[0].source else {
            unreachable!()
        };
        let err = volume_files(&p, "cm", sources, &facts(), &missing).unwrap_err();
        assert_eq!(err.to_string(), "configmap \"game\" not found");
        let no_key = Catalog::default().with(&[object(Kind::ConfigMap, "game", &[("lives", "1")])]);
        let err = volume_files(&p, "cm", sources, &facts(), &no_key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configmap default/game references non-existent config key: mode"
        );
    }
}
