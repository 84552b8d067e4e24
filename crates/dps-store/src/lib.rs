//! Durable storage of enrollments, enrollment groups and registration records, with the
//! in-memory cache that the registration path reads.
//!
//! What it does: [`Store`] writes through a [`Backend`] (sled by default, [`SledBackend`]),
//! waits until the write is durable (one flush shared by all concurrent writers, see
//! `commit.rs`), and keeps a [`Cache`] of every record that is updated in the same call, so
//! after a write returns the two agree. An acknowledged write survives `kill -9`.
//!
//! What it must never do: know about MQTT, HTTP or AMQP, or validate attestation (writers hand
//! it `dps_attest::Prepared` records, which only `dps-attest` can build).
//!
//! Main types: [`Store`], [`Cache`], [`Precondition`], [`Page`], [`RegistrationRecord`],
//! [`Backend`], and the crate's error enum [`StoreError`].

mod backend;
mod cache;
mod commit;
mod error;
mod record;

use std::path::Path;
use std::sync::{Arc, Mutex};

use dps_attest::Prepared;
use dps_types::{
    EnrollmentGroup, EnrollmentGroupId, IndividualEnrollment, RegistrationId, Timestamp,
};

pub use backend::{Backend, SledBackend, Table, Visit};
pub use cache::Cache;
pub use error::StoreError;
pub use record::RegistrationRecord;

use cache::lower;
use commit::GroupCommit;
use record::Record;

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

/// One page of a query and the token for the next one (absent on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The records of this page, in key order.
    pub items: Vec<T>,
    /// Pass this back to get the next page.
    pub continuation: Option<String>,
}

/// Writers to the same key are serialized by one of these locks (chosen by key hash); writers
/// to different keys rarely share one. Held only for the in-memory part of a write, never
/// across the flush.
const WRITE_LOCK_STRIPES: usize = 64;

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
    stripes: Vec<Mutex<()>>,
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
        let commit = GroupCommit::start(Arc::clone(&backend))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let stripes = (0..WRITE_LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                cache,
                commit,
                stripes,
            }),
        })
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

    /// Writes a registration record (new etag) and returns it once durable.
    pub async fn put_registration(
        &self,
        r: RegistrationRecord,
    ) -> Result<Arc<RegistrationRecord>, StoreError> {
        self.put(r, &Precondition::Any).await
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

    fn stripe(&self, key: &str) -> &Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        // The modulo keeps the index below the stripe count, so it fits in usize.
        &self.inner.stripes[(h % WRITE_LOCK_STRIPES as u64) as usize]
    }

    async fn put<R: Record>(
        &self,
        mut record: R,
        pre: &Precondition,
    ) -> Result<Arc<R>, StoreError> {
        let key = record.key();
        let stored = {
            let _guard = self.stripe(&key).lock().map_err(|_| StoreError::Closed)?;
            let previous = R::cached(&self.inner.cache, &key);
            check(previous.as_deref(), pre, false)?;
            record.stamp(previous.as_deref(), Timestamp::now());
            let bytes = serde_json::to_vec(&record).map_err(StoreError::Encode)?;
            self.inner.backend.put(R::TABLE, &key, &bytes)?;
            let stored = Arc::new(record);
            R::cache_put(&self.inner.cache, &key, Arc::clone(&stored));
            stored
        };
        self.inner.commit.durable().await?;
        Ok(stored)
    }

    async fn delete<R: Record>(&self, key: &str, pre: &Precondition) -> Result<(), StoreError> {
        let key = lower(key);
        {
            let _guard = self.stripe(&key).lock().map_err(|_| StoreError::Closed)?;
            let previous = R::cached(&self.inner.cache, &key);
            check(previous.as_deref(), pre, true)?;
            self.inner.backend.remove(R::TABLE, &key)?;
            R::cache_remove(&self.inner.cache, &key);
        }
        self.inner.commit.durable().await
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
