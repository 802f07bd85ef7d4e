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

/// The normalized form of `reference`, or why it is not a valid reference.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
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
    let mut out = match domain {
        Some(d) if !HUB_DOMAINS.contains(&d) => format!("{d}/{path}"),
        // Docker Hub: official images live in library/, shown without it.
        _ => path.strip_prefix("library/").unwrap_or(path).to_string(),
    };
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    Ok(out)
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
