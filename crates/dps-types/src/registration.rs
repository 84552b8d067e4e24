//! `DeviceRegistrationState`: the record of a device's last registration.

use serde::{Deserialize, Serialize};

use crate::wire_enum::wire_enum;
use crate::{DeviceId, Etag, HubName, RegistrationId, Timestamp};

wire_enum!(
    /// `EnrollmentStatus` (the status of a registration).
    RegistrationStatus {
        /// Not assigned yet.
        Unassigned => "unassigned",
        /// Assignment in progress.
        Assigning => "assigning",
        /// Assigned to a hub.
        Assigned => "assigned",
        /// Assignment failed; see `errorCode`.
        Failed => "failed",
        /// The enrollment is disabled.
        Disabled => "disabled",
    }
);

wire_enum!(
    /// `AssignedDeviceSubstatus`.
    AssignedDeviceSubstatus {
        /// First assignment.
        InitialAssignment => "initialAssignment",
        /// Moved to another hub with its data.
        DeviceDataMigrated => "deviceDataMigrated",
        /// Moved to another hub, reset to the initial twin.
        DeviceDataReset => "deviceDataReset",
        /// Assigned again to a hub it had before.
        ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
    }
);

/// `DeviceRegistrationState` (all members read-only for clients).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    /// The registration id.
    pub registration_id: RegistrationId,
    /// When the record was first created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<Timestamp>,
    /// The hub the device was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<HubName>,
    /// The device id on that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Registration status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RegistrationStatus>,
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
    /// Entity tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<Etag>,
    /// Custom payload returned by an allocation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

impl DeviceRegistrationState {
    /// The state of an enrollment no device has registered with yet.
    pub fn unassigned(registration_id: RegistrationId) -> Self {
        Self {
            registration_id,
            created_date_time_utc: None,
            assigned_hub: None,
            device_id: None,
            status: Some(RegistrationStatus::Unassigned),
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: None,
            payload: None,
        }
    }
}
