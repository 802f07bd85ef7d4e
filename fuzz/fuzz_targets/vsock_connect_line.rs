//! The host side of the hybrid vsock handshake: what a host client writes
//! before `\n` (`CONNECT <port>`), fed whole and byte by byte as the muxer
//! reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::handshake::{ok_line, parse_connect, MAX_LINE_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = parse_connect(data);
    // The muxer reads a byte at a time and stops at the first answer, so
    // the line it buffers stays within MAX_LINE_LEN bytes.
    for end in 1..=data.len() {
        match parse_connect(&data[..end]) {
            Ok(None) => assert!(end < MAX_LINE_LEN, "{end} bytes buffered without an answer"),
            Ok(Some(port)) => {
                assert!(ok_line(port).ends_with('\n'));
                break;
            }
            Err(_) => break,
        }
    }
});
