//! [`DeviceError`], the crate's one error enum, and how it becomes a DPS error response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dps_api::ApiError;
use dps_types::{ErrorCode, ErrorDetails};

/// Why a device request was not answered with a registration status. Grouped by who is at
/// fault: the request itself, the device's credentials, the device's operation or record, or
/// this service (busy, or its own failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The request is malformed, too large, too slow, of the wrong type or at an unknown path:
    /// answered as the service API answers it (400, 404, 405, 408, 413, 415).
    #[error(transparent)]
    Request(#[from] ApiError),
    /// Attestation refused the device; the precise reason is in the registrar's diagnostics
    /// and the device learns only DPS's generic answer.
    #[error("Unauthorized")]
    Unauthorized,
    /// The first register of a TPM device, its EK that of its enrollment: `401` with the
    /// challenge, `{"message","authenticationKey","keyName"}` (not an error body).
    #[error("TPM attestation: activate the authenticationKey in the TPM and register with a SAS token signed by it")]
    TpmChallenge(dps_attest::TpmChallenge),
    /// A register body whose `tpm` member lacks the base64 `endorsementKey` or
    /// `storageRootKey`.
    #[error("the tpm member needs endorsementKey and storageRootKey (base64 TPM2B_PUBLIC)")]
    TpmBodyInvalid,
    /// No operation with this id for this device (never started, expired, pushed out by newer
    /// ones, or another device's).
    #[error("no operation with this id for this device; register again")]
    OperationNotFound,
    /// The device has no registration record (status lookup).
    #[error("device registration '{0}' not found")]
    RegistrationNotFound(String),
    /// The registrar is busy (or the assignment feed's broker has not confirmed the record):
    /// try again after `retry_after_secs`.
    #[error("{why}; retry after {retry_after_secs} s")]
    Throttled {
        /// Seconds the device should wait (the `Retry-After` header).
        retry_after_secs: u32,
        /// What is busy.
        why: &'static str,
    },
    /// The registration failed on our side (the registrar logged why); the device registers
    /// again.
    #[error("the registration failed; register again")]
    RegistrationFailed,
}

impl DeviceError {
    /// The DPS error this is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DeviceError::Request(e) => e.code(),
            DeviceError::Unauthorized => ErrorCode::InvalidCertificate,
            DeviceError::TpmChallenge(_) => ErrorCode::Unauthorized,
            DeviceError::TpmBodyInvalid => ErrorCode::BadRequest,
            DeviceError::OperationNotFound => ErrorCode::NotFound,
            DeviceError::RegistrationNotFound(_) => ErrorCode::RegistrationNotFound,
            DeviceError::Throttled { .. } => ErrorCode::Throttled,
            DeviceError::RegistrationFailed => ErrorCode::InternalServerError,
        }
    }
}

impl IntoResponse for DeviceError {
    fn into_response(self) -> Response {
        if let DeviceError::Request(e) = self {
            return e.into_response();
        }
        if let DeviceError::TpmChallenge(challenge) = &self {
            return challenge_response(&self.to_string(), challenge);
        }
        let code = self.code();
        let details = ErrorDetails::new(code, self.to_string());
        tracing::debug!(
            tracking_id = %details.tracking_id,
            status = code.status(),
            error = %self,
            "device request refused"
        );
        let mut response = dps_api::error_response(code, &details);
        if let DeviceError::Throttled {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

/// DPS's answer to a TPM device's first register (dps-protocol.md §5.2 item 2): `401` with
/// `message`, `authenticationKey` (the activation blob, which Node and IoT Edge require) and
/// `keyName` (which the C client requires and signs with as `skn`).
fn challenge_response(message: &str, challenge: &dps_attest::TpmChallenge) -> Response {
    let body = serde_json::json!({
        "message": message,
        "authenticationKey": challenge.authentication_key(),
        "keyName": dps_attest::TpmChallenge::KEY_NAME,
    });
    dps_api::json_response(StatusCode::UNAUTHORIZED, &body)
        .unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_carries_retry_after() {
        let response = DeviceError::Throttled {
            retry_after_secs: 7,
            why: "busy",
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(response.headers()["x-ms-error-code"], "ThrottlingException");
    }

    #[test]
    fn refusals_are_dps_generic_401002() {
        let response = DeviceError::Unauthorized.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["x-ms-error-code"], "InvalidCertificate");
        assert_eq!(DeviceError::Unauthorized.code().code(), 401002);
    }
}
