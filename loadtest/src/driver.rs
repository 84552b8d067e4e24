//! The device phase: starts devices until `devices` have started, never more than
//! `concurrency` at once, collects their outcomes, reports progress, and ends at the duration
//! limit (devices still running are stopped and counted as unfinished).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::device::{self, DeviceContext};
use crate::report::Tally;
use crate::Config;

/// A progress snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Since the first device started.
    pub elapsed: Duration,
    /// Devices started so far.
    pub started: usize,
    /// Devices assigned so far.
    pub assigned: usize,
    /// Devices failed so far.
    pub failed: usize,
    /// Devices running now.
    pub in_flight: usize,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.assigned as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "[{secs:6.1}s] started {} assigned {} failed {} in flight {} ({rate:.0}/s)",
            self.started, self.assigned, self.failed, self.in_flight
        )
    }
}

/// Runs the devices of `config` with `context`.
pub(crate) async fn drive(
    context: Arc<DeviceContext>,
    config: &Config,
    mut on_progress: impl FnMut(&Progress),
) -> Tally {
    let start = Instant::now();
    let deadline = tokio::time::sleep(config.duration_limit);
    tokio::pin!(deadline);
    let every = config.progress_every;
    let mut ticker = tokio::time::interval_at((start + every).into(), every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut tasks = JoinSet::new();
    let mut tally = Tally::with_capacity(config.devices);
    let mut next = 0;
    loop {
        while next < config.devices && tasks.len() < config.concurrency {
            let context = context.clone();
            let n = next;
            tasks.spawn(async move { device::run(&context, n).await });
            next += 1;
        }
        if tasks.is_empty() {
            break;
        }
        // All three are cancel-safe: the deadline and the ticker keep their state, and
        // `join_next` loses no task when another branch wins.
        tokio::select! {
            biased;
            () = &mut deadline => {
                tally.timed_out = true;
                break;
            }
            _ = ticker.tick() => on_progress(&Progress {
                elapsed: start.elapsed(),
                started: next,
                assigned: tally.assigned,
                failed: tally.failed,
                in_flight: tasks.len(),
            }),
            Some(joined) = tasks.join_next() => match joined {
                Ok((_kind, outcome)) => tally.record(outcome),
                // A panicking device task is a bug in this tool; surface it.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Nothing aborts a task before the loop ends.
                Err(_) => tally.unfinished += 1,
            },
        }
    }
    tally.wall = start.elapsed();
    tally.started = next;
    tally.unfinished += tasks.len();
    tasks.shutdown().await;
    tally
}
