//! Device registration states: read, delete, and list the devices of a group. This API never
//! creates or changes a registration; devices register through the registrar.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dps_types::{DeviceRegistrationState, EnrollmentGroupId, RegistrationId};

use crate::auth::{Authorized, RegistrationStatusRead, RegistrationStatusWrite};
use crate::extract::{json, page, IdPath, IfMatch, Paging};
use crate::{ApiError, ApiState};

/// `x-ms-item-type` of registration state pages.
const ITEM_TYPE: &str = "DeviceRegistration";

fn not_found(id: &RegistrationId) -> ApiError {
    ApiError::RegistrationNotFound(id.to_string())
}

/// `GET /registrations/{id}`.
pub(crate) async fn get(
    _: Authorized<RegistrationStatusRead>,
    State(state): State<ApiState>,
    IdPath(id): IdPath<RegistrationId>,
) -> Result<Response, ApiError> {
    let record = state
        .store()
        .registration(&id)
        .ok_or_else(|| not_found(&id))?;
    json(&record.state)
}

/// `DELETE /registrations/{id}`: 204, with `If-Match` only when the etag matches.
pub(crate) async fn delete(
    _: Authorized<RegistrationStatusWrite>,
    State(state): State<ApiState>,
    IdPath(id): IdPath<RegistrationId>,
    IfMatch(pre): IfMatch,
) -> Result<Response, ApiError> {
    state
        .registrar()
        .delete_registration(&id, &pre)
        .await
        .map_err(|e| ApiError::from_store(e, || not_found(&id), "registration state"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /registrations/{enrollmentGroupId}/query`: the registration states of the group's
/// devices. The spec defines no body; Node sends a query specification anyway, which is
/// ignored (never read).
pub(crate) async fn query(
    _: Authorized<RegistrationStatusRead>,
    State(state): State<ApiState>,
    IdPath(group): IdPath<EnrollmentGroupId>,
    paging: Paging,
) -> Result<Response, ApiError> {
    let found = state
        .store()
        .query_registrations(&group, paging.page_size, paging.continuation.as_deref())
        .map_err(ApiError::from_query)?;
    let states: Vec<&DeviceRegistrationState> = found.items.iter().map(|r| &r.state).collect();
    page(
        &states,
        ITEM_TYPE,
        paging.page_size,
        found.continuation.as_deref(),
    )
}

/// `GET /registrations/{id}/attempts` (not in DPS): the device's recent failed registration
/// attempts with their precise reasons, oldest first. Devices only ever see a generic 401.
pub(crate) async fn attempts(
    _: Authorized<RegistrationStatusRead>,
    State(state): State<ApiState>,
    IdPath(id): IdPath<RegistrationId>,
) -> Result<Response, ApiError> {
    let attempts = state.registrar().diagnostics().attempts(id.as_str());
    json(&serde_json::json!({ "registrationId": id, "attempts": attempts }))
}

/// `GET /diagnostics/failures` (not in DPS): failed registration attempts since start,
/// counted per reason.
pub(crate) async fn failure_counts(
    _: Authorized<RegistrationStatusRead>,
    State(state): State<ApiState>,
) -> Result<Response, ApiError> {
    let counts: serde_json::Map<String, serde_json::Value> = state
        .registrar()
        .diagnostics()
        .counts()
        .into_iter()
        .map(|(reason, n)| (reason.to_owned(), n.into()))
        .collect();
    json(&serde_json::json!({ "failures": counts }))
}

/// `GET /diagnostics/feed` (not in DPS): the assignment feed's broker link and, per linked
/// hub, events published, confirmed and waiting. `{"enabled": false}` when the feed is off.
pub(crate) async fn feed_status(
    _: Authorized<RegistrationStatusRead>,
    State(state): State<ApiState>,
) -> Result<Response, ApiError> {
    match state.registrar().feed() {
        Some(feed) => json(&serde_json::json!({ "enabled": true, "status": feed.stats() })),
        None => json(&serde_json::json!({ "enabled": false })),
    }
}
