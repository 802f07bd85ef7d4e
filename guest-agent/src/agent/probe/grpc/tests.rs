//! Unit tests of the grpc check: a tiny HTTP/2 server in the test, header
//! blocks as a real HPACK encoder writes them, and hostile frames.

use std::io::Cursor;
use std::net::TcpListener;
use std::thread;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// Header blocks as a real HPACK encoder writes them (Python's hpack,
// huffman=True, one encoder for both blocks): Huffman strings, static
// and dynamic table entries.
/// `:status: 200`, `content-type: application/grpc`,
/// `grpc-accept-encoding: identity,deflate,gzip`.
const HEADERS_BLOCK: &str = "885f8b1d75d0620d263d4c4d6564408e9acac8b0c842d6958b510f21aa9b903485a9264fafa90b2d03497ea6f66aff";
/// `grpc-status: 0`, then `content-type` by its dynamic-table index.
const TRAILERS_BLOCK: &str = "40889acac8b21234da8f8107c0";
/// A Trailers-Only response (fresh encoder): `:status: 200`,
/// `content-type`, `grpc-status: 12`, `grpc-message: Method not found:
/// grpc.health.v1.Health/Check`.
const UNIMPLEMENTED_BLOCK: &str = "885f8b1d75d0620d263d4c4d656440889acac8b21234da8f8208bf40899acac8b5254207317fa1d054ce7914a8e95253db5497149acac8bce51d099d7ee15f1947426762f4e5275f";

/// A response message with serving status `status`.
fn health(status: u8) -> Vec<u8> {
    grpc_message(&[0x08, status]).unwrap()
}

/// What the test server saw of the client.
#[derive(Debug, Default)]
struct Seen {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    settings_acked: bool,
    ponged: bool,
}

/// A one-connection HTTP/2 server: sends SETTINGS and a PING, reads the
/// request up to its END_STREAM, answers `reply` (whole frames), then
/// reads until the client closes.
fn serve(reply: Vec<Vec<u8>>) -> (u16, thread::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut preface = [0u8; 24];
        tcp.read_exact(&mut preface).unwrap();
        assert_eq!(&preface[..], PREFACE);
        let mut hello = frame(SETTINGS, 0, 0, &[]);
        hello.extend(frame(PING, 0, 0, b"12345678"));
        tcp.write_all(&hello).unwrap();
        let mut server = H2::new(tcp);
        let mut seen = Seen::default();
        let mut replied = false;
        while let Ok(f) = server.read_frame() {
            match f.kind {
                SETTINGS if f.flags & ACK != 0 => seen.settings_acked = true,
                PING if f.flags & ACK != 0 => seen.ponged = f.payload == b"12345678",
                HEADERS => seen.headers = server.decoder.decode(&f.payload).unwrap(),
                DATA => seen.body.extend_from_slice(&f.payload),
                _ => {}
            }
            if f.kind == DATA && f.flags & END_STREAM != 0 && !replied {
                replied = true;
                server.io.write_all(&reply.concat()).unwrap();
            }
        }
        seen
    });
    (port, handle)
}

fn headers_frame(block: &[u8], flags: u8) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, STREAM, block)
}

fn ok_response(status: u8) -> Vec<Vec<u8>> {
    vec![
        headers_frame(&hex(HEADERS_BLOCK), 0),
        frame(DATA, 0, STREAM, &health(status)),
        headers_frame(&hex(TRAILERS_BLOCK), END_STREAM),
    ]
}

fn field_str(fields: &[(Vec<u8>, Vec<u8>)], name: &str) -> String {
    String::from_utf8_lossy(field(fields, name).unwrap_or_default()).into_owned()
}

#[test]
fn serving_succeeds_and_the_request_is_grpc_health_check() {
    // The headers split over HEADERS and CONTINUATION.
    let block = hex(HEADERS_BLOCK);
    let reply = vec![
        frame(HEADERS, 0, STREAM, &block[..10]),
        frame(CONTINUATION, END_HEADERS, STREAM, &block[10..]),
        frame(DATA, 0, STREAM, &health(1)),
        headers_frame(&hex(TRAILERS_BLOCK), END_STREAM),
    ];
    let (port, server) = serve(reply);
    assert_eq!(check(None, port, "hello", SECOND), Ok(()));
    let seen = server.join().unwrap();
    assert_eq!(field_str(&seen.headers, ":method"), "POST");
    assert_eq!(field_str(&seen.headers, ":scheme"), "http");
    assert_eq!(field_str(&seen.headers, ":path"), PATH);
    assert_eq!(
        field_str(&seen.headers, ":authority"),
        format!("127.0.0.1:{port}")
    );
    assert_eq!(field_str(&seen.headers, "content-type"), "application/grpc");
    assert_eq!(field_str(&seen.headers, "te"), "trailers");
    assert!(field_str(&seen.headers, "user-agent").starts_with("kube-probe/"));
    assert!(field_str(&seen.headers, "grpc-timeout").ends_with('m'));
    assert_eq!(seen.body, b"\0\0\0\0\x07\x0a\x05hello");
    assert!(seen.settings_acked, "the client acknowledges SETTINGS");
    assert!(seen.ponged, "the client answers PING");
}

#[test]
fn an_empty_service_sends_an_empty_request() {
    let (port, server) = serve(ok_response(1));
    assert_eq!(check(Some("127.0.0.1"), port, "", SECOND), Ok(()));
    assert_eq!(server.join().unwrap().body, b"\0\0\0\0\0");
}

#[test]
fn other_serving_statuses_fail_as_the_kubelet_words_them() {
    for (status, name) in [
        (2, "NOT_SERVING"),
        (0, "UNKNOWN"),
        (3, "SERVICE_UNKNOWN"),
        (9, "9"),
    ] {
        let (port, _server) = serve(ok_response(status));
        assert_eq!(
            check(None, port, "", SECOND),
            Err(format!("service unhealthy (responded with \"{name}\")"))
        );
    }
}

#[test]
fn a_server_without_the_health_service_is_unimplemented() {
    let (port, _server) = serve(vec![headers_frame(&hex(UNIMPLEMENTED_BLOCK), END_STREAM)]);
    assert_eq!(
        check(None, port, "", SECOND),
        Err(
            "error: this server does not implement the grpc health protocol \
             (grpc.health.v1.Health): Method not found: grpc.health.v1.Health/Check"
                .into()
        )
    );
}

#[test]
fn other_grpc_errors_and_resets_are_rpc_errors() {
    let block = Encoder::new().encode([
        (&b":status"[..], &b"200"[..]),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"no%20backend"),
    ]);
    let (port, _server) = serve(vec![headers_frame(&block, END_STREAM)]);
    assert_eq!(
        check(None, port, "", SECOND),
        Err(
            "error: health rpc probe failed: rpc error: code = Unavailable desc = no backend"
                .into()
        )
    );
    let (port, _server) = serve(vec![frame(RST_STREAM, 0, STREAM, &7u32.to_be_bytes())]);
    assert_eq!(
        check(None, port, "", SECOND),
        Err(
            "error: health rpc probe failed: rpc error: code = Unavailable desc = \
             stream terminated by RST_STREAM with error code: REFUSED_STREAM"
                .into()
        )
    );
    let block = Encoder::new().encode([(&b":status"[..], &b"404"[..])]);
    let (port, _server) = serve(vec![headers_frame(&block, END_STREAM)]);
    let err = check(None, port, "", SECOND).unwrap_err();
    assert!(
        err.contains("does not implement") && err.contains("404"),
        "{err}"
    );
}

#[test]
fn a_refused_or_non_http2_server_times_out_connecting() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    assert_eq!(
        check(None, port, "", SECOND),
        Err(format!(
            "timeout: failed to connect service \"127.0.0.1:{port}\" within 1s: \
             context deadline exceeded"
        ))
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
    // An HTTP/1.1 server: its answer is no SETTINGS frame.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _server = thread::spawn(move || {
        for tcp in listener.incoming().take(2) {
            let _ = tcp.unwrap().write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let err = check(None, port, "", SECOND).unwrap_err();
    assert!(
        err.starts_with("timeout: failed to connect service"),
        "{err}"
    );
}

#[test]
fn a_server_that_never_answers_the_call_times_out() {
    let (port, _server) = serve(vec![]);
    let t0 = Instant::now();
    assert_eq!(
        check(None, port, "", SECOND),
        Err("timeout: health rpc did not complete within 1s".into())
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn response_messages_parse_as_proto3() {
    assert_eq!(serving_status(&health(1)), Ok(1));
    // Unknown fields of every wire type are skipped; no status is 0.
    let msg = [
        0x10, 0x05, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x22, 2, b'h', b'i', 0x2d, 1, 2, 3, 4, 0x08, 0x02,
    ];
    assert_eq!(serving_status(&grpc_message(&msg).unwrap()), Ok(2));
    assert_eq!(serving_status(&grpc_message(&[]).unwrap()), Ok(0));
    for bad in [
        &b"\0\0\0\0\x05\x08"[..],
        b"\0\0\0",
        b"\0\0\0\0\x02\x22\x09",
        b"\0\0\0\0\x01\x0b",
    ] {
        assert!(serving_status(bad).is_err(), "{bad:?}");
    }
    assert!(
        serving_status(b"\x01\0\0\0\x02\x08\x01").is_err(),
        "compressed"
    );
}

#[test]
fn padded_frames_lose_their_padding() {
    let f = Frame {
        kind: DATA,
        flags: PADDED,
        stream: 1,
        payload: vec![2, b'o', b'k', 0, 0],
    };
    assert_eq!(unpad(&f), Ok(&b"ok"[..]));
    let f = Frame {
        payload: vec![9, b'x'],
        ..f
    };
    assert!(unpad(&f).is_err());
}

#[test]
fn messages_and_durations_read_as_go_prints_them() {
    assert_eq!(percent_decode(b"a%20b%zz%4"), "a b%zz%4");
    assert_eq!(go_duration(SECOND), "1s");
    assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(code_name(12), "Unimplemented");
    assert_eq!(code_name(99), "Code(99)");
}

/// A connection that reads `input` and keeps what is written.
struct Mock {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Mock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Mock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn hostile_frames_fail_the_call_and_never_panic() {
    // The agent aborts on a panic: arbitrary frames from the server
    // (random types, flags, lengths and header blocks) must only ever
    // be errors.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let mut input = Vec::new();
        for _ in 0..(next() % 4 + 1) {
            let len = usize::try_from(next() % 40).unwrap();
            let kind = u8::try_from(next() % 10).unwrap();
            let flags = u8::try_from(next() & 0xff).unwrap();
            let stream = u32::try_from(next() % 3).unwrap();
            let payload: Vec<u8> = (0..len)
                .map(|_| u8::try_from(next() & 0xff).unwrap())
                .collect();
            input.extend(frame(kind, flags, stream, &payload));
        }
        let mut h2 = H2::new(Mock {
            input: Cursor::new(input),
            output: Vec::new(),
        });
        if let Ok(r) = h2.read_response() {
            if response_status(&r).is_ok() {
                let _ = serving_status(&r.body);
            }
        }
    }
}
