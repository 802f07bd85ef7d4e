//! Name checks as Kubernetes does them, and "did you mean" for field names.

/// RFC 1123 label, as Kubernetes checks names.
pub(super) fn is_dns_label(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    matches!((bytes.first(), bytes.last()), (Some(&f), Some(&l)) if alnum(f) && alnum(l))
        && bytes.len() <= 63
        && bytes.iter().all(|&b| alnum(b) || b == b'-')
}

/// RFC 1123 subdomain (dot-separated labels, at most 253 characters), as
/// Kubernetes checks ConfigMap and Secret names.
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// IANA service name, as Kubernetes checks port names.
pub(super) fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=15).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// The known field closest to `key` (a typo or a case slip), if any is close.
pub(super) fn suggest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let limit = if key.chars().count() >= 5 { 2 } else { 1 };
    known
        .iter()
        .map(|&k| (edit_distance(&key.to_lowercase(), &k.to_lowercase()), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and swaps of neighbours each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for good in ["a", "web", "web-1", "1web", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "Web", "-web", "web-", "web_1", "web.1", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn port_names() {
        for good in ["http", "h2c", "web-8080", "a"] {
            assert!(is_port_name(good), "{good}");
        }
        for bad in [
            "",
            "8080",
            "HTTP",
            "-http",
            "http-",
            "a--b",
            "sixteen-chars-xx",
        ] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let container = ["name", "image", "command", "args", "env", "volumeMounts"];
        assert_eq!(suggest("imagee", &container), Some("image"));
        assert_eq!(suggest("Image", &container), Some("image"));
        assert_eq!(suggest("nmae", &container), Some("name"));
        assert_eq!(suggest("volumeMount", &container), Some("volumeMounts"));
        assert_eq!(suggest("livenessProbe", &container), None);
        assert_eq!(suggest("tty", &container), None);
        assert_eq!(suggest("valueFrom", &["name", "value"]), None);
    }
}
