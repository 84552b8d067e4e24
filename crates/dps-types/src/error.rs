//! The crate's error enum and the DPS error vocabulary shared by every frontend.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Why a value could not be made into a domain type. Every variant names the offending part
/// so the message can go straight back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TypeError {
    /// An identifier broke its grammar.
    #[error("the {kind} '{value}' {why}")]
    InvalidId {
        /// Which identifier.
        kind: &'static str,
        /// Which rule.
        why: &'static str,
        /// The value (truncated).
        value: String,
    },
    /// A key did not decode or had the wrong length.
    #[error("the {kind} {why}")]
    InvalidKey {
        /// Which key.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// An enum string is not one of the known values.
    #[error("'{value}' is not a valid {kind}; expected one of: {expected}")]
    UnknownValue {
        /// Which enum.
        kind: &'static str,
        /// The value (truncated).
        value: String,
        /// The accepted spellings.
        expected: &'static str,
    },
    /// The attestation mechanism is inconsistent.
    #[error("{0}")]
    Attestation(String),
    /// A time that is not RFC 3339.
    #[error("'{0}' is not an RFC 3339 date-time")]
    Timestamp(String),
    /// A custom-allocation webhook URL that the [`crate::WebhookPolicy`] refuses.
    #[error("the webhook URL {0}")]
    WebhookUrl(String),
}

/// The six-digit DPS error codes (`errorCode / 1000` is the HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed (unparseable JSON, missing member, bad header).
    BadRequest,
    /// A member of the request has an invalid value.
    ArgumentInvalid,
    /// Authentication failed or the policy lacks the right.
    Unauthorized,
    /// Device credentials (certificate or SAS) were refused.
    InvalidCertificate,
    /// No route matches the path.
    NotFound,
    /// The individual enrollment does not exist.
    EnrollmentNotFound,
    /// The enrollment group does not exist.
    EnrollmentGroupNotFound,
    /// The registration record does not exist.
    RegistrationNotFound,
    /// The method is not allowed on this path.
    MethodNotAllowed,
    /// An individual enrollment with that id already exists.
    EnrollmentExists,
    /// An enrollment group with that id already exists.
    EnrollmentGroupExists,
    /// The client did not send its request in time.
    RequestTimeout,
    /// `If-Match` did not match the current etag.
    PreconditionFailed,
    /// The body exceeds the size limit.
    PayloadTooLarge,
    /// The body is not JSON.
    UnsupportedMediaType,
    /// Too many requests; retry later.
    Throttled,
    /// Our own bug or a storage failure.
    InternalServerError,
    /// The service is shutting down or overloaded.
    ServiceUnavailable,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::BadRequest => 400001,
            ErrorCode::ArgumentInvalid => 400004,
            ErrorCode::Unauthorized => 401000,
            ErrorCode::InvalidCertificate => 401002,
            ErrorCode::NotFound => 404001,
            ErrorCode::EnrollmentNotFound => 404201,
            ErrorCode::EnrollmentGroupNotFound => 404202,
            ErrorCode::RegistrationNotFound => 404203,
            ErrorCode::MethodNotAllowed => 405001,
            ErrorCode::EnrollmentExists => 409201,
            ErrorCode::EnrollmentGroupExists => 409202,
            ErrorCode::RequestTimeout => 408001,
            ErrorCode::PreconditionFailed => 412002,
            ErrorCode::PayloadTooLarge => 413001,
            ErrorCode::UnsupportedMediaType => 415001,
            ErrorCode::Throttled => 429001,
            ErrorCode::InternalServerError => 500001,
            ErrorCode::ServiceUnavailable => 503001,
        }
    }

    /// The HTTP (and MQTT topic) status: `code / 1000`.
    pub fn status(self) -> u16 {
        // Every code above is six digits starting with a valid status, so this fits.
        u16::try_from(self.code() / 1000).unwrap_or(500)
    }

    /// The name sent in the `x-ms-error-code` header.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::ArgumentInvalid => "ArgumentInvalid",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::InvalidCertificate => "InvalidCertificate",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::EnrollmentNotFound => "EnrollmentNotFound",
            ErrorCode::EnrollmentGroupNotFound => "EnrollmentGroupNotFound",
            ErrorCode::RegistrationNotFound => "DeviceRegistrationNotFound",
            ErrorCode::MethodNotAllowed => "MethodNotAllowed",
            ErrorCode::EnrollmentExists => "EnrollmentAlreadyExists",
            ErrorCode::EnrollmentGroupExists => "EnrollmentGroupAlreadyExists",
            ErrorCode::RequestTimeout => "RequestTimeout",
            ErrorCode::PreconditionFailed => "PreconditionFailed",
            ErrorCode::PayloadTooLarge => "RequestEntityTooLarge",
            ErrorCode::UnsupportedMediaType => "UnsupportedMediaType",
            ErrorCode::Throttled => "ThrottlingException",
            ErrorCode::InternalServerError => "InternalServerError",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
        }
    }
}

/// `ProvisioningServiceErrorDetails`, the body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetails {
    /// Six-digit DPS code.
    pub error_code: i32,
    /// A fresh id to find the request in the logs.
    pub tracking_id: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Extra key/value detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<std::collections::BTreeMap<String, String>>,
    /// When.
    pub timestamp_utc: Timestamp,
}

impl ErrorDetails {
    /// A new error body with a fresh tracking id and the current time.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error_code: code.code(),
            tracking_id: uuid::Uuid::new_v4().to_string(),
            message: message.into(),
            info: None,
            timestamp_utc: Timestamp::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_code_over_thousand() {
        assert_eq!(ErrorCode::EnrollmentNotFound.status(), 404);
        assert_eq!(ErrorCode::PreconditionFailed.status(), 412);
        assert_eq!(ErrorCode::Throttled.status(), 429);
    }

    #[test]
    fn error_details_shape() {
        let v = serde_json::to_value(ErrorDetails::new(ErrorCode::Unauthorized, "no")).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["errorCode", "message", "timestampUtc", "trackingId"]);
        assert_eq!(v["errorCode"], 401000);
    }
}
