//! The control socket of a manifest pod's supervisor,
//! `<pod dir>/control.sock`: how `unipod exec` and `unipod stop` reach a
//! running pod.
//!
//! # Protocol
//! A Unix stream socket carrying JSON lines (one JSON value per `\n`-ended
//! line; byte strings are arrays of numbers, as in the agent protocol). The
//! client sends one [`ControlRequest`] first:
//! - `"stop"`: the supervisor answers `"ok"` and starts a
//!   graceful stop (SIGTERM, SIGKILL after `terminationGracePeriodSeconds`,
//!   then the VM powers off); the client follows `status.json` to the end.
//! - `{"stop_with_grace":{"seconds":1}}`: the same with that grace period in
//!   place of the pod's (`unipod delete --grace-period`, `--now`); a stop
//!   under way may only be shortened.
//! - `{"exec":{"container":"web","argv":["ls"],"stdin":true,"tty":false}}`:
//!   the supervisor forwards it to the agent as `Request::Exec` and answers
//!   `{"started":{"id":"exec_1"}}` or `{"error":"..."}`; then streams
//!   `{"output":{"stream":"stdout","data":[104,105]}}` lines and ends with
//!   `{"exit":{"code":0,"reason":"Completed"}}`. Meanwhile the client may
//!   send `{"stdin":[...]}` lines; `{"stdin":[]}` (or hanging up) closes the
//!   process's stdin.
//!
//! Lines are at most [`MAX_LINE`] bytes; a longer or malformed one ends the
//! connection with an `{"error":...}` line.

#![forbid(unsafe_code)]

use std::io::{BufRead, Read, Write};

use guest_agent::protocol::Stream;
use serde::{Deserialize, Serialize};

/// The socket's file name in the pod directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Longest accepted line, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// A client's first line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlRequest {
    /// Stop the pod gracefully.
    Stop,
    /// Stop the pod gracefully within this grace period.
    StopWithGrace {
        /// The grace period, in seconds.
        seconds: u64,
    },
    /// Run a process in a running container.
    Exec(ExecRequest),
}

/// What `unipod exec` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The container to run it in.
    pub container: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Keep its stdin open for `stdin` lines.
    #[serde(default)]
    pub stdin: bool,
    /// Run it on a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
}

/// A client's later lines (during an exec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientLine {
    /// Bytes for the exec's stdin; empty closes it.
    Stdin(Vec<u8>),
}

/// What the supervisor sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    /// The request is accepted (stop).
    Ok,
    /// The exec runs under this id.
    Started {
        /// The exec's id in agent events.
        id: String,
    },
    /// A chunk of the exec's output.
    Output {
        /// Stdout or stderr.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The exec ended.
    Exit {
        /// Its exit code (128 + N for signal N).
        code: i32,
        /// Completed, Error, ...
        reason: String,
    },
    /// The request failed.
    Error(String),
}

/// Writes `value` as one line.
pub fn write_line<W: Write, T: Serialize>(w: &mut W, value: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one line and parses it; `Ok(None)` at end of stream.
pub fn read_line<R: BufRead, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::other(format!(
            "control line longer than {MAX_LINE} bytes"
        )));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("bad control line: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_shape_and_round_trip() {
        let mut wire = Vec::new();
        write_line(&mut wire, &ControlRequest::Stop).unwrap();
        write_line(&mut wire, &ControlRequest::StopWithGrace { seconds: 1 }).unwrap();
        let exec = ControlRequest::Exec(ExecRequest {
            container: "web".into(),
            argv: vec!["ls".into()],
            stdin: true,
            tty: false,
        });
        write_line(&mut wire, &exec).unwrap();
        write_line(
            &mut wire,
            &ControlReply::Output {
                stream: Stream::Stdout,
                data: b"hi".to_vec(),
            },
        )
        .unwrap();
        let text = String::from_utf8(wire.clone()).unwrap();
        assert_eq!(
            text,
            concat!(
                "\"stop\"\n",
                "{\"stop_with_grace\":{\"seconds\":1}}\n",
                "{\"exec\":{\"container\":\"web\",\"argv\":[\"ls\"],\"stdin\":true,\"tty\":false}}\n",
                "{\"output\":{\"stream\":\"stdout\",\"data\":[104,105]}}\n"
            )
        );
        let mut r = wire.as_slice();
        assert_eq!(
            read_line::<_, ControlRequest>(&mut r).unwrap(),
            Some(ControlRequest::Stop)
        );
        assert_eq!(
            read_line::<_, ControlRequest>(&mut r).unwrap(),
            Some(ControlRequest::StopWithGrace { seconds: 1 })
        );
        assert_eq!(read_line::<_, ControlRequest>(&mut r).unwrap(), Some(exec));
        assert!(read_line::<_, ControlReply>(&mut r).unwrap().is_some());
        assert_eq!(read_line::<_, ControlReply>(&mut r).unwrap(), None);
        assert!(read_line::<_, ControlRequest>(&mut &b"nonsense\n"[..]).is_err());
    }
}
