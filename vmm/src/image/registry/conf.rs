//! registries.conf, as podman, skopeo and CRI-O read it
//! (containers-registries.conf(5), version 2): which registry, mirror and
//! protocol a reference is pulled from.
//!
//! Read: `unqualified-search-registries`, and per `[[registry]]` its
//! `prefix`, `location`, `insecure`, `blocked`, `mirror-by-digest-only` and
//! `[[registry.mirror]]` (`location`, `insecure`, `pull-from-mirror`).
//! Other keys (`short-name-mode`, `credential-helpers`, aliases, ...) are
//! ignored, as are `registries.conf.d/` drop-ins.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::image::reference::Parsed;
use crate::image::ImageError;

/// The system-wide file.
pub const SYSTEM_FILE: &str = "/etc/containers/registries.conf";
/// Names another file.
pub const ENV_VAR: &str = "CONTAINERS_REGISTRIES_CONF";

/// A parsed registries.conf.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistriesConf {
    /// Registries a short name (`busybox`) is looked up on, in order.
    #[serde(default)]
    unqualified_search_registries: Vec<String>,
    /// Per-prefix settings.
    #[serde(default)]
    registry: Vec<RegistryEntry>,
    /// Version 1's tables, refused with the fix.
    registries: Option<toml::Value>,
    /// The file it was read from (for messages).
    #[serde(skip)]
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryEntry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorEntry {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

/// One place to try a pull from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The reference on that registry (`127.0.0.1:5000/library/busybox:1.28`).
    pub reference: Parsed,
    /// Plain HTTP and unverified certificates are allowed.
    pub insecure: bool,
    /// A mirror, not the registry itself.
    pub mirror: bool,
}

impl RegistriesConf {
    /// The file `$CONTAINERS_REGISTRIES_CONF` names, else the system's;
    /// an empty configuration when the system file does not exist.
    pub fn load_default() -> Result<RegistriesConf, ImageError> {
        match std::env::var_os(ENV_VAR) {
            Some(path) => RegistriesConf::load(Path::new(&path), true),
            None => RegistriesConf::load(Path::new(SYSTEM_FILE), false),
        }
    }

    /// Reads `path`; a missing file is an error only when `required`.
    pub fn load(path: &Path, required: bool) -> Result<RegistriesConf, ImageError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(RegistriesConf::default())
            }
            Err(e) => return Err(ImageError::io("read", path)(e)),
        };
        RegistriesConf::parse(&text, path)
    }

    /// Parses `text`, read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<RegistriesConf, ImageError> {
        let invalid = |reason: String| ImageError::RegistriesConf {
            path: path.to_path_buf(),
            reason,
        };
        let mut conf: RegistriesConf =
            toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        conf.path = path.to_path_buf();
        if conf.registries.is_some() {
            return Err(invalid(
                "[registries.search], [registries.insecure] and [registries.block] are \
                 version 1 of the format, which unipod does not read; write \
                 unqualified-search-registries and [[registry]] tables instead"
                    .into(),
            ));
        }
        for (i, entry) in conf.registry.iter().enumerate() {
            if entry.prefix.is_none() && entry.location.is_none() {
                return Err(invalid(format!(
                    "registry[{i}]: give a prefix or a location (or both)"
                )));
            }
            for (j, mirror) in entry.mirror.iter().enumerate() {
                match mirror.pull_from_mirror.as_deref() {
                    None | Some("all" | "digest-only" | "tag-only") => {}
                    Some(other) => {
                        return Err(invalid(format!(
                            "registry[{i}].mirror[{j}].pull-from-mirror: {other:?} is not \
                             one of all, digest-only, tag-only"
                        )))
                    }
                }
            }
        }
        Ok(conf)
    }

    /// The registries a short name is searched on; Docker Hub when the
    /// file lists none, as Docker does.
    pub fn search_registries(&self) -> Vec<String> {
        if self.unqualified_search_registries.is_empty() {
            vec!["docker.io".to_string()]
        } else {
            self.unqualified_search_registries.clone()
        }
    }

    /// Where to pull `reference` (qualified) from, in order: its mirrors,
    /// then the registry (or the location its prefix is rewritten to).
    pub fn sources(&self, reference: &Parsed) -> Result<Vec<Source>, ImageError> {
        let name = format!("{}/{}", reference.registry(), reference.repository);
        let Some((entry, prefix)) = self.matching(&name) else {
            return Ok(vec![Source {
                reference: reference.clone(),
                insecure: false,
                mirror: false,
            }]);
        };
        if entry.blocked {
            return Err(ImageError::Blocked {
                reference: reference.normalized(),
                prefix: prefix.to_string(),
                path: self.path.clone(),
            });
        }
        let rest = &name[prefix.len()..];
        let rewrite = |location: &str| -> Result<Parsed, ImageError> {
            let mut rewritten = format!("{location}{rest}");
            if let Some(tag) = &reference.tag {
                rewritten = format!("{rewritten}:{tag}");
            }
            if let Some(digest) = &reference.digest {
                rewritten = format!("{rewritten}@{digest}");
            }
            let parsed = crate::image::reference::parse(&rewritten).map_err(|e| {
                ImageError::RegistriesConf {
                    path: self.path.clone(),
                    reason: format!("prefix {prefix:?} rewrites the reference badly: {e}"),
                }
            })?;
            // A location with no dot or port is still a host here.
            Ok(match parsed.domain {
                Some(_) => parsed,
                None => {
                    let (host, repository) =
                        parsed.repository.split_once('/').unwrap_or((location, ""));
                    Parsed {
                        domain: Some(host.to_string()),
                        repository: repository.to_string(),
                        ..parsed
                    }
                }
            })
        };
        let by_digest = reference.digest.is_some();
        let mut sources = Vec::new();
        for mirror in &entry.mirror {
            let wanted = match mirror.pull_from_mirror.as_deref() {
                Some("digest-only") => by_digest,
                Some("tag-only") => !by_digest,
                Some(_) => true,
                None => by_digest || !entry.mirror_by_digest_only,
            };
            if wanted {
                sources.push(Source {
                    reference: rewrite(&mirror.location)?,
                    insecure: mirror.insecure,
                    mirror: true,
                });
            }
        }
        let location = entry.location.as_deref().unwrap_or(prefix);
        sources.push(Source {
            reference: rewrite(location)?,
            insecure: entry.insecure,
            mirror: false,
        });
        Ok(sources)
    }

    /// The entry whose prefix matches `name` (`host/path/repo`) the
    /// longest, with that prefix.
    fn matching<'a>(&'a self, name: &str) -> Option<(&'a RegistryEntry, &'a str)> {
        self.registry
            .iter()
            .filter_map(|entry| {
                let prefix = entry.prefix.as_deref().or(entry.location.as_deref())?;
                prefix_matches(prefix, name).then_some((entry, prefix))
            })
            .max_by_key(|(_, prefix)| prefix.len())
    }
}

/// Whether `prefix` covers `name`: equal, or a leading part of it that
/// ends at a `/`. `*.example.com` covers every subdomain's references.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = name.split('/').next().unwrap_or(name);
        return host.ends_with(&format!(".{domain}"));
    }
    let prefix = canonical(prefix);
    name == prefix
        || name
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Docker Hub's aliases as `docker.io`, as references are.
fn canonical(prefix: &str) -> String {
    for alias in ["index.docker.io", "registry-1.docker.io"] {
        if let Some(rest) = prefix.strip_prefix(alias) {
            return format!("docker.io{rest}");
        }
    }
    prefix.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::reference::parse;

    fn conf(text: &str) -> RegistriesConf {
        RegistriesConf::parse(text, Path::new("registries.conf")).unwrap()
    }

    fn names(sources: &[Source]) -> Vec<(String, bool, bool)> {
        sources
            .iter()
            .map(|s| {
                let r = &s.reference;
                (
                    format!("{}/{}", r.registry(), r.normalized_path()),
                    s.insecure,
                    s.mirror,
                )
            })
            .collect()
    }

    impl Parsed {
        fn normalized_path(&self) -> String {
            let mut s = self.repository.clone();
            if let Some(tag) = &self.tag {
                s = format!("{s}:{tag}");
            }
            s
        }
    }

    #[test]
    fn a_mirror_for_docker_hub_comes_first_then_the_hub() {
        let c = conf(
            r#"
            unqualified-search-registries = ["docker.io"]
            [[registry]]
            prefix = "docker.io"
            location = "registry-1.docker.io"
            [[registry.mirror]]
            location = "127.0.0.1:5000"
            insecure = true
            "#,
        );
        let sources = c
            .sources(&parse("busybox:1.28").unwrap().on("docker.io"))
            .unwrap();
        assert_eq!(
            names(&sources),
            vec![
                ("127.0.0.1:5000/library/busybox:1.28".into(), true, true),
                // Docker Hub's aliases are one registry.
                ("docker.io/library/busybox:1.28".into(), false, false),
            ]
        );
    }

    #[test]
    fn the_longest_prefix_wins_and_rewrites_the_path() {
        let c = conf(
            r#"
            [[registry]]
            location = "example.com"
            insecure = true
            [[registry]]
            prefix = "example.com/team"
            location = "mirror.internal:8443/cache/team"
            "#,
        );
        let team = c
            .sources(&parse("example.com/team/app:v1").unwrap())
            .unwrap();
        assert_eq!(
            names(&team),
            vec![(
                "mirror.internal:8443/cache/team/app:v1".into(),
                false,
                false
            )]
        );
        let other = c
            .sources(&parse("example.com/teamx/app:v1").unwrap())
            .unwrap();
        assert_eq!(
            names(&other),
            vec![("example.com/teamx/app:v1".into(), true, false)]
        );
    }

    #[test]
    fn digest_only_mirrors_are_skipped_for_tags() {
        let c = conf(
            r#"
            [[registry]]
            location = "quay.io"
            [[registry.mirror]]
            location = "m1.local"
            pull-from-mirror = "digest-only"
            [[registry.mirror]]
            location = "m2.local"
            "#,
        );
        let tag = c.sources(&parse("quay.io/a/b:1").unwrap()).unwrap();
        assert_eq!(tag.len(), 2);
        assert_eq!(tag[0].reference.registry(), "m2.local");
        let digest = format!("quay.io/a/b@sha256:{}", "c".repeat(64));
        assert_eq!(c.sources(&parse(&digest).unwrap()).unwrap().len(), 3);
    }

    #[test]
    fn a_blocked_registry_is_refused_with_the_file() {
        let c = conf("[[registry]]\nlocation = \"evil.example\"\nblocked = true\n");
        let err = c
            .sources(&parse("evil.example/x:1").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blocked") && err.contains("registries.conf"),
            "{err}"
        );
    }

    #[test]
    fn version_1_tables_and_bad_values_are_refused_by_field() {
        let v1 = RegistriesConf::parse(
            "[registries.search]\nregistries = ['docker.io']\n",
            Path::new("r.conf"),
        )
        .unwrap_err()
        .to_string();
        assert!(v1.contains("version 1"), "{v1}");
        let bad = RegistriesConf::parse(
            "[[registry]]\nlocation = \"a.io\"\n[[registry.mirror]]\nlocation = \"b.io\"\npull-from-mirror = \"sometimes\"\n",
            Path::new("r.conf"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("registry[0].mirror[0].pull-from-mirror"),
            "{bad}"
        );
        assert!(
            RegistriesConf::parse("[[registry]]\ninsecure = true\n", Path::new("r"))
                .unwrap_err()
                .to_string()
                .contains("prefix or a location")
        );
    }

    #[test]
    fn short_names_search_docker_hub_unless_configured() {
        assert_eq!(conf("").search_registries(), vec!["docker.io"]);
        assert_eq!(
            conf("unqualified-search-registries = ['quay.io', 'docker.io']").search_registries(),
            vec!["quay.io", "docker.io"]
        );
    }
}
