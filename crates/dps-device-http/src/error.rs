//! [`DeviceError`], the crate's one error enum, and how it becomes a DPS error response.

use axum::http::{header, HeaderValue};
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
    /// A register without `Authorization` whose body carries `tpm`: TPM attestation, which
    /// this service does not offer yet.
    #[error("TPM attestation is not supported by this service; use a symmetric key or an X.509 certificate")]
    TpmUnsupported,
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
            DeviceError::TpmUnsupported => ErrorCode::BadRequest,
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

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

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
