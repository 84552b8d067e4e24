//! Domain types of the provisioning service and the exact JSON model of the DPS service API
//! (swagger `service.json`, api-version 2021-10-01).
//!
//! What it does: identifiers and keys are newtypes whose `parse` enforces the DPS rules
//! ([`RegistrationId`], [`EnrollmentGroupId`], [`DeviceId`], [`HubName`], [`IdScope`],
//! [`Etag`], [`SymmetricKey`], [`EndorsementKey`]); the wire structs ([`IndividualEnrollment`],
//! [`EnrollmentGroup`], [`Attestation`], [`DeviceRegistrationState`], ...) serialize exactly as
//! DPS does: camelCase, nulls omitted, enum strings accepted in any case and emitted in the
//! spec's spelling.
//!
//! What it must never do: I/O of any kind, or certificate parsing (that is `dps-attest`'s job:
//! it fills [`X509CertificateInfo`] from the PEM a client sent).
//!
//! Main types: [`IndividualEnrollment`], [`EnrollmentGroup`], [`Attestation`],
//! [`DeviceRegistrationState`], [`ErrorDetails`] with the DPS [`ErrorCode`]s, and [`TypeError`],
//! the one error enum of this crate.

mod attestation;
mod device;
mod enrollment;
mod error;
mod ids;
mod keys;
mod lookup;
mod percent;
mod registration;
mod timestamp;
mod webhook_policy;
mod wire_enum;

pub use attestation::{
    Attestation, AttestationType, SymmetricKeyAttestation, TpmAttestation, X509Attestation,
    X509CaReferences, X509CertificateInfo, X509CertificateWithInfo, X509Certificates,
};
pub use device::{
    DeviceRegistration, DeviceRegistrationResult, RegistrationOperationStatus,
    SymmetricKeyRegistrationResult, TpmRegistrationResult, X509RegistrationResult,
};
pub use enrollment::{
    AllocationPolicy, BulkEnrollmentGroupOperationError, BulkEnrollmentGroupOperationResult,
    BulkEnrollmentOperationError, BulkEnrollmentOperationResult, BulkMode,
    CustomAllocationDefinition, DeviceCapabilities, EnrollmentGroup, EnrollmentSettings,
    IndividualEnrollment, InitialTwin, InitialTwinProperties, ProvisioningStatus,
    QuerySpecification, ReprovisionPolicy, TwinCollection,
};
pub use error::{ErrorCode, ErrorDetails, TypeError};
pub use ids::{DeviceId, EnrollmentGroupId, Etag, HubName, IdScope, RegistrationId};
pub use keys::{EndorsementKey, SymmetricKey};
pub use lookup::EnrollmentLookup;
pub use percent::percent_decode;
pub use registration::{AssignedDeviceSubstatus, DeviceRegistrationState, RegistrationStatus};
pub use timestamp::Timestamp;
pub use webhook_policy::{WebhookPolicy, MAX_WEBHOOK_URL_LEN};
