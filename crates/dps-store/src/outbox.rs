//! The outbox: events that must leave the process (to the assignment feed's broker), written
//! in the same atomic batch as the change they describe, so no change is durable without its
//! events and no event is published for a change that was not.
//!
//! The store keeps events opaque (bytes); whoever publishes them decodes them. Entries are
//! keyed by a sequence number, so they are relayed in the order they were written, and are
//! only visible to [`crate::Store::outbox_scan`] once durable.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::{Backend, StoreError, Table};

/// An outbox entry's sequence number: increasing in the order entries were written.
pub type Seq = u64;

/// The storage key of `seq`: zero-padded, so key order is sequence order.
pub(crate) fn key(seq: Seq) -> String {
    format!("{seq:020}")
}

/// Which entries exist and are durable, and the next sequence number.
pub(crate) struct Outbox {
    next: AtomicU64,
    durable: Mutex<BTreeSet<Seq>>,
}

impl Outbox {
    /// Reads the entries left by an earlier run.
    pub(crate) fn load(backend: &dyn Backend) -> Result<Self, StoreError> {
        let mut durable = BTreeSet::new();
        backend.scan(Table::Outbox, None, &mut |k, _| {
            let seq = k
                .parse::<Seq>()
                .map_err(|e| StoreError::Backend(Box::new(e)))?;
            durable.insert(seq);
            Ok(true)
        })?;
        let next = durable.last().map_or(0, |last| last + 1);
        Ok(Self {
            next: AtomicU64::new(next),
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
