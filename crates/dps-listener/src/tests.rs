//! [`serve`] driven by a scripted acceptor under tokio's paused clock: the accept-error policy
//! and the drain, deterministically.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::*;

/// Hands out the scripted results in order, then nothing (pending) forever.
struct Script(VecDeque<io::Result<(u32, SocketAddr)>>);

impl Accept for Script {
    type Stream = u32;

    fn poll_accept(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<(u32, SocketAddr)>> {
        match self.0.pop_front() {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }
}

fn peer(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 40000))
}

fn limits() -> ListenerLimits {
    ListenerLimits {
        max_connections: 8,
        max_connections_per_ip: 8,
        max_unauthenticated_per_ip: 8,
        drain_timeout: Duration::from_secs(5),
    }
}

fn emfile() -> io::Error {
    io::Error::other("too many open files")
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_a_bounded_run_of_accept_failures() {
    let script = (0..MAX_ACCEPT_FAILURES).map(|_| Err(emfile())).collect();
    let counters = ListenerCounters::default();
    let result = serve(
        Script(script),
        limits(),
        counters.clone(),
        std::future::pending(),
        |_: Admitted<u32>| async {},
    )
    .await;
    assert_eq!(result.unwrap_err().to_string(), "too many open files");
    assert_eq!(
        counters.snapshot().accept_errors,
        u64::from(MAX_ACCEPT_FAILURES)
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_or_a_dead_peer_does_not_end_the_run_of_failures_early() {
    // One failure short of giving up, then a connection: the count starts again. Errors about
    // one connection (reset before accept) are not failures of the listener at all.
    let mut script: VecDeque<_> = (1..MAX_ACCEPT_FAILURES).map(|_| Err(emfile())).collect();
    script.push_back(Ok((1, peer(1))));
    script.push_back(Err(io::ErrorKind::ConnectionReset.into()));
    script.extend((1..MAX_ACCEPT_FAILURES).map(|_| Err(emfile())));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&served);
    let task = tokio::spawn(serve(
        Script(script),
        limits(),
        ListenerCounters::default(),
        async move {
            let _ = stopped.await;
        },
        move |_: Admitted<u32>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async {}
        },
    ));
    // Let the script run out (every back-off elapses on the paused clock).
    tokio::time::sleep(MAX_ACCEPT_BACKOFF * 2 * MAX_ACCEPT_FAILURES).await;
    assert!(!task.is_finished(), "the listener gave up too early");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_connections_that_finish_and_aborts_the_rest() {
    let script = [Ok((1, peer(1))), Ok((2, peer(2)))].into_iter().collect();
    let counters = ListenerCounters::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let (finished_tx, mut finished_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let started = Arc::new(tokio::sync::Barrier::new(3));
    let barrier = Arc::clone(&started);
    let task = tokio::spawn(serve(
        Script(script),
        limits(),
        counters.clone(),
        async move {
            let _ = stopped.await;
        },
        move |mut admitted: Admitted<u32>| {
            let finished = finished_tx.clone();
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                if admitted.stream == 1 {
                    // Finishes as soon as the drain starts.
                    admitted.draining.wait().await;
                    assert!(admitted.draining.is_draining());
                    let _ = finished.send(1);
                } else {
                    // Ignores the drain: aborted at the drain timeout.
                    std::future::pending::<()>().await;
                }
                drop(admitted.slot);
            }
        },
    ));
    started.wait().await;
    assert_eq!(counters.snapshot().active, 2);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(finished_rx.recv().await, Some(1));
    assert_eq!(
        finished_rx.recv().await,
        None,
        "the stuck connection was aborted"
    );
    assert_eq!(counters.snapshot().active, 0, "every slot was given back");
}
