//! What the store reports about its own work, for the metrics: how long durable writes take,
//! how long each group-commit flush takes and how many writers it served. The store calls a
//! [`StoreObserver`] given once with [`crate::Store::observe`]; without one nothing is
//! measured.

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Receives the store's timings. Called on the writers' tasks and on the flusher thread:
/// implementations must be cheap and never block.
pub trait StoreObserver: Send + Sync + Debug + 'static {
    /// A write or delete reached the backend and ended (durable, or refused after a failed
    /// flush) `elapsed` after its backend write started; the wait for the key's lock is not
    /// included.
    fn write_done(&self, elapsed: Duration);
    /// One flush took `elapsed` and covered the writes of `batch` waiting writers.
    fn flush_done(&self, elapsed: Duration, batch: usize);
}

/// The observer, once set; shared by the store and its flusher thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed(Arc<OnceLock<Arc<dyn StoreObserver>>>);

impl Observed {
    /// Sets the observer; false if one was set before (it stays).
    pub(crate) fn set(&self, observer: Arc<dyn StoreObserver>) -> bool {
        self.0.set(observer).is_ok()
    }

    pub(crate) fn flush_done(&self, elapsed: Duration, batch: usize) {
        if let Some(o) = self.0.get() {
            o.flush_done(elapsed, batch);
        }
    }

    /// Times a write from now until the returned guard is dropped (whatever path it returns
    /// by).
    pub(crate) fn write_timer(&self) -> WriteTimer<'_> {
        WriteTimer {
            observed: self,
            started: Instant::now(),
        }
    }
}

/// Reports a write's duration when dropped.
pub(crate) struct WriteTimer<'a> {
    observed: &'a Observed,
    started: Instant,
}

impl Drop for WriteTimer<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.observed.0.get() {
            o.write_done(self.started.elapsed());
        }
    }
}
