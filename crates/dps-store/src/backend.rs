//! The persistence trait and its sled implementation.
//!
//! A backend is a durable ordered key/value map per [`Table`]. Writes may be buffered until
//! [`Backend::flush`] returns, which must make every earlier write survive a crash; the
//! [`crate::Store`] shares one flush between concurrent writers (group commit). A crash keeps
//! a prefix of the writes: one that survives it has every write that returned before it
//! began surviving too (sled recovers its log in order up to the first torn write); the
//! store's outbox relies on this (`outbox.rs`).

use std::path::Path;

use sled::Transactional;

use crate::StoreError;

/// The record kinds, one keyspace each. Keys are lower-case ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Individual enrollments by registration id.
    Enrollments,
    /// Enrollment groups by group id.
    Groups,
    /// Registration records by registration id.
    Registrations,
    /// Events waiting to be published, by sequence number (see `outbox.rs`).
    Outbox,
}

impl Table {
    /// All tables.
    pub const ALL: [Table; 4] = [
        Table::Enrollments,
        Table::Groups,
        Table::Registrations,
        Table::Outbox,
    ];

    /// The table's name (also the sled tree name).
    pub fn name(self) -> &'static str {
        match self {
            Table::Enrollments => "enrollments",
            Table::Groups => "enrollment_groups",
            Table::Registrations => "registrations",
            Table::Outbox => "outbox",
        }
    }
}

/// One change of a [`Backend::write`] batch.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// Create or replace the value of a key.
    Put(Table, &'a str, &'a [u8]),
    /// Remove a key (absent is fine).
    Remove(Table, &'a str),
}

/// Called for each record of a scan, in key order; returns `false` to stop.
pub type Visit<'a> = dyn FnMut(&str, &[u8]) -> Result<bool, StoreError> + 'a;

/// A durable, ordered key/value store with one keyspace per table.
pub trait Backend: Send + Sync + 'static {
    /// Applies every change of the batch or none of them, also across a crash (durable after
    /// the next [`Backend::flush`]).
    fn write(&self, batch: &[Write<'_>]) -> Result<(), StoreError>;
    /// Visits records with keys strictly after `after` (all when `None`) in key order.
    fn scan(
        &self,
        table: Table,
        after: Option<&str>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// sled's page cache: our own cache holds every record, so sled's is only for scans and
/// start-up and can stay small.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long [`SledBackend::open`] waits for another holder of the database lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Pause between attempts to take the lock.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// sled reports a held directory lock as an I/O error whose message says so.
fn is_lock_busy(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// The default backend: an embedded sled database in a directory.
pub struct SledBackend {
    db: sled::Db,
    trees: [sled::Tree; 4],
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`.
    ///
    /// sled holds an exclusive lock on the directory until its last handle and its background
    /// threads are gone, which can be a moment after a previous store in this process was
    /// dropped (or while a previous process is still exiting); opening retries for up to
    /// [`LOCK_WAIT`] before giving up.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(SLED_CACHE_BYTES)
                .open()
            {
                Err(e) if is_lock_busy(&e) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(LOCK_RETRY);
                }
                other => break other?,
            }
        };
        let trees = [
            db.open_tree(Table::Enrollments.name())?,
            db.open_tree(Table::Groups.name())?,
            db.open_tree(Table::Registrations.name())?,
            db.open_tree(Table::Outbox.name())?,
        ];
        Ok(Self { db, trees })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table as usize]
    }
}

impl Backend for SledBackend {
    fn write(&self, batch: &[Write<'_>]) -> Result<(), StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        // One change needs no transaction (the common case: every write without events).
        if let [one] = batch {
            match *one {
                Write::Put(table, key, value) => self.tree(table).insert(key.as_bytes(), value)?,
                Write::Remove(table, key) => self.tree(table).remove(key.as_bytes())?,
            };
            return Ok(());
        }
        let applied = self.trees[..].transaction(|trees| {
            for change in batch {
                match *change {
                    Write::Put(table, key, value) => {
                        trees[table as usize].insert(key.as_bytes(), value)?;
                    }
                    Write::Remove(table, key) => {
                        trees[table as usize].remove(key.as_bytes())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match applied {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => Err(StoreError::Backend(
                "the storage transaction was aborted".into(),
            )),
        }
    }

    fn scan(
        &self,
        table: Table,
        after: Option<&str>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(k) => Bound::Excluded(k.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        for item in self
            .tree(table)
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            let (k, v) = item?;
            let key = std::str::from_utf8(&k).map_err(|e| StoreError::Backend(Box::new(e)))?;
            if !visit(key, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
