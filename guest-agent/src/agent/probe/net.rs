//! The network checks of a probe, `tcpSocket` and `httpGet` (HTTP and
//! HTTPS), as blocking calls bounded by the probe's timeout (the prober runs
//! each on a thread of its own, off the poll loop); `grpc.rs` has the third.
//!
//! # Design
//!
//! HTTP is the kubelet's request written by hand: `GET path HTTP/1.1` with
//! `Host`, `User-Agent: kube-probe/1.33`, `Accept: */*` (each replaced by
//! a header of the probe's of the same name), the probe's other headers,
//! and `Connection: close`; only the status line is read, and its status
//! returned (a probe succeeds on 200 to 399, a hook on any). Messages follow the kubelet's (Go's) wording, which is
//! what `kubectl describe` shows: `dial tcp 127.0.0.1:80: connect:
//! connection refused`, `HTTP probe failed with statuscode: 503`.
//!
//! # Limitations
//!
//! HTTPS is TLS 1.2 or 1.3 through rustls, with no certificate check, as the
//! kubelet's (`InsecureSkipVerify`; see `tls.rs`); a TLS failure is worded
//! by rustls, not Go.
//!
//! Redirects are not followed: a 3xx is a success, as the kubelet treats a
//! redirect to another host.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// For a probe without a host: the host gives network probes the pod IP,
/// so this is for pods without a network, whose servers listen in the
/// guest's one network namespace.
pub(super) const DEFAULT_HOST: &str = "127.0.0.1";
/// The kubelet's user agent (its minor version is what kubelets send).
pub(super) const USER_AGENT: &str = "kube-probe/1.33";
/// The longest status line read.
const MAX_STATUS_LINE: usize = 4096;

/// The outcome of one check: `Ok` with the output of a success, `Err`
/// with the failure's message.
pub type Check = Result<(), String>;

/// `host:port`, with IPv6 addresses in brackets.
pub(super) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Go's words for the common connect errors.
fn dial_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

/// Connects within `deadline`; the error is Go's `dial tcp ...` message.
pub(super) fn dial(host: Option<&str>, port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let host = host.unwrap_or(DEFAULT_HOST);
    let target = host_port(host, port);
    let fail = |why: String| format!("dial tcp {target}: {why}");
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("lookup {host}: {e}")))?
        .collect();
    let mut last = fail("no address".into());
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail("i/o timeout".into()));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) => last = fail(dial_error(&e)),
        }
    }
    Err(last)
}

/// `tcpSocket`: success when a connection opens within `timeout`.
pub fn tcp(host: Option<&str>, port: u16, timeout: Duration) -> Check {
    dial(host, port, Instant::now() + timeout).map(drop)
}

/// A connected socket whose reads and writes fail with `TimedOut` once
/// `deadline` has passed: each sets the socket's timeout to the time left,
/// so a check that writes and reads many times (a TLS handshake, an
/// HTTP/2 exchange) is bounded as a whole, as Go's contexts bound it.
pub(super) struct Deadlined {
    tcp: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    pub(super) fn new(tcp: TcpStream, deadline: Instant) -> Self {
        Deadlined { tcp, deadline }
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Whether `e` is a socket timeout (Linux reports `EAGAIN` for one).
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// `httpGet`: the response's status within `timeout`. A probe succeeds on
/// 200 to 399; a hook on any status. `https` is TLS without verifying the
/// server's certificate.
pub fn http_get(
    host: Option<&str>,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    https: bool,
    timeout: Duration,
) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let host_name = host.unwrap_or(DEFAULT_HOST);
    let name = host_port(host_name, port);
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{name}{path}");
    let get_err = |why: String| format!("Get {url:?}: {why}");
    let timed_out = || {
        get_err("context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into())
    };
    let tcp = dial(host, port, deadline).map_err(get_err)?;
    let has = |h: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(h));
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !has("Host") {
        request.push_str(&format!("Host: {name}\r\n"));
    }
    if !has("User-Agent") {
        request.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !has("Accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let stream = Deadlined::new(tcp, deadline);
    let line = if https {
        let conn = super::tls::client(host_name).map_err(get_err)?;
        exchange(rustls::StreamOwned::new(conn, stream), &request)
    } else {
        exchange(stream, &request)
    };
    let line = line.map_err(|e| match e {
        Some(why) => get_err(why),
        None => timed_out(),
    })?;
    parse_status(&line).ok_or_else(|| get_err("net/http: malformed HTTP response".into()))
}

/// Sends `request` and reads up to the end of the status line; the error
/// is `None` for a timeout, else what went wrong.
fn exchange(mut stream: impl Read + Write, request: &str) -> Result<Vec<u8>, Option<String>> {
    let fail = |e: io::Error| (!is_timeout(&e)).then(|| e.to_string());
    stream.write_all(request.as_bytes()).map_err(fail)?;
    stream.flush().map_err(fail)?;
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    while !line.windows(2).any(|w| w == b"\r\n") && line.len() < MAX_STATUS_LINE {
        match stream.read(&mut buf) {
            Ok(0) => return Err(Some("EOF".into())),
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(line)
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A one-request HTTP server that answers `status` and returns the
    /// request head it received.
    fn serve_once(status: &str) -> (u16, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = status.to_string();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                // A TLS client's hello is not text: the test checks the
                // client's error, so the server just stops.
                if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut w = stream;
            let _ = write!(w, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            head
        });
        (port, handle)
    }

    /// A port nothing listens on (bound, then closed).
    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn tcp_succeeds_on_a_listener_and_fails_as_go_words_it_without() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(tcp(None, port, SECOND), Ok(()));
        let port = closed_port();
        assert_eq!(
            tcp(Some("127.0.0.1"), port, SECOND),
            Err(format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }

    #[test]
    fn http_2xx_and_3xx_succeed_and_send_the_kubelets_headers() {
        let (port, server) = serve_once("200 OK");
        let headers = vec![("X-Custom".to_string(), "Awesome".to_string())];
        assert_eq!(
            http_get(None, port, "/healthz", &headers, false, SECOND),
            Ok(200)
        );
        let head = server.join().unwrap();
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("User-Agent: kube-probe/"), "{head}");
        assert!(head.contains("X-Custom: Awesome\r\n"), "{head}");
        let (port, _server) = serve_once("302 Found");
        assert_eq!(http_get(None, port, "/", &[], false, SECOND), Ok(302));
    }

    #[test]
    fn a_probes_host_header_replaces_the_default() {
        let (port, server) = serve_once("204 No Content");
        let headers = vec![("host".to_string(), "example.com".to_string())];
        assert_eq!(http_get(None, port, "/", &headers, false, SECOND), Ok(204));
        let head = server.join().unwrap();
        assert!(head.contains("host: example.com\r\n"), "{head}");
        assert!(!head.contains("Host: 127.0.0.1"), "{head}");
    }

    #[test]
    fn http_4xx_and_5xx_come_back_as_their_status_code() {
        let (port, _server) = serve_once("500 Internal Server Error");
        assert_eq!(http_get(None, port, "/", &[], false, SECOND), Ok(500));
        let (port, _server) = serve_once("404 Not Found");
        assert_eq!(http_get(None, port, "/", &[], false, SECOND), Ok(404));
    }

    #[test]
    fn http_fails_on_refusal_and_on_a_server_that_never_answers() {
        let port = closed_port();
        let err = http_get(None, port, "/x", &[], false, SECOND).unwrap_err();
        assert_eq!(
            err,
            format!(
                "Get \"http://127.0.0.1:{port}/x\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            )
        );
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let t0 = Instant::now();
        let err = http_get(None, port, "/", &[], false, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("Client.Timeout exceeded"), "{err}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the timeout bounds the check"
        );
        drop(silent);
    }

    #[test]
    fn status_lines_parse_strictly() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), None);
    }

    /// A one-connection HTTPS server with a self-signed certificate
    /// (testdata/, made with openssl for this test), speaking only TLS
    /// `versions`; answers `status` and returns the request line.
    fn serve_tls(
        status: &'static str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (u16, thread::JoinHandle<String>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(include_bytes!("testdata/cert.pem")).unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/key.pem")).unwrap();
        #[expect(deprecated, reason = "the agent's provider, as tls.rs has it")]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut reader = io::BufReader::new(&mut tls);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            write!(tls, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            line
        });
        (port, handle)
    }

    #[test]
    fn https_accepts_a_self_signed_certificate_over_tls_1_3_and_1_2() {
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
            let (port, server) = serve_tls("200 OK", versions);
            assert_eq!(
                http_get(Some("127.0.0.1"), port, "/secure", &[], true, SECOND),
                Ok(200)
            );
            assert_eq!(server.join().unwrap(), "GET /secure HTTP/1.1\r\n");
        }
        let (port, _server) = serve_tls("503 Service Unavailable", &[&rustls::version::TLS13]);
        assert_eq!(http_get(None, port, "/", &[], true, SECOND), Ok(503));
    }

    #[test]
    fn https_to_a_plain_http_server_fails_naming_the_url() {
        let (port, _server) = serve_once("200 OK");
        let err = http_get(None, port, "/", &[], true, SECOND).unwrap_err();
        assert!(
            err.starts_with(&format!("Get \"https://127.0.0.1:{port}/\": ")),
            "{err}"
        );
    }
}
