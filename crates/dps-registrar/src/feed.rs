//! The registrar's side of the assignment feed: which events a registration or a delete
//! writes to the store's outbox, and the outbox as the feed reads it.
//!
//! Every change that a hub must learn of is written with its event (the store's `_with`
//! writes: no assignment exists without its event); the device hears "assigned" only once
//! the broker confirmed that event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dps_attest::{derive_device_key, AttestedDevice, MatchedEnrollment};
use dps_feed::{
    Assignment, Deprovision, DeprovisionReason, DeviceAuthentication, EnrollmentRef, EventType,
    FeedEvent, Outbox, Seq, Thumbprint,
};
use dps_store::{Events, RegistrationRecord, Store};
use dps_types::{
    AssignedDeviceSubstatus, Attestation, AttestationType, EnrollmentGroup, Etag,
    IndividualEnrollment, RegistrationId, RegistrationStatus, SymmetricKey, Timestamp,
    X509CertificateWithInfo,
};

/// The store's outbox, as the feed's relay reads it.
pub struct StoreOutbox(Store);

impl StoreOutbox {
    /// The outbox of `store`, ready for `dps_feed::Feed::start` ([`FeedLink::start`] does
    /// that).
    pub fn shared(store: Store) -> Arc<dyn Outbox> {
        Arc::new(StoreOutbox(store))
    }
}

impl Outbox for StoreOutbox {
    fn scan(
        &self,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<(Seq, FeedEvent)>, dps_feed::BoxError> {
        let mut events = Vec::new();
        for (seq, bytes) in self.0.outbox_scan(after, limit)? {
            match serde_json::from_slice::<FeedEvent>(&bytes) {
                Ok(event) => events.push((seq, event)),
                Err(e) => {
                    // Written by this process from a FeedEvent: undecodable means a damaged
                    // data directory. Publishing it is impossible; keeping it would stall no
                    // one (the relay skips it) but would count as waiting forever.
                    tracing::error!(seq, error = %e, "dropping an undecodable outbox entry");
                    self.0.outbox_remove(&[seq])?;
                }
            }
        }
        Ok(events)
    }

    fn confirmed(&self, seqs: &[Seq]) {
        if let Err(e) = self.0.outbox_remove(seqs) {
            tracing::warn!(error = %e, "cannot remove delivered outbox entries; they will be sent again");
        }
    }
}

/// The assignment feed started over a store's outbox, with the devices that outbox shows were
/// not told of their records; hand it to [`crate::Registrar::with_feed`].
pub struct FeedLink {
    pub(crate) feed: dps_feed::Feed,
    pub(crate) untold: Untold,
}

impl FeedLink {
    /// Reads which devices were not told of their records (assignment events still in the
    /// outbox) and then starts the feed over the outbox: in that order, so that the relay
    /// cannot confirm an entry before it was read. A failed read is logged and costs only
    /// that those devices' next registration assigns them again.
    pub async fn start(
        store: &Store,
        config: dps_feed::FeedConfig,
        hubs: Vec<dps_types::HubName>,
    ) -> Result<FeedLink, dps_feed::FeedError> {
        let untold = Untold::from_outbox(store).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the outbox for devices not told of their records");
            Untold::default()
        });
        let feed = dps_feed::Feed::start(config, hubs, StoreOutbox::shared(store.clone())).await?;
        Ok(FeedLink { feed, untold })
    }

    /// The feed.
    pub fn feed(&self) -> &dps_feed::Feed {
        &self.feed
    }
}

/// Outbox entries read per page when rebuilding [`Untold`] at start.
const SCAN_PAGE: usize = 256;

/// Devices not told of their current registration record: the record is written (with its
/// event in the outbox) but the device got the retry answer, because the broker had not
/// confirmed the event, or the process stopped first. The device's next attempt is answered
/// with that record, once its event is confirmed, instead of making a second assignment with
/// a second event.
///
/// The outbox is the durable truth behind it: a device is told only after the confirmation,
/// which removes the entry, so every assignment event still in the outbox belongs to a device
/// not told. [`FeedLink::start`] reads them at start, so this survives a restart; at run
/// time a registration whose event is not confirmed adds its device. What the outbox cannot
/// show is a device told to retry whose event was confirmed since: that is kept in memory
/// only, bounded by [`Untold::MAX`] (beyond it, or after a restart, such a retry makes a new
/// assignment and the hub hears of both).
#[derive(Default)]
pub(crate) struct Untold {
    records: Mutex<HashMap<String, (Etag, Seq)>>,
}

impl Untold {
    /// Devices remembered at most: a broker outage under full load leaves about
    /// `max_in_flight` (4096 by default) of them at any time.
    const MAX: usize = 65_536;

    /// The devices whose current record's assignment event waits in `store`'s outbox.
    pub(crate) fn from_outbox(store: &Store) -> Result<Self, dps_store::StoreError> {
        let untold = Self::default();
        let mut after = None;
        loop {
            let page = store.outbox_scan(after, SCAN_PAGE)?;
            let last = page.len() < SCAN_PAGE;
            for (seq, bytes) in page {
                after = Some(seq);
                if let Some((key, etag)) = current_assignment(store, &bytes) {
                    untold.remember(key, etag, seq);
                }
            }
            if last {
                return Ok(untold);
            }
        }
    }

    /// The device (registration id key) was not told of its record with this etag, whose
    /// event is the outbox entry `seq`.
    pub(crate) fn remember(&self, key: String, etag: Etag, seq: Seq) {
        let mut records = self.lock();
        if records.len() < Self::MAX || records.contains_key(&key) {
            records.insert(key, (etag, seq));
        }
    }

    /// The outbox entry of the device's record with `etag` if the device was not told of it;
    /// forgets the device either way.
    pub(crate) fn take(&self, key: &str, etag: Option<&Etag>) -> Option<Seq> {
        let mut records = self.lock();
        match records.remove(key) {
            Some((untold, seq)) if etag == Some(&untold) => Some(seq),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Etag, Seq)>> {
        // Every update is one map call: a panic elsewhere cannot leave the map half-changed.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The registration (key and etag) whose current record the encoded outbox entry announces,
/// if it is an assignment event of the current record.
fn current_assignment(store: &Store, bytes: &[u8]) -> Option<(String, Etag)> {
    let event: FeedEvent = serde_json::from_slice(bytes).ok()?;
    if !matches!(
        event.event_type,
        EventType::Assigned | EventType::Reassigned
    ) {
        return None;
    }
    let body: serde_json::Value = serde_json::from_str(&event.body).ok()?;
    let id = RegistrationId::parse(body.get("registrationId")?.as_str()?).ok()?;
    let etag = store.registration(&id)?.state.etag.clone()?;
    (dps_feed::message_id(&id, &etag, event.event_type) == event.message_id)
        .then(|| (id.key(), etag))
}

/// The outbox entry `seq`, if it is still there (its event not yet confirmed).
pub(crate) fn outbox_entry(
    store: &Store,
    seq: Seq,
) -> Result<Option<FeedEvent>, dps_store::StoreError> {
    let page = store.outbox_scan(seq.checked_sub(1), 1)?;
    Ok(page
        .into_iter()
        .find(|(s, _)| *s == seq)
        .and_then(|(_, bytes)| serde_json::from_slice(&bytes).ok()))
}

/// The outbox entry of `previous`'s assignment if the broker has not confirmed it yet.
pub(crate) fn unconfirmed(feed: &dps_feed::Feed, previous: &RegistrationRecord) -> Option<Seq> {
    let state = &previous.state;
    if state.status != Some(RegistrationStatus::Assigned) {
        return None;
    }
    let etag = state.etag.as_ref()?;
    [EventType::Assigned, EventType::Reassigned]
        .into_iter()
        .find_map(|t| feed.pending(&dps_feed::message_id(&state.registration_id, etag, t)))
}

/// The encoded outbox entry of `event`.
pub(crate) fn encode(event: &FeedEvent) -> Vec<u8> {
    // A FeedEvent is strings, a timestamp and an enum: it always serializes.
    serde_json::to_vec(event).unwrap_or_default()
}

/// The `device.assigned` / `device.reassigned` event of a registration that wrote `record`.
pub(crate) fn assignment(
    device: &AttestedDevice,
    record: &RegistrationRecord,
    previous: Option<&RegistrationRecord>,
    webhook_twin: Option<&serde_json::Value>,
    include_device_keys: bool,
) -> Option<FeedEvent> {
    let state = &record.state;
    let (hub, device_id, etag) = (
        state.assigned_hub.as_ref()?,
        state.device_id.as_ref()?,
        state.etag.as_ref()?,
    );
    let previous_hub = previous
        .filter(|p| p.state.status == Some(RegistrationStatus::Assigned))
        .and_then(|p| p.state.assigned_hub.as_ref());
    let settings = device.enrollment().settings();
    let enrollment_twin = settings
        .initial_twin()
        .and_then(|t| serde_json::to_value(t).ok());
    let initial_twin = webhook_twin.cloned().or(enrollment_twin);
    let event = dps_feed::assigned_event(
        &Assignment {
            registration_id: &state.registration_id,
            device_id,
            hub,
            previous_hub,
            enrollment: enrollment_ref(device.enrollment()),
            iot_edge: settings.capabilities().is_some_and(|c| c.iot_edge),
            initial_twin: initial_twin.as_ref(),
            payload: state.payload.as_ref(),
            substatus: state
                .substatus
                .unwrap_or(AssignedDeviceSubstatus::InitialAssignment),
            authentication: authentication(device),
            record_etag: etag,
            time: state
                .last_updated_date_time_utc
                .unwrap_or_else(Timestamp::now),
        },
        include_device_keys,
    );
    Some(event)
}

fn enrollment_ref(enrollment: &MatchedEnrollment) -> EnrollmentRef {
    match enrollment {
        MatchedEnrollment::Individual(e) => EnrollmentRef::Individual(e.registration_id.clone()),
        MatchedEnrollment::Group(g) => EnrollmentRef::Group(g.enrollment_group_id.clone()),
    }
}

/// How the hub should authenticate the device, as DPS hands it to IoT Hub.
fn authentication(device: &AttestedDevice) -> DeviceAuthentication {
    let attestation = match device.enrollment() {
        MatchedEnrollment::Individual(e) => &e.attestation,
        MatchedEnrollment::Group(g) => &g.attestation,
    };
    match (device.method(), attestation) {
        (AttestationType::SymmetricKey, Attestation::SymmetricKey(keys)) => {
            let device_key = |k: &SymmetricKey| match device.enrollment() {
                MatchedEnrollment::Group(_) => {
                    derive_device_key(k, device.registration_id().as_str())
                }
                MatchedEnrollment::Individual(_) => k.clone(),
            };
            // Prepared enrollments always hold both keys (absent ones are generated).
            match (&keys.primary_key, &keys.secondary_key) {
                (Some(primary), secondary) => DeviceAuthentication::SymmetricKey {
                    primary: device_key(primary),
                    secondary: device_key(secondary.as_ref().unwrap_or(primary)),
                },
                (None, _) => DeviceAuthentication::Tpm,
            }
        }
        (AttestationType::X509, Attestation::X509(x509)) => {
            let leaf = device.certificate_info();
            let leaf_sha1 = leaf.and_then(|i| Thumbprint::parse(&i.sha1_thumbprint).ok());
            let leaf_sha256 = leaf.and_then(|i| Thumbprint::parse(&i.sha256_thumbprint).ok());
            let enrolled = |c: Option<&X509CertificateWithInfo>| {
                c.and_then(|c| c.info.as_ref())
                    .and_then(|i| Thumbprint::parse(&i.sha1_thumbprint).ok())
            };
            let clients = x509.client_certificates.as_ref();
            match (device.enrollment(), leaf_sha1, leaf_sha256) {
                (MatchedEnrollment::Individual(_), leaf_sha1, _) => {
                    match enrolled(clients.and_then(|c| c.primary.as_ref())).or(leaf_sha1) {
                        Some(primary) => DeviceAuthentication::SelfSigned {
                            primary_thumbprint: primary,
                            secondary_thumbprint: enrolled(
                                clients.and_then(|c| c.secondary.as_ref()),
                            ),
                        },
                        None => DeviceAuthentication::Tpm,
                    }
                }
                (MatchedEnrollment::Group(_), Some(sha1), Some(sha256)) => {
                    DeviceAuthentication::CertificateAuthority {
                        leaf_thumbprint: sha1,
                        leaf_sha256_thumbprint: sha256,
                    }
                }
                // An attested X.509 device always has its leaf's information.
                (MatchedEnrollment::Group(_), _, _) => DeviceAuthentication::Tpm,
            }
        }
        // A TPM device gets a fresh hub key with every registration (sealed to its TPM in
        // its result), which the hub admits it with as a SAS device.
        (AttestationType::Tpm, _) => match device.hub_key() {
            Some(key) => DeviceAuthentication::SymmetricKey {
                primary: key.clone(),
                secondary: key.clone(),
            },
            None => DeviceAuthentication::Tpm,
        },
        _ => DeviceAuthentication::Tpm,
    }
}

/// The `device.deprovisioned` event of a registration record that is going away.
pub(crate) fn deprovisioned(
    record: &RegistrationRecord,
    enrollment: EnrollmentRef,
    reason: DeprovisionReason,
) -> Option<FeedEvent> {
    let state = &record.state;
    if state.status != Some(RegistrationStatus::Assigned) {
        return None;
    }
    Some(dps_feed::deprovisioned_event(&Deprovision {
        registration_id: &state.registration_id,
        device_id: state.device_id.as_ref()?,
        hub: state.assigned_hub.as_ref()?,
        enrollment,
        record_etag: state.etag.as_ref()?,
        reason,
        time: Timestamp::now(),
    }))
}

/// The enrollment a registration record came through.
pub(crate) fn record_enrollment(record: &RegistrationRecord) -> EnrollmentRef {
    match &record.enrollment_group_id {
        Some(g) => EnrollmentRef::Group(g.clone()),
        None => EnrollmentRef::Individual(record.state.registration_id.clone()),
    }
}

/// Deprovisioning events for the device an individual enrollment registered.
pub(crate) fn enrollment_deleted(store: &Store, e: &IndividualEnrollment) -> Vec<FeedEvent> {
    store
        .registration(&e.registration_id)
        .filter(|r| r.enrollment_group_id.is_none())
        .and_then(|r| {
            deprovisioned(
                &r,
                EnrollmentRef::Individual(e.registration_id.clone()),
                DeprovisionReason::EnrollmentDeleted,
            )
        })
        .into_iter()
        .collect()
}

/// Deprovisioning events for every device registered through a group.
pub(crate) fn group_deleted(store: &Store, g: &EnrollmentGroup) -> Vec<FeedEvent> {
    let mut events = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let Ok(page) =
            store.query_registrations(&g.enrollment_group_id, 1024, continuation.as_deref())
        else {
            break;
        };
        events.extend(page.items.iter().filter_map(|r| {
            deprovisioned(
                r,
                EnrollmentRef::Group(g.enrollment_group_id.clone()),
                DeprovisionReason::EnrollmentDeleted,
            )
        }));
        match page.continuation {
            Some(next) => continuation = Some(next),
            None => break,
        }
    }
    events
}

/// Encodes `events` for the store, keeping them in `keep` to publish once durable.
pub(crate) fn keep_and_encode(events: Vec<FeedEvent>, keep: &mut Vec<FeedEvent>) -> Events {
    let encoded = events.iter().map(encode).collect();
    *keep = events;
    encoded
}
