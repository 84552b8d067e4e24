//! The device-facing registration model (swagger `device.json`): what a device sends to
//! register and what it is answered, on every transport (MQTT, AMQP, HTTPS).

use serde::{Deserialize, Serialize};

use crate::{
    AssignedDeviceSubstatus, DeviceId, EnrollmentGroupId, Etag, HubName, RegistrationId,
    RegistrationStatus, Timestamp, X509CertificateInfo,
};

/// `DeviceRegistration`: the register request body. Python sends `"payload": null` always;
/// other SDKs omit it. Unknown members are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// The registration id (informational: the connection's id is authoritative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// TPM keys (HTTPS and AMQP TPM flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<serde_json::Value>,
    /// Custom data for an allocation webhook (any JSON value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// `X509RegistrationResult`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509RegistrationResult {
    /// The device certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_info: Option<X509CertificateInfo>,
    /// The group the device registered through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<EnrollmentGroupId>,
    /// The group certificate that anchored the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificate_info: Option<X509CertificateInfo>,
}

/// `TpmRegistrationResult`: what a TPM device receives once assigned.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmRegistrationResult {
    /// The activation blob (base64) of the key the device uses with its IoT hub, sealed to
    /// its TPM as the challenge's was.
    pub authentication_key: String,
}

impl std::fmt::Debug for TpmRegistrationResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmRegistrationResult")
            .field("authentication_key_len", &self.authentication_key.len())
            .finish()
    }
}

/// `SymmetricKeyRegistrationResult`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyRegistrationResult {
    /// The group the device registered through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<EnrollmentGroupId>,
}

/// `DeviceRegistrationResult`: the `registrationState` a device receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationResult {
    /// Present for TPM registrations once assigned (the C client requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmRegistrationResult>,
    /// Present for X.509 registrations (DPS sends `"x509":{}` first for individual ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509RegistrationResult>,
    /// Present for symmetric-key registrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyRegistrationResult>,
    /// The registration id.
    pub registration_id: RegistrationId,
    /// When the registration record was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<Timestamp>,
    /// Assigned hub (required by every SDK when assigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<HubName>,
    /// Device id on the hub (required by every SDK when assigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Status.
    pub status: RegistrationStatus,
    /// Why the device has this hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<AssignedDeviceSubstatus>,
    /// DPS error code of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i32>,
    /// Message of a failed registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<Timestamp>,
    /// Entity tag of the registration record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<Etag>,
    /// Payload returned by a custom allocation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// `RegistrationOperationStatus`: the body of every 2xx answer to a register or poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    /// The operation id the device polls with.
    pub operation_id: String,
    /// Status (always present: Node calls `status.toLowerCase()`).
    pub status: RegistrationStatus,
    /// The registration state (always present, even while assigning: IoT Edge requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationResult>,
}

impl DeviceRegistrationResult {
    /// A result with only its id and status; the rest is filled as registration proceeds.
    pub fn new(registration_id: RegistrationId, status: RegistrationStatus) -> Self {
        Self {
            tpm: None,
            x509: None,
            symmetric_key: None,
            registration_id,
            created_date_time_utc: None,
            assigned_hub: None,
            device_id: None,
            status,
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: None,
            payload: None,
        }
    }
}

impl RegistrationOperationStatus {
    /// The answer while assignment is in progress.
    pub fn assigning(operation_id: String, registration_id: RegistrationId) -> Self {
        Self {
            operation_id,
            status: RegistrationStatus::Assigning,
            registration_state: Some(DeviceRegistrationResult::new(
                registration_id,
                RegistrationStatus::Assigning,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigning_body_has_what_every_sdk_needs() {
        let s = RegistrationOperationStatus::assigning(
            "op-1".into(),
            RegistrationId::parse("dev").unwrap(),
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"operationId":"op-1","status":"assigning",
                "registrationState":{"registrationId":"dev","status":"assigning"}})
        );
    }

    #[test]
    fn python_register_body_parses() {
        let r: DeviceRegistration =
            serde_json::from_str(r#"{"payload": null, "registrationId": "my-device"}"#).unwrap();
        assert_eq!(r.registration_id.as_deref(), Some("my-device"));
        assert!(r.payload.is_none());
    }
}
