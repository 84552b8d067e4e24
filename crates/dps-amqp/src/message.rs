//! DPS requests and answers as AMQP messages (`dps-protocol.md` §6): plain functions between
//! fe2o3's message types and [`Request`] / [`Answer`].
//!
//! A request names its operation in the application property `iotdps-operation-type`
//! (`iotdps-register`, or `iotdps-get-operationstatus` with `iotdps-operation-id`) and carries a
//! `correlation-id`; a register's body is the JSON `DeviceRegistration` in data sections (an
//! `amqp-value` string or binary, or no body, are taken too: a poll's body is ignored). An answer
//! is a message on the device's receiver link with the request's `correlation-id`, the JSON
//! `RegistrationOperationStatus` as one data section (the Node SDK parses `body.content`) and
//! `retry-after` / `Retry-After` application properties; a failure is a rejected disposition
//! whose error description is DPS's error JSON, with `retry-after` / `Retry-After` in its info.

use dps_types::{DeviceRegistration, ErrorCode, ErrorDetails};
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, Fields};
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Value};

use crate::operations::{Answer, Request};

/// Application property naming the operation.
pub const OPERATION_TYPE: &str = "iotdps-operation-type";
/// Application property with the operation id of a poll.
pub const OPERATION_ID: &str = "iotdps-operation-id";
/// `iotdps-operation-type` of a register request.
pub const REGISTER: &str = "iotdps-register";
/// `iotdps-operation-type` of a poll.
pub const GET_OPERATION_STATUS: &str = "iotdps-get-operationstatus";
/// Both spellings clients read (`dps-protocol.md` §4: Node and C read `retry-after`, C#
/// `Retry-After`).
pub const RETRY_AFTER_KEYS: [&str; 2] = ["retry-after", "Retry-After"];

/// Longest operation id we look at; ours are 55 bytes.
pub const MAX_OPERATION_ID_LEN: usize = 128;

/// Most bytes of a parse error echoed in a `400` message (serde messages can quote input).
const MAX_ERROR_MESSAGE: usize = 256;

/// Custom conditions DPS uses and the SDKs translate (Node: `ArgumentError`, `ThrottlingError`).
const ARGUMENT_ERROR: &str = "com.microsoft:argument-error";
const THROTTLED: &str = "com.microsoft:device-container-throttled";

/// A request that cannot be served: it is rejected with `400` and this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong, for the error JSON's message.
    pub why: String,
}

impl Malformed {
    /// The `400` answer.
    pub fn answer(&self) -> Answer {
        Answer::Error {
            status: 400,
            details: ErrorDetails::new(ErrorCode::BadRequest, self.why.clone()),
            retry_after_secs: None,
        }
    }
}

/// The request in `message` and the correlation id to answer with.
pub fn parse_request(message: &Message<Body<Value>>) -> Result<(MessageId, Request), Malformed> {
    let correlation_id = message
        .properties
        .as_ref()
        .and_then(|p| p.correlation_id.clone())
        .ok_or_else(|| bad_request("the request has no correlation-id"))?;
    let property = |key: &str| {
        message
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get(key))
    };
    let operation = match property(OPERATION_TYPE) {
        Some(SimpleValue::String(s)) => s.as_str(),
        Some(SimpleValue::Symbol(s)) => s.as_str(),
        Some(_) => return Err(bad_request("iotdps-operation-type must be a string")),
        None => return Err(bad_request("the request has no iotdps-operation-type")),
    };
    let request = match operation {
        REGISTER => {
            let body = body_bytes(&message.body)?;
            let registration = parse_registration(&body)?;
            Request::Register {
                payload: registration.payload,
            }
        }
        GET_OPERATION_STATUS => {
            let operation_id = match property(OPERATION_ID) {
                Some(SimpleValue::String(s)) => s.clone(),
                _ => return Err(bad_request("a poll needs a string iotdps-operation-id")),
            };
            if operation_id.is_empty() || operation_id.len() > MAX_OPERATION_ID_LEN {
                return Err(bad_request("iotdps-operation-id is empty or too long"));
            }
            Request::Poll { operation_id }
        }
        _ => return Err(bad_request("unknown iotdps-operation-type")),
    };
    Ok((correlation_id, request))
}

/// The answer message for a [`Answer::Status`]; `None` for an [`Answer::Error`] (see
/// [`rejection`]).
pub fn response(correlation_id: MessageId, answer: &Answer) -> Option<Message<Body<Value>>> {
    let Answer::Status {
        body,
        retry_after_secs,
        ..
    } = answer
    else {
        return None;
    };
    let json = json_bytes(body);
    let mut properties = ApplicationProperties::builder();
    if let Some(secs) = retry_after_secs {
        for key in RETRY_AFTER_KEYS {
            properties = properties.insert(key, secs.to_string());
        }
    }
    Some(Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            correlation_id: Some(correlation_id),
            content_type: Some(Symbol::from("application/json")),
            content_encoding: Some(Symbol::from("utf-8")),
            ..Properties::default()
        }),
        application_properties: Some(properties.build()),
        body: Body::Data(vec![Data(Binary::from(json))].into()),
        footer: None,
    })
}

/// The error of a rejected disposition for an [`Answer::Error`]; `None` for a status.
pub fn rejection(answer: &Answer) -> Option<definitions::Error> {
    let Answer::Error {
        status,
        details,
        retry_after_secs,
    } = answer
    else {
        return None;
    };
    let condition = match status {
        400 => ErrorCondition::Custom(Symbol::from(ARGUMENT_ERROR)),
        401 => ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
        404 => ErrorCondition::AmqpError(AmqpError::NotFound),
        429 => ErrorCondition::Custom(Symbol::from(THROTTLED)),
        _ => ErrorCondition::AmqpError(AmqpError::InternalError),
    };
    let info = retry_after_secs.map(|secs| {
        let mut info = Fields::default();
        for key in RETRY_AFTER_KEYS {
            info.insert(Symbol::from(key), Value::String(secs.to_string()));
        }
        Box::new(info)
    });
    Some(definitions::Error {
        condition,
        description: Some(String::from_utf8_lossy(&json_bytes(details)).into_owned()),
        info,
    })
}

/// The connection-level refusal of a device whose credentials were refused: DPS's
/// `amqp:unauthorized-access` with the `401002` error JSON (`dps-protocol.md` §4).
pub fn unauthorized() -> definitions::Error {
    let details = ErrorDetails::new(ErrorCode::InvalidCertificate, "Unauthorized");
    definitions::Error {
        condition: ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess),
        description: Some(String::from_utf8_lossy(&json_bytes(&details)).into_owned()),
        info: None,
    }
}

/// The refusal of an attested device that already holds `max_connections_per_device`
/// connections: `amqp:resource-limit-exceeded` with DPS's `429001` error JSON. The Node
/// provisioning transport hands it to the caller as is (`error.condition` is
/// `amqp:resource-limit-exceeded`, the description the JSON; checked with
/// azure-iot-provisioning-device-amqp 1.9.1), the Azure stacks' AMQP error tables map it to a
/// quota error (Node `IotHubQuotaExceededError`, C# a transient `QuotaExceededException`,
/// Java `AmqpResourceLimitExceededException`): clearly "too many, later", never mistaken for
/// bad credentials as `amqp:unauthorized-access` would be, like MQTT's CONNACK 3.
pub fn device_limit() -> definitions::Error {
    let details = ErrorDetails::new(
        ErrorCode::Throttled,
        "The device holds the most connections it may open at once",
    );
    definitions::Error {
        condition: ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
        description: Some(String::from_utf8_lossy(&json_bytes(&details)).into_owned()),
        info: None,
    }
}

/// An error with `condition` and a plain description (link refusals, connection closes).
pub fn error(condition: ErrorCondition, description: &str) -> definitions::Error {
    definitions::Error {
        condition,
        description: Some(description.to_owned()),
        info: None,
    }
}

/// The body's bytes: data sections concatenated, or an `amqp-value` string or binary.
fn body_bytes(body: &Body<Value>) -> Result<Vec<u8>, Malformed> {
    match body {
        Body::Data(sections) => Ok(sections
            .iter()
            .flat_map(|Data(bytes)| bytes.as_slice())
            .copied()
            .collect()),
        Body::Value(value) => match &value.0 {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Binary(b) => Ok(b.to_vec()),
            Value::Null => Ok(Vec::new()),
            _ => Err(bad_request("the body must be JSON in data sections")),
        },
        Body::Empty => Ok(Vec::new()),
        Body::Sequence(_) => Err(bad_request("the body must be JSON in data sections")),
    }
}

/// The register body; empty or blank is `{}` (the identity comes from the connection).
fn parse_registration(body: &[u8]) -> Result<DeviceRegistration, Malformed> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeviceRegistration::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let mut message = format!("the register body is not a DeviceRegistration: {e}");
        if message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        bad_request(&message)
    })
}

fn bad_request(why: &str) -> Malformed {
    Malformed {
        why: why.to_owned(),
    }
}

fn json_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "bug: an answer did not serialize");
        b"{}".to_vec()
    })
}

#[cfg(test)]
mod tests;
