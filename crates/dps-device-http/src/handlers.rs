//! The three device operations: register, operation status, registration status.

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use dps_api::{ApiError, PeerCertificates};
use dps_registrar::{OperationStatus, RegistrarError, Transport};
use dps_types::{
    DeviceRegistration, DeviceRegistrationResult, IdScope, RegistrationId,
    RegistrationOperationStatus, RegistrationStatus, TpmRegistrationResult,
};

use crate::proof::{Attested, Proof};
use crate::{DeviceApi, DeviceError, MAX_BODY_BYTES};

/// `Retry-After` on a `202`: registrations take milliseconds (one durable write), and 1 is the
/// smallest value the C SDK accepts (it clamps to 1..300 s); the MQTT and AMQP frontends say
/// the same.
const RETRY_AFTER_SECS: u32 = 1;

/// `PUT /{idScope}/registrations/{registrationId}/register`: `202` + `assigning` at once, the
/// registration running in the background as an operation of the registrar's table.
pub(crate) async fn register(
    State(api): State<DeviceApi>,
    DevicePath { registration_id }: DevicePath,
    request: Request,
) -> Result<Response, DeviceError> {
    let (parts, body) = request.into_parts();
    let registration = registration_body(&parts.headers, body).await?;
    let proof = Proof::of(
        &parts.headers,
        parts.extensions.get::<PeerCertificates>(),
        Some(&registration),
    )?;
    let device = proof.attest(&api, &registration_id)?.device;
    let registrar = &api.registrar;
    let operation = registrar
        .start_operation(device.clone(), Transport::Https, registration.payload)
        .map_err(throttled)?;
    accepted(
        operation.to_string(),
        device.registration_id(),
        &parts.headers,
        registrar.id_scope(),
    )
}

/// `GET /{idScope}/registrations/{registrationId}/operations/{operationId}`: `202` while the
/// registration runs, `200` with its result when done. The body is ignored (the Node SDK
/// sends `{}`) but bounded.
pub(crate) async fn operation_status(
    State(api): State<DeviceApi>,
    Path((_, registration_id, operation_id)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, DeviceError> {
    let (parts, body) = request.into_parts();
    dps_api::read_json(&parts.headers, body, MAX_BODY_BYTES).await?;
    let proof = Proof::of(
        &parts.headers,
        parts.extensions.get::<PeerCertificates>(),
        None,
    )?;
    let Attested { device, tpm } = proof.attest_poll(&api, &registration_id)?;
    let registrar = &api.registrar;
    match registrar.poll_operation(&device, &operation_id, Transport::Https) {
        OperationStatus::Assigning => accepted(
            operation_id,
            device.registration_id(),
            &parts.headers,
            registrar.id_scope(),
        ),
        OperationStatus::Done(mut result) => {
            with_tpm_key(&mut result, tpm);
            let status = RegistrationOperationStatus {
                operation_id,
                status: result.status,
                registration_state: Some(*result),
            };
            Ok(dps_api::json_response(StatusCode::OK, &status)?)
        }
        OperationStatus::Busy { retry_after_secs } => Err(DeviceError::Throttled {
            retry_after_secs,
            why: "the service is busy; poll again later",
        }),
        OperationStatus::Failed => Err(DeviceError::RegistrationFailed),
        OperationStatus::NotFound => Err(DeviceError::OperationNotFound),
    }
}

/// `POST /{idScope}/registrations/{registrationId}`: the device's registration record as its
/// `DeviceRegistrationResult`, `404` without one. Attested as a poll is.
pub(crate) async fn registration_status(
    State(api): State<DeviceApi>,
    DevicePath { registration_id }: DevicePath,
    request: Request,
) -> Result<Response, DeviceError> {
    let (parts, body) = request.into_parts();
    let registration = registration_body(&parts.headers, body).await?;
    let proof = Proof::of(
        &parts.headers,
        parts.extensions.get::<PeerCertificates>(),
        Some(&registration),
    )?;
    let Attested { device, tpm } = proof.attest_poll(&api, &registration_id)?;
    match api
        .registrar
        .registration_state(&device)
        .map_err(throttled)?
    {
        Some(mut state) => {
            with_tpm_key(&mut state, tpm);
            Ok(dps_api::json_response(StatusCode::OK, &state)?)
        }
        None => Err(DeviceError::RegistrationNotFound(
            device.registration_id().to_string(),
        )),
    }
}

/// An assigned TPM device's result carries its hub key sealed to its TPM.
fn with_tpm_key(result: &mut DeviceRegistrationResult, tpm: Option<TpmRegistrationResult>) {
    if result.status == RegistrationStatus::Assigned {
        result.tpm = tpm;
    }
}

/// The `{registrationId}` of `/{idScope}/registrations/{registrationId}[/...]`, percent-decoded
/// (attestation checks it).
pub(crate) struct DevicePath {
    registration_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for DevicePath {
    type Rejection = DeviceError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, DeviceError> {
        let Path((_, registration_id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(ApiError::InvalidPath)?;
        Ok(DevicePath { registration_id })
    }
}

/// The `DeviceRegistration` body (an empty body is an empty registration), bounded by
/// [`MAX_BODY_BYTES`].
async fn registration_body(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<DeviceRegistration, DeviceError> {
    Ok(
        match dps_api::read_json(headers, body, MAX_BODY_BYTES).await? {
            Some(value) => dps_api::decode(value)?,
            None => DeviceRegistration::default(),
        },
    )
}

/// `202 Accepted` with `{"operationId","status":"assigning","registrationState":{...}}`,
/// `Retry-After`, and `Location` naming the register URL of the host the device dialled (as
/// DPS does), when its `Host` header allows.
fn accepted(
    operation_id: String,
    id: &RegistrationId,
    headers: &HeaderMap,
    scope: &IdScope,
) -> Result<Response, DeviceError> {
    let status = RegistrationOperationStatus::assigning(operation_id, id.clone());
    let mut response = dps_api::json_response(StatusCode::ACCEPTED, &status)?;
    let response_headers = response.headers_mut();
    response_headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    if let Some(location) = location(headers, scope, id) {
        response_headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `https://{Host}/{idScope}/registrations/{registrationId}/register`; `None` without a
/// `Host` header (HTTP/1.1 requires one) or when it holds what a URL cannot.
fn location(headers: &HeaderMap, scope: &IdScope, id: &RegistrationId) -> Option<HeaderValue> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    HeaderValue::from_str(&format!(
        "https://{host}/{scope}/registrations/{id}/register"
    ))
    .ok()
}

/// A registrar's retry answer as `429`; its other errors (never returned by the calls made
/// here) as our own failure.
fn throttled(e: RegistrarError) -> DeviceError {
    match e {
        RegistrarError::Busy { retry_after_secs } => DeviceError::Throttled {
            retry_after_secs,
            why: "too many registrations in progress",
        },
        RegistrarError::BrokerUnavailable { retry_after_secs } => DeviceError::Throttled {
            retry_after_secs,
            why: "the assignment feed is unavailable",
        },
        other => {
            tracing::error!(error = %other, "registration failed");
            DeviceError::RegistrationFailed
        }
    }
}
