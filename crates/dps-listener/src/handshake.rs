//! How the frontends' TLS handshakes end, counted with the listener's other counters so one
//! handle per listener carries everything an operator watches about its connections. The
//! frontend runs the handshake (this crate speaks no TLS) and reports it with
//! [`ListenerCounters::handshake`]; the duration of a completed one goes to the listener's
//! [`HandshakeTimer`], if it has one (the metrics histogram).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

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
