//! Printing an error with its causes, on one line or several.
//!
//! # Design
//! A leaf: every layer that reports an error to a person or a peer (the
//! `unipod` binary, the runtime API, the vCPU threads, the containerd shim,
//! the pod engine) uses it, so it depends on nothing in the crate.

/// `e` followed by each of its causes, joined by `separator`.
pub fn error_chain(e: &dyn std::error::Error, separator: &str) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        msg.push_str(separator);
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_error_in_order() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e, ": "), "outer: inner");
        assert_eq!(error_chain(&e.0, ": "), "inner");
    }
}
