//! DPS request parsing over AMQP (`dps_amqp::message`): the bytes of a transfer, decoded into a
//! message by fe2o3-amqp-types as the receiver link does, then `parse_request`, then the answer
//! the connection would give, encoded as fe2o3 sends it.
//!
//! Input: an AMQP-encoded message (its sections, as one transfer frame carries them).
//!
//! Checked: no panic; a register names `iotdps-register` and its payload is the body's; a poll
//! names a non-empty, bounded operation id taken verbatim from `iotdps-operation-id`; a
//! malformed request gets a `400` rejection whose description is DPS's error JSON and whose
//! message is bounded; every answer message encodes, and decodes back with the request's
//! correlation id and a JSON body; every rejection's error encodes.

#![no_main]

use dps_amqp::message::{
    parse_request, rejection, response, GET_OPERATION_STATUS, MAX_OPERATION_ID_LEN, OPERATION_ID,
    OPERATION_TYPE, REGISTER,
};
use dps_amqp::operations::{Answer, OperationLimits, Operations, Request};
use dps_types::RegistrationId;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp::types::messaging::{Body, Data};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use libfuzzer_sys::fuzz_target;
use serde_amqp::read::SliceReader;

/// A rejection's description: the error JSON around a message of at most 256 bytes (a `400`
/// quotes at most that much of a parse error), each escaped to at most 6 (`\u001f`).
const MAX_REJECTION_DESCRIPTION: usize = 256 * 6 + 512;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Body::<Value>::decode_message_from_reader(SliceReader::new(data)) else {
        return;
    };
    let property = |key: &str| {
        message
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get(key))
    };
    let (correlation_id, answer) = match parse_request(&message) {
        Ok((correlation_id, request)) => {
            let operation = match property(OPERATION_TYPE) {
                Some(SimpleValue::String(s)) => s.as_str(),
                Some(SimpleValue::Symbol(s)) => s.as_str(),
                other => panic!("parsed without a string operation type: {other:?}"),
            };
            match &request {
                Request::Register { .. } => assert_eq!(operation, REGISTER),
                Request::Poll { operation_id } => {
                    assert_eq!(operation, GET_OPERATION_STATUS);
                    assert!(!operation_id.is_empty());
                    assert!(operation_id.len() <= MAX_OPERATION_ID_LEN);
                    assert_eq!(
                        property(OPERATION_ID),
                        Some(&SimpleValue::String(operation_id.clone()))
                    );
                }
            }
            let Ok(device) = RegistrationId::parse("dev-1") else {
                return;
            };
            let limits = OperationLimits {
                max_requests: 4,
                max_running: 2,
            };
            let (answer, _) = Operations::new(limits, device).handle(request);
            (Some(correlation_id), answer)
        }
        Err(malformed) => {
            let answer = malformed.answer();
            assert_eq!(answer.status(), 400);
            (None, answer)
        }
    };
    match (correlation_id, response_or_rejection(&answer)) {
        (Some(id), Ok(())) => {
            let reply = response(id.clone(), &answer).expect("a status answer has a message");
            let bytes = serde_amqp::to_vec(&Serializable(reply)).expect("the answer encodes");
            let back = Body::<Value>::decode_message_from_reader(SliceReader::new(&bytes))
                .expect("the answer decodes");
            assert_eq!(back.properties.and_then(|p| p.correlation_id), Some(id));
            let Body::Data(sections) = back.body else {
                panic!("the answer is not in data sections");
            };
            let json: Vec<u8> = sections
                .iter()
                .flat_map(|Data(b)| b.as_slice())
                .copied()
                .collect();
            let json: serde_json::Value =
                serde_json::from_slice(&json).expect("the answer is JSON");
            assert!(json["operationId"].is_string(), "{json}");
        }
        (None, Ok(())) => panic!("a status answer to a malformed request"),
        (_, Err(description)) => {
            assert!(
                description.len() <= MAX_REJECTION_DESCRIPTION,
                "{description}"
            );
            let json: serde_json::Value =
                serde_json::from_str(&description).expect("the rejection is JSON");
            let code = json["errorCode"].as_i64().expect("an errorCode");
            assert_eq!(code / 1000, i64::from(answer.status()), "{json}");
        }
    }
});

/// `Ok` for a status answer (which has no rejection); the rejection's description for an error,
/// after checking that the error encodes.
fn response_or_rejection(answer: &Answer) -> Result<(), String> {
    let Some(error) = rejection(answer) else {
        assert!(matches!(answer, Answer::Status { .. }));
        return Ok(());
    };
    assert!(matches!(answer, Answer::Error { .. }));
    serde_amqp::to_vec(&error).expect("the rejection encodes");
    Err(error.description.unwrap_or_default())
}
