//! The host↔agent protocol decoders from both sides: byte 0 picks the
//! direction (the agent decoding host messages, or the host decoding agent
//! messages) and the reader (`read_frame` on a stream, or the agent's
//! incremental `FrameDecoder` fed in chunks). Every decoded message must
//! encode and decode to itself.
#![no_main]

use guest_agent::protocol::{
    encode_frame, read_frame, AgentMessage, FrameDecoder, HostMessage, ProtocolError,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn stream<T: DeserializeOwned + Serialize + std::fmt::Debug>(mut data: &[u8]) {
    for _ in 0..64 {
        match read_frame::<_, T>(&mut data) {
            Ok(msg) => roundtrip(&msg),
            Err(ProtocolError::Decode(_)) => {}
            Err(_) => return,
        }
    }
}

fn chunked<T: DeserializeOwned + Serialize + std::fmt::Debug>(chunk: usize, data: &[u8]) {
    let mut decoder = FrameDecoder::new();
    for piece in data.chunks(chunk.max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next_frame::<T>() {
                Ok(Some(msg)) => roundtrip(&msg),
                Ok(None) => break,
                Err(ProtocolError::Decode(_)) => {}
                Err(_) => return,
            }
        }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize + std::fmt::Debug>(msg: &T) {
    let Ok(frame) = encode_frame(msg) else { return };
    let again: T = read_frame(&mut frame.as_slice()).expect("an encoded frame decodes");
    assert_eq!(format!("{again:?}"), format!("{msg:?}"));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode >> 2);
    match mode & 3 {
        0 => stream::<HostMessage>(rest),
        1 => stream::<AgentMessage>(rest),
        2 => chunked::<HostMessage>(chunk, rest),
        _ => chunked::<AgentMessage>(chunk, rest),
    }
});
