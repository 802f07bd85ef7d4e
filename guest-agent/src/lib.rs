//! unipod's guest agent: the host<->agent protocol, shared by the host VMM and
//! CLI and by the `unipod-agent` binary that runs as the guest's PID 1.
//!
//! The library part is [`protocol`]: message types and a length-prefixed
//! JSON framing with a blocking codec ([`protocol::read_frame`],
//! [`protocol::write_frame`]) and a nonblocking one ([`protocol::FrameDecoder`]);
//! [`relay`], the byte relay both ends of port forwarding use; and [`civil`],
//! the calendar dates of their timestamps.
//! The agent itself lives in the binary target (`src/main.rs`, `src/agent/`).
#![forbid(unsafe_code)]

pub mod civil;
pub mod protocol;
pub mod relay;
