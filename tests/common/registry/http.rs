//! A minimal HTTP/1.1 client probe and server, for the registry's
//! readiness check, the token issuer and the stand-in: keep-alive,
//! Content-Length bodies only, each connection on its own thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// `GET path` over plain HTTP/1.1 to `host`, without following anything:
/// the status and the body (at most 64 KiB), within 5 s.
pub fn http_get(host: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(host, "GET", path, &[], b"")
}

/// `method path` with `headers` and `body` over plain HTTP/1.1 to `host`
/// (the connection closes after it): the status and the body (at most
/// 64 KiB), within 5 s.
pub fn http_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let addr = host.parse().map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reply = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut reply)?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {reply:?}")))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// One HTTP request.
#[derive(Clone, Debug)]
pub struct Request {
    /// GET, HEAD, POST...
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The decoded query parameters, in order.
    pub fn query(&self) -> Vec<(String, String)> {
        self.target
            .split_once('?')
            .map(|(_, q)| parse_form(q))
            .unwrap_or_default()
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP response.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers besides Content-Length and Connection.
    pub headers: Vec<(String, String)>,
    /// The body; its length is the Content-Length announced.
    pub body: Vec<u8>,
    /// Send only this many bytes of the body, then close the connection.
    pub cut_after: Option<usize>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
            cut_after: None,
        }
    }

    /// An OCI distribution error response (`{"errors":[{code, message}]}`).
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(
            status,
            &serde_json::json!({"errors": [{"code": code, "message": message}]}),
        )
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A thread serving HTTP/1.1 (keep-alive, Content-Length bodies) on a
/// port of 127.0.0.1, each connection on its own thread; stopped on drop.
pub struct HttpServer {
    /// The port it listens on.
    pub port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts serving with `handler`.
    pub fn start(handler: Arc<Handler>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopping) = (requests.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve_connection(stream, &*handler, &log);
                });
            }
        });
        HttpServer {
            port,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    /// `METHOD target` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("request log").clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

fn serve_connection(
    stream: TcpStream,
    handler: &Handler,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some((request, close)) = read_request(&mut reader)? {
        log.lock()
            .expect("request log")
            .push(format!("{} {}", request.method, request.target));
        let response = handler(&request);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            response.status,
            reason(response.status),
            response.body.len()
        );
        for (name, value) in &response.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        if request.method != "HEAD" {
            let n = response.cut_after.unwrap_or(response.body.len());
            writer.write_all(&response.body[..n.min(response.body.len())])?;
        }
        writer.flush()?;
        if close || response.cut_after.is_some() {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}

/// Reads one request; `None` at a clean end of the connection. The bool
/// says whether the client asked to close the connection after it.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<(Request, bool)>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut close = version == "HTTP/1.0";
    let mut headers = Vec::new();
    let mut head_size = line.len();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("end of stream in the headers"));
        }
        head_size += line.len();
        if head_size > MAX_HEAD {
            return Err(bad("headers too long"));
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').ok_or_else(|| bad("bad header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
        close = true;
    }
    let length: usize = header("content-length")
        .map(|v| v.parse().map_err(|_| bad("bad Content-Length")))
        .transpose()?
        .unwrap_or(0);
    if length > MAX_BODY {
        return Err(bad("body too long"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some((
        Request {
            method,
            target,
            headers,
            body,
        },
        close,
    )))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Status",
    }
}

/// `a=1&b=x%3Ay+z` as pairs, percent- and `+`-decoded.
pub(super) fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
