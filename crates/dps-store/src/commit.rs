//! Group commit: writers that finished their (buffered) write wait here for a flush that
//! started after it. One thread flushes for everybody who is waiting, so N concurrent writers
//! cost about one fsync, not N.

use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

use crate::backend::Backend;
use crate::StoreError;

/// What a waiter learns: the flush worked, or the text of why not (errors are not `Clone`).
type FlushResult = Result<(), String>;

struct Queue {
    waiters: Vec<oneshot::Sender<FlushResult>>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// Handle to the flusher thread; the thread stops when the last handle is dropped.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `backend`.
    pub(crate) fn start(backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiters: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dps-store-flush".into())
            .spawn(move || flush_loop(&worker, &*backend))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Waits until every write made before this call is durable.
    pub(crate) async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.queue.lock().map_err(|_| StoreError::Closed)?;
            if q.closed {
                return Err(StoreError::Closed);
            }
            q.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(StoreError::Backend(why.into())),
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

fn flush_loop(shared: &Shared, backend: &dyn Backend) {
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
        // Every waiter in `batch` registered after its write, so this flush covers it.
        let result = backend.flush().map_err(|e| {
            tracing::error!(error = %e, "store flush failed");
            e.to_string()
        });
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}
