//! [`KeyLocks`]: one async lock per key, held across awaits (a durable flush, a webhook call),
//! whose memory goes away with its last user.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Async mutual exclusion per key: two holders of one key run one after the other, holders of
/// different keys never wait for each other.
///
/// A lock exists only while someone holds or awaits it, so memory is bounded by the callers in
/// progress (each caller bounds its own concurrency), not by the number of keys ever locked.
/// Chosen over a fixed set of striped locks because a holder may wait long (a webhook call of
/// up to its timeout), and unrelated keys sharing a stripe would wait that long too.
#[derive(Default)]
pub struct KeyLocks {
    locks: DashMap<Box<str>, Arc<Mutex<()>>, ahash::RandomState>,
}

/// Holds one key's lock; dropping it releases the lock (and its memory, when nobody waits).
#[must_use = "the lock is released when the guard is dropped"]
pub struct KeyGuard<'a> {
    // Field order matters: the guard is released before the entry is cleaned up.
    _guard: OwnedMutexGuard<()>,
    _entry: Entry<'a>,
}

/// Removes the key's lock from the map when its last user is gone (also when a `lock` call
/// is cancelled while waiting).
struct Entry<'a> {
    locks: &'a KeyLocks,
    key: Box<str>,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        // The map holds one reference; more means another holder or waiter. Both this check
        // and the clone in `lock` run under the shard's lock, so neither can slip between.
        self.locks
            .locks
            .remove_if(&self.key, |_, lock| Arc::strong_count(lock) == 1);
    }
}

impl KeyLocks {
    /// No locks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for and takes the lock of `key` (compared exactly; callers normalise case).
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let entry = Entry {
            locks: self,
            key: key.into(),
        };
        let lock = Arc::clone(self.locks.entry(entry.key.clone()).or_default().value());
        let guard = lock.lock_owned().await;
        KeyGuard {
            _guard: guard,
            _entry: entry,
        }
    }

    /// Keys whose lock is held or awaited right now.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    /// Whether no lock is held or awaited.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lock_is_exclusive_per_key_and_forgotten_when_released() {
        let locks = KeyLocks::new();
        let a = locks.lock("a").await;
        let b = locks.lock("b").await;
        assert_eq!(locks.len(), 2);
        let waiting = locks.lock("a");
        tokio::pin!(waiting);
        assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        drop(a);
        let again = waiting.await;
        drop(again);
        drop(b);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_nothing_behind() {
        let locks = KeyLocks::new();
        let held = locks.lock("a").await;
        {
            let waiting = locks.lock("a");
            tokio::pin!(waiting);
            assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        }
        drop(held);
        assert!(locks.is_empty());
    }

    /// Polls a future once; `None` when it is pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
        let mut fut = fut;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
