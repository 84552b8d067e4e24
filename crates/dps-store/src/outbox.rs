//! The outbox: events that must leave the process (to the assignment feed's broker), written
//! with the change they describe, so no change is durable without its events and no event is
//! published for a change that was not.
//!
//! The store keeps events opaque (bytes); whoever publishes them decodes them. Entries are
//! keyed by a sequence number, so they are relayed in the order they were written, and are
//! only visible to [`crate::Store::outbox_scan`] once durable.
//!
//! A change and its entries are separate backend writes, the entries first (one atomic sled
//! batch costs two extra log-buffer writes; see `Store::write_batch`). The backend keeps a
//! prefix of its writes across a crash, so a change that survives has its entries. The other
//! way round, a crash can keep entries whose change it lost: each entry starts with its
//! [`Origin`] (the record's key and its etag before and after the change), and
//! [`Outbox::load`] drops an entry whose record is still as it was before the change. One
//! case reads the same: a record created and deleted since, with its creation's entry still
//! unpublished; that entry is dropped too, which leaves the hub as the delete does.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use dps_types::{EnrollmentGroup, Etag, IndividualEnrollment};
use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::{Backend, Cache, RegistrationRecord, StoreError, Table, Write};

/// An outbox entry's sequence number: increasing in the order entries were written.
pub type Seq = u64;

/// The storage key of `seq`: zero-padded, so key order is sequence order.
pub(crate) fn key(seq: Seq) -> String {
    format!("{seq:020}")
}

/// The first byte of an entry that starts with its [`Origin`]. Entries written before origins
/// were kept hold the event alone, and events (JSON) never start with it.
const ORIGIN_TAG: u8 = 0x01;

/// The change an entry's events describe: a record and its etag before and after (absent when
/// there is no record), enough to tell after a crash whether the change was kept.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Origin {
    table: String,
    key: String,
    before: Option<String>,
    after: Option<String>,
}

impl Origin {
    pub(crate) fn new(
        table: Table,
        key: &str,
        before: Option<&Etag>,
        after: Option<&Etag>,
    ) -> Self {
        Self {
            table: table.name().to_owned(),
            key: key.to_owned(),
            before: before.map(|e| e.as_str().to_owned()),
            after: after.map(|e| e.as_str().to_owned()),
        }
    }

    /// The stored value of an entry: the tag, the origin as one line of JSON, the event.
    pub(crate) fn encode(&self, event: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut value = vec![ORIGIN_TAG];
        serde_json::to_writer(&mut value, self).map_err(StoreError::Encode)?;
        value.push(b'\n');
        value.extend_from_slice(event);
        Ok(value)
    }

    /// Whether the record shows the change was lost: it is still as it was before.
    fn lost(&self, cache: &Cache) -> bool {
        let now = current_etag(cache, &self.table, &self.key);
        now.as_deref() != self.after.as_deref() && now.as_deref() == self.before.as_deref()
    }
}

/// Splits a stored value into its origin (absent for entries written without one) and event.
pub(crate) fn decode(value: &[u8]) -> Result<(Option<Origin>, &[u8]), StoreError> {
    let Some(rest) = value.strip_prefix(&[ORIGIN_TAG]) else {
        return Ok((None, value));
    };
    let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (header, event) = rest.split_at(end);
    let origin = serde_json::from_slice(header).map_err(|source| StoreError::Corrupt {
        table: Table::Outbox.name(),
        key: "(an entry's origin)".to_owned(),
        source,
    })?;
    Ok((Some(origin), event.get(1..).unwrap_or_default()))
}

/// The etag of the record `key` of the table named `table`, as the cache holds it.
fn current_etag(cache: &Cache, table: &str, key: &str) -> Option<String> {
    fn etag<R: Record>(cache: &Cache, key: &str) -> Option<String> {
        R::cached(cache, key).and_then(|r| r.etag().map(|e| e.as_str().to_owned()))
    }
    match Table::ALL.into_iter().find(|t| t.name() == table)? {
        Table::Enrollments => etag::<IndividualEnrollment>(cache, key),
        Table::Groups => etag::<EnrollmentGroup>(cache, key),
        Table::Registrations => etag::<RegistrationRecord>(cache, key),
        Table::Outbox => None,
    }
}

/// Which entries exist and are durable, and the next sequence number.
pub(crate) struct Outbox {
    next: AtomicU64,
    durable: Mutex<BTreeSet<Seq>>,
}

impl Outbox {
    /// Reads the entries left by an earlier run, against the records already in `cache`, and
    /// removes those whose change a crash lost.
    pub(crate) fn load(backend: &dyn Backend, cache: &Cache) -> Result<Self, StoreError> {
        let mut durable = BTreeSet::new();
        let mut lost = Vec::new();
        let mut last = None;
        backend.scan(Table::Outbox, None, &mut |k, value| {
            let seq = k
                .parse::<Seq>()
                .map_err(|e| StoreError::Backend(Box::new(e)))?;
            last = Some(seq);
            match decode(value)? {
                (Some(origin), _) if origin.lost(cache) => lost.push(seq),
                _ => {
                    durable.insert(seq);
                }
            }
            Ok(true)
        })?;
        if !lost.is_empty() {
            tracing::warn!(
                entries = lost.len(),
                "dropping outbox entries whose change was lost in a crash"
            );
            remove(backend, &lost)?;
        }
        Ok(Self {
            next: AtomicU64::new(last.map_or(0, |last| last + 1)),
            durable: Mutex::new(durable),
        })
    }

    /// Sequence numbers for `n` new entries.
    pub(crate) fn reserve(&self, n: usize) -> Vec<Seq> {
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        (first..first + n as u64).collect()
    }

    /// The entries' batch was flushed: they may be relayed.
    pub(crate) fn made_durable(&self, seqs: &[Seq]) {
        if seqs.is_empty() {
            return;
        }
        self.set().extend(seqs.iter().copied());
    }

    /// Forgets delivered entries; returns those that were still there.
    pub(crate) fn take(&self, seqs: &[Seq]) -> Vec<Seq> {
        let mut set = self.set();
        seqs.iter().copied().filter(|s| set.remove(s)).collect()
    }

    pub(crate) fn is_durable(&self, seq: Seq) -> bool {
        self.set().contains(&seq)
    }

    pub(crate) fn len(&self) -> usize {
        self.set().len()
    }

    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<Seq>> {
        // The set is only ever changed by whole-statement updates; a panic elsewhere while
        // holding it cannot leave it half-changed, so a poisoned lock is still usable.
        self.durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes entries from the backend, one write each: the removals need not be atomic, and a
/// batch of several would cost what [`crate::Store`]'s writes avoid.
pub(crate) fn remove(backend: &dyn Backend, seqs: &[Seq]) -> Result<(), StoreError> {
    for seq in seqs {
        backend.write(&[Write::Remove(Table::Outbox, &key(*seq))])?;
    }
    Ok(())
}
