//! The host side of the hybrid-vsock handshake (Firecracker's wire format):
//! a host client writes `CONNECT <port>\n` and, once the guest accepts, reads
//! `OK <host_port>\n`.

#![forbid(unsafe_code)]

/// The longest line we accept: "CONNECT 4294967295\n" plus some slack.
pub const MAX_LINE_LEN: usize = 32;

/// Why a CONNECT line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// No newline within [`MAX_LINE_LEN`] bytes.
    #[error("no newline within {MAX_LINE_LEN} bytes")]
    TooLong,
    /// The line is not `CONNECT <port>`.
    #[error("expected \"CONNECT <port>\", got {0:?}")]
    NotConnect(String),
    /// The port is not a 32-bit decimal number.
    #[error("port {0:?} is not a decimal number below 2^32")]
    BadPort(String),
}

/// Parses what a host client has sent so far. `Ok(None)` means "no newline
/// yet, keep reading".
pub fn parse_connect(line: &[u8]) -> Result<Option<u32>, HandshakeError> {
    let Some(end) = line.iter().position(|&b| b == b'\n') else {
        return if line.len() >= MAX_LINE_LEN {
            Err(HandshakeError::TooLong)
        } else {
            Ok(None)
        };
    };
    let text = String::from_utf8_lossy(&line[..end]);
    let text = text.trim_end_matches('\r');
    let port = text
        .strip_prefix("CONNECT ")
        .ok_or_else(|| HandshakeError::NotConnect(text.to_string()))?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HandshakeError::BadPort(port.to_string()));
    }
    port.parse()
        .map(Some)
        .map_err(|_| HandshakeError::BadPort(port.to_string()))
}

/// The reply that tells the host client the guest accepted.
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_connect_line() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Ok(Some(1024)));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r\n"), Ok(Some(u32::MAX)));
        assert_eq!(ok_line(7), "OK 7\n");
    }

    #[test]
    fn waits_for_the_newline() {
        assert_eq!(parse_connect(b""), Ok(None));
        assert_eq!(parse_connect(b"CONNECT 10"), Ok(None));
    }

    #[test]
    fn rejects_a_line_without_newline_that_is_too_long() {
        assert_eq!(
            parse_connect(&[b'C'; MAX_LINE_LEN]),
            Err(HandshakeError::TooLong)
        );
    }

    #[test]
    fn rejects_bad_ports() {
        for bad in [
            "CONNECT abc\n",
            "CONNECT \n",
            "CONNECT -1\n",
            "CONNECT 4294967296\n",
            "CONNECT 1 2\n",
        ] {
            assert!(
                matches!(
                    parse_connect(bad.as_bytes()),
                    Err(HandshakeError::BadPort(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_other_commands() {
        assert_eq!(
            parse_connect(b"HELLO 5\n"),
            Err(HandshakeError::NotConnect("HELLO 5".into()))
        );
        assert!(parse_connect(b"connect 5\n").is_err());
    }
}
