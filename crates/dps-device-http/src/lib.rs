//! The DPS device REST API over HTTPS (swagger `device.json`, `dps-protocol.md` §5): how
//! devices that speak HTTP register, served on the service API's HTTPS listener (one port 443
//! serves everything, as DPS does).
//!
//! What it does: [`router`] answers
//! * `PUT /{idScope}/registrations/{registrationId}/register`: attests the device, starts its
//!   registration as an operation of the registrar's table and answers `202` with
//!   `{"operationId","status":"assigning"}`, `Retry-After` and `Location`, always (IoT Edge
//!   accepts nothing else);
//! * `GET /{idScope}/registrations/{registrationId}/operations/{operationId}`: `202` while the
//!   registration runs, `200` with the `RegistrationOperationStatus` when it is done, from any
//!   connection (HTTP clients reconnect), for the device that started it only;
//! * `POST /{idScope}/registrations/{registrationId}`: the device's current registration
//!   record.
//!
//! Every request is attested on its own, as on DPS: a `SharedAccessSignature` in the
//! `Authorization` header (symmetric keys, `dps_attest::attest_sas`), else the TLS client
//! certificate chain the listener hands over as [`dps_api::PeerCertificates`]
//! (`dps_attest::attest_x509`). TPM devices (`tpm.rs`, dps-protocol.md §5.2): a register
//! without `Authorization` whose body carries `tpm` (EK and SRK) is answered `401` with the
//! challenge of the registrar's `TpmChallenges` (`{"message","authenticationKey","keyName"}`);
//! the register that follows, with the TPM-signed token and the `tpm` body again, is attested
//! by `TpmChallenges::attest`, and its result carries `tpm.authenticationKey`, a fresh hub key
//! sealed to the TPM. Its polls present the same token, which the register remembered for
//! that device (`TpmSessions`); only polls and status lookups accept it, never a register.
//! A refused device learns only `401` with DPS's `401002`; the
//! precise reason goes to the registrar's diagnostics (transport `https`). Errors are DPS
//! error bodies with `x-ms-error-code`; a busy registrar is `429` with `Retry-After`. Bodies
//! are bounded by [`MAX_BODY_BYTES`].
//!
//! [`mount`] puts the device API in front of another router (the service API): a request goes
//! to the device API when its first path segment is the service's ID scope, any letter case.
//!
//! What it must never do: tell a device why it was refused, read enrollments or records
//! anywhere but through the registrar, or panic on anything a peer sends.
//!
//! Main types: [`DeviceApi`] (the state), [`DeviceError`] (the crate's one error enum,
//! rendered as a DPS error response).

mod error;
mod handlers;
mod proof;
mod tpm;

use std::sync::Arc;

use axum::extract::Request;
use axum::routing::{get, post, put};
use axum::Router;
use dps_registrar::Registrar;
use dps_types::IdScope;
use tower::ServiceExt;

pub use error::DeviceError;

/// Largest request body of the device API: DPS's largest device message (96 KiB, the MQTT
/// and AMQP frontends' bound too). A register body is a registration id, a TPM's two public
/// keys (under 1 KiB) and the device's custom payload.
pub const MAX_BODY_BYTES: usize = 96 * 1024;

/// What the device handlers share: the registrar and the TPM devices' sessions. Cheap to
/// clone.
#[derive(Clone)]
pub struct DeviceApi {
    registrar: Registrar,
    tpm: Arc<tpm::TpmSessions>,
}

impl DeviceApi {
    /// The device API of `registrar` (its ID scope, enrollments, operation table, TPM
    /// challenges, diagnostics). It remembers as many TPM sessions as the registrar keeps
    /// pending challenges.
    pub fn new(registrar: Registrar) -> Self {
        let max_sessions = registrar.tpm_challenges().limits().max_pending;
        Self {
            registrar,
            tpm: Arc::new(tpm::TpmSessions::new(max_sessions)),
        }
    }
}

/// The three device operations under `/{idScope}/registrations/`; any other path answers a
/// DPS `404`, a known path with another method `405`. The `api-version` query parameter is
/// not checked (every SDK sends another one, and the device model is the same in all), and
/// `forceRegistration` is accepted (every register registers anew).
pub fn router(api: DeviceApi) -> Router {
    Router::new()
        .route(
            "/{scope}/registrations/{registration_id}/register",
            put(handlers::register),
        )
        .route(
            "/{scope}/registrations/{registration_id}/operations/{operation_id}",
            get(handlers::operation_status),
        )
        .route(
            "/{scope}/registrations/{registration_id}",
            post(handlers::registration_status),
        )
        .fallback(dps_api::route_not_found)
        .method_not_allowed_fallback(dps_api::method_not_allowed)
        .with_state(api)
}

/// `other` (the service API) with the device API in front: requests whose first path segment
/// is the registrar's ID scope go to [`router`], all others to `other`. The service API's
/// paths start with `enrollments`, `enrollmentGroups`, `registrations` or `diagnostics`, which
/// are never a generated ID scope (`dpsd` refuses a configured one that collides).
pub fn mount(api: DeviceApi, other: Router) -> Router {
    let scope = api.registrar.id_scope().clone();
    let devices = router(api);
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let target = if is_device_path(&scope, request.uri().path()) {
            devices.clone()
        } else {
            other.clone()
        };
        target.oneshot(request)
    }))
}

/// Whether `path`'s first segment is `scope`.
fn is_device_path(scope: &IdScope, path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|first| scope.matches(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths_start_with_the_scope() {
        let scope = IdScope::parse("0ne00000A1B").unwrap();
        for yes in [
            "/0ne00000A1B/registrations/dev/register",
            "/0NE00000a1b/registrations/dev",
            "/0ne00000A1B",
        ] {
            assert!(is_device_path(&scope, yes), "{yes}");
        }
        for no in [
            "/registrations/dev",
            "/enrollments/0ne00000A1B",
            "/0ne00000A1Bx/registrations/dev/register",
            "/",
            "",
            "0ne00000A1B/registrations/dev",
        ] {
            assert!(!is_device_path(&scope, no), "{no}");
        }
    }
}
