//! The HTTPS service API of the provisioning service: the enrollment-management REST API of
//! Azure IoT Hub DPS (swagger `service.json`, api-version 2021-10-01, older versions accepted),
//! authenticated with DPS service SAS tokens, served over rustls.
//!
//! What it does: [`router`] builds every operation (individual enrollments, enrollment groups,
//! bulk operations, queries with paging, device registration states) over a
//! [`dps_store::Store`], checking each request's `SharedAccessSignature` against the configured
//! [`SharedAccessPolicy`]s and their [`Rights`]. It is lenient where real clients differ (path
//! case, trailing slashes, quoted or bare `If-Match`, every `api-version` an SDK sends,
//! explicit nulls, unknown members) and strict where it matters (ids, keys, certificates,
//! body size, time, the hubs and webhook an enrollment names: writes go through
//! `dps_attest::prepare_*` with the service's [`EnrollmentRules`]).
//! [`serve`] runs any such router on the `dps-listener` accept loop: connection limits (in
//! total, per source address, unauthenticated per source address), a TLS handshake
//! timeout, header, body and request timeouts, and a graceful drain, all in [`HttpLimits`];
//! every request carries the client's TLS certificate chain, if it sent one
//! ([`PeerCertificates`], for the device API that shares the listener). [`read_json`],
//! [`decode`], [`json_response`], [`error_response`], [`route_not_found`] and
//! [`method_not_allowed`] let other routers on the listener answer as DPS does.
//! [`serve_with_websockets`] also hands WebSocket upgrades (`/$iothub/websocket`, by
//! subprotocol, [`websocket`]) to the device frontends as byte streams ([`WebSocketBytes`]).
//!
//! What it must never do: create or change a registration (devices register through the
//! registrar; this API only reads and deletes registration records); log a token, a
//! signature or a key; return keys or certificate text anywhere but the
//! attestation-mechanism operation; panic on anything a peer sends.
//!
//! Main types: [`ApiState`] (store, service host, policies, enrollment rules), [`SharedAccessPolicy`],
//! [`Rights`], [`HttpLimits`], and the crate's one error enum [`ApiError`], which renders as a
//! DPS `ProvisioningServiceErrorDetails` response.

mod auth;
mod bulk;
mod error;
mod extract;
mod normalize;
mod registrations;
mod resource;
mod server;
pub mod websocket;

use std::sync::Arc;

use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::Router;
use dps_attest::EnrollmentRules;
use dps_store::Store;
use dps_types::{EnrollmentGroup, IndividualEnrollment};
use tower::Layer;

pub use auth::{Rights, SharedAccessPolicy};
pub use dps_listener::{ListenerCounters, ListenerStats};
pub use error::{error_response, ApiError};
pub use extract::{decode, json_response, read_json};
pub use server::{serve, serve_with_counters, serve_with_websockets, HttpLimits, PeerCertificates};
pub use websocket::{StreamService, WebSocketBytes, WebSockets};

/// Default largest request body: DPS messages are at most 96 KB, and an enrollment with two
/// PEM certificates is under 10 KB; 256 KiB leaves room without letting a client make the
/// server buffer much.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// What the handlers share: the store, who this service is, and who may call it. Cheap to
/// clone.
#[derive(Clone)]
pub struct ApiState {
    store: Store,
    service_host: Arc<str>,
    policies: Arc<[SharedAccessPolicy]>,
    max_body_bytes: usize,
    registrar: dps_registrar::Registrar,
    rules: Arc<EnrollmentRules>,
}

impl ApiState {
    /// The API over `registrar`'s store: deletes go through the registrar (so the assignment
    /// feed learns of them), enrollment writes follow its [`EnrollmentRules`] (linked hubs,
    /// webhook policy), and its failed-attempt diagnostics are served. `service_host` is the
    /// host name clients sign their tokens for, e.g. `localhost:8443` or `mydps.example.com`
    /// (a leading `https://` and trailing `/` are ignored).
    pub fn new(
        registrar: dps_registrar::Registrar,
        service_host: &str,
        policies: Vec<SharedAccessPolicy>,
    ) -> ApiState {
        let host = service_host.trim().to_ascii_lowercase();
        let host = host
            .strip_prefix("https://")
            .or_else(|| host.strip_prefix("http://"))
            .unwrap_or(&host)
            .trim_end_matches('/');
        ApiState {
            store: registrar.store().clone(),
            service_host: host.into(),
            policies: policies.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            rules: Arc::new(registrar.enrollment_rules()),
            registrar,
        }
    }

    /// Sets the largest request body the JSON operations accept (413 above it).
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> ApiState {
        self.max_body_bytes = max_body_bytes;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The host name tokens must be signed for (lower case, no scheme).
    pub fn service_host(&self) -> &str {
        &self.service_host
    }

    pub(crate) fn policies(&self) -> &[SharedAccessPolicy] {
        &self.policies
    }

    pub(crate) fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    pub(crate) fn registrar(&self) -> &dps_registrar::Registrar {
        &self.registrar
    }

    pub(crate) fn rules(&self) -> &EnrollmentRules {
        &self.rules
    }
}

/// Every operation of the DPS service API, plus two that DPS lacks (failed-attempt
/// diagnostics: `GET /registrations/{id}/attempts`, `GET /diagnostics/failures` and `GET /diagnostics/feed`). Paths are matched case-insensitively and with or
/// without a trailing slash (see `normalize.rs`); every operation needs an `api-version`
/// query parameter the SDKs send (`2018-04-01` to `2021-10-01`, see `extract.rs`), else 400.
/// Unknown paths answer 404 and known paths with another method 405, both with a DPS error
/// body.
///
/// A path `/{enrollments|enrollmentGroups}/query` is always the query operation for `POST`;
/// a record whose id is exactly `query` (lower case) cannot be read, replaced or deleted
/// through the single-record operations (bulk operations still reach it).
pub fn router(state: ApiState) -> Router {
    type Enrollment = IndividualEnrollment;
    type Group = EnrollmentGroup;
    let api = Router::new()
        .route("/enrollments", post(bulk::run::<Enrollment>))
        .route("/enrollments/query", post(resource::query::<Enrollment>))
        .route(
            "/enrollments/{id}",
            get(resource::get::<Enrollment>)
                .put(resource::put::<Enrollment>)
                .delete(resource::delete::<Enrollment>),
        )
        .route(
            "/enrollments/{id}/attestationmechanism",
            post(resource::attestation_mechanism::<Enrollment>),
        )
        .route("/enrollmentGroups", post(bulk::run::<Group>))
        .route("/enrollmentGroups/query", post(resource::query::<Group>))
        .route(
            "/enrollmentGroups/{id}",
            get(resource::get::<Group>)
                .put(resource::put::<Group>)
                .delete(resource::delete::<Group>),
        )
        .route(
            "/enrollmentGroups/{id}/attestationmechanism",
            post(resource::attestation_mechanism::<Group>),
        )
        .route(
            "/registrations/{id}",
            get(registrations::get).delete(registrations::delete),
        )
        .route("/registrations/{id}/query", post(registrations::query))
        .route("/registrations/{id}/attempts", get(registrations::attempts))
        .route("/diagnostics/failures", get(registrations::failure_counts))
        .route("/diagnostics/feed", get(registrations::feed_status))
        .route_layer(axum::middleware::from_fn(extract::require_api_version))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    // Routing happens inside `api`; the rewrite must come before it, so it wraps the whole
    // router instead of being one of its layers.
    let normalized = tower::util::MapRequestLayer::new(normalize::normalize_request).layer(api);
    Router::new().fallback_service(normalized)
}

/// The 404 of a path no operation matches (a handler for any router's fallback).
pub async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: error::truncated(uri.path()),
    }
}

/// The 405 of a known path with another method (a handler for any router's
/// `method_not_allowed_fallback`).
pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
