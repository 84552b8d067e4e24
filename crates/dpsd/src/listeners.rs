//! The listener tasks of a running service, and the rule that keeps the process honest: a
//! listener that ends before shutdown was asked for (its `serve` returned, with or without an
//! error, or panicked) is reported by [`Listeners::wait`], so `main` can exit non-zero and a
//! supervisor restart the whole process instead of leaving it half alive.

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};

use crate::DpsdError;

/// What a listener task returns: `serve`'s result.
type Served = std::io::Result<()>;

/// Listener tasks that share one shutdown signal.
pub(crate) struct Listeners {
    stop: watch::Sender<bool>,
    tasks: JoinSet<Served>,
    names: HashMap<Id, &'static str>,
}

impl Listeners {
    /// No listeners yet.
    pub(crate) fn new() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// A future that resolves when [`Listeners::shutdown`] is called: the `shutdown`
    /// argument of a `serve` function.
    pub(crate) fn until_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopped.wait_for(|s| *s).await;
        }
    }

    /// Runs `serve` as the listener called `name` (used in logs and errors).
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        serve: impl Future<Output = Served> + Send + 'static,
    ) {
        let id = self.tasks.spawn(serve).id();
        self.names.insert(id, name);
    }

    /// Resolves when a listener ends, with why; never while all of them run. Cancel-safe: a
    /// listener that ends while nobody waits is reported by the next call.
    pub(crate) async fn wait(&mut self) -> DpsdError {
        match self.tasks.join_next_with_id().await {
            Some(ended) => self.ended(ended),
            None => std::future::pending().await,
        }
    }

    /// Signals every listener to stop, waits for all, and returns the first failure.
    pub(crate) async fn shutdown(mut self) -> Result<(), DpsdError> {
        // An error means every receiver is gone: nothing is left to tell.
        let _ = self.stop.send(true);
        let mut first = Ok(());
        while let Some(ended) = self.tasks.join_next_with_id().await {
            let failure = match ended {
                Ok((_, Ok(()))) => continue,
                other => self.ended(other),
            };
            if first.is_ok() {
                first = Err(failure);
            }
        }
        first
    }

    fn ended(&mut self, ended: Result<(Id, Served), JoinError>) -> DpsdError {
        let (id, outcome) = match ended {
            Ok((id, served)) => (id, served.err()),
            Err(e) => (e.id(), Some(std::io::Error::other(e))),
        };
        let listener = self.names.remove(&id).unwrap_or("unnamed");
        match outcome {
            None => DpsdError::ListenerStopped { listener },
            Some(source) => DpsdError::ListenerFailed { listener, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn until_stopped_ok(listeners: &Listeners) -> impl Future<Output = Served> + Send + 'static {
        let stopped = listeners.until_stopped();
        async move {
            stopped.await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_listener_that_returns_early_is_named() {
        let mut l = Listeners::new();
        l.spawn("steady", until_stopped_ok(&l));
        l.spawn("quitter", async { Ok(()) });
        let e = l.wait().await;
        assert!(
            matches!(
                e,
                DpsdError::ListenerStopped {
                    listener: "quitter"
                }
            ),
            "{e:?}"
        );
        l.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_listener_whose_accept_loop_gives_up_is_named_with_the_cause() {
        let mut l = Listeners::new();
        l.spawn("steady", until_stopped_ok(&l));
        l.spawn("broken", async {
            Err(std::io::Error::other("out of files"))
        });
        let e = l.wait().await;
        assert!(
            matches!(&e, DpsdError::ListenerFailed { listener: "broken", source } if source.to_string() == "out of files"),
            "{e:?}"
        );
        assert!(e.to_string().contains("broken"), "{e}");
        l.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_listener_that_panics_is_named() {
        let mut l = Listeners::new();
        l.spawn("steady", until_stopped_ok(&l));
        l.spawn("panicky", async { panic!("listener bug") });
        let e = l.wait().await;
        assert!(
            matches!(&e, DpsdError::ListenerFailed { listener: "panicky", source } if source.to_string().contains("listener bug")),
            "{e:?}"
        );
        l.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn wait_stays_pending_while_every_listener_runs_and_shutdown_stops_them() {
        let mut l = Listeners::new();
        l.spawn("a", until_stopped_ok(&l));
        l.spawn("b", until_stopped_ok(&l));
        tokio::task::yield_now().await;
        tokio::select! {
            biased;
            e = l.wait() => panic!("wait resolved while every listener runs: {e}"),
            () = std::future::ready(()) => {}
        }
        l.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_reports_a_listener_that_fails_while_draining() {
        let mut l = Listeners::new();
        let stopped = l.until_stopped();
        l.spawn("drainer", async move {
            stopped.await;
            Err(std::io::Error::other("drain failed"))
        });
        let e = l.shutdown().await.unwrap_err();
        assert!(
            matches!(
                e,
                DpsdError::ListenerFailed {
                    listener: "drainer",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
