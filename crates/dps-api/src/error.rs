//! [`ApiError`], the crate's one error enum, and how it becomes a DPS error response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dps_attest::AttestError;
use dps_store::StoreError;
use dps_types::{ErrorCode, ErrorDetails, TypeError};

/// The `Content-Type` of every response body this crate writes, as DPS sends it.
pub(crate) const JSON_UTF8: &str = "application/json; charset=utf-8";

/// Why a request was refused. Grouped by who is at fault: the caller's credentials (401), the
/// request itself (400, 404, 405, 408, 412, 413, 415), or this service (500, 503).
///
/// The response carries the variant's `Display` as `message`, except for the service's own
/// failures, whose cause is logged with the tracking id and never sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No `Authorization` header.
    #[error("the Authorization header is missing")]
    MissingAuthorization,
    /// The `Authorization` header is not a `SharedAccessSignature` token.
    #[error("the Authorization header is not a SharedAccessSignature token")]
    NotSharedAccessSignature,
    /// The token does not parse.
    #[error("the SharedAccessSignature token is malformed: {0}")]
    MalformedToken(#[source] AttestError),
    /// The token has no `skn`; service tokens must name their policy.
    #[error("the SharedAccessSignature token has no skn (shared access policy name)")]
    MissingPolicyName,
    /// `skn` names no configured policy.
    #[error("unknown shared access policy '{0}'")]
    UnknownPolicy(String),
    /// Neither key of the policy produced the token's signature.
    #[error("signature mismatch for policy '{policy}'")]
    SignatureMismatch {
        /// The policy the token named.
        policy: String,
        /// What the verifier said about the primary key (the secondary key failed too).
        #[source]
        source: AttestError,
    },
    /// The token's `se` is in the past.
    #[error("the SharedAccessSignature token expired at {at}")]
    TokenExpired {
        /// The expiry, as an RFC 3339 time (or the raw seconds when out of range).
        at: String,
        /// The verifier's verdict.
        #[source]
        source: AttestError,
    },
    /// The token's `sr` is not this service (or not a prefix of the requested resource).
    #[error("audience mismatch: the token is for '{audience}', not '{expected}'")]
    AudienceMismatch {
        /// The decoded `sr` (truncated).
        audience: String,
        /// The resource that was requested.
        expected: String,
    },
    /// The policy is valid but lacks the right the operation needs.
    #[error("policy '{policy}' lacks the {right} right")]
    MissingRight {
        /// The policy the token named.
        policy: String,
        /// The right the operation needs.
        right: &'static str,
    },

    /// The body is not JSON, or a member has the wrong type or value; the message names the
    /// member.
    #[error("{0}")]
    InvalidBody(String),
    /// The body is empty where one is required.
    #[error("the request body is empty; expected {0}")]
    EmptyBody(&'static str),
    /// An id in the path or body breaks the DPS id rules.
    #[error("{0}")]
    InvalidId(#[source] TypeError),
    /// A path segment does not percent-decode to UTF-8.
    #[error("the request path is not valid: {0}")]
    InvalidPath(#[source] axum::extract::rejection::PathRejection),
    /// The id in the body is not the id in the path.
    #[error("the {member} '{body}' in the body does not match '{path}' in the path")]
    IdMismatch {
        /// The body member (`registrationId` or `enrollmentGroupId`).
        member: &'static str,
        /// The body's id.
        body: String,
        /// The path's id.
        path: String,
    },
    /// The attestation mechanism is invalid (bad certificate, key, endorsement key...).
    #[error("invalid attestation: {0}")]
    InvalidAttestation(#[source] AttestError),
    /// A setting the service cannot honour: a hub that is not linked, a custom allocation
    /// policy without its webhook, a webhook URL the policy refuses. The message names the
    /// member.
    #[error("{0}")]
    InvalidEnrollment(#[source] AttestError),
    /// The `api-version` query parameter is missing or names a version this service does not
    /// implement.
    #[error("{0}")]
    ApiVersion(String),
    /// A request header has a value this service cannot use.
    #[error("the {name} header {why}")]
    InvalidHeader {
        /// The header.
        name: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The query specification has no query text.
    #[error("the query specification has no query text; send {{\"query\": \"SELECT *\"}}")]
    EmptyQuery,
    /// A bulk operation with more items than DPS allows.
    #[error("a bulk operation may carry at most {max} items, not {count}")]
    TooManyBulkItems {
        /// Items sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The `x-ms-continuation` token was not handed out by this service.
    #[error("the x-ms-continuation token is not valid")]
    InvalidContinuation(#[source] StoreError),

    /// No individual enrollment with this id.
    #[error("enrollment '{0}' not found")]
    EnrollmentNotFound(String),
    /// No enrollment group with this id.
    #[error("enrollment group '{0}' not found")]
    GroupNotFound(String),
    /// No registration record with this id.
    #[error("device registration '{0}' not found")]
    RegistrationNotFound(String),
    /// Bulk `create` of an individual enrollment that exists (DPS's exact wording).
    #[error("Enrollment already exists.")]
    EnrollmentExists,
    /// Bulk `create` of an enrollment group that exists (DPS's exact wording).
    #[error("EnrollmentGroup already exists.")]
    GroupExists,
    /// No operation at this path.
    #[error("no operation matches {method} {path}")]
    RouteNotFound {
        /// Request method.
        method: String,
        /// Request path (truncated).
        path: String,
    },
    /// The path exists but not with this method.
    #[error("method {0} is not allowed on this path")]
    MethodNotAllowed(String),
    /// `If-Match` does not match the current etag, or the record does not exist.
    #[error("the If-Match etag does not match the current {0}")]
    PreconditionFailed(&'static str),
    /// The body exceeds the configured size.
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is declared as something other than JSON.
    #[error("content type '{0}' is not supported; send application/json")]
    UnsupportedMediaType(String),
    /// The body could not be read (the client aborted or sent broken chunked framing).
    #[error("the request body could not be read")]
    BodyRead(#[source] axum::BoxError),
    /// The client sent its request (usually its body) too slowly.
    #[error("the request was not received in time")]
    RequestTimeout,

    /// The store failed; the cause is logged, the client sees only the tracking id.
    #[error("storage failure")]
    Store(#[source] StoreError),
    /// A response did not serialize (a bug: every model type serializes).
    #[error("response encoding failure")]
    Encode(#[source] serde_json::Error),
    /// The store handed out a continuation token that is not a valid header value (a bug).
    #[error("continuation token encoding failure")]
    ContinuationEncoding(#[source] axum::http::header::InvalidHeaderValue),
    /// A configured access right name is unknown (configuration, never a request).
    #[error("unknown access right '{0}'; expected EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite or ServiceConfig")]
    UnknownRight(String),
}

impl ApiError {
    /// The DPS error this is answered with.
    pub fn code(&self) -> ErrorCode {
        use ApiError as E;
        match self {
            E::MissingAuthorization
            | E::NotSharedAccessSignature
            | E::MalformedToken(_)
            | E::MissingPolicyName
            | E::UnknownPolicy(_)
            | E::SignatureMismatch { .. }
            | E::TokenExpired { .. }
            | E::AudienceMismatch { .. }
            | E::MissingRight { .. } => ErrorCode::Unauthorized,
            E::InvalidBody(_)
            | E::EmptyBody(_)
            | E::InvalidPath(_)
            | E::BodyRead(_)
            | E::ApiVersion(_) => ErrorCode::BadRequest,
            E::InvalidId(_)
            | E::IdMismatch { .. }
            | E::InvalidAttestation(_)
            | E::InvalidEnrollment(_)
            | E::InvalidHeader { .. }
            | E::EmptyQuery
            | E::TooManyBulkItems { .. }
            | E::InvalidContinuation(_) => ErrorCode::ArgumentInvalid,
            E::EnrollmentNotFound(_) => ErrorCode::EnrollmentNotFound,
            E::GroupNotFound(_) => ErrorCode::EnrollmentGroupNotFound,
            E::RegistrationNotFound(_) => ErrorCode::RegistrationNotFound,
            E::EnrollmentExists => ErrorCode::EnrollmentExists,
            E::GroupExists => ErrorCode::EnrollmentGroupExists,
            E::RouteNotFound { .. } => ErrorCode::NotFound,
            E::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            E::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            E::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            E::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            E::RequestTimeout => ErrorCode::RequestTimeout,
            E::Store(StoreError::Closed) => ErrorCode::ServiceUnavailable,
            E::Store(_) | E::Encode(_) | E::ContinuationEncoding(_) | E::UnknownRight(_) => {
                ErrorCode::InternalServerError
            }
        }
    }

    /// The six-digit DPS code this error is answered with (also used for bulk item errors).
    pub fn error_code(&self) -> i32 {
        self.code().code()
    }

    /// Maps a store failure of an operation on one record: `not_found` for a missing record,
    /// `what` names the record in a precondition failure.
    pub(crate) fn from_store(
        e: StoreError,
        not_found: impl FnOnce() -> ApiError,
        what: &'static str,
    ) -> ApiError {
        match e {
            StoreError::NotFound => not_found(),
            StoreError::PreconditionFailed => ApiError::PreconditionFailed(what),
            other => ApiError::Store(other),
        }
    }

    /// Maps a refused preparation: the enrollment's settings (hubs, custom allocation) or
    /// its attestation.
    pub(crate) fn from_preparation(e: AttestError) -> ApiError {
        match e {
            AttestError::UnlinkedHub { .. }
            | AttestError::CustomWithoutDefinition
            | AttestError::WebhookUrlRefused(_) => ApiError::InvalidEnrollment(e),
            e => ApiError::InvalidAttestation(e),
        }
    }

    /// Maps a store failure of a query: only the continuation token can be the client's fault.
    pub(crate) fn from_query(e: StoreError) -> ApiError {
        match e {
            StoreError::InvalidContinuation => ApiError::InvalidContinuation(e),
            other => ApiError::Store(other),
        }
    }
}

/// Bounds messages that echo client input (ids, paths, audiences) so a huge input cannot
/// produce a huge response or log line.
pub(crate) fn truncated(text: &str) -> String {
    const MAX_ECHO_CHARS: usize = 256;
    text.chars().take(MAX_ECHO_CHARS).collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let internal = status.is_server_error();
        let message = if internal {
            "the service failed to process the request; report the trackingId".to_owned()
        } else {
            self.to_string()
        };
        let details = ErrorDetails::new(code, message);
        if internal {
            tracing::error!(
                tracking_id = %details.tracking_id,
                error = %ErrorChain(&self),
                "request failed"
            );
        } else {
            tracing::debug!(
                tracking_id = %details.tracking_id,
                status = status.as_u16(),
                error = %self,
                "request refused"
            );
        }
        error_response(code, &details)
    }
}

/// A DPS error response, as every DPS endpoint answers errors: `code`'s HTTP status, the
/// `ProvisioningServiceErrorDetails` body, `Content-Type: application/json; charset=utf-8`
/// and `x-ms-error-code` with the code's name.
pub fn error_response(code: ErrorCode, details: &ErrorDetails) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match serde_json::to_vec(details) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "error details do not serialize");
            Vec::new()
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    headers.insert("x-ms-error-code", HeaderValue::from_static(code.name()));
    response
}

/// Displays an error and its `source()` chain on one line, for logs.
pub(crate) struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn render(e: ApiError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes());
        let body = serde_json::from_slice(&bytes.unwrap_or_default()).unwrap_or_default();
        (status, headers, body)
    }

    #[tokio::test]
    async fn error_response_shape() {
        let (status, headers, body) = render(ApiError::EnrollmentNotFound("dev-1".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["x-ms-error-code"], "EnrollmentNotFound");
        assert_eq!(headers[header::CONTENT_TYPE], JSON_UTF8);
        assert_eq!(body["errorCode"], 404201);
        assert_eq!(body["message"], "enrollment 'dev-1' not found");
        assert!(body["trackingId"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(body["timestampUtc"].as_str().is_some());
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak_their_cause() {
        let cause = StoreError::Backend("disk /secret/path failed".into());
        let (status, _, body) = render(ApiError::Store(cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["errorCode"], 500001);
        assert!(!body.to_string().contains("/secret/path"));
        let (status, _, body) = render(ApiError::Store(StoreError::Closed)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["errorCode"], 503001);
    }

    #[tokio::test]
    async fn request_timeout_is_408() {
        let (status, headers, body) = render(ApiError::RequestTimeout).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(headers["x-ms-error-code"], "RequestTimeout");
        assert_eq!(body["errorCode"], 408001);
    }
}
