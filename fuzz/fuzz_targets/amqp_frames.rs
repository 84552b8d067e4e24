//! The raw byte stream of an AMQP device connection after TLS, as the frontend hands it to
//! fe2o3: through `dps_amqp::frame::FrameGuard`, then fe2o3's length-delimited transport and its
//! SASL and AMQP frame decoders, with SASL frames fed to `dps_amqp::sasl::Exchange`, link
//! addresses of ATTACH frames to `dps_amqp::address`, and the payload of TRANSFER frames
//! decoded into a message (from a slice for one frame, through serde_amqp's IO reader for a
//! message in several frames, as fe2o3's receiver does) and fed to
//! `dps_amqp::message::parse_request` and an operation table.
//!
//! Input: one control byte (bit 0: the stream starts with the SASL protocol header, else with
//! the AMQP one), then what the device sends after it.
//!
//! Checked: no panic anywhere on that path, in particular none in fe2o3's decoders for a frame
//! the guard lets through (they panic on a frame shorter than its 8-byte header, which the
//! guard must stop); a request parsed from a transfer gets an answer that encodes.

#![no_main]

use bytes::BytesMut;
use dps_amqp::frame::FrameGuard;
use dps_amqp::operations::{OperationLimits, Operations};
use dps_amqp::sasl::{Exchange, Step};
use dps_amqp::{address, message, AMQP_HEADER, SASL_HEADER};
use dps_types::{IdScope, RegistrationId};
use fe2o3_amqp::frames::amqp::{FrameBody, FrameDecoder};
use fe2o3_amqp::frames::sasl::{Frame as SaslFrame, FrameCodec as SaslCodec};
use fe2o3_amqp::types::definitions::Role;
use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp::types::messaging::{Body, TargetArchetype};
use fe2o3_amqp::types::primitives::Value;
use libfuzzer_sys::fuzz_target;
use serde_amqp::read::{IoReader, SliceReader};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// Frames before the OPEN (AMQP 1.0 `MIN-MAX-FRAME-SIZE`), as fe2o3's transport starts.
const MIN_MAX_FRAME_SIZE: usize = 512;
/// The frame size the frontend announces by default.
const MAX_FRAME_SIZE: usize = 8 * 1024;
/// The message size the frontend announces by default.
const MAX_MESSAGE_SIZE: usize = dps_amqp::DEFAULT_MAX_MESSAGE_SIZE;
const SCOPE: &str = "0ne00000001";

/// fe2o3's transport decoder (`transport::length_delimited_decoder`): a 4-byte big-endian size
/// that counts itself.
fn transport(max_frame_size: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(max_frame_size)
        .length_adjustment(-4)
        .new_codec()
}

/// The part of `stream` the guard lets through, fed a byte at a time (the most it can pass:
/// a connection's reads only ever stop it earlier).
fn guarded(stream: &[u8]) -> &[u8] {
    let mut guard = FrameGuard::new(MAX_FRAME_SIZE, MAX_MESSAGE_SIZE);
    let passed = stream
        .iter()
        .position(|b| guard.check(std::slice::from_ref(b)).is_err())
        .unwrap_or(stream.len());
    &stream[..passed]
}

/// Takes the 8-byte protocol header off `buf`; whether it is `header`.
fn protocol_header(buf: &mut BytesMut, header: [u8; 8]) -> bool {
    if buf.len() < header.len() {
        return false;
    }
    buf.split_to(header.len())[..] == header
}

/// The SASL exchange; whether it ended with an `ok` outcome.
fn sasl(buf: &mut BytesMut) -> bool {
    let Ok(scope) = IdScope::parse(SCOPE) else {
        return false;
    };
    let mut exchange = Exchange::new(scope);
    let mut codec = transport(MIN_MAX_FRAME_SIZE);
    loop {
        let Ok(Some(mut frame)) = codec.decode(buf) else {
            return false;
        };
        let step = match (SaslCodec {}).decode(&mut frame) {
            Ok(Some(SaslFrame::Init(init))) => exchange.init(
                init.mechanism.as_str(),
                init.initial_response.as_ref().map(|r| r.as_slice()),
            ),
            Ok(Some(SaslFrame::Response(response))) => {
                exchange.response(response.response.as_slice())
            }
            _ => return false,
        };
        match step {
            Step::Challenge(_) => {}
            Step::Done(_) => return true,
            // A TPM device's challenge needs the registrar's sealing (amqp_sasl covers it);
            // here the exchange ends as a refused one does.
            Step::Seal(_) | Step::Fail(_) => return false,
        }
    }
}

/// AMQP frames until the stream ends or one does not decode.
fn amqp(buf: &mut BytesMut) {
    let Ok(device) = RegistrationId::parse("dev-1") else {
        return;
    };
    let limits = OperationLimits {
        max_requests: 8,
        max_running: 2,
    };
    let mut operations = Operations::new(limits, device);
    let mut codec = transport(MIN_MAX_FRAME_SIZE);
    // The message bytes of the transfers before the last one of a multi-frame message.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let Ok(Some(mut bytes)) = codec.decode(buf) else {
            return;
        };
        let Ok(Some(frame)) = (FrameDecoder {}).decode(&mut bytes) else {
            return;
        };
        match frame.into_body() {
            FrameBody::Open(_) => codec.set_max_frame_length(MAX_FRAME_SIZE),
            FrameBody::Attach(attach) => {
                let address = match attach.role {
                    Role::Sender => match attach.target.as_deref() {
                        Some(TargetArchetype::Target(target)) => target.address.as_deref(),
                        _ => None,
                    },
                    Role::Receiver => attach.source.as_deref().and_then(|s| s.address.as_deref()),
                };
                if let Some(address) = address {
                    let _ = address::parse_device_path(address);
                }
            }
            FrameBody::Transfer {
                performative,
                payload,
            } => {
                if performative.more {
                    partial.extend_from_slice(&payload);
                    continue;
                }
                let decoded = if partial.is_empty() {
                    Body::<Value>::decode_message_from_reader(SliceReader::new(&payload))
                } else {
                    partial.extend_from_slice(&payload);
                    let whole = std::mem::take(&mut partial);
                    Body::<Value>::decode_message_from_reader(IoReader::new(whole.as_slice()))
                };
                let Ok(request) = decoded else {
                    continue;
                };
                let (answer, correlation_id) = match message::parse_request(&request) {
                    Ok((id, request)) => (operations.handle(request).0, Some(id)),
                    Err(malformed) => (
                        operations
                            .handle_malformed()
                            .unwrap_or_else(|| malformed.answer()),
                        None,
                    ),
                };
                if let Some(error) = message::rejection(&answer) {
                    serde_amqp::to_vec(&error).expect("a rejection encodes");
                }
                if let Some(reply) = correlation_id.and_then(|id| message::response(id, &answer)) {
                    use fe2o3_amqp::types::messaging::message::__private::Serializable;
                    serde_amqp::to_vec(&Serializable(reply)).expect("an answer encodes");
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let with_sasl = control & 1 == 1;
    let mut stream = if with_sasl { SASL_HEADER } else { AMQP_HEADER }.to_vec();
    stream.extend_from_slice(rest);
    let mut buf = BytesMut::from(guarded(&stream));
    if with_sasl && !(protocol_header(&mut buf, SASL_HEADER) && sasl(&mut buf)) {
        return;
    }
    if protocol_header(&mut buf, AMQP_HEADER) {
        amqp(&mut buf);
    }
});
