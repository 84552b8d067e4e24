//! Durable storage of enrollments, enrollment groups and registration records, with the
//! in-memory cache that the registration path reads.
//!
//! What it does: [`Store`] writes through a [`Backend`] (sled by default, [`SledBackend`]),
//! waits until the write is durable (one flush shared by all concurrent writers, see
//! `commit.rs`), and keeps a [`Cache`] of every record, updated in the same call once the
//! flush worked, so after a write returns the two agree. An acknowledged write survives
//! `kill -9`. Writers of one key hold its lock ([`KeyLocks`]) from reading the current record
//! to the cache update. When a flush fails, its writes are not acknowledged, are taken back out
//! of the backend and never reach the cache, and the store refuses writes
//! ([`StoreError::Unhealthy`]) until a flush succeeds again.
//!
//! What it must never do: know about MQTT, HTTP or AMQP, or validate attestation (writers hand
//! it `dps_attest::Prepared` records, which only `dps-attest` can build).
//!
//! Main types: [`Store`], [`Cache`], [`Precondition`], [`Page`], [`RegistrationRecord`],
//! [`Backend`], [`KeyLocks`], [`StoreObserver`] (write and flush timings for the metrics),
//! and the crate's error enum [`StoreError`].

mod backend;
mod cache;
mod commit;
mod error;
mod locks;
mod observer;
mod outbox;
mod record;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dps_attest::Prepared;
use dps_types::{
    EnrollmentGroup, EnrollmentGroupId, Etag, IndividualEnrollment, RegistrationId, Timestamp,
};
use tokio::sync::{RwLock, RwLockReadGuard};

pub use backend::{Backend, SledBackend, Table, Visit, Write};
pub use cache::Cache;
pub use error::StoreError;
pub use locks::{KeyGuard, KeyLocks};
pub use observer::StoreObserver;
pub use outbox::Seq;
pub use record::RegistrationRecord;

use cache::lower;
use commit::GroupCommit;
use observer::Observed;
use outbox::{Origin, Outbox};
use record::Record;

/// Events a write produces for the outbox, already encoded (the store keeps them opaque).
pub type Events = Vec<Vec<u8>>;

/// What must be true of the current record for a write or delete to happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: create or replace.
    Any,
    /// The record must not exist (create only).
    MustNotExist,
    /// The record must exist and its etag must match this `If-Match` header value.
    IfMatch(String),
}

impl Precondition {
    /// The record must still be the one read before: the same etag, or still absent.
    pub fn unchanged(etag: Option<&Etag>) -> Self {
        match etag {
            Some(etag) => Precondition::IfMatch(etag.as_str().to_owned()),
            None => Precondition::MustNotExist,
        }
    }
}

/// One page of a query and the token for the next one (absent on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The records of this page, in key order.
    pub items: Vec<T>,
    /// Pass this back to get the next page.
    pub continuation: Option<String>,
}

/// Enrollments, groups and registration records: durable in a [`Backend`], readable from
/// the [`Cache`]. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    cache: Cache,
    commit: GroupCommit,
    /// Writers of one key, held from reading the current record until the cache is updated
    /// (across the flush), so the cache only ever shows durable writes, in order.
    locks: KeyLocks,
    /// Every write holds this shared from its backend write until it is durable or undone; a
    /// probe after a failed flush takes it exclusively, so it flushes only once every write of
    /// the failed batches is out of the backend.
    gate: RwLock<()>,
    /// An undo failed: the backend may hold a refused write, so no flush may run on this
    /// store's behalf again (until the process restarts and reloads).
    broken: AtomicBool,
    /// Which outbox entries are durable and waiting.
    outbox: Outbox,
    /// Where write and flush timings go (see [`Store::observe`]).
    observed: Observed,
}

impl Store {
    /// Opens (or creates) the sled database in `dir` and loads every record into the cache.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::with_backend(Arc::new(SledBackend::open(dir)?))
    }

    /// Uses any backend; loads every record into the cache.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Result<Store, StoreError> {
        let cache = Cache::default();
        load::<IndividualEnrollment>(&*backend, &cache)?;
        load::<EnrollmentGroup>(&*backend, &cache)?;
        load::<RegistrationRecord>(&*backend, &cache)?;
        let outbox = Outbox::load(&*backend, &cache)?;
        let observed = Observed::default();
        let commit = GroupCommit::start(Arc::clone(&backend), observed.clone())
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                cache,
                commit,
                locks: KeyLocks::new(),
                gate: RwLock::new(()),
                broken: AtomicBool::new(false),
                outbox,
                observed,
            }),
        })
    }

    /// Reports write and flush timings to `observer` from now on. Only the first observer
    /// is kept: returns false (and keeps the first) when one was set before.
    pub fn observe(&self, observer: Arc<dyn StoreObserver>) -> bool {
        self.inner.observed.set(observer)
    }

    /// The lookup cache (what the registration path reads).
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// Creates or replaces an individual enrollment; returns it as stored (with secrets)
    /// once it is durable. Only a [`Prepared`] enrollment is accepted: every writer goes
    /// through `dps_attest::prepare_individual`.
    pub async fn put_enrollment(
        &self,
        e: Prepared<IndividualEnrollment>,
        pre: &Precondition,
    ) -> Result<Arc<IndividualEnrollment>, StoreError> {
        self.put(e.into_inner(), pre).await
    }

    /// The individual enrollment with this id.
    pub fn enrollment(&self, id: &RegistrationId) -> Option<Arc<IndividualEnrollment>> {
        self.inner.cache.enrollment(id.as_str())
    }

    /// Deletes an individual enrollment once durable.
    pub async fn delete_enrollment(
        &self,
        id: &RegistrationId,
        pre: &Precondition,
    ) -> Result<(), StoreError> {
        self.delete::<IndividualEnrollment>(&id.key(), pre).await
    }

    /// A page of individual enrollments in id order.
    pub fn query_enrollments(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<Arc<IndividualEnrollment>>, StoreError> {
        self.query(page_size, continuation, |_| true)
    }

    /// Creates or replaces an enrollment group; returns it as stored once durable. Only a
    /// [`Prepared`] group is accepted: every writer goes through `dps_attest::prepare_group`.
    pub async fn put_group(
        &self,
        g: Prepared<EnrollmentGroup>,
        pre: &Precondition,
    ) -> Result<Arc<EnrollmentGroup>, StoreError> {
        self.put(g.into_inner(), pre).await
    }

    /// The enrollment group with this id.
    pub fn group(&self, id: &EnrollmentGroupId) -> Option<Arc<EnrollmentGroup>> {
        self.inner.cache.group(id.as_str())
    }

    /// Deletes an enrollment group once durable.
    pub async fn delete_group(
        &self,
        id: &EnrollmentGroupId,
        pre: &Precondition,
    ) -> Result<(), StoreError> {
        self.delete::<EnrollmentGroup>(&id.key(), pre).await
    }

    /// A page of enrollment groups in id order.
    pub fn query_groups(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<Arc<EnrollmentGroup>>, StoreError> {
        self.query(page_size, continuation, |_| true)
    }

    /// Writes a registration record (new etag) if `pre` holds, and returns it once durable.
    /// A read-modify-write passes [`Precondition::unchanged`] with the etag it read.
    pub async fn put_registration(
        &self,
        r: RegistrationRecord,
        pre: &Precondition,
    ) -> Result<Arc<RegistrationRecord>, StoreError> {
        self.put(r, pre).await
    }

    /// The registration record of this registration id.
    pub fn registration(&self, id: &RegistrationId) -> Option<Arc<RegistrationRecord>> {
        self.inner.cache.registration(id.as_str())
    }

    /// Deletes a registration record once durable (the device may then provision afresh).
    pub async fn delete_registration(
        &self,
        id: &RegistrationId,
        pre: &Precondition,
    ) -> Result<(), StoreError> {
        self.delete::<RegistrationRecord>(&id.key(), pre).await
    }

    /// A page of every registration record, in registration id order.
    pub fn query_all_registrations(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<Arc<RegistrationRecord>>, StoreError> {
        self.query(page_size, continuation, |_| true)
    }

    /// A page of the registration records of devices that registered through `group`.
    pub fn query_registrations(
        &self,
        group: &EnrollmentGroupId,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<Arc<RegistrationRecord>>, StoreError> {
        self.query(page_size, continuation, |r: &RegistrationRecord| {
            r.enrollment_group_id.as_ref() == Some(group)
        })
    }

    /// [`Store::put_registration`], writing the events `events` makes of the new record (and
    /// of the one it replaces) to the outbox with it: after a crash the record has its
    /// events, and events whose record was lost are gone. Returns the stored record and the
    /// events' sequence numbers, all durable.
    pub async fn put_registration_with(
        &self,
        r: RegistrationRecord,
        pre: &Precondition,
        events: impl FnOnce(&RegistrationRecord, Option<&RegistrationRecord>) -> Events,
    ) -> Result<(Arc<RegistrationRecord>, Vec<Seq>), StoreError> {
        self.put_with(r, pre, events).await
    }

    /// [`Store::delete_registration`], writing the events `events` makes of the deleted
    /// record with the delete.
    pub async fn delete_registration_with(
        &self,
        id: &RegistrationId,
        pre: &Precondition,
        events: impl FnOnce(&RegistrationRecord) -> Events,
    ) -> Result<Vec<Seq>, StoreError> {
        self.delete_with(&id.key(), pre, events).await
    }

    /// [`Store::delete_enrollment`], writing the events `events` makes of the deleted
    /// enrollment with the delete.
    pub async fn delete_enrollment_with(
        &self,
        id: &RegistrationId,
        pre: &Precondition,
        events: impl FnOnce(&IndividualEnrollment) -> Events,
    ) -> Result<Vec<Seq>, StoreError> {
        self.delete_with(&id.key(), pre, events).await
    }

    /// [`Store::delete_group`], writing the events `events` makes of the deleted group with
    /// the delete.
    pub async fn delete_group_with(
        &self,
        id: &EnrollmentGroupId,
        pre: &Precondition,
        events: impl FnOnce(&EnrollmentGroup) -> Events,
    ) -> Result<Vec<Seq>, StoreError> {
        self.delete_with(&id.key(), pre, events).await
    }

    /// Durable outbox entries after `after` (from the first when `None`), in sequence order,
    /// at most `limit`. Reads the backend: for the relay, not the registration path.
    pub fn outbox_scan(
        &self,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, StoreError> {
        let mut entries = Vec::new();
        let start = after.map(outbox::key);
        self.inner
            .backend
            .scan(Table::Outbox, start.as_deref(), &mut |k, value| {
                if entries.len() >= limit {
                    return Ok(false);
                }
                let seq = k
                    .parse::<Seq>()
                    .map_err(|e| StoreError::Backend(Box::new(e)))?;
                if self.inner.outbox.is_durable(seq) {
                    entries.push((seq, outbox::decode(value)?.1.to_vec()));
                }
                Ok(true)
            })?;
        Ok(entries)
    }

    /// Removes delivered outbox entries. Not waited for: an entry whose removal a crash loses
    /// is delivered again, which the events' ids make harmless.
    pub fn outbox_remove(&self, seqs: &[Seq]) -> Result<(), StoreError> {
        let gone = self.inner.outbox.take(seqs);
        if gone.is_empty() || self.inner.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        outbox::remove(&*self.inner.backend, &gone)
    }

    /// How many outbox entries are durable and not yet delivered.
    pub fn outbox_len(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Whether writes are accepted: false after a failed flush, until a flush succeeds.
    pub fn is_healthy(&self) -> bool {
        self.inner.commit.is_healthy() && !self.inner.broken.load(Ordering::Acquire)
    }

    async fn put<R: Record>(&self, record: R, pre: &Precondition) -> Result<Arc<R>, StoreError> {
        self.put_with(record, pre, |_, _| Vec::new())
            .await
            .map(|(stored, _)| stored)
    }

    /// Writes `record` and the events `events` makes of it (and of the record it replaces)
    /// (see `write_batch`); returns the stored record and the events' sequence numbers.
    async fn put_with<R: Record>(
        &self,
        mut record: R,
        pre: &Precondition,
        events: impl FnOnce(&R, Option<&R>) -> Events,
    ) -> Result<(Arc<R>, Vec<Seq>), StoreError> {
        let key = record.key();
        let _key = self.inner.locks.lock(&key).await;
        let _gate = self.healthy_gate().await?;
        let previous = R::cached(&self.inner.cache, &key);
        check(previous.as_deref(), pre, false)?;
        record.stamp(previous.as_deref(), Timestamp::now());
        let bytes = serde_json::to_vec(&record).map_err(StoreError::Encode)?;
        let events = events(&record, previous.as_deref());
        let origin = || {
            Origin::new(
                R::TABLE,
                &key,
                previous.as_ref().and_then(|p| p.etag()),
                record.etag(),
            )
        };
        let _timer = self.inner.observed.write_timer();
        let seqs = self.write_batch(
            Write::Put(R::TABLE, &key, &bytes),
            origin,
            &events,
            previous.as_deref(),
        )?;
        self.settle(&key, previous.as_deref(), &seqs).await?;
        let stored = Arc::new(record);
        R::cache_put(&self.inner.cache, &key, Arc::clone(&stored));
        self.inner.outbox.made_durable(&seqs);
        Ok((stored, seqs))
    }

    async fn delete<R: Record>(&self, key: &str, pre: &Precondition) -> Result<(), StoreError> {
        self.delete_with::<R>(key, pre, |_| Vec::new())
            .await
            .map(|_| ())
    }

    /// Deletes a record and writes the events `events` makes of it (see `write_batch`).
    async fn delete_with<R: Record>(
        &self,
        key: &str,
        pre: &Precondition,
        events: impl FnOnce(&R) -> Events,
    ) -> Result<Vec<Seq>, StoreError> {
        let key = lower(key);
        let _key = self.inner.locks.lock(&key).await;
        let _gate = self.healthy_gate().await?;
        let previous = R::cached(&self.inner.cache, &key);
        check(previous.as_deref(), pre, true)?;
        let events = previous.as_deref().map(events).unwrap_or_default();
        let origin = || {
            Origin::new(
                R::TABLE,
                &key,
                previous.as_ref().and_then(|p| p.etag()),
                None,
            )
        };
        let _timer = self.inner.observed.write_timer();
        let seqs = self.write_batch(
            Write::Remove(R::TABLE, &key),
            origin,
            &events,
            previous.as_deref(),
        )?;
        self.settle(&key, previous.as_deref(), &seqs).await?;
        R::cache_remove(&self.inner.cache, &key);
        self.inner.outbox.made_durable(&seqs);
        Ok(seqs)
    }

    /// Writes one change and its outbox entries (not yet durable): each entry, marked with
    /// the change's `origin`, then the change, one backend write each. The backend keeps a
    /// prefix of its writes across a crash, so a change that survives has its entries, and
    /// `Outbox::load` drops entries whose change was lost (see `outbox.rs`). Not one atomic
    /// batch: sled writes a batch with two extra log buffers, which cost a registration with
    /// the assignment feed about 100 us of dpsd CPU (`docs/performance.md`). If a write
    /// fails after an entry was written, what may have been written is taken back as after a
    /// failed flush; a change without entries is one write, which failing writes nothing.
    fn write_batch<R: Record>(
        &self,
        change: Write<'_>,
        origin: impl FnOnce() -> Origin,
        events: &[Vec<u8>],
        previous: Option<&R>,
    ) -> Result<Vec<Seq>, StoreError> {
        let seqs = self.inner.outbox.reserve(events.len());
        if events.is_empty() {
            self.inner.backend.write(&[change])?;
            return Ok(seqs);
        }
        let origin = origin();
        let entries = seqs
            .iter()
            .zip(events)
            .map(|(seq, event)| Ok((outbox::key(*seq), origin.encode(event)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let written = entries
            .iter()
            .try_for_each(|(key, value)| {
                self.inner
                    .backend
                    .write(&[Write::Put(Table::Outbox, key, value)])
            })
            .and_then(|()| self.inner.backend.write(&[change]));
        if let Err(e) = written {
            let key = match change {
                Write::Put(_, key, _) | Write::Remove(_, key) => key,
            };
            self.undo(key, previous, &seqs);
            return Err(e);
        }
        Ok(seqs)
    }

    /// Admits a write: a shared hold of the gate while the store is healthy. After a failed
    /// flush, first probes with a flush of its own (see `Inner::gate`); refuses with
    /// [`StoreError::Unhealthy`] while that fails.
    async fn healthy_gate(&self) -> Result<RwLockReadGuard<'_, ()>, StoreError> {
        if self.inner.broken.load(Ordering::Acquire) {
            return Err(StoreError::Unhealthy);
        }
        let gate = self.inner.gate.read().await;
        if self.inner.commit.is_healthy() {
            return Ok(gate);
        }
        drop(gate);
        {
            let _exclusive = self.inner.gate.write().await;
            if !self.inner.commit.is_healthy() && !self.inner.broken.load(Ordering::Acquire) {
                if let Err(e) = self.inner.commit.probe().await {
                    tracing::warn!(error = %e, "store still cannot flush; refusing writes");
                    return Err(StoreError::Unhealthy);
                }
                tracing::info!("store flush works again; accepting writes");
            }
        }
        let gate = self.inner.gate.read().await;
        if self.is_healthy() {
            Ok(gate)
        } else {
            Err(StoreError::Unhealthy)
        }
    }

    /// Waits for the flush that covers a backend write of `key` (and of the outbox entries
    /// `seqs` written with it). If it failed, puts `previous` back and removes the entries
    /// (so no later flush makes the refused write durable) and returns the error; the caller
    /// then leaves the cache alone.
    async fn settle<R: Record>(
        &self,
        key: &str,
        previous: Option<&R>,
        seqs: &[Seq],
    ) -> Result<(), StoreError> {
        let Err(e) = self.inner.commit.durable().await else {
            return Ok(());
        };
        self.undo(key, previous, seqs);
        Err(e)
    }

    /// Puts `previous` back as the record `key` and removes the outbox entries `seqs`, in one
    /// atomic batch (rare: after a failed write or flush). If that fails too, the backend may
    /// keep a refused write, and the store refuses writes until it is opened again.
    fn undo<R: Record>(&self, key: &str, previous: Option<&R>, seqs: &[Seq]) {
        let undo = previous
            .map(|p| serde_json::to_vec(p).map_err(StoreError::Encode))
            .transpose()
            .and_then(|bytes| {
                let keys: Vec<String> = seqs.iter().map(|s| outbox::key(*s)).collect();
                let mut batch = vec![match &bytes {
                    Some(bytes) => Write::Put(R::TABLE, key, bytes),
                    None => Write::Remove(R::TABLE, key),
                }];
                batch.extend(keys.iter().map(|k| Write::Remove(Table::Outbox, k)));
                self.inner.backend.write(&batch)
            });
        if let Err(undo) = undo {
            self.inner.broken.store(true, Ordering::Release);
            tracing::error!(
                error = %undo,
                table = R::TABLE.name(),
                "cannot take back a failed write; refusing writes until restart"
            );
        }
    }

    fn query<R: Record>(
        &self,
        page_size: usize,
        continuation: Option<&str>,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Page<Arc<R>>, StoreError> {
        if let Some(token) = continuation {
            if RegistrationId::parse(token).is_err() {
                return Err(StoreError::InvalidContinuation);
            }
        }
        let page_size = page_size.max(1);
        let mut items = Vec::with_capacity(page_size.min(1024));
        let mut more = false;
        let mut last_key = String::new();
        self.inner
            .backend
            .scan(R::TABLE, continuation, &mut |key, _| {
                // Records come from the cache, which agrees with the backend, to skip decoding.
                let Some(record) = R::cached(&self.inner.cache, key) else {
                    return Ok(true);
                };
                if !keep(&record) {
                    return Ok(true);
                }
                if items.len() == page_size {
                    more = true;
                    return Ok(false);
                }
                key.clone_into(&mut last_key);
                items.push(record);
                Ok(true)
            })?;
        Ok(Page {
            items,
            continuation: more.then_some(last_key),
        })
    }
}

/// Checks a precondition against the current record. `deleting`: an absent record is
/// `NotFound` (DELETE of nothing is 404), not a failed precondition.
fn check<R: Record>(
    current: Option<&R>,
    pre: &Precondition,
    deleting: bool,
) -> Result<(), StoreError> {
    match (current, pre) {
        (None, _) if deleting => Err(StoreError::NotFound),
        (Some(_), Precondition::MustNotExist) => Err(StoreError::AlreadyExists),
        (None, Precondition::IfMatch(_)) => Err(StoreError::PreconditionFailed),
        (Some(r), Precondition::IfMatch(header)) => match r.etag() {
            Some(etag) if etag.matches_if_match(header) => Ok(()),
            _ => Err(StoreError::PreconditionFailed),
        },
        _ => Ok(()),
    }
}

fn load<R: Record>(backend: &dyn Backend, cache: &Cache) -> Result<(), StoreError> {
    backend.scan(R::TABLE, None, &mut |key, bytes| {
        let record: R = serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            table: R::TABLE.name(),
            key: key.to_owned(),
            source,
        })?;
        R::cache_put(cache, key, Arc::new(record));
        Ok(true)
    })
}
