//! Registry credentials in the files podman, skopeo and docker keep them in
//! (containers-auth.json(5)): `{"auths": {"KEY": {"auth": base64("user:password")}}}`,
//! where KEY is a registry (`quay.io`), a namespace or repository on it
//! (`quay.io/org`), or Docker's legacy URL form (`https://index.docker.io/v1/`).
//!
//! Read, in order (the first file with a matching entry wins):
//! `--authfile` or `$REGISTRY_AUTH_FILE` alone when given; else
//! `$XDG_RUNTIME_DIR/containers/auth.json` (`/run/containers/0/auth.json`
//! for root without one), `~/.config/containers/auth.json`,
//! `~/.docker/config.json`. `unipod login` writes the first of those.
//! Credential helpers (`credHelpers`, `credsStore`) are not run.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::image::ImageError;

/// Names the auth file, as for podman.
pub const ENV_VAR: &str = "REGISTRY_AUTH_FILE";

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password or access token.
    pub password: String,
    /// The file they come from (for messages).
    pub file: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("file", &self.file)
            .finish()
    }
}

/// The auth files to read, in order; `explicit` is `--authfile`.
pub fn files_to_read(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_path_buf()];
    }
    if let Some(path) = std::env::var_os(ENV_VAR) {
        return vec![PathBuf::from(path)];
    }
    let mut files = vec![runtime_file()];
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        files.push(home.join(".config/containers/auth.json"));
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// The file `unipod login` writes; `explicit` is `--authfile`.
pub fn file_to_write(explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::var_os(ENV_VAR).map_or_else(runtime_file, PathBuf::from),
    }
}

/// `$XDG_RUNTIME_DIR/containers/auth.json`, or podman's place for a user
/// without one.
fn runtime_file() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("containers/auth.json"),
        None => PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            nix::unistd::geteuid()
        )),
    }
}

/// The credentials for `repository` (`host/path/repo`) in `files`: the
/// entry with the longest matching key in the first file that has one.
pub fn find(files: &[PathBuf], repository: &str) -> Result<Option<Credentials>, ImageError> {
    for file in files {
        let Some(auths) = read_auths(file)? else {
            continue;
        };
        let best = auths
            .iter()
            .filter_map(|(key, entry)| {
                let key = normalize_key(key);
                covers(&key, repository).then_some((key.len(), entry))
            })
            .max_by_key(|(len, _)| *len);
        if let Some((_, entry)) = best {
            return decode(entry, file).map(Some);
        }
    }
    Ok(None)
}

/// The credentials of a Docker config (`{"auths": {KEY: {"auth": ...}}}`,
/// as in a `kubernetes.io/dockerconfigjson` Secret, or the legacy
/// `.dockercfg` form with the entries at the top), by normalized key;
/// `origin` names the Secret in messages.
pub fn from_docker_config(
    json: &[u8],
    origin: &Path,
) -> Result<Vec<(String, Credentials)>, ImageError> {
    let value: Value = serde_json::from_slice(json).map_err(|e| ImageError::AuthFile {
        path: origin.to_path_buf(),
        reason: format!("not a Docker config JSON: {e}"),
    })?;
    let auths = match value.get("auths") {
        Some(Value::Object(auths)) => auths.clone(),
        Some(_) => {
            return Err(ImageError::AuthFile {
                path: origin.to_path_buf(),
                reason: "\"auths\" must be an object of registry entries".into(),
            })
        }
        None => match value {
            Value::Object(entries) => entries,
            _ => Map::new(),
        },
    };
    auths
        .iter()
        .map(|(key, entry)| Ok((normalize_key(key), decode(entry, origin)?)))
        .collect()
}

/// Stores `username`/`password` for `key` (a registry, or a namespace on
/// one) in `file`, creating it (mode 0600) as needed.
pub fn store(file: &Path, key: &str, username: &str, password: &str) -> Result<(), ImageError> {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    update(file, |auths| {
        auths.insert(key.to_string(), serde_json::json!({ "auth": auth }));
    })
}

/// Removes the entries for `key` (in any spelling) from `file`; returns
/// whether there was one.
pub fn remove(file: &Path, key: &str) -> Result<bool, ImageError> {
    let wanted = normalize_key(key);
    let mut found = false;
    if read_auths(file)?.is_none() {
        return Ok(false);
    }
    update(file, |auths| {
        auths.retain(|k, _| {
            let keep = normalize_key(k) != wanted;
            found |= !keep;
            keep
        });
    })?;
    Ok(found)
}

/// Removes every entry from `file`.
pub fn remove_all(file: &Path) -> Result<(), ImageError> {
    if read_auths(file)?.is_none() {
        return Ok(());
    }
    update(file, Map::clear)
}

/// The `auths` object of `file`, `None` when the file does not exist.
fn read_auths(file: &Path) -> Result<Option<Map<String, Value>>, ImageError> {
    let text = match fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io("read", file)(e)),
    };
    let value: Value = serde_json::from_slice(&text).map_err(|e| ImageError::AuthFile {
        path: file.to_path_buf(),
        reason: format!("not JSON: {e}"),
    })?;
    match value.get("auths") {
        None => Ok(Some(Map::new())),
        Some(Value::Object(auths)) => Ok(Some(auths.clone())),
        Some(_) => Err(ImageError::AuthFile {
            path: file.to_path_buf(),
            reason: "\"auths\" must be an object of registry entries".into(),
        }),
    }
}

/// Rewrites `file` with `change` applied to its `auths`, keeping every
/// other key (docker's `credHelpers`, ...). Written to a temporary file
/// (0600) and renamed, so a reader never sees half of it.
fn update(file: &Path, change: impl FnOnce(&mut Map<String, Value>)) -> Result<(), ImageError> {
    let mut root = match fs::read(file) {
        Ok(text) => serde_json::from_slice(&text).map_err(|e| ImageError::AuthFile {
            path: file.to_path_buf(),
            reason: format!("not JSON: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Object(Map::new()),
        Err(e) => return Err(ImageError::io("read", file)(e)),
    };
    let Value::Object(object) = &mut root else {
        return Err(ImageError::AuthFile {
            path: file.to_path_buf(),
            reason: "must be a JSON object".into(),
        });
    };
    let auths = object
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(ImageError::AuthFile {
            path: file.to_path_buf(),
            reason: "\"auths\" must be an object of registry entries".into(),
        });
    };
    change(auths);
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
        if dir.ends_with("containers") {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
    }
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    let text = serde_json::to_vec_pretty(&root).expect("JSON values serialize");
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text));
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, file)) {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::io("write", file)(e));
    }
    Ok(())
}

/// A key as a registry or repository path: Docker's
/// `https://index.docker.io/v1/` is `docker.io`.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    match key.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", canonical_host(host)),
        None => canonical_host(key).to_string(),
    }
}

fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

/// Whether `key` is `repository` or one of its leading path parts.
fn covers(key: &str, repository: &str) -> bool {
    repository == key
        || repository
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn decode(entry: &Value, file: &Path) -> Result<Credentials, ImageError> {
    let bad = |reason: &str| ImageError::AuthFile {
        path: file.to_path_buf(),
        reason: reason.to_string(),
    };
    let auth = entry
        .get("auth")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("an entry has no \"auth\" (base64 of user:password); log in again"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad("an entry's \"auth\" is not base64; log in again"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| bad("an entry's \"auth\" is not UTF-8 user:password; log in again"))?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| bad("an entry's \"auth\" is not user:password; log in again"))?;
    Ok(Credentials {
        username: username.to_string(),
        password: password.to_string(),
        file: file.to_path_buf(),
    })
}

/// The entries of an auth file by key, for tests.
#[cfg(test)]
fn keys(file: &Path) -> std::collections::BTreeMap<String, Value> {
    read_auths(file)
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_key_wins_and_docker_legacy_keys_mean_docker_hub() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        fs::write(
            &file,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pw1")},
                "quay.io": {"auth": b64("q:pw2")},
                "quay.io/team": {"auth": b64("team:pw3")},
            }})
            .to_string(),
        )
        .unwrap();
        let files = [file.clone()];
        let user = |repo: &str| find(&files, repo).unwrap().map(|c| c.username);
        assert_eq!(user("docker.io/library/busybox").as_deref(), Some("hub"));
        assert_eq!(user("quay.io/team/app").as_deref(), Some("team"));
        assert_eq!(user("quay.io/teamx/app").as_deref(), Some("q"));
        assert_eq!(user("ghcr.io/x/y"), None);
    }

    #[test]
    fn store_and_remove_keep_other_keys_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/auth.json");
        store(&file, "127.0.0.1:5000", "u", "p:with:colons").unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let creds = find(std::slice::from_ref(&file), "127.0.0.1:5000/app")
            .unwrap()
            .unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("u", "p:with:colons")
        );
        let mut root: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        root["credHelpers"] = serde_json::json!({"gcr.io": "gcloud"});
        fs::write(&file, root.to_string()).unwrap();
        assert!(remove(&file, "127.0.0.1:5000").unwrap());
        assert!(!remove(&file, "127.0.0.1:5000").unwrap());
        assert!(keys(&file).is_empty());
        let root: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(root["credHelpers"]["gcr.io"], "gcloud");
    }

    #[test]
    fn a_malformed_entry_names_the_file_and_says_to_log_in() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        fs::write(&file, r#"{"auths":{"r.io":{"auth":"bm9jb2xvbg=="}}}"#).unwrap();
        let err = find(std::slice::from_ref(&file), "r.io/x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.json") && err.contains("log in again"),
            "{err}"
        );
    }
}
