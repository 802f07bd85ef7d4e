//! Kubernetes ConfigMaps and Secrets: the objects pods take configuration
//! from, kept in the state directory for later pods.
//!
//! # Design
//! `unipod apply -f`, and `unipod run -f` for the objects next to a Pod, store
//! each object as one JSON file, `<state>/objects/<kind>/<name>.json`, written
//! to a temporary file and renamed, so a reader sees the old object or the
//! new one. Secrets live in a directory only root can enter (0700) and their
//! files are 0600. A pod reads the objects when each container starts (env)
//! and, for its volumes, once a second while it runs, so `unipod apply`
//! reaches mounted ConfigMap and Secret files as it does in Kubernetes.
//!
//! There is one set of objects per state directory: `metadata.namespace` is
//! accepted and ignored, as it is for pods.
//!
//! A Secret's values are never printed: `unipod get secrets` shows keys and
//! sizes only, and `Debug` of an object hides a Secret's bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::file_error::FileError;

/// Which kind of object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `v1` `ConfigMap`.
    ConfigMap,
    /// `v1` `Secret`.
    Secret,
}

impl Kind {
    /// The kind as the API spells it (`ConfigMap`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }

    /// The lowercase name kubectl and the kubelet's messages use
    /// (`configmap "x" not found`).
    pub fn lower(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ConfigMap or Secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigObject {
    /// Which kind.
    pub kind: Kind,
    /// `metadata.name`, a DNS-1123 subdomain.
    pub name: String,
    /// The keys and their bytes: a ConfigMap's `data` and `binaryData`, a
    /// Secret's `data` and `stringData` (which wins).
    #[serde(with = "base64_values")]
    pub data: BTreeMap<String, Vec<u8>>,
    /// `immutable`: later applies may not change `data`.
    #[serde(default)]
    pub immutable: bool,
    /// A Secret's `type` (`Opaque` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
}

impl fmt::Debug for ConfigObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ConfigObject");
        d.field("kind", &self.kind).field("name", &self.name);
        match self.kind {
            Kind::ConfigMap => d.field("data", &self.data),
            Kind::Secret => d.field("keys", &self.data.keys().collect::<Vec<_>>()),
        };
        d.field("immutable", &self.immutable).finish()
    }
}

impl ConfigObject {
    /// The value of `key` as text (lossy for bytes that are not UTF-8).
    pub fn text(&self, key: &str) -> Option<String> {
        self.data
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// What [`ObjectStore::apply`] did, in kubectl's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A new object.
    Created,
    /// An object whose content changed.
    Configured,
    /// The same object again.
    Unchanged,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        })
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
    /// A stored object is not valid JSON.
    #[error("{}: corrupt object file; delete it and apply the object again", .0.display())]
    Corrupt(PathBuf, #[source] serde_json::Error),
    /// An immutable object's data would change.
    #[error("{kind} {name:?} is immutable: its data cannot change; delete it and apply it again")]
    Immutable {
        /// The kind.
        kind: Kind,
        /// The name.
        name: String,
    },
}

/// The objects of one state directory.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    dir: PathBuf,
}

impl ObjectStore {
    /// The store under `state` (created on the first apply).
    pub fn open(state: &Path) -> ObjectStore {
        ObjectStore {
            dir: state.join("objects"),
        }
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        self.dir.join(kind.dir()).join(format!("{name}.json"))
    }

    /// Stores `object`, replacing the one of its kind and name.
    pub fn apply(&self, object: &ConfigObject) -> Result<Applied, ObjectError> {
        let old = self.get(object.kind, &object.name)?;
        let applied = match &old {
            None => Applied::Created,
            Some(old) if old == object => return Ok(Applied::Unchanged),
            Some(_) => Applied::Configured,
        };
        if let Some(old) = old.filter(|o| o.immutable) {
            if old.data != object.data || !object.immutable {
                return Err(ObjectError::Immutable {
                    kind: object.kind,
                    name: object.name.clone(),
                });
            }
        }
        let dir = self.dir.join(object.kind.dir());
        // Secrets: only root may list or read them.
        let mode = if object.kind == Kind::Secret {
            0o700
        } else {
            0o755
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&dir)
            .map_err(FileError::at("create", &dir))?;
        let path = self.path(object.kind, &object.name);
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), object.name));
        let json = serde_json::to_vec(object).expect("objects serialize");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(FileError::at("write", &path)(e).into());
        }
        Ok(applied)
    }

    /// The object of `kind` named `name`, if stored.
    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<ConfigObject>, ObjectError> {
        let path = self.path(kind, name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FileError::at("read", &path)(e).into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ObjectError::Corrupt(path, e))
    }

    /// Every stored object of `kind`, by name.
    pub fn list(&self, kind: Kind) -> Result<Vec<ConfigObject>, ObjectError> {
        let dir = self.dir.join(kind.dir());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FileError::at("read", &dir)(e).into()),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".json")?;
                (!stem.starts_with('.')).then(|| stem.to_owned())
            })
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            out.extend(self.get(kind, &name)?);
        }
        Ok(out)
    }

    /// When the object was last applied (seconds since the epoch).
    pub fn modified(&self, kind: Kind, name: &str) -> Option<i64> {
        let modified = std::fs::metadata(self.path(kind, name))
            .ok()?
            .modified()
            .ok()?;
        let secs = modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        i64::try_from(secs).ok()
    }

    /// Removes the object; false when there was none.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<bool, ObjectError> {
        let path = self.path(kind, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(FileError::at("remove", &path)(e).into()),
        }
    }
}

/// Where a pod finds the objects it names: the store, with the objects of
/// the files being run or dry-run laid over it.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    store: Option<ObjectStore>,
    overlay: BTreeMap<(Kind, String), ConfigObject>,
}

impl Catalog {
    /// The objects of `store`.
    pub fn new(store: Option<ObjectStore>) -> Catalog {
        Catalog {
            store,
            overlay: BTreeMap::new(),
        }
    }

    /// `objects` in place of the stored ones of the same kind and name.
    pub fn with(mut self, objects: &[ConfigObject]) -> Catalog {
        for o in objects {
            self.overlay.insert((o.kind, o.name.clone()), o.clone());
        }
        self
    }

    /// The object, if any. A store that cannot be read counts as not having
    /// it, with a warning in the log: the container then waits, as it would
    /// for a missing object, and the next try reads again.
    pub fn get(&self, kind: Kind, name: &str) -> Option<ConfigObject> {
        if let Some(o) = self.overlay.get(&(kind, name.to_owned())) {
            return Some(o.clone());
        }
        match self.store.as_ref()?.get(kind, name) {
            Ok(o) => o,
            Err(e) => {
                log::warn!("{}", crate::error_chain::error_chain(&e, ": "));
                None
            }
        }
    }
}

/// Serializes the values of a byte map as base64 strings.
mod base64_values {
    use std::collections::BTreeMap;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let encoded: BTreeMap<&String, String> =
            map.iter().map(|(k, v)| (k, STANDARD.encode(v))).collect();
        encoded.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let encoded = BTreeMap::<String, String>::deserialize(d)?;
        encoded
            .into_iter()
            .map(|(k, v)| {
                STANDARD
                    .decode(v)
                    .map(|b| (k, b))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// Decodes a Secret's or ConfigMap's base64 value, as the API server does
/// (standard alphabet, padding required).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// An object of text values, for tests.
#[cfg(test)]
pub(crate) fn object(kind: Kind, name: &str, pairs: &[(&str, &str)]) -> ConfigObject {
    ConfigObject {
        kind,
        name: name.into(),
        data: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        immutable: false,
        secret_type: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_get_list_delete_round_trip_in_kubectls_words() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path());
        let cm = object(Kind::ConfigMap, "game", &[("a", "1")]);
        assert_eq!(store.apply(&cm).unwrap(), Applied::Created);
        assert_eq!(store.apply(&cm).unwrap(), Applied::Unchanged);
        let changed = object(Kind::ConfigMap, "game", &[("a", "2")]);
        assert_eq!(store.apply(&changed).unwrap(), Applied::Configured);
        assert_eq!(store.get(Kind::ConfigMap, "game").unwrap(), Some(changed));
        assert_eq!(store.get(Kind::Secret, "game").unwrap(), None);
        let secret = object(Kind::Secret, "pw", &[("p", "s3cr3t")]);
        store.apply(&secret).unwrap();
        assert_eq!(store.list(Kind::Secret).unwrap(), [secret]);
        assert!(store.delete(Kind::ConfigMap, "game").unwrap());
        assert!(!store.delete(Kind::ConfigMap, "game").unwrap());
        assert!(store.list(Kind::ConfigMap).unwrap().is_empty());
    }

    #[test]
    fn secrets_are_root_only_and_never_debug_printed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path());
        let secret = object(Kind::Secret, "pw", &[("password", "hunter2")]);
        store.apply(&secret).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("objects/secrets")), 0o700);
        assert_eq!(mode(&dir.path().join("objects/secrets/pw.json")), 0o600);
        let shown = format!("{secret:?}");
        assert!(
            shown.contains("password") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn an_immutable_objects_data_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path());
        let mut cm = object(Kind::ConfigMap, "fixed", &[("a", "1")]);
        cm.immutable = true;
        store.apply(&cm).unwrap();
        let mut changed = object(Kind::ConfigMap, "fixed", &[("a", "2")]);
        changed.immutable = true;
        let err = store.apply(&changed).unwrap_err().to_string();
        assert!(err.contains("immutable"), "{err}");
        assert!(store.delete(Kind::ConfigMap, "fixed").unwrap());
        assert_eq!(store.apply(&changed).unwrap(), Applied::Created);
    }

    #[test]
    fn the_catalog_prefers_the_objects_being_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path());
        store
            .apply(&object(Kind::ConfigMap, "c", &[("k", "stored")]))
            .unwrap();
        let catalog = Catalog::new(Some(store.clone()));
        assert_eq!(
            catalog
                .get(Kind::ConfigMap, "c")
                .unwrap()
                .text("k")
                .unwrap(),
            "stored"
        );
        let catalog = catalog.with(&[object(Kind::ConfigMap, "c", &[("k", "new")])]);
        assert_eq!(
            catalog
                .get(Kind::ConfigMap, "c")
                .unwrap()
                .text("k")
                .unwrap(),
            "new"
        );
        assert!(catalog.get(Kind::Secret, "c").is_none());
    }
}
