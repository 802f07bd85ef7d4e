//! `unipod apply`, `unipod get configmaps|secrets` and `unipod delete`: the
//! ConfigMaps and Secrets later pods take configuration from (see
//! [`crate::pod::objects`]).
//!
//! # Exit codes
//! 0 on success, 1 on failure (an invalid file, a missing object, a store
//! that cannot be written); nothing is stored unless every document of every
//! file is valid.

use std::path::PathBuf;

use crate::error_chain::error_chain;
use crate::pod::kubectl::table;
use crate::pod::manifest::{self, ManifestError};
use crate::pod::objects::{ConfigObject, Kind, ObjectError, ObjectStore};
use crate::pod::start::state_root;
use crate::pod::status::{human_duration, unix_now};

use super::pods::{Output, StateArg};

/// Exit code of a failed object command.
pub const EXIT_FAILED: i32 = 1;

/// `unipod apply` arguments.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A YAML or JSON file of ConfigMaps and Secrets (several documents
    /// separated by '---'); repeatable.
    #[arg(long = "filename", short = 'f', value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub state: StateArg,
}

/// Why an object command failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// A file is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A file holds a Pod.
    #[error("{}: holds a Pod; 'unipod apply' stores ConfigMaps and Secrets (run the pod with: unipod run -f {})", .0.display(), .0.display())]
    Pod(PathBuf),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ObjectError),
    /// No such object.
    #[error("{} {name:?} not found", kind.lower())]
    NotFound {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
    },
}

/// Parses a resource type as kubectl names it.
pub fn parse_kind(text: &str) -> Result<Kind, String> {
    match text {
        "configmap" | "configmaps" | "cm" => Ok(Kind::ConfigMap),
        "secret" | "secrets" => Ok(Kind::Secret),
        other => Err(format!(
            "unknown type {other:?}: give configmap (cm) or secret"
        )),
    }
}

fn store(state: &StateArg) -> ObjectStore {
    ObjectStore::open(&state_root(state.state_dir.as_deref()))
}

/// `unipod apply -f FILE...`: stores every ConfigMap and Secret, printing
/// `configmap/NAME created|configured|unchanged` for each.
pub fn apply(args: &ApplyArgs) -> Result<i32, ObjectsError> {
    let mut objects = Vec::new();
    for file in &args.files {
        let documents = manifest::load_documents(file)?;
        if !documents.pods.is_empty() {
            return Err(ObjectsError::Pod(file.clone()));
        }
        for w in &documents.warnings {
            eprintln!("unipod: warning: {}: {w}", file.display());
        }
        objects.extend(documents.objects);
    }
    let store = store(&args.state);
    let mut code = 0;
    for object in &objects {
        match store.apply(object) {
            Ok(applied) => println!("{}/{} {applied}", object.kind.lower(), object.name),
            Err(e) => {
                eprintln!("unipod: {}", error_chain(&e, ": "));
                code = EXIT_FAILED;
            }
        }
    }
    Ok(code)
}

/// `unipod get configmaps|secrets [NAME]`. A Secret's values are never
/// shown: its keys and their sizes only.
pub fn get(
    kind: Kind,
    name: Option<&str>,
    output: Option<&Output>,
    state: &StateArg,
) -> Result<i32, ObjectsError> {
    let store = store(state);
    let objects = match name {
        Some(name) => vec![store
            .get(kind, name)?
            .ok_or_else(|| ObjectsError::NotFound {
                kind,
                name: name.to_owned(),
            })?],
        None => store.list(kind)?,
    };
    if let Some(Output::Name) = output {
        for o in &objects {
            println!("{}/{}", o.kind.lower(), o.name);
        }
        return Ok(0);
    }
    if let Some(Output::CustomColumns(columns)) = output {
        super::pods::print_custom_columns(columns, objects.iter().map(document));
        return Ok(0);
    }
    if let Some(format @ (Output::Json | Output::Yaml | Output::JsonPath(_))) = output {
        let docs: Vec<serde_json::Value> = objects.iter().map(document).collect();
        let doc = match name {
            Some(_) => docs.into_iter().next().expect("one object"),
            None => serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": docs }),
        };
        if let Output::JsonPath(template) = format {
            let template =
                super::jsonpath::Template::parse(template).expect("checked when -o was parsed");
            print!("{}", template.render(&doc));
        } else if *format == Output::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("serializes")
            );
        } else {
            print!("{}", serde_norway::to_string(&doc).expect("serializes"));
        }
        return Ok(0);
    }
    if objects.is_empty() {
        eprintln!("No resources found");
        return Ok(0);
    }
    let mut header = vec!["NAME"];
    if kind == Kind::Secret {
        header.push("TYPE");
    }
    header.extend(["DATA", "AGE"]);
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    let now = unix_now();
    for o in &objects {
        let mut row = vec![o.name.clone()];
        if kind == Kind::Secret {
            row.push(o.secret_type.clone().unwrap_or_else(|| "Opaque".into()));
        }
        let age = store
            .modified(o.kind, &o.name)
            .map_or_else(|| "<unknown>".into(), |t| human_duration(now - t));
        row.extend([o.data.len().to_string(), age]);
        rows.push(row);
    }
    print!("{}", table(&rows));
    Ok(0)
}

/// An object as `-o yaml` shows it: a ConfigMap's text values in `data` and
/// others base64 in `binaryData`; a Secret's sizes only.
fn document(o: &ConfigObject) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": o.kind.as_str(),
        "metadata": { "name": o.name },
    });
    match o.kind {
        Kind::ConfigMap => {
            let (mut text, mut binary) = (serde_json::Map::new(), serde_json::Map::new());
            for (k, v) in &o.data {
                match std::str::from_utf8(v) {
                    Ok(s) => text.insert(k.clone(), s.into()),
                    Err(_) => {
                        use base64::Engine;
                        let b64 = base64::engine::general_purpose::STANDARD.encode(v);
                        binary.insert(k.clone(), b64.into())
                    }
                };
            }
            doc["data"] = text.into();
            if !binary.is_empty() {
                doc["binaryData"] = binary.into();
            }
        }
        Kind::Secret => {
            let sizes: serde_json::Map<String, serde_json::Value> = o
                .data
                .iter()
                .map(|(k, v)| (k.clone(), format!("<{} bytes>", v.len()).into()))
                .collect();
            doc["type"] = o
                .secret_type
                .clone()
                .unwrap_or_else(|| "Opaque".into())
                .into();
            doc["data"] = sizes.into();
        }
    }
    if o.immutable {
        doc["immutable"] = true.into();
    }
    doc
}

/// `unipod delete configmap|secret NAME`.
pub fn delete(kind: Kind, name: &str, state: &StateArg) -> Result<i32, ObjectsError> {
    if store(state).delete(kind, name)? {
        println!("{} \"{name}\" deleted", kind.lower());
        Ok(0)
    } else {
        Err(ObjectsError::NotFound {
            kind,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_as_kubectl_names_them() {
        assert_eq!(parse_kind("cm"), Ok(Kind::ConfigMap));
        assert_eq!(parse_kind("configmaps"), Ok(Kind::ConfigMap));
        assert_eq!(parse_kind("secret"), Ok(Kind::Secret));
        assert!(parse_kind("pods").is_err());
    }

    #[test]
    fn a_secrets_document_shows_sizes_not_values() {
        let secret = ConfigObject {
            kind: Kind::Secret,
            name: "db".into(),
            data: [("password".to_string(), b"hunter2".to_vec())].into(),
            immutable: false,
            secret_type: None,
        };
        let text = serde_json::to_string(&document(&secret)).unwrap();
        assert!(
            text.contains("<7 bytes>") && !text.contains("hunter2"),
            "{text}"
        );
        let cm = ConfigObject {
            kind: Kind::ConfigMap,
            ..secret
        };
        let text = serde_json::to_string(&document(&cm)).unwrap();
        assert!(text.contains("\"password\":\"hunter2\""), "{text}");
    }
}
