//! Individual enrollments, enrollment groups and the small structs they share.

use serde::{Deserialize, Serialize};

use crate::wire_enum::wire_enum;
use crate::{
    Attestation, DeviceId, DeviceRegistrationState, EnrollmentGroupId, Etag, HubName,
    RegistrationId, Timestamp,
};

/// `TwinCollection`: any JSON object (tags, desired properties, optional device information).
pub type TwinCollection = serde_json::Map<String, serde_json::Value>;

wire_enum!(
    /// `ProvisioningStatus`.
    ProvisioningStatus {
        /// Devices may register.
        Enabled => "enabled",
        /// Devices are refused.
        Disabled => "disabled",
    }
);

wire_enum!(
    /// `AllocationPolicy`.
    AllocationPolicy {
        /// Weighted hash of the registration id over the candidate hubs.
        Hashed => "hashed",
        /// Lowest latency (falls back to hashed here).
        GeoLatency => "geoLatency",
        /// The enrollment's one hub.
        Static => "static",
        /// A webhook decides.
        Custom => "custom",
    }
);

wire_enum!(
    /// `OperationMode` of a bulk operation.
    BulkMode {
        /// Fail an item that already exists.
        Create => "create",
        /// Create or replace.
        Update => "update",
        /// Replace only when the item's etag matches.
        UpdateIfMatchEtag => "updateIfMatchETag",
        /// Delete.
        Delete => "delete",
    }
);

/// `DeviceCapabilities`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// The device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// `ReprovisionPolicy`; both flags default to `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-evaluate the hub on every registration after the first.
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    /// Move the device's data when the hub changes (else reset to the initial twin).
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// `InitialTwin`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InitialTwin {
    /// Twin tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TwinCollection>,
    /// Desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<InitialTwinProperties>,
}

/// `InitialTwinProperties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InitialTwinProperties {
    /// Desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<TwinCollection>,
}

/// `CustomAllocationDefinition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocationDefinition {
    /// Where the allocation request is POSTed.
    pub webhook_url: String,
    /// The service api-version whose enrollment JSON the webhook expects.
    pub api_version: String,
}

/// `QuerySpecification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpecification {
    /// The query text, e.g. `SELECT * FROM enrollments`.
    pub query: String,
}

/// Fields that individual enrollments and groups share, stamped by the server on every write.
macro_rules! stamp_impl {
    ($ty:ty) => {
        impl $ty {
            /// Prepares a validated request for storage: a new etag, `lastUpdatedDateTimeUtc`
            /// now, `createdDateTimeUtc` kept from the record it replaces, provisioning status
            /// defaulted to enabled, and symmetric keys kept from the previous record (same
            /// attestation type) or generated when the request has none.
            pub fn stamp(&mut self, previous: Option<&Self>, now: Timestamp) {
                self.etag = Some(Etag::generate());
                self.created_date_time_utc = Some(
                    previous
                        .and_then(|p| p.created_date_time_utc)
                        .unwrap_or(now),
                );
                self.last_updated_date_time_utc = Some(now);
                self.provisioning_status
                    .get_or_insert(ProvisioningStatus::Enabled);
                if let Attestation::SymmetricKey(keys) = &mut self.attestation {
                    if let Some(Attestation::SymmetricKey(old)) = previous.map(|p| &p.attestation) {
                        if keys.primary_key.is_none() && keys.secondary_key.is_none() {
                            *keys = old.clone();
                        }
                    }
                    keys.fill_missing_keys();
                }
            }

            /// The record as DPS answers a create or replace: with its keys, without certificate
            /// text.
            pub fn write_response(&self) -> Self {
                let mut copy = self.clone();
                copy.attestation = self.attestation.without_certificate_text();
                copy
            }

            /// The record as reads show it (no keys, no certificate text).
            pub fn redacted(&self) -> Self {
                let mut copy = self.clone();
                copy.attestation = self.attestation.redacted();
                copy
            }
        }

        impl EnrollmentSettings for $ty {
            fn attestation(&self) -> &Attestation {
                &self.attestation
            }
            fn allocation_policy(&self) -> Option<AllocationPolicy> {
                self.allocation_policy
            }
            fn iot_hub_host_name(&self) -> Option<&HubName> {
                self.iot_hub_host_name.as_ref()
            }
            fn iot_hubs(&self) -> &[HubName] {
                self.iot_hubs.as_deref().unwrap_or_default()
            }
            fn custom_allocation_definition(&self) -> Option<&CustomAllocationDefinition> {
                self.custom_allocation_definition.as_ref()
            }
            fn initial_twin(&self) -> Option<&InitialTwin> {
                self.initial_twin.as_ref()
            }
            fn provisioning_status(&self) -> Option<ProvisioningStatus> {
                self.provisioning_status
            }
            fn reprovision_policy(&self) -> Option<&ReprovisionPolicy> {
                self.reprovision_policy.as_ref()
            }
            fn capabilities(&self) -> Option<DeviceCapabilities> {
                self.capabilities
            }
            fn etag(&self) -> Option<&Etag> {
                self.etag.as_ref()
            }
            fn last_updated(&self) -> Option<&Timestamp> {
                self.last_updated_date_time_utc.as_ref()
            }
        }
    };
}

/// The settings individual enrollments and enrollment groups share, so code that treats both
/// alike (allocation, lists, forms) is written once. Object-safe.
pub trait EnrollmentSettings {
    /// How devices prove who they are.
    fn attestation(&self) -> &Attestation;
    /// The allocation policy, if the record names one.
    fn allocation_policy(&self) -> Option<AllocationPolicy>;
    /// `iotHubHostName`.
    fn iot_hub_host_name(&self) -> Option<&HubName>;
    /// `iotHubs` (empty when absent).
    fn iot_hubs(&self) -> &[HubName];
    /// The webhook of the custom policy.
    fn custom_allocation_definition(&self) -> Option<&CustomAllocationDefinition>;
    /// The initial twin.
    fn initial_twin(&self) -> Option<&InitialTwin>;
    /// `provisioningStatus`.
    fn provisioning_status(&self) -> Option<ProvisioningStatus>;
    /// `reprovisionPolicy`.
    fn reprovision_policy(&self) -> Option<&ReprovisionPolicy>;
    /// `capabilities`.
    fn capabilities(&self) -> Option<DeviceCapabilities>;
    /// The entity tag.
    fn etag(&self) -> Option<&Etag>;
    /// `lastUpdatedDateTimeUtc`.
    fn last_updated(&self) -> Option<&Timestamp>;

    /// Whether devices may register through this record.
    fn is_enabled(&self) -> bool {
        self.provisioning_status() != Some(ProvisioningStatus::Disabled)
    }
}

/// `IndividualEnrollment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// The registration id (required).
    pub registration_id: RegistrationId,
    /// The device id on the hub; the registration id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Read-only: the current registration record (boxed: absent in every stored record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<Box<DeviceRegistrationState>>,
    /// Free-form device information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional_device_information: Option<TwinCollection>,
    /// How the device proves who it is (required).
    pub attestation: Attestation,
    /// Device capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Hub for the static policy (deprecated in favour of `iotHubs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<HubName>,
    /// Initial twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    /// Entity tag, new on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<Etag>,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Behaviour on re-registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Read-only creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<Timestamp>,
    /// Read-only last update time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<Timestamp>,
    /// Allocation policy; the service default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,
    /// Candidate hubs; all linked hubs when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<HubName>>,
    /// The webhook of the custom policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
}
stamp_impl!(IndividualEnrollment);

impl IndividualEnrollment {
    /// The device id the hub will know: `deviceId`, else the registration id.
    pub fn effective_device_id(&self) -> DeviceId {
        self.device_id
            .clone()
            .unwrap_or_else(|| DeviceId::from(&self.registration_id))
    }
}

/// `EnrollmentGroup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// The group id (required).
    pub enrollment_group_id: EnrollmentGroupId,
    /// How devices of the group prove who they are (required).
    pub attestation: Attestation,
    /// Device capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// Hub for the static policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<HubName>,
    /// Initial twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    /// Entity tag, new on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<Etag>,
    /// Enabled or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Behaviour on re-registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Read-only creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<Timestamp>,
    /// Read-only last update time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<Timestamp>,
    /// Allocation policy; the service default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,
    /// Candidate hubs; all linked hubs when absent or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<HubName>>,
    /// The webhook of the custom policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
}
stamp_impl!(EnrollmentGroup);

/// One failed item of an individual-enrollment bulk operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationError {
    /// The item's registration id (as sent, even when it is not a valid id).
    pub registration_id: String,
    /// DPS error code.
    pub error_code: i32,
    /// What went wrong.
    pub error_status: String,
}

/// `BulkEnrollmentOperationResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// The failed items (absent in the spec's minimal example; always sent by this service).
    #[serde(default)]
    pub errors: Vec<BulkEnrollmentOperationError>,
}

/// One failed item of an enrollment-group bulk operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationError {
    /// The item's group id (as sent).
    pub enrollment_group_id: String,
    /// DPS error code.
    pub error_code: i32,
    /// What went wrong.
    pub error_status: String,
}

/// `BulkEnrollmentGroupOperationResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkEnrollmentGroupOperationResult {
    /// True when every item succeeded.
    pub is_successful: bool,
    /// The failed items (absent in the spec's minimal example; always sent by this service).
    #[serde(default)]
    pub errors: Vec<BulkEnrollmentGroupOperationError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_explicit_nulls_and_omits_them_on_output() {
        let json = r#"{"registrationId":"dev-1","attestation":{"type":"symmetricKey"},
            "capabilities":null,"reprovisionPolicy":null,"iotHubs":null,"initialTwin":null,
            "provisioningStatus":null,"deviceId":null}"#;
        let e: IndividualEnrollment = serde_json::from_str(json).unwrap();
        let out = serde_json::to_value(&e).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"registrationId":"dev-1","attestation":{"type":"symmetricKey"}})
        );
    }

    #[test]
    fn stamp_generates_keys_keeps_created_and_defaults_status() {
        let mut first: IndividualEnrollment = serde_json::from_str(
            r#"{"registrationId":"dev-1","attestation":{"type":"symmetricKey"}}"#,
        )
        .unwrap();
        let t0 = Timestamp::parse("2024-01-01T00:00:00Z").unwrap();
        first.stamp(None, t0);
        assert_eq!(first.provisioning_status, Some(ProvisioningStatus::Enabled));
        let Attestation::SymmetricKey(k) = &first.attestation else {
            panic!("type changed")
        };
        assert!(k.primary_key.is_some() && k.secondary_key.is_some());

        let mut second = first.clone();
        second.attestation = Attestation::SymmetricKey(Default::default());
        let t1 = Timestamp::parse("2024-02-01T00:00:00Z").unwrap();
        second.stamp(Some(&first), t1);
        assert_eq!(
            second.attestation, first.attestation,
            "keys kept across an update without keys"
        );
        assert_eq!(second.created_date_time_utc, Some(t0));
        assert_eq!(second.last_updated_date_time_utc, Some(t1));
        assert_ne!(second.etag, first.etag);
    }

    #[test]
    fn bulk_mode_accepts_both_spellings() {
        assert_eq!(
            BulkMode::parse("updateIfMatchEtag").unwrap(),
            BulkMode::UpdateIfMatchEtag
        );
        assert_eq!(BulkMode::UpdateIfMatchEtag.as_str(), "updateIfMatchETag");
    }
}
