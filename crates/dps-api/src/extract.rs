//! What handlers take from a request (ids, `If-Match`, paging headers, a bounded JSON body)
//! and the JSON responses they give back. Every rejection is an [`ApiError`], so clients only
//! ever see DPS error bodies.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dps_store::Precondition;
use dps_types::{EnrollmentGroupId, RegistrationId, TypeError};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::JSON_UTF8;
use crate::{ApiError, ApiState};

/// Page size when the client sends no `x-ms-max-item-count` (the Python SDK's default `top`
/// is unset; 100 keeps a page of large X.509 enrollments well under a megabyte).
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served, whatever the client asks: bounds the memory and time of one query
/// response.
const MAX_PAGE_SIZE: usize = 1000;

/// The service api-versions this service answers: those the SDKs send (C `2018-04-01`,
/// Python v1 `2018-09-01-preview`, C# `2019-03-31`, Python and Node `2021-10-01`, the
/// swagger's version). Their enrollment JSON is the same model; a version outside this list
/// could expect members this service does not know, so it is refused rather than guessed at.
pub(crate) const API_VERSIONS: [&str; 4] = [
    "2018-04-01",
    "2018-09-01-preview",
    "2019-03-31",
    "2021-10-01",
];

/// Refuses a request whose `api-version` query parameter is missing, empty, repeated with
/// different values, or not one of [`API_VERSIONS`], with a DPS 400 before anything else is
/// looked at.
pub(crate) async fn require_api_version(request: Request, next: Next) -> Response {
    match check_api_version(request.uri().query()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check_api_version(query: Option<&str>) -> Result<(), ApiError> {
    let supported = API_VERSIONS.join(", ");
    let mut found = None;
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !name.eq_ignore_ascii_case("api-version") {
            continue;
        }
        if found.is_some_and(|f| f != value) {
            return Err(ApiError::ApiVersion(format!(
                "the api-version query parameter is given twice with different values; \
                 send one of {supported}"
            )));
        }
        found = Some(value);
    }
    match found {
        Some(version) if API_VERSIONS.contains(&version) => Ok(()),
        None | Some("") => Err(ApiError::ApiVersion(format!(
            "the api-version query parameter is required; supported versions: {supported}"
        ))),
        Some(other) => Err(ApiError::ApiVersion(format!(
            "api-version '{}' is not supported; supported versions: {supported}",
            crate::error::truncated(other)
        ))),
    }
}

/// An id parsed from the one `{id}` path segment.
pub(crate) struct IdPath<I>(pub I);

/// The id types that appear in paths.
pub(crate) trait PathId: Sized {
    fn parse_path(text: &str) -> Result<Self, TypeError>;
}

impl PathId for RegistrationId {
    fn parse_path(text: &str) -> Result<Self, TypeError> {
        RegistrationId::parse(text)
    }
}

impl PathId for EnrollmentGroupId {
    fn parse_path(text: &str) -> Result<Self, TypeError> {
        EnrollmentGroupId::parse(text)
    }
}

impl<I: PathId, S: Send + Sync> FromRequestParts<S> for IdPath<I> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(ApiError::InvalidPath)?;
        I::parse_path(&raw).map(IdPath).map_err(ApiError::InvalidId)
    }
}

/// The `If-Match` header as a store precondition: absent (or empty) means "any".
pub(crate) struct IfMatch(pub Precondition);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(text) = header_text(&parts.headers, header::IF_MATCH.as_str(), "If-Match")? else {
            return Ok(IfMatch(Precondition::Any));
        };
        Ok(IfMatch(Precondition::IfMatch(text.to_owned())))
    }
}

/// `x-ms-max-item-count` (at most `MAX_PAGE_SIZE`; zero means the default, a negative or
/// non-numeric value is a 400) and `x-ms-continuation`.
pub(crate) struct Paging {
    pub page_size: usize,
    pub continuation: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Paging {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        const COUNT: &str = "x-ms-max-item-count";
        let page_size = match header_text(&parts.headers, COUNT, COUNT)? {
            None => DEFAULT_PAGE_SIZE,
            Some(text) => match text.parse::<i64>() {
                Ok(0) => DEFAULT_PAGE_SIZE,
                Ok(n) if n < 0 => {
                    return Err(ApiError::InvalidHeader {
                        name: COUNT,
                        why: "is negative; send a page size from 1 to 1000, or 0 for the default",
                    })
                }
                Ok(n) => usize::try_from(n).map_or(MAX_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE)),
                Err(_) => {
                    return Err(ApiError::InvalidHeader {
                        name: COUNT,
                        why: "is not an integer",
                    })
                }
            },
        };
        const CONTINUATION: &str = "x-ms-continuation";
        let continuation =
            header_text(&parts.headers, CONTINUATION, CONTINUATION)?.map(str::to_owned);
        Ok(Paging {
            page_size,
            continuation,
        })
    }
}

/// A header's trimmed text; `None` when absent or blank.
fn header_text<'h>(
    headers: &'h HeaderMap,
    key: &str,
    name: &'static str,
) -> Result<Option<&'h str>, ApiError> {
    let Some(value) = headers.get(key) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| ApiError::InvalidHeader {
        name,
        why: "is not visible ASCII",
    })?;
    let text = text.trim();
    Ok((!text.is_empty()).then_some(text))
}

/// The request body parsed as JSON with the API's body limit ([`read_json`]), or `None` when
/// it is empty.
pub(crate) struct JsonBody(pub Option<serde_json::Value>);

impl FromRequest<ApiState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        read_json(&parts.headers, body, state.max_body_bytes())
            .await
            .map(JsonBody)
    }
}

/// A request's body (with its `headers`) parsed as JSON, or `None` when it is empty (or only
/// whitespace), read with at most `limit` bytes.
///
/// Checks, in order: `Content-Type` (missing or `application/json*` or `*+json`, else 415),
/// `Content-Length` against the limit (413 before reading anything), the bytes read against
/// the limit (413), the pace the server's body timeout allows (408), then JSON syntax (400).
pub async fn read_json(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Option<serde_json::Value>, ApiError> {
    check_content_type(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit)) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| body_error(e, limit))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::InvalidBody(format!("the request body is not valid JSON: {e}")))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence.starts_with("application/json") || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(crate::error::truncated(
            text,
        )))
    }
}

/// Classifies a body read failure: too long (413), too slow (408, from the server's body
/// timeout), or broken (400).
fn body_error(error: axum::BoxError, limit: usize) -> ApiError {
    if error.is::<LengthLimitError>() {
        return ApiError::PayloadTooLarge { limit };
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::RequestTimeout;
        }
        if e.is::<LengthLimitError>() {
            return ApiError::PayloadTooLarge { limit };
        }
        cause = e.source();
    }
    ApiError::BodyRead(error)
}

/// Deserializes a JSON value into a model type; the error names the offending member
/// (`invalid value of 'attestation.type': ...`).
pub fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::InvalidBody(if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid value of '{path}': {inner}")
        })
    })
}

/// `200 OK` with `value` as JSON.
pub(crate) fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    json_response(StatusCode::OK, value)
}

/// `status` with `value` as JSON (`Content-Type: application/json; charset=utf-8`, as DPS).
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(ApiError::Encode)?;
    Ok((
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))],
        body,
    )
        .into_response())
}

/// One page of a query: a JSON array and the paging headers every SDK reads
/// (`x-ms-item-type` always, `x-ms-continuation` only when there is a next page).
pub(crate) fn page<T: Serialize>(
    items: &[T],
    item_type: &'static str,
    page_size: usize,
    continuation: Option<&str>,
) -> Result<Response, ApiError> {
    let mut response = json(&items)?;
    let headers = response.headers_mut();
    headers.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    headers.insert("x-ms-max-item-count", HeaderValue::from(page_size));
    if let Some(token) = continuation {
        let value = HeaderValue::from_str(token).map_err(ApiError::ContinuationEncoding)?;
        headers.insert("x-ms-continuation", value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_ok());
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(check_content_type(&h).is_ok(), "{ok}");
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            check_content_type(&h),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn api_versions() {
        for ok in [
            "api-version=2021-10-01",
            "x=1&api-version=2018-04-01",
            "API-Version=2019-03-31&api-version=2019-03-31",
            "api-version=2018-09-01-preview",
        ] {
            assert!(check_api_version(Some(ok)).is_ok(), "{ok}");
        }
        let message = |q: Option<&str>| {
            check_api_version(q)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(message(None).contains("is required"));
        assert!(message(Some("api-version=")).contains("is required"));
        assert!(message(Some("api-version")).contains("is required"));
        assert!(message(Some("other=2021-10-01")).contains("is required"));
        assert!(message(Some("api-version=2099-01-01")).contains("'2099-01-01' is not supported"));
        assert!(message(Some("api-version=2021-10-01&api-version=2099-01-01")).contains("twice"));
    }

    #[test]
    fn decode_names_the_member() {
        let err = decode::<dps_types::QuerySpecification>(serde_json::json!({"query": 5}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("invalid value of 'query': invalid type"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn body_errors_are_classified() {
        let too_long = Limited::new(http_body_util::Full::new(bytes::Bytes::from("xx")), 1)
            .collect()
            .await
            .err()
            .map(|e| body_error(e, 1));
        assert!(matches!(
            too_long,
            Some(ApiError::PayloadTooLarge { limit: 1 })
        ));
        let io: axum::BoxError = Box::new(std::io::Error::other("reset"));
        assert!(matches!(body_error(io, 1), ApiError::BodyRead(_)));
    }
}
