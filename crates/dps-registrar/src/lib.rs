//! The registration service: what happens after a device has proved who it is.
//!
//! What it does: [`Registrar::register`] takes an [`AttestedDevice`] (only `dps-attest` can
//! make one, so no caller can skip attestation), refuses disabled enrollments, picks a hub by
//! the enrollment's allocation policy (static, hashed, geoLatency, custom webhook) and its
//! reprovision policy, writes the registration record durably, and returns the
//! `registrationState` the device is told. A registration's read of the previous record,
//! allocation and write happen under its registration id's lock, and the write is conditional
//! on the record read, so concurrent registrations of one device run as if one after another. Failed attempts, including attestation refusals
//! that frontends report with [`Registrar::record_refusal`], are kept with their precise
//! reasons in [`Diagnostics`]. [`Registrar::start_operation`] and
//! [`Registrar::poll_operation`] run registrations as operations of a bounded, expiring table
//! that any connection of the device that started one can poll (the HTTPS device API).
//!
//! What it must never do: parse protocol bytes (frontends do), or read enrollments anywhere
//! but the store's cache.
//!
//! Main types: [`Registrar`], [`RegistrarConfig`], [`LinkedHub`], [`Diagnostics`],
//! [`RegistrarObserver`] (what the metrics learn of each registration), [`OperationId`] and
//! [`OperationStatus`], [`RegistrarError`].

mod allocation;
mod diagnostics;
mod feed;
mod observer;
mod operations;
mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_attest::{AttestedDevice, MatchedEnrollment, Refusal};
use dps_store::{KeyLocks, Precondition, RegistrationRecord, Store};
use dps_types::{
    AllocationPolicy, AssignedDeviceSubstatus, AttestationType, DeviceId, DeviceRegistrationResult,
    DeviceRegistrationState, EnrollmentGroupId, EnrollmentLookup, HubName, IdScope, RegistrationId,
    RegistrationStatus, SymmetricKeyRegistrationResult, Timestamp, WebhookPolicy,
    X509RegistrationResult,
};
use tokio::sync::Semaphore;

pub use allocation::{weighted_rendezvous, LinkedHub};
pub use diagnostics::{Diagnostics, FailedAttempt, RegistrarReason, Transport};
pub use feed::{FeedLink, StoreOutbox};
pub use observer::{Outcome, RegistrarObserver, RegistrationReport};
pub use operations::{OperationId, OperationLimits, OperationStatus, MAX_HELD_PAYLOAD_BYTES};
pub use webhook::WebhookError;

use allocation::{AllocationInput, NoHub};

/// Error code DPS and the C SDK use for "no IoT hub could be assigned" (`DPS_HUB_ERROR_NO_HUB`).
pub const ERROR_NO_HUB: i32 = 400208;
/// Seconds a device is asked to wait when the registrar is saturated.
const BUSY_RETRY_AFTER_SECS: u32 = 2;
/// Seconds a device is asked to wait when the assignment feed's broker did not confirm its
/// event: long enough for a reconnection, short enough that devices come back soon after.
const BROKER_RETRY_AFTER_SECS: u32 = 5;

/// Registrar settings.
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// The service's ID scope.
    pub id_scope: IdScope,
    /// Hubs devices can be assigned to.
    pub linked_hubs: Vec<LinkedHub>,
    /// Policy for enrollments that name none (DPS's service default is hashed).
    pub default_allocation_policy: AllocationPolicy,
    /// Deadline for a custom allocation webhook (devices give up after 30 s).
    pub webhook_timeout: Duration,
    /// Where custom-allocation webhooks may point (checked before every call).
    pub webhook_policy: WebhookPolicy,
    /// Registrations in progress at once; beyond this devices get 429 with retry-after.
    pub max_in_flight: usize,
    /// The bounds of the operation table ([`Registrar::start_operation`]).
    pub operations: OperationLimits,
    /// The bounds of the pending TPM challenges ([`Registrar::tpm_challenges`]).
    pub tpm_challenges: dps_attest::TpmChallengeLimits,
    /// Told of every registration and webhook call (the metrics); none by default.
    pub observer: Option<Arc<dyn RegistrarObserver>>,
}

impl RegistrarConfig {
    /// Defaults for everything but the scope and hubs.
    pub fn new(id_scope: IdScope, linked_hubs: Vec<LinkedHub>) -> Self {
        Self {
            id_scope,
            linked_hubs,
            default_allocation_policy: AllocationPolicy::Hashed,
            webhook_timeout: Duration::from_secs(10),
            webhook_policy: WebhookPolicy::default(),
            max_in_flight: 4096,
            operations: OperationLimits::default(),
            tpm_challenges: dps_attest::TpmChallengeLimits::default(),
            observer: None,
        }
    }
}

/// Why a registration did not produce an answer for the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrarError {
    /// Too many registrations in progress; the device should retry.
    #[error("too many registrations in progress; retry after {retry_after_secs} s")]
    Busy {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// The assignment feed's broker has not confirmed the assignment's event; the device
    /// should retry (the event stays in the outbox and is delivered later).
    #[error("the assignment feed is unavailable; retry after {retry_after_secs} s")]
    BrokerUnavailable {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// The registration record could not be written.
    #[error("the registration record could not be stored")]
    Store(#[source] dps_store::StoreError),
    /// The webhook HTTP client could not be built.
    #[error("cannot create the allocation webhook client")]
    Setup(#[source] reqwest::Error),
}

/// The registration service. Cheap to clone.
#[derive(Clone)]
pub struct Registrar {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: RegistrarConfig,
    http: reqwest::Client,
    in_flight: Semaphore,
    /// One lock per registration id being registered (at most `max_in_flight` of them).
    registering: KeyLocks,
    diagnostics: Diagnostics,
    /// The assignment feed, when configured: assignments wait for its confirmation.
    feed: Option<dps_feed::Feed>,
    /// Devices not told of their current record (its event unconfirmed when they asked).
    untold: feed::Untold,
    /// Registrations pollable from any connection (the HTTPS device API).
    operations: std::sync::Mutex<operations::Table>,
    /// The TPM challenges issued and not yet answered, shared by every frontend (a device
    /// may get its challenge over one connection and answer it over another).
    tpm_challenges: dps_attest::TpmChallenges,
}

/// The enrollment fields registration reads, whichever kind matched.
struct Matched<'a> {
    enabled: bool,
    allocation: AllocationInput<'a>,
    reprovision: dps_types::ReprovisionPolicy,
    webhook: Option<&'a dps_types::CustomAllocationDefinition>,
    group_id: Option<&'a EnrollmentGroupId>,
    device_id: DeviceId,
}

impl Registrar {
    /// A registrar over `store`, without an assignment feed.
    pub fn new(store: Store, config: RegistrarConfig) -> Result<Self, RegistrarError> {
        Self::with_feed(store, config, None)
    }

    /// A registrar over `store` that publishes every assignment and deprovisioning through
    /// `feed` (started over this store's outbox by [`FeedLink::start`]).
    pub fn with_feed(
        store: Store,
        config: RegistrarConfig,
        feed: Option<FeedLink>,
    ) -> Result<Self, RegistrarError> {
        let http = webhook::client().map_err(RegistrarError::Setup)?;
        let in_flight = Semaphore::new(config.max_in_flight);
        let operations = std::sync::Mutex::new(operations::Table::new(config.operations));
        let tpm_challenges = dps_attest::TpmChallenges::new(config.tpm_challenges);
        let (feed, untold) = match feed {
            Some(link) => (Some(link.feed), link.untold),
            None => (None, feed::Untold::default()),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                config,
                http,
                in_flight,
                registering: KeyLocks::new(),
                diagnostics: Diagnostics::default(),
                untold,
                feed,
                operations,
                tpm_challenges,
            }),
        })
    }

    /// The service's ID scope.
    pub fn id_scope(&self) -> &IdScope {
        &self.inner.config.id_scope
    }

    /// Enrollment lookups for attestation (the store's cache).
    pub fn lookup(&self) -> &dyn EnrollmentLookup {
        self.inner.store.cache()
    }

    /// The pending TPM challenges: a frontend issues a device's challenge and attests its
    /// answer here, with [`Registrar::lookup`].
    pub fn tpm_challenges(&self) -> &dps_attest::TpmChallenges {
        &self.inner.tpm_challenges
    }

    /// The store (for the registration-state API).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The linked hubs.
    pub fn linked_hubs(&self) -> &[LinkedHub] {
        &self.inner.config.linked_hubs
    }

    /// What an enrollment may name, from this registrar's configuration (its linked hubs and
    /// webhook policy): the writers of enrollments prepare them with these rules.
    pub fn enrollment_rules(&self) -> dps_attest::EnrollmentRules {
        dps_attest::EnrollmentRules {
            linked_hubs: self
                .inner
                .config
                .linked_hubs
                .iter()
                .map(|h| h.host_name.clone())
                .collect(),
            webhook: self.inner.config.webhook_policy.clone(),
        }
    }

    /// The assignment feed, when configured.
    pub fn feed(&self) -> Option<&dps_feed::Feed> {
        self.inner.feed.as_ref()
    }

    /// Failed attempts and their counts.
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.inner.diagnostics
    }

    /// Records an attestation refusal (the device itself only learns "unauthorized"). The
    /// claimant did not authenticate, so its attempt cannot push out the history of devices
    /// that did, unless the claimed id is one of theirs (it has a registration record).
    pub fn record_refusal(
        &self,
        claimed_registration_id: &str,
        transport: Transport,
        refusal: &Refusal,
    ) {
        tracing::debug!(reason = refusal.reason.label(), "registration refused");
        let attempt = FailedAttempt {
            time_utc: Timestamp::now(),
            transport,
            reason: refusal.reason.label(),
            detail: refusal.detail.clone(),
        };
        let diagnostics = &self.inner.diagnostics;
        if self
            .inner
            .store
            .cache()
            .registration(claimed_registration_id)
            .is_some()
        {
            diagnostics.record_authenticated(claimed_registration_id, attempt);
        } else {
            diagnostics.record(claimed_registration_id, attempt);
        }
    }

    /// Registers an attested device: the returned state is `assigned` (the record is durable
    /// by then), `disabled`, or `failed` with an error code and message. Reported to the
    /// configured [`RegistrarObserver`].
    pub async fn register(
        &self,
        device: &AttestedDevice,
        transport: Transport,
        payload: Option<serde_json::Value>,
    ) -> Result<DeviceRegistrationResult, RegistrarError> {
        let started = Instant::now();
        let result = self.register_device(device, transport, payload).await;
        if let Some(observer) = &self.inner.config.observer {
            let outcome = match &result {
                Ok(r) => match r.status {
                    RegistrationStatus::Assigned => Outcome::Assigned,
                    RegistrationStatus::Disabled => Outcome::Disabled,
                    _ => Outcome::Failed,
                },
                Err(RegistrarError::Busy { .. } | RegistrarError::BrokerUnavailable { .. }) => {
                    Outcome::Throttled
                }
                Err(_) => Outcome::Error,
            };
            observer.registration(&RegistrationReport {
                transport,
                attestation: device.method(),
                outcome,
                hub: result.as_ref().ok().and_then(|r| r.assigned_hub.as_ref()),
                elapsed: started.elapsed(),
            });
        }
        result
    }

    async fn register_device(
        &self,
        device: &AttestedDevice,
        transport: Transport,
        payload: Option<serde_json::Value>,
    ) -> Result<DeviceRegistrationResult, RegistrarError> {
        let Ok(_permit) = self.inner.in_flight.try_acquire() else {
            return Err(RegistrarError::Busy {
                retry_after_secs: BUSY_RETRY_AFTER_SECS,
            });
        };
        let m = matched(device);
        let mut result = base_result(device, &m);
        if !m.enabled {
            self.fail(
                device,
                transport,
                RegistrarReason::EnrollmentDisabled,
                "the enrollment is disabled".into(),
            );
            result.status = RegistrationStatus::Disabled;
            return Ok(result);
        }

        let feed = self.inner.feed.as_ref();
        if feed.is_some_and(|f| !f.is_up()) {
            return Err(self.broker_unavailable(device, transport, "the broker link is down"));
        }

        // Held across read, allocation (a webhook call included), write and the feed's
        // confirmation: a second registration of this device computes from the record this
        // one writes, and waits for its event.
        let _registering = self
            .inner
            .registering
            .lock(&device.registration_id().key())
            .await;
        let previous = self.inner.store.registration(device.registration_id());
        let current_hub = previous
            .as_ref()
            .filter(|p| p.state.status == Some(RegistrationStatus::Assigned))
            .and_then(|p| p.state.assigned_hub.clone());
        if let (Some(feed), Some(previous)) = (feed, &previous) {
            // The device retries an assignment it was not told of (its event was not
            // confirmed in time): that assignment stands, and it is told once the event is.
            let key = device.registration_id().key();
            let etag = previous.state.etag.as_ref();
            let untold = self.inner.untold.take(&key, etag);
            if let (Some(seq), Some(etag)) = (untold.or(feed::unconfirmed(feed, previous)), etag) {
                if self.confirm_untold(feed, seq).await {
                    assigned(&mut result, previous);
                    return Ok(result);
                }
                self.inner.untold.remember(key, etag.clone(), seq);
                return Err(self.broker_unavailable(
                    device,
                    transport,
                    "the broker has not confirmed the assignment's event",
                ));
            }
        }
        let (hub, webhook) = match (&current_hub, m.reprovision.update_hub_assignment) {
            (Some(hub), false) => (hub.clone(), None),
            _ => match self
                .allocate(device, &m, previous.as_deref(), payload.as_ref())
                .await
            {
                Ok((hub, webhook)) => (hub, webhook),
                Err((reason, message)) => {
                    self.fail(device, transport, reason, message.clone());
                    result.status = RegistrationStatus::Failed;
                    result.error_code = Some(ERROR_NO_HUB);
                    result.error_message = Some(message);
                    return Ok(result);
                }
            },
        };
        let (webhook_payload, webhook_twin) =
            webhook.map_or((None, None), |w| (w.payload, w.initial_twin));
        let substatus = match (
            &current_hub,
            previous.as_ref().and_then(|p| p.state.substatus),
        ) {
            (None, _) => AssignedDeviceSubstatus::InitialAssignment,
            (Some(old), _) if *old != hub && m.reprovision.migrate_device_data => {
                AssignedDeviceSubstatus::DeviceDataMigrated
            }
            (Some(old), _) if *old != hub => AssignedDeviceSubstatus::DeviceDataReset,
            (Some(_), _)
                if !m.reprovision.migrate_device_data && m.reprovision.update_hub_assignment =>
            {
                AssignedDeviceSubstatus::DeviceDataReset
            }
            (Some(_), before) => before.unwrap_or(AssignedDeviceSubstatus::InitialAssignment),
        };

        let now = Timestamp::now();
        let record = RegistrationRecord {
            state: DeviceRegistrationState {
                registration_id: device.registration_id().clone(),
                created_date_time_utc: previous
                    .as_ref()
                    .and_then(|p| p.state.created_date_time_utc)
                    .or(Some(now)),
                assigned_hub: Some(hub),
                device_id: Some(m.device_id.clone()),
                status: Some(RegistrationStatus::Assigned),
                substatus: Some(substatus),
                error_code: None,
                error_message: None,
                last_updated_date_time_utc: Some(now),
                etag: None,
                payload: webhook_payload,
            },
            enrollment_group_id: m.group_id.cloned(),
        };
        let mut events = Vec::new();
        let (stored, seqs) = self
            .inner
            .store
            .put_registration_with(
                record,
                &Precondition::unchanged(previous.as_ref().and_then(|p| p.state.etag.as_ref())),
                |new, old| match feed {
                    Some(f) => feed::keep_and_encode(
                        feed::assignment(
                            device,
                            new,
                            old,
                            webhook_twin.as_ref(),
                            f.include_device_keys(),
                        )
                        .into_iter()
                        .collect(),
                        &mut events,
                    ),
                    None => Vec::new(),
                },
            )
            .await
            .map_err(RegistrarError::Store)?;
        if let Some(feed) = feed {
            for (seq, event) in seqs.into_iter().zip(events) {
                if feed.publish(seq, event).await.is_err() {
                    if let Some(etag) = &stored.state.etag {
                        let key = device.registration_id().key();
                        self.inner.untold.remember(key, etag.clone(), seq);
                    }
                    return Err(self.broker_unavailable(
                        device,
                        transport,
                        "the broker did not confirm the assignment's event",
                    ));
                }
            }
        }
        assigned(&mut result, &stored);
        Ok(result)
    }

    /// The device's current registration record as the `registrationState` it would be told
    /// (the HTTPS status lookup); `None` when it has none. With the feed on, a record whose
    /// assignment event the broker has not confirmed is not told yet:
    /// [`RegistrarError::BrokerUnavailable`], as a registration would answer.
    pub fn registration_state(
        &self,
        device: &AttestedDevice,
    ) -> Result<Option<DeviceRegistrationResult>, RegistrarError> {
        let Some(record) = self.inner.store.registration(device.registration_id()) else {
            return Ok(None);
        };
        if let Some(feed) = &self.inner.feed {
            if feed::unconfirmed(feed, &record).is_some() {
                return Err(RegistrarError::BrokerUnavailable {
                    retry_after_secs: BROKER_RETRY_AFTER_SECS,
                });
            }
        }
        // Records are written only for assignments.
        let mut result = base_result(device, &matched(device));
        assigned(&mut result, &record);
        Ok(Some(result))
    }

    /// Deletes a registration record; with the feed on, its `device.deprovisioned` event is
    /// written with the delete and published (now, or by the relay once the broker is back).
    pub async fn delete_registration(
        &self,
        id: &RegistrationId,
        pre: &Precondition,
    ) -> Result<(), dps_store::StoreError> {
        let mut events = Vec::new();
        let seqs = self
            .inner
            .store
            .delete_registration_with(id, pre, |r| {
                self.events(&mut events, || {
                    feed::deprovisioned(
                        r,
                        feed::record_enrollment(r),
                        dps_feed::DeprovisionReason::RegistrationDeleted,
                    )
                    .into_iter()
                    .collect()
                })
            })
            .await?;
        self.publish_later(seqs, events);
        Ok(())
    }

    /// Deletes an individual enrollment; with the feed on, the device it registered gets a
    /// `device.deprovisioned` event, written with the delete.
    pub async fn delete_enrollment(
        &self,
        id: &RegistrationId,
        pre: &Precondition,
    ) -> Result<(), dps_store::StoreError> {
        let store = &self.inner.store;
        let mut events = Vec::new();
        let seqs = store
            .delete_enrollment_with(id, pre, |e| {
                self.events(&mut events, || feed::enrollment_deleted(store, e))
            })
            .await?;
        self.publish_later(seqs, events);
        Ok(())
    }

    /// Deletes an enrollment group; with the feed on, every device registered through it
    /// gets a `device.deprovisioned` event, written with the delete.
    pub async fn delete_group(
        &self,
        id: &EnrollmentGroupId,
        pre: &Precondition,
    ) -> Result<(), dps_store::StoreError> {
        let store = &self.inner.store;
        let mut events = Vec::new();
        let seqs = store
            .delete_group_with(id, pre, |g| {
                self.events(&mut events, || feed::group_deleted(store, g))
            })
            .await?;
        self.publish_later(seqs, events);
        Ok(())
    }

    /// The encoded events `make` builds when the feed is on (kept in `keep`); none when off.
    fn events(
        &self,
        keep: &mut Vec<dps_feed::FeedEvent>,
        make: impl FnOnce() -> Vec<dps_feed::FeedEvent>,
    ) -> dps_store::Events {
        match self.inner.feed {
            Some(_) => feed::keep_and_encode(make(), keep),
            None => Vec::new(),
        }
    }

    /// Whether the event in outbox entry `seq` is confirmed: at once if the entry is gone
    /// (a confirmation removed it), else after publishing it (or joining the publication in
    /// flight) and the broker's confirmation, within the confirm timeout.
    async fn confirm_untold(&self, feed: &dps_feed::Feed, seq: dps_store::Seq) -> bool {
        match feed::outbox_entry(&self.inner.store, seq) {
            Ok(None) => true,
            Ok(Some(event)) => feed.publish(seq, event).await.is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox; the device retries");
                false
            }
        }
    }

    /// Publishes durable events without waiting for the broker (the relay retries them).
    fn publish_later(&self, seqs: Vec<dps_store::Seq>, events: Vec<dps_feed::FeedEvent>) {
        let Some(feed) = self.inner.feed.clone() else {
            return;
        };
        if seqs.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for (seq, event) in seqs.into_iter().zip(events) {
                if feed.publish(seq, event).await.is_err() {
                    // Still in the outbox: the relay sends it once the broker is back.
                    break;
                }
            }
        });
    }

    /// Records `broker_unavailable` and returns the retry answer.
    fn broker_unavailable(
        &self,
        device: &AttestedDevice,
        transport: Transport,
        detail: &str,
    ) -> RegistrarError {
        self.fail(
            device,
            transport,
            RegistrarReason::BrokerUnavailable,
            detail.to_owned(),
        );
        RegistrarError::BrokerUnavailable {
            retry_after_secs: BROKER_RETRY_AFTER_SECS,
        }
    }

    async fn allocate(
        &self,
        device: &AttestedDevice,
        m: &Matched<'_>,
        previous: Option<&RegistrationRecord>,
        payload: Option<&serde_json::Value>,
    ) -> Result<(HubName, Option<webhook::Allocation>), (RegistrarReason, String)> {
        let config = &self.inner.config;
        let policy = m
            .allocation
            .policy
            .unwrap_or(config.default_allocation_policy);
        if policy != AllocationPolicy::Custom {
            return allocation::choose(
                policy,
                &m.allocation,
                &config.linked_hubs,
                &device.registration_id().key(),
            )
            .map(|hub| (hub, None))
            .map_err(|e: NoHub| (RegistrarReason::NoHub, e.to_string()));
        }
        let Some(def) = m.webhook else {
            return Err((
                RegistrarReason::WebhookFailed,
                "custom allocation without a webhook definition".into(),
            ));
        };
        let offered: Vec<HubName> = allocation::candidates(&m.allocation, &config.linked_hubs)
            .and_then(|c| {
                if c.is_empty() {
                    Err(NoHub::NoCandidates)
                } else {
                    Ok(c)
                }
            })
            .map_err(|e| (RegistrarReason::NoHub, e.to_string()))?
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        let (group, individual) = match device.enrollment() {
            MatchedEnrollment::Group(g) => (Some(g.redacted()), None),
            MatchedEnrollment::Individual(e) => (None, Some(e.redacted())),
        };
        let current = previous.filter(|p| p.state.status == Some(RegistrationStatus::Assigned));
        let empty = || Some(serde_json::json!({}));
        let request = webhook::AllocationRequest {
            enrollment_group: group,
            individual_enrollment: individual,
            device_runtime_context: webhook::DeviceRuntimeContext {
                registration_id: device.registration_id().as_str(),
                current_iot_hub_host_name: current
                    .and_then(|p| p.state.assigned_hub.as_ref())
                    .map(HubName::as_str),
                current_device_id: current
                    .and_then(|p| p.state.device_id.as_ref())
                    .map(DeviceId::as_str),
                symmetric_key: (device.method() == AttestationType::SymmetricKey)
                    .then(empty)
                    .flatten(),
                x509: (device.method() == AttestationType::X509)
                    .then(empty)
                    .flatten(),
                payload,
            },
            linked_hubs: offered.iter().map(HubName::as_str).collect(),
        };
        let started = Instant::now();
        let answer = webhook::call(
            &self.inner.http,
            &config.webhook_policy,
            &def.webhook_url,
            config.webhook_timeout,
            &request,
            &offered,
        )
        .await;
        if let Some(observer) = &config.observer {
            let result = answer.as_ref().map_or_else(WebhookError::label, |_| "ok");
            observer.webhook(result, started.elapsed());
        }
        answer
            .map(|a| (a.hub.clone(), Some(a)))
            .map_err(|e| (RegistrarReason::WebhookFailed, e.to_string()))
    }

    fn fail(
        &self,
        device: &AttestedDevice,
        transport: Transport,
        reason: RegistrarReason,
        detail: String,
    ) {
        self.inner.diagnostics.record_authenticated(
            device.registration_id().as_str(),
            FailedAttempt {
                time_utc: Timestamp::now(),
                transport,
                reason: reason.label(),
                detail,
            },
        );
    }
}

fn matched(device: &AttestedDevice) -> Matched<'_> {
    let settings = device.enrollment().settings();
    let (group_id, device_id) = match device.enrollment() {
        MatchedEnrollment::Individual(e) => (None, e.effective_device_id()),
        MatchedEnrollment::Group(g) => (
            Some(&g.enrollment_group_id),
            DeviceId::from(device.registration_id()),
        ),
    };
    Matched {
        enabled: settings.is_enabled(),
        allocation: AllocationInput {
            policy: settings.allocation_policy(),
            iot_hub_host_name: settings.iot_hub_host_name(),
            iot_hubs: settings.iot_hubs(),
        },
        reprovision: settings.reprovision_policy().copied().unwrap_or_default(),
        webhook: settings.custom_allocation_definition(),
        group_id,
        device_id,
    }
}

/// The device-facing result before allocation: identity and attestation details.
fn base_result(device: &AttestedDevice, m: &Matched<'_>) -> DeviceRegistrationResult {
    let (x509, symmetric_key) = match device.method() {
        AttestationType::X509 => (
            Some(X509RegistrationResult {
                certificate_info: m.group_id.and(device.certificate_info().cloned()),
                enrollment_group_id: m.group_id.cloned(),
                signing_certificate_info: m
                    .group_id
                    .and(device.signing_certificate_info().cloned()),
            }),
            None,
        ),
        AttestationType::SymmetricKey if m.group_id.is_some() => (
            None,
            Some(SymmetricKeyRegistrationResult {
                enrollment_group_id: m.group_id.cloned(),
            }),
        ),
        _ => (None, None),
    };
    let mut result = DeviceRegistrationResult::new(
        device.registration_id().clone(),
        RegistrationStatus::Assigning,
    );
    result.x509 = x509;
    result.symmetric_key = symmetric_key;
    result
}

/// Fills the device's answer from its (durable, confirmed) registration record.
fn assigned(result: &mut DeviceRegistrationResult, stored: &RegistrationRecord) {
    let s = &stored.state;
    result.status = RegistrationStatus::Assigned;
    result.created_date_time_utc = s.created_date_time_utc;
    result.assigned_hub = s.assigned_hub.clone();
    result.device_id = s.device_id.clone();
    result.substatus = s.substatus;
    result.last_updated_date_time_utc = s.last_updated_date_time_utc;
    result.etag = s.etag.clone();
    result.payload = s.payload.clone();
}
