//! Image references (`busybox`, `ghcr.io/org/app:1.2`), normalized the way
//! Docker shows them, so that every spelling of one image finds it.
//!
//! `busybox`, `busybox:latest`, `library/busybox`, `docker.io/library/busybox`
//! and `index.docker.io/library/busybox:latest` all normalize to
//! `busybox:latest`: Docker Hub's domain and its `library/` namespace are
//! dropped and a missing tag is `latest`. Other registries keep their domain
//! (`ghcr.io/org/app:1.2`). A reference pinned by digest keeps it
//! (`app@sha256:...`, with no tag implied).

use super::{is_sha256_hex, ImageError};

/// Docker Hub's names for itself.
const HUB_DOMAINS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A reference taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The registry host (and port) the reference names, `None` for a short
    /// name (`busybox`, `org/app`). Docker Hub's aliases are `docker.io`.
    pub domain: Option<String>,
    /// The repository path on the registry; Docker Hub's official images
    /// have their `library/` (`library/busybox`).
    pub repository: String,
    /// The tag, if one is given.
    pub tag: Option<String>,
    /// `sha256:<hex>`, if the reference is pinned.
    pub digest: Option<String>,
}

impl Parsed {
    /// The registry to ask: the reference's own, else Docker Hub.
    pub fn registry(&self) -> &str {
        self.domain.as_deref().unwrap_or(HUB_DOMAINS[0])
    }

    /// The tag to ask for: the given one, `latest` when neither a tag nor a
    /// digest is given.
    pub fn tag_or_latest(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// The same image on `domain` (a search registry or a resolved short
    /// name).
    pub fn on(&self, domain: &str) -> Parsed {
        let repository = match (HUB_DOMAINS.contains(&domain), self.repository.contains('/')) {
            (true, false) => format!("library/{}", self.repository),
            _ => self.repository.clone(),
        };
        Parsed {
            domain: Some(canonical_domain(domain).to_string()),
            repository,
            ..self.clone()
        }
    }

    /// The normalized name (see [`normalize`]).
    pub fn normalized(&self) -> String {
        let mut out = match self.domain.as_deref() {
            Some(d) if d != HUB_DOMAINS[0] => format!("{d}/{}", self.repository),
            // Docker Hub: official images live in library/, shown without it.
            _ => self
                .repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string(),
        };
        if let Some(tag) = self.tag_or_latest() {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }
}

/// Docker Hub under its one name, other registries as they are.
fn canonical_domain(domain: &str) -> &str {
    if HUB_DOMAINS.contains(&domain) {
        HUB_DOMAINS[0]
    } else {
        domain
    }
}

/// The normalized form of `reference`, or why it is not a valid reference.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    parse(reference).map(|p| p.normalized())
}

/// Takes `reference` apart, or says why it is not a valid reference. A
/// short name on Docker Hub (`busybox`) is qualified as Docker does
/// (`docker.io`, `library/busybox`); [`Parsed::domain`] stays `None` so a
/// pull can apply registries.conf's search list.
pub fn parse(reference: &str) -> Result<Parsed, ImageError> {
    let invalid = |reason| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| invalid("the digest after '@' must be sha256:<64 hex>"))?;
            if !is_sha256_hex(hex) {
                return Err(invalid("the digest after '@' must be sha256:<64 hex>"));
            }
            (name, Some(digest))
        }
        None => (reference, None),
    };
    // A tag follows the last ':' after the last '/' (a ':' before it is a
    // registry port).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(tag) = tag {
        check_tag(tag).map_err(invalid)?;
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    };
    if let Some(domain) = domain {
        check_domain(domain).map_err(invalid)?;
    }
    for component in path.split('/') {
        check_path_component(component).map_err(invalid)?;
    }
    let parsed = Parsed {
        domain: None,
        repository: path.to_string(),
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    };
    Ok(match domain {
        Some(domain) => parsed.on(domain),
        None => parsed,
    })
}

fn check_tag(tag: &str) -> Result<(), &'static str> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    ok.then_some(())
        .ok_or("a tag is 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    let ok = domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    ok.then_some(())
        .ok_or("a registry host is letters, digits, '.', '-' and an optional :port")
}

fn check_path_component(component: &str) -> Result<(), &'static str> {
    let bytes = component.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    ok.then_some(())
        .ok_or("each name component is lowercase letters and digits, separated by '.', '_' or '-'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_spellings_of_one_image_are_equal() {
        for spelling in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/library/busybox",
        ] {
            assert_eq!(normalize(spelling).unwrap(), "busybox:latest", "{spelling}");
        }
        assert_eq!(normalize("docker.io/user/app").unwrap(), "user/app:latest");
        assert_eq!(normalize("nginx:1.25").unwrap(), "nginx:1.25");
    }

    #[test]
    fn other_registries_keep_their_domain_and_port() {
        assert_eq!(
            normalize("ghcr.io/org/app:v1.2").unwrap(),
            "ghcr.io/org/app:v1.2"
        );
        assert_eq!(
            normalize("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalize("localhost/app").unwrap(), "localhost/app:latest");
    }

    #[test]
    fn a_digest_pins_the_reference_with_no_implied_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("docker.io/library/busybox@{digest}")).unwrap(),
            format!("busybox@{digest}")
        );
        assert!(normalize("busybox@sha256:abc").is_err());
        assert!(normalize(&format!("busybox@md5:{}", "a".repeat(32))).is_err());
    }

    #[test]
    fn parsing_qualifies_docker_hub_names_and_keeps_short_names_open() {
        let short = parse("busybox:1.28").unwrap();
        assert_eq!(short.domain, None);
        assert_eq!(short.registry(), "docker.io");
        assert_eq!(short.on("docker.io").repository, "library/busybox");
        assert_eq!(short.on("quay.io").normalized(), "quay.io/busybox:1.28");
        let hub = parse("index.docker.io/busybox").unwrap();
        assert_eq!(
            (hub.domain.as_deref(), hub.repository.as_str()),
            (Some("docker.io"), "library/busybox")
        );
        assert_eq!(hub.tag_or_latest(), Some("latest"));
        let port = parse("127.0.0.1:5000/org/app:v1").unwrap();
        assert_eq!(port.registry(), "127.0.0.1:5000");
        assert_eq!(port.repository, "org/app");
        let digest = format!("sha256:{}", "b".repeat(64));
        let pinned = parse(&format!("app@{digest}")).unwrap();
        assert_eq!(pinned.tag_or_latest(), None);
        assert_eq!(pinned.digest.as_deref(), Some(digest.as_str()));
    }

    #[test]
    fn malformed_references_are_refused_with_the_rule() {
        for (bad, says) in [
            ("", "name component"),
            ("Busybox", "lowercase"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("a//b", "name component"),
            ("my.host!/x", "registry host"),
            ("busy box", "lowercase"),
        ] {
            let err = normalize(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(err.contains(&format!("\"{bad}\"")), "{bad:?}: {err}");
        }
    }
}
