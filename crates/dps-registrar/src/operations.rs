//! The registrar's operation table: a registration that one request starts and later
//! requests of the same device poll, from any connection. The HTTPS device API needs it (an
//! HTTP client may reconnect between its register and its polls); MQTT and AMQP keep their
//! operations per connection.
//!
//! The rules are the per-connection ones of the MQTT and AMQP frontends, so a device sees one
//! DPS whatever its transport:
//!
//! * [`Registrar::start_operation`] registers an id and runs the registration in the
//!   background; the caller answers `202` + `assigning` at once;
//! * [`Registrar::poll_operation`] gives [`OperationStatus::Assigning`] while it runs and the
//!   result when done; an operation is found only by the device that started it (by
//!   registration id, any letter case), so a device cannot read another's result;
//! * the registrar was busy: the next poll is [`OperationStatus::Busy`], and the poll after it
//!   starts the registration again (every SDK that retries re-polls after a `429`);
//! * our own failure: the next poll is [`OperationStatus::Failed`], and the operation is
//!   forgotten.
//!
//! Bounded, whatever devices do: at most [`OperationLimits::max_operations`] operations (a new
//! one pushes out the oldest), at most [`OperationLimits::max_per_device`] per registration id
//! (a device that registers in a loop pushes out its own, and is throttled when they all still
//! run), each forgotten [`OperationLimits::ttl`] after it started, and at most
//! [`MAX_HELD_PAYLOAD_BYTES`] of custom payloads held for registrations that have to run again.
//! The table itself ([`Table`]) does no I/O and takes the time as an argument.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dps_attest::AttestedDevice;
use dps_types::DeviceRegistrationResult;

use crate::{Registrar, RegistrarError, Transport};

/// Custom payloads the table holds at once, in serialized bytes: a payload is kept from the
/// start of its registration until it is done (to run it again after a `429`). 64 MiB holds
/// 650 registrations with the largest payload a device can send (96 KiB), or every operation
/// of a full table with a 2 KiB one; beyond it new registrations with a payload are throttled.
pub const MAX_HELD_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// `retry-after` when a device already runs [`OperationLimits::max_per_device`]
/// registrations, or the payloads held are at their bound: the running ones take
/// milliseconds.
const OPERATIONS_RETRY_AFTER_SECS: u32 = 2;

/// The bounds of the operation table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationLimits {
    /// Operations kept at once; a new one pushes out the oldest. Default 32,768: an operation
    /// is polled within seconds of its start (the SDKs wait 1 to 5 s), so this covers several
    /// thousand registrations per second, and holds at most about 50 MiB (an X.509 group
    /// device's result with both certificates' details is about 1.5 KiB).
    pub max_operations: usize,
    /// Operations of one registration id kept at once. Default 4: a device has one
    /// registration at a time; a few cover retries after lost answers.
    pub max_per_device: usize,
    /// How long after its start an operation can be polled. Default 5 minutes: far beyond
    /// the SDKs' polling (seconds), as long as an MQTT connection may live.
    pub ttl: Duration,
}

impl Default for OperationLimits {
    fn default() -> Self {
        Self {
            max_operations: 32_768,
            max_per_device: 4,
            ttl: Duration::from_secs(300),
        }
    }
}

/// An operation id in DPS's shape, `4.<16 hex digits>.<uuid>`: URL-safe, and unguessable
/// (the UUID's 122 random bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OperationId(String);

impl OperationId {
    fn generate() -> Self {
        Self(format!(
            "4.{:016x}.{}",
            rand::random::<u64>(),
            uuid::Uuid::new_v4()
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OperationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a poll learns about an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OperationStatus {
    /// The registration runs (or was just started again): answer `202` + `assigning`.
    Assigning,
    /// The registrar answered: `assigned`, `failed` or `disabled` (see its status).
    Done(Box<DeviceRegistrationResult>),
    /// The registrar was busy: answer `429` with this `retry-after`; the next poll starts the
    /// registration again.
    Busy {
        /// Seconds the device should wait.
        retry_after_secs: u32,
    },
    /// Our own failure (the record could not be stored): answer `500`; the operation is gone.
    Failed,
    /// No operation with this id for this device: never started, expired, pushed out, or
    /// another device's.
    NotFound,
}

/// A deferred registration a poll starts again, with the device's payload.
#[derive(Debug, PartialEq)]
struct Restart {
    payload: Option<serde_json::Value>,
}

/// How a registration of the table ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(Box<DeviceRegistrationResult>),
    Busy { retry_after_secs: u32 },
    Failed,
}

impl Registrar {
    /// Starts registering `device` as a new operation of this registrar's table and returns
    /// its id at once; the registration runs in the background (a task of the current tokio
    /// runtime), reported to the observer under `transport`.
    ///
    /// [`RegistrarError::Busy`] when the device already runs as many registrations as it may
    /// keep, or the payloads held are at their bound.
    pub fn start_operation(
        &self,
        device: Arc<AttestedDevice>,
        transport: Transport,
        payload: Option<serde_json::Value>,
    ) -> Result<OperationId, RegistrarError> {
        let key = device.registration_id().key();
        let id = self
            .operations()
            .start(key, payload.clone(), Instant::now())
            .map_err(|retry_after_secs| RegistrarError::Busy { retry_after_secs })?;
        self.run_operation(id.clone(), device, transport, payload);
        Ok(id)
    }

    /// The status of operation `operation_id` for `device` (which must be the device that
    /// started it); a deferred registration (see [`OperationStatus::Busy`]) starts again here.
    pub fn poll_operation(
        &self,
        device: &Arc<AttestedDevice>,
        operation_id: &str,
        transport: Transport,
    ) -> OperationStatus {
        let key = device.registration_id().key();
        let (status, restart) = self.operations().poll(operation_id, &key, Instant::now());
        if let Some(Restart { payload }) = restart {
            let id = OperationId(operation_id.to_owned());
            self.run_operation(id, Arc::clone(device), transport, payload);
        }
        status
    }

    fn run_operation(
        &self,
        id: OperationId,
        device: Arc<AttestedDevice>,
        transport: Transport,
        payload: Option<serde_json::Value>,
    ) {
        let registrar = self.clone();
        tokio::spawn(async move {
            let outcome = match registrar.register(&device, transport, payload).await {
                Ok(result) => Outcome::Done(Box::new(result)),
                Err(
                    RegistrarError::Busy { retry_after_secs }
                    | RegistrarError::BrokerUnavailable { retry_after_secs },
                ) => Outcome::Busy { retry_after_secs },
                Err(e) => {
                    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "registration failed");
                    Outcome::Failed
                }
            };
            registrar.operations().finish(&id, outcome);
        });
    }

    /// The table; every update is complete before its method returns, so a lock poisoned by
    /// a panic elsewhere is used as is.
    fn operations(&self) -> MutexGuard<'_, Table> {
        self.inner
            .operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The operations, without I/O: creation order, the devices' operations and the payloads
/// held are kept in step with the map (see [`Table::remove`]).
#[derive(Debug)]
pub(crate) struct Table {
    limits: OperationLimits,
    operations: HashMap<String, Operation>,
    /// Sequence number to operation id, oldest first.
    order: BTreeMap<u64, String>,
    /// Registration id (lower case) to its operations' sequence numbers, oldest first; at
    /// most `max_per_device` each.
    devices: HashMap<String, Vec<u64>>,
    next_seq: u64,
    /// Serialized bytes of the payloads in `Running`, `Throttled` and `Deferred` operations.
    held_payload_bytes: usize,
}

#[derive(Debug)]
struct Operation {
    seq: u64,
    device: String,
    started: Instant,
    state: State,
    /// The serialized size of `state`'s payload (0 once done).
    payload_bytes: usize,
}

#[derive(Debug)]
enum State {
    Running {
        payload: Option<serde_json::Value>,
    },
    Throttled {
        retry_after_secs: u32,
        payload: Option<serde_json::Value>,
    },
    Deferred {
        payload: Option<serde_json::Value>,
    },
    Done(Box<DeviceRegistrationResult>),
    Failed,
}

impl Table {
    pub(crate) fn new(limits: OperationLimits) -> Self {
        Self {
            limits,
            operations: HashMap::new(),
            order: BTreeMap::new(),
            devices: HashMap::new(),
            next_seq: 0,
            held_payload_bytes: 0,
        }
    }

    /// Operations held.
    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.order.len(), self.operations.len());
        self.operations.len()
    }

    /// A new `Running` operation of `device` (lower-case registration id), or the
    /// `retry-after` of a refusal: the device's operations all still run, or its payload does
    /// not fit in [`MAX_HELD_PAYLOAD_BYTES`].
    fn start(
        &mut self,
        device: String,
        payload: Option<serde_json::Value>,
        now: Instant,
    ) -> Result<OperationId, u32> {
        self.expire(now);
        let payload_bytes = payload.as_ref().map_or(0, serialized_len);
        if self.held_payload_bytes.saturating_add(payload_bytes) > MAX_HELD_PAYLOAD_BYTES {
            return Err(OPERATIONS_RETRY_AFTER_SECS);
        }
        let own = self.devices.get(&device).map(Vec::as_slice).unwrap_or(&[]);
        if own.len() >= self.limits.max_per_device {
            let finished = own.iter().copied().find(|seq| {
                self.order
                    .get(seq)
                    .and_then(|id| self.operations.get(id))
                    .is_some_and(|op| !matches!(op.state, State::Running { .. }))
            });
            match finished {
                Some(seq) => self.remove(seq),
                None => return Err(OPERATIONS_RETRY_AFTER_SECS),
            }
        }
        while self.operations.len() >= self.limits.max_operations.max(1) {
            let Some(oldest) = self.order.keys().next().copied() else {
                break;
            };
            self.remove(oldest);
        }
        let id = OperationId::generate();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.0.clone());
        self.devices.entry(device.clone()).or_default().push(seq);
        self.held_payload_bytes += payload_bytes;
        self.operations.insert(
            id.0.clone(),
            Operation {
                seq,
                device,
                started: now,
                state: State::Running { payload },
                payload_bytes,
            },
        );
        Ok(id)
    }

    /// Records how the registration of `id` ended (nothing if the operation is gone).
    fn finish(&mut self, id: &OperationId, outcome: Outcome) {
        let Some(op) = self.operations.get_mut(id.as_str()) else {
            return;
        };
        let State::Running { payload } = &mut op.state else {
            return;
        };
        let payload = payload.take();
        op.state = match outcome {
            Outcome::Done(result) => State::Done(result),
            Outcome::Busy { retry_after_secs } => State::Throttled {
                retry_after_secs,
                payload,
            },
            Outcome::Failed => State::Failed,
        };
        if matches!(op.state, State::Done(_) | State::Failed) {
            self.held_payload_bytes -= op.payload_bytes;
            op.payload_bytes = 0;
        }
    }

    /// What a poll of `id` by `device` is answered, and the registration to start again when
    /// the poll ends a deferral.
    fn poll(&mut self, id: &str, device: &str, now: Instant) -> (OperationStatus, Option<Restart>) {
        self.expire(now);
        let Some(op) = self.operations.get_mut(id).filter(|op| op.device == device) else {
            return (OperationStatus::NotFound, None);
        };
        match &mut op.state {
            State::Running { .. } => (OperationStatus::Assigning, None),
            State::Throttled {
                retry_after_secs,
                payload,
            } => {
                let retry_after_secs = *retry_after_secs;
                op.state = State::Deferred {
                    payload: payload.take(),
                };
                (OperationStatus::Busy { retry_after_secs }, None)
            }
            State::Deferred { payload } => {
                let payload = payload.take();
                op.state = State::Running {
                    payload: payload.clone(),
                };
                (OperationStatus::Assigning, Some(Restart { payload }))
            }
            State::Done(result) => (OperationStatus::Done(result.clone()), None),
            State::Failed => {
                let seq = op.seq;
                self.remove(seq);
                (OperationStatus::Failed, None)
            }
        }
    }

    /// Forgets the operations that started `ttl` or longer before `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((&seq, id)) = self.order.first_key_value() {
            let expired = self
                .operations
                .get(id)
                .is_none_or(|op| now.saturating_duration_since(op.started) >= self.limits.ttl);
            if !expired {
                break;
            }
            self.remove(seq);
        }
    }

    /// Removes operation `seq` from the map, the order, its device's list and the payloads
    /// held.
    fn remove(&mut self, seq: u64) {
        let Some(id) = self.order.remove(&seq) else {
            return;
        };
        let Some(op) = self.operations.remove(&id) else {
            return;
        };
        self.held_payload_bytes -= op.payload_bytes;
        if let Some(seqs) = self.devices.get_mut(&op.device) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.devices.remove(&op.device);
            }
        }
    }
}

/// The bytes `value` takes as JSON (what the device sent, about).
fn serialized_len(value: &serde_json::Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

#[cfg(test)]
mod tests {
    use dps_types::{DeviceId, RegistrationId, RegistrationStatus};
    use serde_json::json;

    use super::*;

    fn limits(max_operations: usize, max_per_device: usize) -> OperationLimits {
        OperationLimits {
            max_operations,
            max_per_device,
            ttl: Duration::from_secs(300),
        }
    }

    fn assigned(id: &str) -> Outcome {
        let mut result = DeviceRegistrationResult::new(
            RegistrationId::parse(id).unwrap(),
            RegistrationStatus::Assigned,
        );
        result.device_id = Some(DeviceId::parse(id).unwrap());
        Outcome::Done(Box::new(result))
    }

    #[test]
    fn an_operation_runs_then_gives_its_result_to_its_device_only() {
        let mut table = Table::new(OperationLimits::default());
        let now = Instant::now();
        let id = table.start("dev-1".into(), None, now).unwrap();
        assert_eq!(
            table.poll(id.as_str(), "dev-1", now),
            (OperationStatus::Assigning, None)
        );
        table.finish(&id, assigned("dev-1"));
        let (status, restart) = table.poll(id.as_str(), "dev-1", now);
        let OperationStatus::Done(result) = status else {
            panic!("{status:?}");
        };
        assert_eq!(result.status, RegistrationStatus::Assigned);
        assert!(restart.is_none());
        // Polled again (an answer can be lost), and never by another device.
        assert!(matches!(
            table.poll(id.as_str(), "dev-1", now).0,
            OperationStatus::Done(_)
        ));
        assert_eq!(
            table.poll(id.as_str(), "dev-2", now).0,
            OperationStatus::NotFound
        );
        assert_eq!(
            table.poll("4.0.unknown", "dev-1", now).0,
            OperationStatus::NotFound
        );
    }

    #[test]
    fn a_busy_registrar_throttles_one_poll_and_the_next_runs_it_again_with_its_payload() {
        let mut table = Table::new(OperationLimits::default());
        let now = Instant::now();
        let payload = Some(json!({"model": "x"}));
        let id = table.start("dev".into(), payload.clone(), now).unwrap();
        let held = table.held_payload_bytes;
        assert_eq!(held, r#"{"model":"x"}"#.len());
        table.finish(
            &id,
            Outcome::Busy {
                retry_after_secs: 7,
            },
        );
        assert_eq!(
            table.poll(id.as_str(), "dev", now),
            (
                OperationStatus::Busy {
                    retry_after_secs: 7
                },
                None
            )
        );
        assert_eq!(
            table.poll(id.as_str(), "dev", now),
            (OperationStatus::Assigning, Some(Restart { payload }))
        );
        assert_eq!(table.held_payload_bytes, held, "held until done");
        table.finish(&id, assigned("dev"));
        assert_eq!(table.held_payload_bytes, 0);
    }

    #[test]
    fn our_failure_is_told_once_then_the_operation_is_gone() {
        let mut table = Table::new(OperationLimits::default());
        let now = Instant::now();
        let id = table.start("dev".into(), None, now).unwrap();
        table.finish(&id, Outcome::Failed);
        assert_eq!(
            table.poll(id.as_str(), "dev", now).0,
            OperationStatus::Failed
        );
        assert_eq!(
            table.poll(id.as_str(), "dev", now).0,
            OperationStatus::NotFound
        );
        assert_eq!(table.len(), 0);
        assert!(table.devices.is_empty());
    }

    #[test]
    fn operations_expire_after_their_ttl() {
        let mut table = Table::new(OperationLimits::default());
        let start = Instant::now();
        let id = table.start("dev".into(), None, start).unwrap();
        table.finish(&id, assigned("dev"));
        let just_before = start + Duration::from_secs(299);
        assert!(matches!(
            table.poll(id.as_str(), "dev", just_before).0,
            OperationStatus::Done(_)
        ));
        let at_ttl = start + Duration::from_secs(300);
        assert_eq!(
            table.poll(id.as_str(), "dev", at_ttl).0,
            OperationStatus::NotFound
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_device_keeps_its_newest_operations_and_is_throttled_when_all_still_run() {
        let mut table = Table::new(limits(100, 2));
        let now = Instant::now();
        let first = table.start("dev".into(), None, now).unwrap();
        let second = table.start("dev".into(), None, now).unwrap();
        assert_eq!(
            table.start("dev".into(), None, now),
            Err(OPERATIONS_RETRY_AFTER_SECS),
            "both still run"
        );
        table.finish(&first, assigned("dev"));
        let third = table.start("dev".into(), None, now).unwrap();
        assert_eq!(
            table.poll(first.as_str(), "dev", now).0,
            OperationStatus::NotFound,
            "the finished one made room"
        );
        assert_eq!(
            table.poll(second.as_str(), "dev", now).0,
            OperationStatus::Assigning
        );
        assert_eq!(
            table.poll(third.as_str(), "dev", now).0,
            OperationStatus::Assigning
        );
        assert_eq!(table.devices["dev"].len(), 2);
    }

    #[test]
    fn payloads_held_are_bounded() {
        let mut table = Table::new(limits(10_000, 4));
        let now = Instant::now();
        let big = json!("x".repeat(1024 * 1024));
        let per_payload = serialized_len(&big);
        let fit = MAX_HELD_PAYLOAD_BYTES / per_payload;
        for n in 0..fit {
            table
                .start(format!("dev-{n}"), Some(big.clone()), now)
                .unwrap();
        }
        assert_eq!(
            table.start("one-more".into(), Some(big.clone()), now),
            Err(OPERATIONS_RETRY_AFTER_SECS)
        );
        table
            .start("no-payload".into(), None, now)
            .expect("a registration without payload still starts");
        assert!(table.held_payload_bytes <= MAX_HELD_PAYLOAD_BYTES);
    }

    #[test]
    fn the_table_stays_bounded_under_100_000_abandoned_registrations() {
        let limits = OperationLimits::default();
        let mut table = Table::new(limits);
        let now = Instant::now();
        let mut ids = Vec::new();
        for n in 0..100_000 {
            let device = format!("abandoned-{n}");
            let id = table.start(device, Some(json!({"n": n})), now).unwrap();
            if n % 2 == 0 {
                // Half of them finish, half are left running (their task never reports).
                table.finish(&id, assigned("abandoned-0"));
            }
            ids.push(id);
            assert!(table.len() <= limits.max_operations);
        }
        assert_eq!(table.len(), limits.max_operations);
        assert_eq!(table.order.len(), limits.max_operations);
        assert_eq!(table.devices.len(), limits.max_operations);
        assert!(table.held_payload_bytes <= MAX_HELD_PAYLOAD_BYTES);
        // The oldest were pushed out; the newest are still there for their devices.
        assert_eq!(
            table.poll(ids[0].as_str(), "abandoned-0", now).0,
            OperationStatus::NotFound
        );
        let last = ids.len() - 1;
        assert_eq!(
            table
                .poll(ids[last].as_str(), &format!("abandoned-{last}"), now)
                .0,
            OperationStatus::Assigning
        );
        // A moment past their time, the first request of anyone clears them all.
        table.start("late".into(), None, now + limits.ttl).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.devices.len(), 1);
        assert_eq!(table.held_payload_bytes, 0);
    }

    #[test]
    fn operation_ids_are_fresh_and_url_safe() {
        let a = OperationId::generate();
        let b = OperationId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 55);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-'));
    }
}
