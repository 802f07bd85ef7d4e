//! What a pod takes from outside its containers: `env[].valueFrom`,
//! `envFrom`, the `configMap`, `secret`, `downwardAPI` and `projected`
//! volumes, and the ConfigMap and Secret documents themselves.
//!
//! # Design
//! Only the shape is checked here: names, keys, paths, modes and field
//! paths. Whether a named object and key exist is decided when the
//! container starts (`pod/config_sources.rs`), as the kubelet decides it, so
//! an object applied later still reaches the pod.
//!
//! A file mode written `0400` is octal, as Kubernetes reads YAML (1.1);
//! the YAML 1.2 parser gives such a scalar as the string "0400", so a string
//! of octal digits with a leading zero is taken as octal. A number is
//! decimal (JSON manifests write 256).

use std::collections::BTreeMap;

use serde_norway::Value;

use super::super::{
    ConfigObject, ContainerSpec, DownwardFile, DownwardSource, EnvFrom, EnvSource, FieldRef,
    FileSource, KeyRef, KeyToPath, KeysSource, Kind, ManifestError, ResourceFieldRef, ResourceName,
    Volume, VolumeSource, Warning, DEFAULT_FILE_MODE,
};
use super::{is_relative_path, show, Obj, Resource, Seen, Walker, BOOKKEEPING};
use crate::pod::manifest::names::is_dns_subdomain;
use crate::pod::objects::decode_base64;

const VALUE_FROM_FIELDS: &[&str] = &[
    "fieldRef",
    "resourceFieldRef",
    "configMapKeyRef",
    "secretKeyRef",
];
const KEY_REF_FIELDS: &[&str] = &["name", "key", "optional"];
const FIELD_REF_FIELDS: &[&str] = &["fieldPath", "apiVersion"];
const RESOURCE_REF_FIELDS: &[&str] = &["containerName", "resource", "divisor"];
const ENV_FROM_FIELDS: &[&str] = &["prefix", "configMapRef", "secretRef"];
const OBJECT_REF_FIELDS: &[&str] = &["name", "optional"];
const CONFIG_MAP_VOLUME_FIELDS: &[&str] = &["name", "items", "defaultMode", "optional"];
const SECRET_VOLUME_FIELDS: &[&str] = &["secretName", "items", "defaultMode", "optional"];
const PROJECTED_KEYS_FIELDS: &[&str] = &["name", "items", "optional"];
const KEY_TO_PATH_FIELDS: &[&str] = &["key", "path", "mode"];
const DOWNWARD_VOLUME_FIELDS: &[&str] = &["items", "defaultMode"];
const DOWNWARD_FILE_FIELDS: &[&str] = &["path", "fieldRef", "resourceFieldRef", "mode"];
const PROJECTED_FIELDS: &[&str] = &["sources", "defaultMode"];
const PROJECTION_FIELDS: &[&str] = &["configMap", "secret", "downwardAPI"];

const OBJECT_TOP_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "data",
    "binaryData",
    "stringData",
    "type",
    "immutable",
];
const OBJECT_METADATA_FIELDS: &[&str] = &["name", "namespace", "labels", "annotations"];
const OBJECT_METADATA_IGNORED: super::Ignored = &[
    ("uid", BOOKKEEPING),
    ("creationTimestamp", BOOKKEEPING),
    ("resourceVersion", BOOKKEEPING),
    ("managedFields", BOOKKEEPING),
];

const CONFIG_KEY: &str = "a key of letters, digits, '-', '_' or '.', e.g. \"game.properties\"";
const SUBDOMAIN: &str = "a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', \
                         e.g. \"app-config\"";
const MODE: &str = "a file mode from 0 to 0777, e.g. 0400 (octal) or 256 (decimal)";
const ENV_FIELD_PATHS: &str = "one of metadata.name, metadata.namespace, metadata.uid, \
     metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, \
     spec.serviceAccountName, status.hostIP, status.hostIPs, status.podIP, status.podIPs";
const VOLUME_FIELD_PATHS: &str = "one of metadata.name, metadata.namespace, metadata.uid, \
     metadata.labels, metadata.annotations, metadata.labels['KEY'], metadata.annotations['KEY']";

/// Whether `key` may name a ConfigMap or Secret key (and so a file).
pub(crate) fn is_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Validates a ConfigMap or Secret document and builds it.
pub(crate) fn object(root: &Value) -> Result<(ConfigObject, Vec<Warning>), ManifestError> {
    let mut walker = Walker::default();
    let object = walker.config_object(root);
    match object {
        Some(o) if walker.errors.is_empty() => Ok((o, walker.warnings)),
        _ if walker.errors.len() == 1 => Err(walker.errors.remove(0)),
        _ => Err(ManifestError::Multiple(walker.errors)),
    }
}

impl Walker {
    fn config_object(&mut self, root: &Value) -> Option<ConfigObject> {
        let top = self.object(String::new(), root, OBJECT_TOP_FIELDS, &[])?;
        self.constant(&top, "apiVersion", "v1");
        let kind = match self.required_string(&top, "kind").as_deref() {
            Some("ConfigMap") => Kind::ConfigMap,
            Some("Secret") => Kind::Secret,
            _ => return None,
        };
        let name = self.required(&top, "metadata").and_then(|v| {
            let meta = self.object(
                top.path("metadata"),
                v,
                OBJECT_METADATA_FIELDS,
                OBJECT_METADATA_IGNORED,
            )?;
            if meta.get("namespace").is_some() {
                self.warnings.push(Warning {
                    path: meta.path("namespace"),
                    message: "ignored: unipod keeps one set of ConfigMaps and Secrets \
                              per state directory"
                        .to_owned(),
                });
            }
            self.string_map(&meta, "labels");
            self.string_map(&meta, "annotations");
            let name = self.required_string(&meta, "name")?;
            self.subdomain(meta.path("name"), name)
        });
        let mut data = BTreeMap::new();
        let (text_key, bytes_key) = match kind {
            Kind::ConfigMap => ("data", "binaryData"),
            Kind::Secret => ("stringData", "data"),
        };
        for (key, value) in self.string_map(&top, bytes_key) {
            let path = format!("{}[{key:?}]", top.path(bytes_key));
            match decode_base64(value.trim()) {
                Some(bytes) => self.config_entry(&mut data, path, key, bytes),
                None => self.invalid(path, &Value::String(value), "base64 text, e.g. \"aGk=\""),
            }
        }
        for (key, value) in self.string_map(&top, text_key) {
            let path = format!("{}[{key:?}]", top.path(text_key));
            if kind == Kind::ConfigMap && data.contains_key(&key) {
                self.error(ManifestError::Invalid {
                    path,
                    value: format!("{key:?}"),
                    expected: "a key not also in binaryData".to_owned(),
                });
                continue;
            }
            // A Secret's stringData wins over its data, as the API server merges them.
            data.remove(&key);
            self.config_entry(&mut data, path, key, value.into_bytes());
        }
        let immutable = self.bool(&top, "immutable").unwrap_or(false);
        let secret_type = match kind {
            Kind::Secret => self.string(&top, "type"),
            Kind::ConfigMap => {
                if top.get("type").is_some() {
                    self.error(ManifestError::Unsupported {
                        path: top.path("type"),
                        reason: Some("only a Secret has a type"),
                        suggestion: None,
                    });
                }
                None
            }
        };
        Some(ConfigObject {
            kind,
            name: name?,
            data,
            immutable,
            secret_type,
        })
    }

    fn config_entry(
        &mut self,
        data: &mut BTreeMap<String, Vec<u8>>,
        path: String,
        key: String,
        bytes: Vec<u8>,
    ) {
        if is_config_key(&key) {
            data.insert(key, bytes);
        } else {
            self.invalid(path, &Value::String(key), CONFIG_KEY);
        }
    }

    fn subdomain(&mut self, path: String, name: String) -> Option<String> {
        if is_dns_subdomain(&name) {
            Some(name)
        } else {
            self.invalid(path, &Value::String(name), SUBDOMAIN);
            None
        }
    }

    fn config_key(&mut self, obj: &Obj<'_>, field: &str) -> Option<String> {
        let key = self.required_string(obj, field)?;
        if is_config_key(&key) {
            Some(key)
        } else {
            self.invalid(obj.path(field), &Value::String(key), CONFIG_KEY);
            None
        }
    }

    /// An env var's `valueFrom`.
    pub(super) fn value_from(&mut self, path: String, value: &Value) -> Option<EnvSource> {
        let obj = self.object(path, value, VALUE_FROM_FIELDS, &[])?;
        let set: Vec<&str> = VALUE_FROM_FIELDS
            .iter()
            .copied()
            .filter(|k| obj.get(k).is_some())
            .collect();
        if set.len() != 1 {
            self.error(ManifestError::Invalid {
                path: obj.path.clone(),
                value: if set.is_empty() {
                    "nothing".to_owned()
                } else {
                    set.join(" and ")
                },
                expected: format!("exactly one of {}", VALUE_FROM_FIELDS.join(", ")),
            });
            return None;
        }
        let key = set[0];
        let value = obj.get(key).expect("present");
        match key {
            "fieldRef" => self
                .field_ref(obj.path(key), value, false)
                .map(EnvSource::Field),
            "resourceFieldRef" => self
                .resource_ref(obj.path(key), value, false)
                .map(EnvSource::Resource),
            _ => {
                let kind = if key == "secretKeyRef" {
                    Kind::Secret
                } else {
                    Kind::ConfigMap
                };
                let r = self.object(obj.path(key), value, KEY_REF_FIELDS, &[])?;
                let name = self
                    .required_string(&r, "name")
                    .and_then(|n| self.subdomain(r.path("name"), n));
                let key = self.config_key(&r, "key");
                let optional = self.bool(&r, "optional").unwrap_or(false);
                Some(EnvSource::Key(KeyRef {
                    kind,
                    name: name?,
                    key: key?,
                    optional,
                }))
            }
        }
    }

    /// A container's `envFrom`.
    pub(super) fn env_from(&mut self, container: &Obj<'_>) -> Vec<EnvFrom> {
        let mut out = Vec::new();
        for (path, item) in self.list(container, "envFrom") {
            let Some(obj) = self.object(path.clone(), item, ENV_FROM_FIELDS, &[]) else {
                continue;
            };
            let prefix = self.string(&obj, "prefix").unwrap_or_default();
            let (kind, field) = match (obj.get("configMapRef"), obj.get("secretRef")) {
                (Some(_), None) => (Kind::ConfigMap, "configMapRef"),
                (None, Some(_)) => (Kind::Secret, "secretRef"),
                (set, _) => {
                    self.error(ManifestError::Invalid {
                        path,
                        value: if set.is_some() {
                            "configMapRef and secretRef".to_owned()
                        } else {
                            "neither configMapRef nor secretRef".to_owned()
                        },
                        expected: "exactly one of configMapRef or secretRef".to_owned(),
                    });
                    continue;
                }
            };
            let Some(r) = self.object(
                obj.path(field),
                obj.get(field).expect("present"),
                OBJECT_REF_FIELDS,
                &[],
            ) else {
                continue;
            };
            let name = self
                .required_string(&r, "name")
                .and_then(|n| self.subdomain(r.path("name"), n));
            let optional = self.bool(&r, "optional").unwrap_or(false);
            if let Some(name) = name {
                out.push(EnvFrom {
                    kind,
                    name,
                    prefix,
                    optional,
                });
            }
        }
        out
    }

    /// `fieldRef`; `volume` allows the whole label and annotation maps and
    /// refuses the fields only env has.
    fn field_ref(&mut self, path: String, value: &Value, volume: bool) -> Option<FieldRef> {
        let obj = self.object(path, value, FIELD_REF_FIELDS, &[])?;
        if let Some(version) = self.string(&obj, "apiVersion") {
            if version != "v1" {
                self.invalid(obj.path("apiVersion"), &Value::String(version), "\"v1\"");
            }
        }
        let text = self.required_string(&obj, "fieldPath")?;
        let subscript = |prefix: &str| {
            text.strip_prefix(prefix)?
                .strip_prefix("['")?
                .strip_suffix("']")
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
        };
        let field = match text.as_str() {
            "metadata.name" => Some(FieldRef::Name),
            "metadata.namespace" => Some(FieldRef::Namespace),
            "metadata.uid" => Some(FieldRef::Uid),
            "metadata.labels" if volume => Some(FieldRef::Labels),
            "metadata.annotations" if volume => Some(FieldRef::Annotations),
            "spec.nodeName" if !volume => Some(FieldRef::NodeName),
            "spec.serviceAccountName" if !volume => Some(FieldRef::ServiceAccountName),
            "status.hostIP" if !volume => Some(FieldRef::HostIp),
            "status.hostIPs" if !volume => Some(FieldRef::HostIps),
            "status.podIP" if !volume => Some(FieldRef::PodIp),
            "status.podIPs" if !volume => Some(FieldRef::PodIps),
            _ => subscript("metadata.labels")
                .map(FieldRef::Label)
                .or_else(|| subscript("metadata.annotations").map(FieldRef::Annotation)),
        };
        if field.is_none() {
            let expected = if volume {
                VOLUME_FIELD_PATHS
            } else {
                ENV_FIELD_PATHS
            };
            self.invalid(obj.path("fieldPath"), &Value::String(text), expected);
        }
        field
    }

    /// `resourceFieldRef`; a volume's must name its container.
    fn resource_ref(
        &mut self,
        path: String,
        value: &Value,
        volume: bool,
    ) -> Option<ResourceFieldRef> {
        let obj = self.object(path, value, RESOURCE_REF_FIELDS, &[])?;
        let container = self.string(&obj, "containerName").filter(|c| !c.is_empty());
        if volume && container.is_none() {
            self.error(ManifestError::Missing {
                path: obj.path("containerName"),
            });
        }
        let text = self.required_string(&obj, "resource")?;
        let resource = match text.as_str() {
            "limits.cpu" => ResourceName {
                limit: true,
                cpu: true,
            },
            "limits.memory" => ResourceName {
                limit: true,
                cpu: false,
            },
            "requests.cpu" => ResourceName {
                limit: false,
                cpu: true,
            },
            "requests.memory" => ResourceName {
                limit: false,
                cpu: false,
            },
            other => {
                self.invalid(
                    obj.path("resource"),
                    &Value::String(other.to_owned()),
                    "one of limits.cpu, limits.memory, requests.cpu or requests.memory \
                     (unipod does not account ephemeral storage or huge pages)",
                );
                return None;
            }
        };
        let divisor = match obj.get("divisor") {
            None => Some(if resource.cpu { 1000 } else { 1 }),
            Some(v) => {
                let unit = if resource.cpu {
                    Resource::Cpu
                } else {
                    Resource::Memory
                };
                match self.quantity(obj.path("divisor"), v, unit) {
                    Some(0) => {
                        self.invalid(obj.path("divisor"), v, "a quantity above 0, e.g. \"1Mi\"");
                        None
                    }
                    other => other,
                }
            }
        };
        Some(ResourceFieldRef {
            container,
            resource,
            divisor: divisor?,
        })
    }

    /// A file mode: 0 to 0777, octal when written with a leading zero.
    fn mode(&mut self, obj: &Obj<'_>, key: &str) -> Option<u32> {
        let value = obj.get(key)?;
        let mode = match value {
            Value::String(s) if s.len() > 1 && s.starts_with('0') => {
                u32::from_str_radix(&s[1..], 8).ok()
            }
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        match mode.filter(|m| *m <= 0o777) {
            Some(m) => Some(m),
            None => {
                self.invalid(obj.path(key), value, MODE);
                None
            }
        }
    }

    /// A `configMap`, `secret`, `downwardAPI` or `projected` volume.
    pub(super) fn file_volume(
        &mut self,
        path: String,
        key: &str,
        value: &Value,
    ) -> Option<Vec<FileSource>> {
        match key {
            "configMap" => self
                .keys_source(path, value, Kind::ConfigMap, None)
                .map(|k| vec![FileSource::Keys(k)]),
            "secret" => self
                .keys_source(path, value, Kind::Secret, None)
                .map(|k| vec![FileSource::Keys(k)]),
            "downwardAPI" => {
                let obj = self.object(path, value, DOWNWARD_VOLUME_FIELDS, &[])?;
                let mode = self.mode(&obj, "defaultMode").unwrap_or(DEFAULT_FILE_MODE);
                let files = self.downward_files(&obj, mode);
                Some(vec![FileSource::Downward(files)])
            }
            _ => {
                let obj = self.object(path, value, PROJECTED_FIELDS, &[])?;
                let mode = self.mode(&obj, "defaultMode").unwrap_or(DEFAULT_FILE_MODE);
                let mut sources = Vec::new();
                for (path, item) in self.list(&obj, "sources") {
                    let Some(p) = self.object(path, item, PROJECTION_FIELDS, &[]) else {
                        continue;
                    };
                    for field in PROJECTION_FIELDS {
                        let Some(v) = p.get(field) else { continue };
                        let source = match *field {
                            "configMap" => self
                                .keys_source(p.path(field), v, Kind::ConfigMap, Some(mode))
                                .map(FileSource::Keys),
                            "secret" => self
                                .keys_source(p.path(field), v, Kind::Secret, Some(mode))
                                .map(FileSource::Keys),
                            _ => self
                                .object(p.path(field), v, &["items"], &[])
                                .map(|d| FileSource::Downward(self.downward_files(&d, mode))),
                        };
                        sources.extend(source);
                    }
                }
                Some(sources)
            }
        }
    }

    /// A `configMap` or `secret` volume, or (with the projected volume's
    /// mode) projection.
    fn keys_source(
        &mut self,
        path: String,
        value: &Value,
        kind: Kind,
        projected_mode: Option<u32>,
    ) -> Option<KeysSource> {
        let (fields, name_field) = match (kind, projected_mode) {
            (_, Some(_)) => (PROJECTED_KEYS_FIELDS, "name"),
            (Kind::ConfigMap, None) => (CONFIG_MAP_VOLUME_FIELDS, "name"),
            (Kind::Secret, None) => (SECRET_VOLUME_FIELDS, "secretName"),
        };
        let obj = self.object(path, value, fields, &[])?;
        let name = self
            .required_string(&obj, name_field)
            .and_then(|n| self.subdomain(obj.path(name_field), n));
        let default_mode = projected_mode
            .or_else(|| self.mode(&obj, "defaultMode"))
            .unwrap_or(DEFAULT_FILE_MODE);
        let optional = self.bool(&obj, "optional").unwrap_or(false);
        let mut items = Vec::new();
        let mut paths = Seen::new();
        for (item_path, item) in self.list(&obj, "items") {
            let Some(i) = self.object(item_path.clone(), item, KEY_TO_PATH_FIELDS, &[]) else {
                continue;
            };
            let key = self.config_key(&i, "key");
            let path = self.file_path(&i, &mut paths, &item_path);
            let mode = self.mode(&i, "mode");
            if let (Some(key), Some(path)) = (key, path) {
                items.push(KeyToPath { key, path, mode });
            }
        }
        Some(KeysSource {
            kind,
            name: name?,
            items,
            default_mode,
            optional,
        })
    }

    /// An item's `path`: relative, no `..`, no component starting with
    /// `..` (the writer's own names), unique.
    fn file_path(&mut self, obj: &Obj<'_>, seen: &mut Seen, at: &str) -> Option<String> {
        let path = self.required_string(obj, "path")?;
        if !is_relative_path(&path) || path.split('/').any(|c| c.starts_with("..")) {
            self.invalid(
                obj.path("path"),
                &Value::String(path),
                "a relative path whose parts do not start with \"..\", e.g. \"conf/app.properties\"",
            );
            return None;
        }
        self.unique(seen, "file path", &path, obj.path("path"), at);
        Some(path)
    }

    fn downward_files(&mut self, obj: &Obj<'_>, default_mode: u32) -> Vec<DownwardFile> {
        let mut files = Vec::new();
        let mut paths = Seen::new();
        for (item_path, item) in self.list(obj, "items") {
            let Some(i) = self.object(item_path.clone(), item, DOWNWARD_FILE_FIELDS, &[]) else {
                continue;
            };
            let path = self.file_path(&i, &mut paths, &item_path);
            let mode = self.mode(&i, "mode").unwrap_or(default_mode);
            let source = match (i.get("fieldRef"), i.get("resourceFieldRef")) {
                (Some(v), None) => self
                    .field_ref(i.path("fieldRef"), v, true)
                    .map(DownwardSource::Field),
                (None, Some(v)) => self
                    .resource_ref(i.path("resourceFieldRef"), v, true)
                    .map(DownwardSource::Resource),
                (set, _) => {
                    self.error(ManifestError::Invalid {
                        path: item_path,
                        value: if set.is_some() {
                            "fieldRef and resourceFieldRef".to_owned()
                        } else {
                            "neither fieldRef nor resourceFieldRef".to_owned()
                        },
                        expected: "exactly one of fieldRef or resourceFieldRef".to_owned(),
                    });
                    None
                }
            };
            if let (Some(path), Some(source)) = (path, source) {
                files.push(DownwardFile { path, source, mode });
            }
        }
        files
    }

    /// Every `resourceFieldRef.containerName` names one of the pod's
    /// containers.
    pub(super) fn check_resource_refs(
        &mut self,
        volumes: &[Volume],
        containers: &[ContainerSpec],
        init: &[ContainerSpec],
    ) {
        let exists = |name: &str| containers.iter().chain(init).any(|c| c.name == name);
        let mut missing = Vec::new();
        for volume in volumes {
            let VolumeSource::Files(sources) = &volume.source else {
                continue;
            };
            for source in sources {
                let FileSource::Downward(files) = source else {
                    continue;
                };
                for f in files {
                    if let DownwardSource::Resource(r) = &f.source {
                        if let Some(c) = r.container.as_deref().filter(|c| !exists(c)) {
                            missing.push((volume.name.clone(), f.path.clone(), c.to_owned()));
                        }
                    }
                }
            }
        }
        for c in containers.iter().chain(init) {
            for e in &c.env {
                if let EnvSource::Resource(r) = &e.source {
                    if let Some(name) = r.container.as_deref().filter(|n| !exists(n)) {
                        missing.push((c.name.clone(), e.name.clone(), name.to_owned()));
                    }
                }
            }
        }
        for (owner, item, container) in missing {
            self.error(ManifestError::Invalid {
                path: format!("resourceFieldRef.containerName of {owner}/{item}"),
                value: show(&Value::String(container)),
                expected: "the name of one of the pod's containers".to_owned(),
            });
        }
    }
}
