//! Group commit: writers that finished their (buffered) write wait here for a flush that
//! started after it. One thread flushes for everybody who is waiting, so N concurrent writers
//! cost about one fsync, not N.
//!
//! A failed flush leaves the store unhealthy: every waiter of that flush, and of every batch
//! after it, fails without flushing, until a probe ([`GroupCommit::probe`]) flushes
//! successfully. The store probes only once every write of the failed batches has been undone,
//! so no flush ever makes a refused write durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::backend::Backend;
use crate::observer::Observed;
use crate::StoreError;

/// Why a waiter's writes are not durable.
#[derive(Debug, Clone)]
enum FlushFailure {
    /// This batch's flush failed: the text of why (errors are not `Clone`).
    Failed(String),
    /// The store is unhealthy after an earlier failed flush; nothing was flushed.
    Refused,
}

/// What a waiter learns.
type FlushResult = Result<(), FlushFailure>;

/// One writer waiting for a flush; a probe is flushed even while the store is unhealthy.
struct Waiter {
    done: oneshot::Sender<FlushResult>,
    probe: bool,
}

struct Queue {
    waiters: Vec<Waiter>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// False from a failed flush until a probe flushes successfully.
    healthy: AtomicBool,
}

/// Handle to the flusher thread; the thread stops when the last handle is dropped.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `backend`, reporting each flush to `observed`.
    pub(crate) fn start(backend: Arc<dyn Backend>, observed: Observed) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiters: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            healthy: AtomicBool::new(true),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dps-store-flush".into())
            .spawn(move || flush_loop(&worker, &*backend, &observed))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Waits until every write made before this call is durable. Fails without flushing
    /// while the store is unhealthy.
    pub(crate) async fn durable(&self) -> Result<(), StoreError> {
        self.wait(false).await
    }

    /// Flushes even though the store is unhealthy, and makes it healthy again if that worked.
    /// The caller guarantees that no write of a failed batch is still in the backend.
    pub(crate) async fn probe(&self) -> Result<(), StoreError> {
        self.wait(true).await
    }

    /// Whether the last flush worked (writes are accepted).
    pub(crate) fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    async fn wait(&self, probe: bool) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        {
            let mut q = self.shared.queue.lock().map_err(|_| StoreError::Closed)?;
            if q.closed {
                return Err(StoreError::Closed);
            }
            q.waiters.push(Waiter { done, probe });
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(FlushFailure::Failed(why))) => Err(StoreError::Backend(why.into())),
            Ok(Err(FlushFailure::Refused)) => Err(StoreError::Unhealthy),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.wake.notify_one();
        // Joining releases the thread's backend handle, so the database can be reopened as
        // soon as the store is dropped.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flush_loop(shared: &Shared, backend: &dyn Backend, observed: &Observed) {
    loop {
        let batch = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            while q.waiters.is_empty() && !q.closed {
                q = match shared.wake.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            if q.waiters.is_empty() {
                // Closed and nothing pending.
                let _ = backend.flush();
                return;
            }
            std::mem::take(&mut q.waiters)
        };
        let probing = batch.iter().any(|w| w.probe);
        let result = if shared.healthy.load(Ordering::Acquire) || probing {
            // Every waiter in `batch` registered after its write, so this flush covers it.
            let started = Instant::now();
            let flushed = backend.flush();
            observed.flush_done(started.elapsed(), batch.len());
            match flushed {
                Ok(()) => {
                    shared.healthy.store(true, Ordering::Release);
                    Ok(())
                }
                Err(e) => {
                    // Unhealthy before anyone learns of the failure, so no writer that hears
                    // of it can start a write that a later flush would make durable.
                    shared.healthy.store(false, Ordering::Release);
                    tracing::error!(error = %e, "store flush failed; refusing writes");
                    Err(FlushFailure::Failed(e.to_string()))
                }
            }
        } else {
            Err(FlushFailure::Refused)
        };
        for waiter in batch {
            let _ = waiter.done.send(result.clone());
        }
    }
}
