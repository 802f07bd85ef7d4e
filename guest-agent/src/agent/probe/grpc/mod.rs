//! The `grpc` check: one unary call of `grpc.health.v1.Health/Check` over
//! plaintext HTTP/2 (h2c with prior knowledge), as the kubelet's grpc
//! prober makes it, bounded by the probe's timeout.
//!
//! # Design
//!
//! A minimal HTTP/2 client written here for this one call, because the
//! agent is a small static binary with no async runtime: the Rust HTTP/2 and
//! gRPC clients (h2, tonic) all run on tokio. The header blocks go through a
//! real HPACK codec (loona-hpack), since servers Huffman-encode their
//! headers and index them in the dynamic table.
//!
//! The exchange: the client preface and an empty SETTINGS; the server's
//! SETTINGS (until then the connection is not ready, as grpc-go's
//! `WithBlock` dial waits for it); a HEADERS frame (`POST`, `:path`,
//! `content-type: application/grpc`, `te: trailers`, `grpc-timeout`) and a
//! DATA frame with the length-prefixed `HealthCheckRequest` (field 1, the
//! service name) on stream 1; then frames until stream 1 ends, answering
//! the server's SETTINGS and PINGs. The response headers, message and
//! trailers (or a Trailers-Only response) give the gRPC status and the
//! `HealthCheckResponse` (field 1, the serving status).
//!
//! The outcome is worded as the kubelet's (`pkg/probe/grpc`), which is what
//! `kubectl describe` shows: a connection that is refused or never speaks
//! HTTP/2 is retried with grpc-go's backoff (1 s, times 1.6) until the
//! timeout, then `timeout: failed to connect service "HOST:PORT" within
//! 1s: context deadline exceeded`; a status other than `SERVING` is
//! `service unhealthy (responded with "NOT_SERVING")`; a server without the
//! health service is `error: this server does not implement the grpc
//! health protocol (grpc.health.v1.Health): ...`; other gRPC errors are
//! `error: health rpc probe failed: rpc error: code = ... desc = ...`.
//!
//! # Limitations
//!
//! Plaintext only, as the kubelet (grpc probes have no TLS). No flow
//! control beyond the defaults: the request is far below the initial
//! window, and a response message larger than [`MAX_BODY`] fails the check.
//! The response's `content-type` is not checked.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use loona_hpack::{Decoder, Encoder};

use super::net::{self, host_port, is_timeout, Deadlined, DEFAULT_HOST, USER_AGENT};
use super::Check;

/// The client connection preface (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The method the health check calls.
const PATH: &str = "/grpc.health.v1.Health/Check";
/// The largest frame payload read: the default SETTINGS_MAX_FRAME_SIZE,
/// which the client does not raise.
const MAX_FRAME: usize = 16_384;
/// The largest header block (with its CONTINUATION frames) read.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest response body read; a `HealthCheckResponse` is a few bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// The HPACK dynamic table size: the default SETTINGS_HEADER_TABLE_SIZE.
const HEADER_TABLE: usize = 4096;
/// grpc-go's initial reconnect backoff, and its multiplier.
const BACKOFF: Duration = Duration::from_secs(1);
const BACKOFF_MULTIPLIER: f64 = 1.6;

/// Frame types (RFC 9113, 6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

/// Frame flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// SETTINGS_ENABLE_PUSH: the client takes no pushes.
const ENABLE_PUSH: u16 = 0x2;

/// The stream of the one call.
const STREAM: u32 = 1;

/// gRPC status codes by number, as grpc-go names them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const DEADLINE_EXCEEDED: u32 = 4;
const UNIMPLEMENTED: u32 = 12;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// `HealthCheckResponse.ServingStatus` by number.
const SERVING_STATUS: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];
const SERVING: u64 = 1;

/// Why the call failed.
#[derive(Debug, PartialEq, Eq)]
enum RpcError {
    /// The deadline passed.
    TimedOut,
    /// A gRPC status other than OK, or a transport failure mapped to one
    /// as grpc-go maps it.
    Status(u32, String),
}

fn internal(why: impl Into<String>) -> RpcError {
    RpcError::Status(INTERNAL, why.into())
}

impl From<io::Error> for RpcError {
    fn from(e: io::Error) -> Self {
        if is_timeout(&e) {
            RpcError::TimedOut
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            RpcError::Status(UNAVAILABLE, "error reading from server: EOF".into())
        } else {
            RpcError::Status(UNAVAILABLE, format!("connection error: {e}"))
        }
    }
}

/// `grpc`: calls `Health/Check` for `service` at `host:port` within
/// `timeout`; success when the answer is `SERVING`.
pub fn check(host: Option<&str>, port: u16, service: &str, timeout: Duration) -> Check {
    let deadline = Instant::now() + timeout;
    let host = host.unwrap_or(DEFAULT_HOST);
    let addr = host_port(host, port);
    let within = go_duration(timeout);
    let Some(mut conn) = connect(host, port, deadline) else {
        return Err(format!(
            "timeout: failed to connect service {addr:?} within {within}: context deadline exceeded"
        ));
    };
    let status = conn
        .call(&addr, service, deadline)
        .and_then(|body| serving_status(&body));
    match status {
        Ok(SERVING) => Ok(()),
        Ok(other) => Err(format!(
            "service unhealthy (responded with {:?})",
            status_name(other)
        )),
        Err(RpcError::TimedOut) | Err(RpcError::Status(DEADLINE_EXCEEDED, _)) => Err(format!(
            "timeout: health rpc did not complete within {within}"
        )),
        Err(RpcError::Status(UNIMPLEMENTED, message)) => Err(format!(
            "error: this server does not implement the grpc health protocol \
             (grpc.health.v1.Health): {message}"
        )),
        Err(RpcError::Status(code, message)) => Err(format!(
            "error: health rpc probe failed: rpc error: code = {} desc = {message}",
            code_name(code)
        )),
    }
}

/// A connection whose server has sent its SETTINGS, retried with grpc-go's
/// backoff until `deadline`; `None` when the deadline passed first (having
/// waited for it, as a blocking grpc-go dial does).
fn connect(host: &str, port: u16, deadline: Instant) -> Option<H2<Deadlined>> {
    let mut backoff = BACKOFF;
    loop {
        let attempt = Instant::now();
        match net::dial(Some(host), port, deadline) {
            Ok(tcp) => {
                let mut conn = H2::new(Deadlined::new(tcp, deadline));
                match conn.handshake() {
                    Ok(()) => return Some(conn),
                    Err(e) => log::debug!("grpc probe {host}:{port}: handshake: {e:?}"),
                }
            }
            Err(e) => log::debug!("grpc probe: {e}"),
        }
        let retry_at = (attempt + backoff).min(deadline);
        std::thread::sleep(retry_at.saturating_duration_since(Instant::now()));
        if Instant::now() >= deadline {
            return None;
        }
        backoff = backoff.mul_f64(BACKOFF_MULTIPLIER);
    }
}

/// One frame read.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A header block being read: its stream, its bytes so far and whether it
/// ends the stream.
struct Block {
    stream: u32,
    bytes: Vec<u8>,
    end_stream: bool,
}

/// The response to the call, as it arrives.
#[derive(Default)]
struct Response {
    headers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    body: Vec<u8>,
}

/// The client end of an HTTP/2 connection.
struct H2<S> {
    io: S,
    decoder: Decoder<'static>,
}

impl<S: Read + Write> H2<S> {
    fn new(io: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE);
        H2 { io, decoder }
    }

    /// Sends the preface and waits for the server's SETTINGS, which must
    /// be its first frame.
    fn handshake(&mut self) -> Result<(), RpcError> {
        let mut hello = PREFACE.to_vec();
        let mut push = ENABLE_PUSH.to_be_bytes().to_vec();
        push.extend_from_slice(&0u32.to_be_bytes());
        hello.extend(frame(SETTINGS, 0, 0, &push));
        self.io.write_all(&hello)?;
        let first = self.read_frame()?;
        if first.kind != SETTINGS || first.flags & ACK != 0 {
            return Err(RpcError::Status(
                UNAVAILABLE,
                "the server's first frame is not SETTINGS".into(),
            ));
        }
        self.settings(&first)
    }

    /// Answers a SETTINGS frame (an acknowledgement needs nothing).
    fn settings(&mut self, f: &Frame) -> Result<(), RpcError> {
        if f.stream != 0 || !f.payload.len().is_multiple_of(6) {
            return Err(internal("malformed SETTINGS frame"));
        }
        if f.flags & ACK == 0 {
            self.io.write_all(&frame(SETTINGS, ACK, 0, &[]))?;
        }
        Ok(())
    }

    /// Reads one frame, refusing payloads over [`MAX_FRAME`].
    fn read_frame(&mut self) -> Result<Frame, RpcError> {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        if len > MAX_FRAME {
            return Err(internal(format!(
                "frame of {len} bytes exceeds the maximum"
            )));
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload)?;
        Ok(Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }

    /// Makes the call; the response body (the length-prefixed message)
    /// when the gRPC status is OK.
    fn call(
        &mut self,
        authority: &str,
        service: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>, RpcError> {
        let left = deadline.saturating_duration_since(Instant::now());
        // grpc-timeout: at most 8 digits.
        let millis = left.as_millis().clamp(1, 99_999_999);
        let timeout = format!("{millis}m");
        let fields: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", PATH.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"user-agent", USER_AGENT.as_bytes()),
            (b"te", b"trailers"),
            (b"grpc-timeout", timeout.as_bytes()),
        ];
        let block = Encoder::new().encode(fields);
        if block.len() > MAX_FRAME {
            return Err(internal("request headers too large"));
        }
        let mut out = frame(HEADERS, END_HEADERS, STREAM, &block);
        out.extend(frame(
            DATA,
            END_STREAM,
            STREAM,
            &grpc_message(&request(service))?,
        ));
        self.io.write_all(&out)?;
        self.io.flush()?;
        let response = self.read_response()?;
        response_status(&response)?;
        Ok(response.body)
    }

    /// Reads frames until stream 1 ends, answering SETTINGS and PINGs.
    fn read_response(&mut self) -> Result<Response, RpcError> {
        let mut response = Response::default();
        let mut block: Option<Block> = None;
        loop {
            let f = self.read_frame()?;
            if block
                .as_ref()
                .is_some_and(|b| f.kind != CONTINUATION || f.stream != b.stream)
            {
                return Err(internal("a header block interrupted"));
            }
            match f.kind {
                DATA if f.stream == STREAM => {
                    let data = unpad(&f)?;
                    if response.body.len() + data.len() > MAX_BODY {
                        return Err(RpcError::Status(
                            8, // ResourceExhausted
                            format!("grpc: received a response larger than {MAX_BODY} bytes"),
                        ));
                    }
                    response.body.extend_from_slice(data);
                    if f.flags & END_STREAM != 0 {
                        return Ok(response);
                    }
                }
                HEADERS => {
                    let mut fragment = unpad(&f)?;
                    if f.flags & PRIORITY != 0 {
                        fragment = fragment
                            .get(5..)
                            .ok_or_else(|| internal("short HEADERS frame"))?;
                    }
                    block = Some(Block {
                        stream: f.stream,
                        bytes: fragment.to_vec(),
                        end_stream: f.flags & END_STREAM != 0,
                    });
                }
                CONTINUATION => {
                    let b = block
                        .as_mut()
                        .ok_or_else(|| internal("CONTINUATION without HEADERS"))?;
                    if b.bytes.len() + f.payload.len() > MAX_HEADER_BLOCK {
                        return Err(internal("header block too large"));
                    }
                    b.bytes.extend_from_slice(&f.payload);
                }
                RST_STREAM if f.stream == STREAM => {
                    let code = f
                        .payload
                        .get(..4)
                        .ok_or_else(|| internal("short RST_STREAM"))?;
                    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
                    return Err(rst_stream_status(code));
                }
                SETTINGS => self.settings(&f)?,
                PING if f.flags & ACK == 0 => {
                    if f.payload.len() != 8 {
                        return Err(internal("malformed PING frame"));
                    }
                    self.io.write_all(&frame(PING, ACK, 0, &f.payload))?;
                }
                GOAWAY => {
                    let last = f.payload.get(..4).ok_or_else(|| internal("short GOAWAY"))?;
                    let last =
                        u32::from_be_bytes([last[0], last[1], last[2], last[3]]) & 0x7fff_ffff;
                    if last < STREAM {
                        return Err(RpcError::Status(
                            UNAVAILABLE,
                            "the server closed the connection before the call (GOAWAY)".into(),
                        ));
                    }
                }
                PUSH_PROMISE => return Err(internal("PUSH_PROMISE, though push is disabled")),
                _ => {}
            }
            if f.kind == HEADERS || f.kind == CONTINUATION {
                if f.flags & END_HEADERS == 0 {
                    continue;
                }
                let Some(b) = block.take() else { continue };
                // Every block is decoded, whatever its stream: the dynamic
                // table is the connection's.
                let fields = self
                    .decoder
                    .decode(&b.bytes)
                    .map_err(|e| internal(format!("hpack: {e:?}")))?;
                if b.stream != STREAM {
                    continue;
                }
                if response.headers.is_none() {
                    response.headers = Some(fields);
                } else {
                    response.trailers = Some(fields);
                }
                if b.end_stream {
                    return Ok(response);
                }
            }
        }
    }
}

/// A frame: the 9-byte header and `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len[len.len() - 3..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A DATA or HEADERS frame's payload without its padding.
fn unpad(f: &Frame) -> Result<&[u8], RpcError> {
    if f.flags & PADDED == 0 {
        return Ok(&f.payload);
    }
    let (&pad, rest) = f
        .payload
        .split_first()
        .ok_or_else(|| internal("padded frame without a pad length"))?;
    let end = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or_else(|| internal("padding longer than the frame"))?;
    Ok(&rest[..end])
}

/// The value of header `name` in `fields`.
fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// The call's gRPC status, from the HTTP status and the trailers (or the
/// headers of a Trailers-Only response), mapped as grpc-go maps them.
fn response_status(r: &Response) -> Result<(), RpcError> {
    let headers = r
        .headers
        .as_deref()
        .ok_or_else(|| internal("server closed the stream without sending headers"))?;
    let http = field(headers, ":status").unwrap_or_default();
    let http = String::from_utf8_lossy(http);
    if http != "200" {
        let code = match http.as_ref() {
            "400" => INTERNAL,
            "401" => 16,
            "403" => 7,
            "404" => UNIMPLEMENTED,
            "429" | "502" | "503" | "504" => UNAVAILABLE,
            _ => 2,
        };
        return Err(RpcError::Status(
            code,
            format!("unexpected HTTP status code received from server: {http}"),
        ));
    }
    let trailers = r.trailers.as_deref().unwrap_or(headers);
    let Some(code) = field(trailers, "grpc-status") else {
        return Err(internal(
            "server closed the stream without sending trailers",
        ));
    };
    let code: u32 = std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            internal(format!(
                "transport: malformed grpc-status: {}",
                String::from_utf8_lossy(code)
            ))
        })?;
    if code == 0 {
        return Ok(());
    }
    let message = percent_decode(field(trailers, "grpc-message").unwrap_or_default());
    Err(RpcError::Status(code, message))
}

/// A reset of the call's stream, as grpc-go reports it.
fn rst_stream_status(code: u32) -> RpcError {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    let grpc = match code {
        7 => UNAVAILABLE,
        8 => 1,  // Canceled
        11 => 8, // ResourceExhausted
        12 => 7, // PermissionDenied
        _ => INTERNAL,
    };
    let name = usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .map_or_else(
            || format!("unknown error code {code:#x}"),
            |n| (*n).to_string(),
        );
    RpcError::Status(
        grpc,
        format!("stream terminated by RST_STREAM with error code: {name}"),
    )
}

/// `%XX` sequences of a `grpc-message` decoded; others kept as they are.
fn percent_decode(s: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let pair = (s[i] == b'%')
            .then(|| Some((hex(*s.get(i + 1)?)?, hex(*s.get(i + 2)?)?)))
            .flatten();
        match pair {
            Some((hi, lo)) => {
                out.push(u8::try_from(hi * 16 + lo).expect("two hex digits make a byte"));
                i += 3;
            }
            None => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `HealthCheckRequest` for `service`: field 1, a string, left out
/// when empty (proto3).
fn request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    msg
}

/// A gRPC message: no compression, the length, the bytes.
fn grpc_message(msg: &[u8]) -> Result<Vec<u8>, RpcError> {
    let len = u32::try_from(msg.len()).map_err(|_| internal("request too large"))?;
    let mut out = vec![0u8];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(u8::try_from(n & 0x7f).expect("7 bits") | 0x80);
        n >>= 7;
    }
    out.push(u8::try_from(n).expect("below 0x80"));
}

/// Reads a varint at `*at`, moving past it.
fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The serving status in a response body: one length-prefixed
/// `HealthCheckResponse`, whose field 1 (a varint) is the status; unknown
/// fields are skipped, and a missing status is 0 (`UNKNOWN`), as proto3
/// reads it.
fn serving_status(body: &[u8]) -> Result<u64, RpcError> {
    let bad = || internal("grpc: failed to unmarshal the received response");
    let (&compressed, rest) = body
        .split_first()
        .ok_or_else(|| internal("server closed the stream without sending a message"))?;
    if compressed != 0 {
        return Err(internal(
            "grpc: compressed flag set with identity or empty encoding",
        ));
    }
    let len = rest.get(..4).ok_or_else(bad)?;
    let len =
        usize::try_from(u32::from_be_bytes([len[0], len[1], len[2], len[3]])).map_err(|_| bad())?;
    let msg = rest.get(4..4 + len).ok_or_else(bad)?;
    let mut status = 0;
    let mut at = 0;
    while at < msg.len() {
        let key = get_varint(msg, &mut at).ok_or_else(bad)?;
        let skip = match key & 7 {
            0 => {
                let v = get_varint(msg, &mut at).ok_or_else(bad)?;
                if key >> 3 == 1 {
                    status = v;
                }
                0
            }
            1 => 8,
            2 => {
                let n = get_varint(msg, &mut at).ok_or_else(bad)?;
                usize::try_from(n).map_err(|_| bad())?
            }
            5 => 4,
            _ => return Err(bad()),
        };
        at = at
            .checked_add(skip)
            .filter(|&e| e <= msg.len())
            .ok_or_else(bad)?;
    }
    Ok(status)
}

/// A serving status as protobuf-go names it (an unknown number as itself).
fn status_name(status: u64) -> String {
    usize::try_from(status)
        .ok()
        .and_then(|s| SERVING_STATUS.get(s))
        .map_or_else(|| status.to_string(), |s| (*s).to_string())
}

/// A gRPC code as grpc-go names it.
fn code_name(code: u32) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|c| CODES.get(c))
        .map_or_else(|| format!("Code({code})"), |c| (*c).to_string())
}

/// A whole number of seconds as Go prints a `time.Duration`: `1s`,
/// `1m30s`, `1h0m0s`.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests;
