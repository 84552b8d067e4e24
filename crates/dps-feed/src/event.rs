//! The event documents of the feed and their builders: pure functions from what the registrar
//! knows about one assignment or deprovisioning to a [`FeedEvent`] ready to be stored in the
//! outbox and published.

use dps_types::{
    AssignedDeviceSubstatus, DeviceId, EnrollmentGroupId, Etag, HubName, RegistrationId,
    SymmetricKey, Timestamp,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::FeedError;

/// The version of the event document; it changes only when a consumer would misread a new
/// document with the old rules (a field removed or its meaning changed), not when one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// The outbox sequence number the store assigns to an event (increasing in write order).
pub type Seq = u64;

/// What happened to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// The device was assigned to a hub for the first time, or again to the same hub.
    #[serde(rename = "device.assigned")]
    Assigned,
    /// The device was assigned to a hub other than the one it had.
    #[serde(rename = "device.reassigned")]
    Reassigned,
    /// The device's registration record, or its enrollment, was deleted.
    #[serde(rename = "device.deprovisioned")]
    Deprovisioned,
}

impl EventType {
    /// The wire spelling: the document's `type`, the AMQP `type` property and the last two
    /// words of the routing key.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Assigned => "device.assigned",
            EventType::Reassigned => "device.reassigned",
            EventType::Deprovisioned => "device.deprovisioned",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event ready to publish, as stored in the store's outbox (the store keeps it opaque).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedEvent {
    /// The same for every re-publication of one event, so consumers deduplicate on it.
    pub message_id: String,
    /// `{hub host name}.{type}`, e.g. `hub-a.example.net.device.assigned`.
    pub routing_key: String,
    /// The hub the event is for.
    pub hub: HubName,
    /// What happened.
    pub event_type: EventType,
    /// When it happened.
    pub time_utc: Timestamp,
    /// The JSON document (see `docs/assignment-feed.md`).
    pub body: String,
}

/// Which enrollment the device registered through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentRef {
    /// An individual enrollment (its id is the registration id).
    Individual(RegistrationId),
    /// An enrollment group.
    Group(EnrollmentGroupId),
}

/// An X.509 certificate thumbprint: the upper-case hex of a SHA-1 (40 digits) or SHA-256 (64
/// digits) digest of the certificate's DER, as IoT Hub shows thumbprints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Thumbprint(Box<str>);

impl Thumbprint {
    /// Accepts 40 or 64 hex digits in any case (colons between bytes are dropped).
    pub fn parse(text: &str) -> Result<Self, FeedError> {
        let digits: String = text.chars().filter(|c| *c != ':').collect();
        if !(digits.len() == 40 || digits.len() == 64)
            || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(FeedError::InvalidThumbprint {
                len: text.len().min(1024),
            });
        }
        Ok(Self(digits.to_ascii_uppercase().into()))
    }

    /// The upper-case hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The device's authentication as Azure DPS hands it to IoT Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuthentication {
    /// Symmetric keys: an individual enrollment's keys, or the device keys derived from a
    /// group's keys.
    SymmetricKey {
        /// The primary key.
        primary: SymmetricKey,
        /// The secondary key.
        secondary: SymmetricKey,
    },
    /// An individual X.509 enrollment: the hub admits the device by its certificate's
    /// thumbprint.
    SelfSigned {
        /// Thumbprint of the enrolled (primary) certificate.
        primary_thumbprint: Thumbprint,
        /// Thumbprint of the secondary certificate, if one is enrolled.
        secondary_thumbprint: Option<Thumbprint>,
    },
    /// A group X.509 enrollment: the hub trusts the signing CA; the thumbprints are the
    /// device's leaf certificate's.
    CertificateAuthority {
        /// SHA-1 thumbprint of the leaf.
        leaf_thumbprint: Thumbprint,
        /// SHA-256 thumbprint of the leaf.
        leaf_sha256_thumbprint: Thumbprint,
    },
    /// TPM attestation (no secret travels to the hub).
    Tpm,
}

/// Everything the `device.assigned` / `device.reassigned` document says about one assignment.
#[derive(Debug, Clone)]
pub struct Assignment<'a> {
    /// The registration id.
    pub registration_id: &'a RegistrationId,
    /// The device id the hub knows the device by.
    pub device_id: &'a DeviceId,
    /// The hub the device is assigned to.
    pub hub: &'a HubName,
    /// The hub of the previous registration record, if there was one.
    pub previous_hub: Option<&'a HubName>,
    /// The enrollment the device registered through.
    pub enrollment: EnrollmentRef,
    /// Whether the device is an IoT Edge device.
    pub iot_edge: bool,
    /// The initial twin (the enrollment's, or the custom allocation webhook's).
    pub initial_twin: Option<&'a serde_json::Value>,
    /// The payload the device sent with its registration.
    pub payload: Option<&'a serde_json::Value>,
    /// The substatus of the assignment.
    pub substatus: AssignedDeviceSubstatus,
    /// How the hub admits the device.
    pub authentication: DeviceAuthentication,
    /// The etag of the registration record this event is for.
    pub record_etag: &'a Etag,
    /// When the record was written.
    pub time: Timestamp,
}

/// Why a device was deprovisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DeprovisionReason {
    /// Its registration record was deleted.
    RegistrationDeleted,
    /// Its enrollment (individual or group) was deleted.
    EnrollmentDeleted,
}

/// Everything the `device.deprovisioned` document says.
#[derive(Debug, Clone)]
pub struct Deprovision<'a> {
    /// The registration id.
    pub registration_id: &'a RegistrationId,
    /// The device id the hub knows the device by.
    pub device_id: &'a DeviceId,
    /// The hub the device was assigned to.
    pub hub: &'a HubName,
    /// The enrollment the device had registered through.
    pub enrollment: EnrollmentRef,
    /// The etag of the deleted registration record.
    pub record_etag: &'a Etag,
    /// Why.
    pub reason: DeprovisionReason,
    /// When the record was deleted.
    pub time: Timestamp,
}

/// The id shared by every publication of one event: the same registration id (in any letter
/// case), record etag and type always give the same id. 32 lower-case hex digits.
pub fn message_id(
    registration_id: &RegistrationId,
    record_etag: &Etag,
    event_type: EventType,
) -> String {
    let mut digest = Sha256::new();
    for part in [
        registration_id.key().as_str(),
        record_etag.as_str(),
        event_type.as_str(),
    ] {
        // Length-prefixed, so no two different triples hash the same bytes.
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    hex::encode(&digest.finalize()[..16])
}

fn routing_key(hub: &HubName, event_type: EventType) -> String {
    format!("{}.{}", hub.as_str(), event_type.as_str())
}

#[derive(Serialize)]
struct EnrollmentDoc<'a> {
    kind: &'static str,
    id: &'a str,
}

impl EnrollmentRef {
    fn doc(&self) -> EnrollmentDoc<'_> {
        match self {
            EnrollmentRef::Individual(id) => EnrollmentDoc {
                kind: "individual",
                id: id.as_str(),
            },
            EnrollmentRef::Group(id) => EnrollmentDoc {
                kind: "group",
                id: id.as_str(),
            },
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SymmetricKeyDoc {
    primary_key: String,
    secondary_key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThumbprintDoc<'a> {
    primary_thumbprint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secondary_thumbprint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256_thumbprint: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum AuthenticationDoc<'a> {
    Sas {
        #[serde(rename = "symmetricKey", skip_serializing_if = "Option::is_none")]
        symmetric_key: Option<SymmetricKeyDoc>,
    },
    SelfSigned {
        #[serde(rename = "x509Thumbprint")]
        x509_thumbprint: ThumbprintDoc<'a>,
    },
    CertificateAuthority {
        #[serde(rename = "x509Thumbprint")]
        x509_thumbprint: ThumbprintDoc<'a>,
    },
    Tpm,
}

impl DeviceAuthentication {
    fn doc(&self, include_device_keys: bool) -> AuthenticationDoc<'_> {
        match self {
            DeviceAuthentication::SymmetricKey { primary, secondary } => AuthenticationDoc::Sas {
                symmetric_key: include_device_keys.then(|| SymmetricKeyDoc {
                    primary_key: primary.expose_base64(),
                    secondary_key: secondary.expose_base64(),
                }),
            },
            DeviceAuthentication::SelfSigned {
                primary_thumbprint,
                secondary_thumbprint,
            } => AuthenticationDoc::SelfSigned {
                x509_thumbprint: ThumbprintDoc {
                    primary_thumbprint: primary_thumbprint.as_str(),
                    secondary_thumbprint: secondary_thumbprint.as_ref().map(Thumbprint::as_str),
                    sha256_thumbprint: None,
                },
            },
            DeviceAuthentication::CertificateAuthority {
                leaf_thumbprint,
                leaf_sha256_thumbprint,
            } => AuthenticationDoc::CertificateAuthority {
                x509_thumbprint: ThumbprintDoc {
                    primary_thumbprint: leaf_thumbprint.as_str(),
                    secondary_thumbprint: None,
                    sha256_thumbprint: Some(leaf_sha256_thumbprint.as_str()),
                },
            },
            DeviceAuthentication::Tpm => AuthenticationDoc::Tpm,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventDoc<'a> {
    schema_version: u32,
    #[serde(rename = "type")]
    event_type: EventType,
    event_id: &'a str,
    time_utc: Timestamp,
    registration_id: &'a str,
    device_id: &'a str,
    iot_hub_host_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_iot_hub_host_name: Option<&'a str>,
    enrollment: EnrollmentDoc<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iot_edge: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    substatus: Option<AssignedDeviceSubstatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_twin: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authentication: Option<AuthenticationDoc<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<DeprovisionReason>,
}

fn finish(doc: &EventDoc<'_>, hub: &HubName, message_id: String) -> FeedEvent {
    FeedEvent {
        routing_key: routing_key(hub, doc.event_type),
        hub: hub.clone(),
        event_type: doc.event_type,
        time_utc: doc.time_utc,
        // A document of strings, booleans and already-valid JSON values always serializes;
        // the fallback keeps this function infallible without a panic path.
        body: serde_json::to_string(doc).unwrap_or_default(),
        message_id,
    }
}

/// The `device.assigned` event, or `device.reassigned` when the previous record named another
/// hub. With `include_device_keys = false` the symmetric keys are left out (the
/// authentication `type` stays `sas`).
pub fn assigned_event(a: &Assignment<'_>, include_device_keys: bool) -> FeedEvent {
    let previous = a.previous_hub.filter(|previous| *previous != a.hub);
    let event_type = if previous.is_some() {
        EventType::Reassigned
    } else {
        EventType::Assigned
    };
    let id = message_id(a.registration_id, a.record_etag, event_type);
    let doc = EventDoc {
        schema_version: SCHEMA_VERSION,
        event_type,
        event_id: &id,
        time_utc: a.time,
        registration_id: a.registration_id.as_str(),
        device_id: a.device_id.as_str(),
        iot_hub_host_name: a.hub.as_str(),
        previous_iot_hub_host_name: previous.map(HubName::as_str),
        enrollment: a.enrollment.doc(),
        iot_edge: Some(a.iot_edge),
        substatus: Some(a.substatus),
        initial_twin: a.initial_twin,
        payload: a.payload,
        authentication: Some(a.authentication.doc(include_device_keys)),
        reason: None,
    };
    finish(&doc, a.hub, id.clone())
}

/// The `device.deprovisioned` event.
pub fn deprovisioned_event(d: &Deprovision<'_>) -> FeedEvent {
    let event_type = EventType::Deprovisioned;
    let id = message_id(d.registration_id, d.record_etag, event_type);
    let doc = EventDoc {
        schema_version: SCHEMA_VERSION,
        event_type,
        event_id: &id,
        time_utc: d.time,
        registration_id: d.registration_id.as_str(),
        device_id: d.device_id.as_str(),
        iot_hub_host_name: d.hub.as_str(),
        previous_iot_hub_host_name: None,
        enrollment: d.enrollment.doc(),
        iot_edge: None,
        substatus: None,
        initial_twin: None,
        payload: None,
        authentication: None,
        reason: Some(d.reason),
    };
    finish(&doc, d.hub, id.clone())
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
