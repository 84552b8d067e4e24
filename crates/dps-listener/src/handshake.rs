//! How the frontends' TLS handshakes end, counted with the listener's other counters so one
//! handle per listener carries everything an operator watches about its connections. The
//! frontend runs the handshake (this crate speaks no TLS) under
//! [`ListenerCounters::timed_handshake`], or reports one it ran itself with
//! [`ListenerCounters::handshake`]; the duration of a completed one goes to the listener's
//! [`HandshakeTimer`], if it has one (the metrics histogram).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::error::Elapsed;

use crate::slots::bump;
use crate::ListenerCounters;

/// How a TLS handshake ended. Its [`Handshake::label`] is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed.
    Done,
    /// Failed: a bad certificate, a protocol error, the peer closed.
    Failed,
    /// Cut by the frontend's handshake timeout.
    TimedOut,
}

impl Handshake {
    /// Every outcome, for pre-registering metric series.
    pub const ALL: [Handshake; 3] = [Handshake::Done, Handshake::Failed, Handshake::TimedOut];

    /// Stable metric label.
    pub fn label(self) -> &'static str {
        match self {
            Handshake::Done => "ok",
            Handshake::Failed => "failed",
            Handshake::TimedOut => "timeout",
        }
    }
}

/// Receives the duration of every completed handshake of one listener. Called on the
/// connection's task: implementations must be cheap and never block.
pub trait HandshakeTimer: Send + Sync + Debug + 'static {
    /// A handshake completed `elapsed` after it started.
    fn handshake_done(&self, elapsed: Duration);
}

impl ListenerCounters {
    /// Counters that also time completed handshakes with `timer`.
    pub fn with_handshake_timer(mut self, timer: Arc<dyn HandshakeTimer>) -> Self {
        self.handshake_timer = Some(timer);
        self
    }

    /// Runs `handshake` (the frontend's TLS accept) under `timeout`, and counts how it ended
    /// and how long a completed one took. Dropped before it ends, it counts nothing.
    pub async fn timed_handshake<T, E>(
        &self,
        timeout: Duration,
        handshake: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, Elapsed> {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(timeout, handshake).await;
        let outcome = match &result {
            Ok(Ok(_)) => Handshake::Done,
            Ok(Err(_)) => Handshake::Failed,
            Err(_) => Handshake::TimedOut,
        };
        self.handshake(outcome, started.elapsed());
        result
    }

    /// Counts a handshake that ended `elapsed` after it started.
    pub fn handshake(&self, outcome: Handshake, elapsed: Duration) {
        let c = &self.inner;
        match outcome {
            Handshake::Done => {
                bump(&c.handshakes_done);
                if let Some(timer) = &self.handshake_timer {
                    timer.handshake_done(elapsed);
                }
            }
            Handshake::Failed => bump(&c.handshakes_failed),
            Handshake::TimedOut => bump(&c.handshakes_timed_out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Record(Mutex<Vec<Duration>>);

    impl HandshakeTimer for Record {
        fn handshake_done(&self, elapsed: Duration) {
            self.0.lock().unwrap().push(elapsed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_handshake_is_counted_by_how_it_ends() {
        let record = Arc::new(Record::default());
        let counters = ListenerCounters::default().with_handshake_timer(record.clone());
        let limit = Duration::from_secs(10);
        let done = counters.timed_handshake(limit, async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok::<_, ()>(())
        });
        assert_eq!(done.await, Ok(Ok(())));
        let failed = counters.timed_handshake(limit, async { Err::<(), _>("bad certificate") });
        assert_eq!(failed.await, Ok(Err("bad certificate")));
        let stuck = counters.timed_handshake(limit, std::future::pending::<Result<(), ()>>());
        assert!(stuck.await.is_err());
        let stats = counters.snapshot();
        assert_eq!(
            (stats.tls_handshakes, stats.tls_failures, stats.tls_timeouts),
            (1, 1, 1)
        );
        assert_eq!(*record.0.lock().unwrap(), [Duration::from_millis(3)]);
    }

    #[test]
    fn outcomes_are_counted_and_only_completed_handshakes_timed() {
        let record = Arc::new(Record::default());
        let counters = ListenerCounters::default().with_handshake_timer(record.clone());
        let clone = counters.clone();
        clone.handshake(Handshake::Done, Duration::from_millis(3));
        clone.handshake(Handshake::Failed, Duration::from_millis(5));
        clone.handshake(Handshake::TimedOut, Duration::from_secs(10));
        clone.handshake(Handshake::Done, Duration::from_millis(7));
        let stats = counters.snapshot();
        assert_eq!(
            (stats.tls_handshakes, stats.tls_failures, stats.tls_timeouts),
            (2, 1, 1)
        );
        assert_eq!(
            *record.0.lock().unwrap(),
            [Duration::from_millis(3), Duration::from_millis(7)]
        );
    }
}
