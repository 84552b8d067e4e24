//! The MQTT codec (`dps_mqtt::codec::decode`) on an arbitrary byte stream, delivered the way a
//! socket does: in chunks whose size the first input byte picks.
//!
//! Checked: no panic; `Ok(None)` consumes nothing; a decoded packet always consumes bytes; the
//! size limit holds for every packet.

#![no_main]

use bytes::BytesMut;
use dps_mqtt::codec::{decode, Inbound};
use libfuzzer_sys::fuzz_target;

/// Small next to the service's 96 KiB default so that the fuzzer reaches the limit check
/// with inputs it can actually build.
const MAX_PACKET_SIZE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode(&mut buf, MAX_PACKET_SIZE) {
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a packet consumed nothing");
                    assert!(before - buf.len() <= MAX_PACKET_SIZE + 5, "{packet:?}");
                    if let Inbound::Publish(publish) = &packet {
                        assert!(publish.topic.len() + publish.payload.len() <= MAX_PACKET_SIZE);
                    }
                }
                // The driver closes the connection on any error: nothing more is read.
                Err(_) => return,
            }
        }
    }
});
