use dps_test_util::amqp::request_message as request;
use dps_types::{RegistrationId, RegistrationOperationStatus};
use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp::types::messaging::AmqpValue;
use serde_amqp::read::SliceReader;

use super::*;

fn data(bytes: &[u8]) -> Body<Value> {
    Body::Data(vec![Data(Binary::from(bytes.to_vec()))].into())
}

fn register_properties() -> Vec<(&'static str, SimpleValue)> {
    vec![
        (OPERATION_TYPE, SimpleValue::from(REGISTER)),
        ("iotdps-forceRegistration", SimpleValue::Bool(false)),
    ]
}

fn status_of(result: Result<(MessageId, Request), Malformed>) -> u16 {
    match result {
        Ok(ok) => panic!("parsed: {ok:?}"),
        Err(malformed) => malformed.answer().status(),
    }
}

#[test]
fn a_register_as_node_sends_it_carries_its_payload() {
    let body = br#"{"registrationId":"dev-1","payload":{"model":"x"}}"#;
    let message = request(Some("c-1"), &register_properties(), data(body));
    let (correlation, request) = parse_request(&message).unwrap();
    assert_eq!(correlation, MessageId::String("c-1".into()));
    assert_eq!(
        request,
        Request::Register {
            payload: Some(serde_json::json!({"model": "x"}))
        }
    );
}

#[test]
fn a_register_body_may_be_split_empty_or_an_amqp_value() {
    let split = Body::Data(
        vec![
            Data(Binary::from(br#"{"registrationId":"#.to_vec())),
            Data(Binary::from(br#""dev-1"}"#.to_vec())),
        ]
        .into(),
    );
    for body in [
        split,
        Body::Empty,
        data(b"  "),
        Body::Value(AmqpValue(Value::String(String::new()))),
        Body::Value(AmqpValue(Value::Binary(b"{}".to_vec().into()))),
    ] {
        let message = request(Some("c"), &register_properties(), body);
        assert_eq!(
            parse_request(&message).unwrap().1,
            Request::Register { payload: None }
        );
    }
}

#[test]
fn a_poll_names_its_operation_and_its_body_is_ignored() {
    let message = request(
        Some("c-2"),
        &[
            (OPERATION_TYPE, SimpleValue::from(GET_OPERATION_STATUS)),
            (OPERATION_ID, SimpleValue::from("4.abc.def")),
        ],
        Body::Value(AmqpValue(Value::Long(3))),
    );
    assert_eq!(
        parse_request(&message).unwrap().1,
        Request::Poll {
            operation_id: "4.abc.def".into()
        }
    );
}

#[test]
fn requests_that_cannot_be_served_are_bad_requests() {
    let poll = |id: Option<SimpleValue>| {
        let mut properties = vec![(OPERATION_TYPE, SimpleValue::from(GET_OPERATION_STATUS))];
        if let Some(id) = id {
            properties.push((OPERATION_ID, id));
        }
        request(Some("c"), &properties, Body::Empty)
    };
    let cases = [
        request(None, &register_properties(), Body::Empty),
        request(Some("c"), &[], Body::Empty),
        request(
            Some("c"),
            &[(OPERATION_TYPE, SimpleValue::from("iotdps-get-registration"))],
            Body::Empty,
        ),
        request(
            Some("c"),
            &[(OPERATION_TYPE, SimpleValue::Int(1))],
            Body::Empty,
        ),
        request(Some("c"), &register_properties(), data(b"{not json")),
        request(Some("c"), &register_properties(), data(b"[1,2]")),
        poll(None),
        poll(Some(SimpleValue::Int(4))),
        poll(Some(SimpleValue::from(""))),
        poll(Some(SimpleValue::from(
            "x".repeat(MAX_OPERATION_ID_LEN + 1).as_str(),
        ))),
    ];
    for message in cases {
        assert_eq!(status_of(parse_request(&message)), 400, "{message:?}");
    }
}

#[test]
fn a_parse_error_message_is_bounded() {
    let mut body = b"{\"payload\": \"".to_vec();
    body.extend(std::iter::repeat_n(b'a', 4096));
    let message = request(Some("c"), &register_properties(), data(&body));
    let Err(malformed) = parse_request(&message) else {
        panic!("parsed");
    };
    assert!(
        malformed.why.len() <= MAX_ERROR_MESSAGE,
        "{}",
        malformed.why
    );
}

#[test]
fn a_status_answer_is_a_json_data_message_with_the_correlation_id_and_retry_after() {
    let body = RegistrationOperationStatus::assigning(
        "4.1.2".into(),
        RegistrationId::parse("dev-1").unwrap(),
    );
    let answer = Answer::Status {
        status: 202,
        body: Box::new(body),
        retry_after_secs: Some(1),
    };
    let message = response(MessageId::Ulong(7), &answer).unwrap();
    assert_eq!(
        message.properties.unwrap().correlation_id,
        Some(MessageId::Ulong(7))
    );
    let properties = message.application_properties.unwrap();
    for key in RETRY_AFTER_KEYS {
        assert_eq!(
            properties.0.get(key),
            Some(&SimpleValue::from("1")),
            "{key}"
        );
    }
    let Body::Data(sections) = message.body else {
        panic!("not data");
    };
    let json: serde_json::Value = serde_json::from_slice(sections[0].0.as_slice()).unwrap();
    assert_eq!(json["operationId"], "4.1.2");
    assert_eq!(json["status"], "assigning");
    assert!(rejection(&answer).is_none());
}

#[test]
fn an_error_answer_is_a_rejection_with_dps_error_json() {
    let throttled = Answer::Error {
        status: 429,
        details: ErrorDetails::new(ErrorCode::Throttled, "busy"),
        retry_after_secs: Some(2),
    };
    assert!(response(MessageId::Ulong(1), &throttled).is_none());
    let error = rejection(&throttled).unwrap();
    assert_eq!(
        error.condition,
        ErrorCondition::Custom(Symbol::from(THROTTLED))
    );
    let json: serde_json::Value =
        serde_json::from_str(error.description.as_deref().unwrap()).unwrap();
    assert_eq!(json["errorCode"], 429001);
    let info = error.info.unwrap();
    for key in RETRY_AFTER_KEYS {
        assert_eq!(
            info.get(&Symbol::from(key)),
            Some(&Value::String("2".into()))
        );
    }
    let not_found = Answer::Error {
        status: 404,
        details: ErrorDetails::new(ErrorCode::NotFound, "gone"),
        retry_after_secs: None,
    };
    let error = rejection(&not_found).unwrap();
    assert_eq!(
        error.condition,
        ErrorCondition::AmqpError(AmqpError::NotFound)
    );
    assert!(error.info.is_none());
}

#[test]
fn the_refusal_is_unauthorized_access_with_error_code_401002() {
    let error = unauthorized();
    assert_eq!(
        error.condition,
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess)
    );
    let json: serde_json::Value =
        serde_json::from_str(error.description.as_deref().unwrap()).unwrap();
    assert_eq!(json["errorCode"], 401002);
}

#[test]
fn malformed_sizes_in_a_request_are_a_decode_error_or_a_bad_request_not_a_panic() {
    // Found by the amqp_message fuzz target: serde_amqp subtracts the header offset from these
    // sizes unchecked, which panicked the decode (as a receiver link runs it) in debug builds
    // until the workspace turned its overflow checks off (see the root Cargo.toml).
    let cases: [&[u8]; 3] = [
        // application-properties: a map8 of size 0
        b"\x00\x53\x74\xc1\x00\x00",
        // properties: a list8 of size 0
        b"\x00\x53\x73\xc0\x00\x00",
        // amqp-value: an array8 of size 1 holding one null
        b"\x00\x53\x77\xe0\x01\x01\x40",
    ];
    for bytes in cases {
        if let Ok(message) = Body::<Value>::decode_message_from_reader(SliceReader::new(bytes)) {
            assert_eq!(status_of(parse_request(&message)), 400, "{bytes:?}");
        }
    }
}
