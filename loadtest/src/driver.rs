//! The device phase: starts devices as the [`Schedule`] says, never more than `concurrency`
//! at once, collects their outcomes, reports progress, and ends by count, by `duration` (no
//! new device after it, the running ones finish) or at the hard `duration_limit` (devices
//! still running are stopped and counted as unfinished).
//!
//! No coordinated omission: in the open loop each device's latency counts from the time it
//! was *due*, so a device held back by the concurrency cap or a busy tool still pays for the
//! wait; how late devices started is the schedule lag.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::device::{Failure, Timings};
use crate::report::Tally;
use crate::{Config, Schedule};

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
    /// Open loop: the furthest behind schedule a finished device started.
    pub max_lag: Duration,
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
        )?;
        // Only the open loop measures lag.
        if !self.max_lag.is_zero() {
            write!(f, ", max lag {:.1} ms", self.max_lag.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

/// One device's end: how late it started after it was due, and its outcome.
type Finished = (Duration, Result<Timings, Failure>);

/// Runs the devices of `config`; `device(n)` is device `n`'s whole run.
pub(crate) async fn drive<F, Fut>(
    config: &Config,
    device: F,
    mut on_progress: impl FnMut(&Progress),
) -> Tally
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Timings, Failure>> + Send + 'static,
{
    let schedule = config.schedule();
    let open = matches!(schedule, Schedule::Open { .. });
    let mut tally = Tally::new(config.ramp, open);
    tally.started_at = SystemTime::now();
    let start = Instant::now();
    let deadline = tokio::time::sleep(config.duration_limit);
    tokio::pin!(deadline);
    let every = config.progress_every;
    let mut ticker = tokio::time::interval_at(start + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut tasks: JoinSet<Finished> = JoinSet::new();
    let mut next = 0;
    let mut starting = true;
    loop {
        // Start every device that is due and has room; `wake` is when the next one will be.
        let mut wake = None;
        while starting && next < config.devices {
            let now = Instant::now();
            let elapsed = now - start;
            let due = match schedule.due(next) {
                Some(due) => due,
                // Closed loop: a device is due as soon as it has room.
                None => elapsed,
            };
            if config.duration.is_some_and(|end| due >= end) {
                starting = false;
                break;
            }
            if due > elapsed {
                wake = Some(start + due);
                break;
            }
            let allowed = schedule.allowed(elapsed, config.concurrency);
            if tasks.len() >= allowed {
                // A finished device makes room; so does the closed loop's ramp.
                wake = schedule
                    .next_growth(elapsed, allowed)
                    .map(|growth| start + growth);
                break;
            }
            let run = device(next);
            let due_at = start + due;
            tasks.spawn(async move {
                let lag = Instant::now().saturating_duration_since(due_at);
                (lag, run.await)
            });
            next += 1;
            tally.max_in_flight = tally.max_in_flight.max(tasks.len());
        }
        if next == config.devices {
            starting = false;
        }
        if !starting && tasks.is_empty() {
            break;
        }
        // All four are cancel-safe: the deadline and the ticker keep their state, a new
        // wake-up is made each turn, and `join_next` loses no task when another branch wins.
        let wake_at = wake.unwrap_or(start + config.duration_limit);
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
                max_lag: tally.max_lag(),
            }),
            Some(joined) = tasks.join_next() => match joined {
                Ok((lag, outcome)) => tally.record(outcome, lag, start.elapsed()),
                // A panicking device task is a bug in this tool; surface it.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Nothing aborts a task before the loop ends.
                Err(_) => tally.unfinished += 1,
            },
            () = tokio::time::sleep_until(wake_at), if wake.is_some() => {}
        }
    }
    tally.wall = start.elapsed();
    tally.started = next;
    tally.unfinished += tasks.len();
    tally.not_started = not_started(config, &schedule, next);
    tasks.shutdown().await;
    tally
}

/// Devices the run meant to start but did not (the hard limit came first): by count, the
/// rest of `devices`; by duration, those due before its end (the closed loop has no such
/// list: zero).
fn not_started(config: &Config, schedule: &Schedule, started: usize) -> usize {
    match config.duration {
        None => config.devices - started,
        Some(end) => (started..config.devices)
            .take_while(|&k| schedule.due(k).is_some_and(|due| due < end))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::report::{Cleanup, Report};
    use crate::{ApiEndpoint, Loopback, Rate, MAX_DEVICES};

    fn config() -> Config {
        let api = ApiEndpoint::parse("https://127.0.0.1:8443").unwrap();
        let mqtt = Loopback::parse("127.0.0.1:8883").unwrap();
        let mut config = Config::new("data".into(), api, mqtt);
        config.duration_limit = Duration::from_secs(600);
        config
    }

    /// A fake device that takes `took` of (virtual) time and is assigned, noting when it
    /// started.
    fn fake(
        took: Duration,
        starts: &Arc<Mutex<Vec<(usize, Instant)>>>,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = Result<Timings, Failure>> + Send>>
    {
        let starts = starts.clone();
        move |n| {
            let starts = starts.clone();
            Box::pin(async move {
                starts.lock().unwrap().push((n, Instant::now()));
                tokio::time::sleep(took).await;
                Ok(Timings {
                    flow: took,
                    tls: took / 4,
                    polls: 1,
                    throttled: 0,
                })
            })
        }
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    // The tests run on tokio's paused clock: time moves only when every task waits, so the
    // schedule is followed exactly and nothing depends on this machine's speed.

    #[tokio::test(start_paused = true)]
    async fn the_open_loop_starts_devices_on_schedule() {
        let mut config = config();
        config.devices = 400;
        config.rate = Some(Rate::per_sec(200.0).unwrap());
        config.concurrency = 100;
        let starts = Arc::new(Mutex::new(Vec::new()));
        let begin = Instant::now();
        let tally = drive(&config, fake(Duration::from_millis(50), &starts), |_| {}).await;
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), 400);
        for &(n, at) in starts.iter() {
            // Due at n * 5 ms; the paused clock's timers fire on the millisecond.
            let late = ms(at - begin) - n as f64 * 5.0;
            assert!((-0.001..=1.0).contains(&late), "device {n} {late} ms late");
        }
        assert_eq!(
            (tally.assigned, tally.started, tally.not_started),
            (400, 400, 0)
        );
        // Ten in flight at a time: 200/s for 50 ms each.
        assert!(
            (10..=11).contains(&tally.max_in_flight),
            "{}",
            tally.max_in_flight
        );
        let report = Report::new(&config, tally, Cleanup::Kept);
        assert!(report.lag_ms.max <= 1.0, "{report}");
        assert_eq!(report.lag_ms.samples, 400);
        // The last device is assigned at 1995 + 50 ms: 400 in 2.045 s.
        assert!(
            (report.registrations_per_sec - 400.0 / 2.045).abs() < 1.0,
            "{report}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_held_back_by_the_cap_counts_from_its_due_time() {
        // 100/s arrive, 5 at once for 100 ms each serve 50/s: the tool falls behind.
        let mut config = config();
        config.devices = 50;
        config.rate = Some(Rate::per_sec(100.0).unwrap());
        config.concurrency = 5;
        let starts = Arc::new(Mutex::new(Vec::new()));
        let tally = drive(&config, fake(Duration::from_millis(100), &starts), |_| {}).await;
        assert_eq!(tally.max_in_flight, 5);
        assert_eq!(tally.assigned, 50);
        let report = Report::new(&config, tally, Cleanup::Kept);
        // Device k starts at floor(k / 5) * 100 ms, due at k * 10 ms: device 45 is the
        // latest, 900 - 450 = 450 ms behind, and registered 550 ms after it was due.
        assert!((report.lag_ms.max - 450.0).abs() <= 2.0, "{report}");
        assert!((report.flow_ms.max - 550.0).abs() <= 2.0, "{report}");
        // Without the lag the service time is 100 ms: the report does not hide the queue.
        assert!(report.flow_ms.p50 > 200.0, "{report}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_open_loop_ramp_starts_slowly() {
        let mut config = config();
        config.devices = 200;
        config.rate = Some(Rate::per_sec(100.0).unwrap());
        config.ramp = Duration::from_secs(2);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let begin = Instant::now();
        let tally = drive(&config, fake(Duration::from_millis(10), &starts), |_| {}).await;
        assert_eq!(tally.assigned, 200);
        let starts = starts.lock().unwrap();
        let by = |secs: f64| {
            starts
                .iter()
                .filter(|(_, at)| (*at - begin).as_secs_f64() < secs)
                .count()
        };
        // rate * t^2 / (2 * ramp): 25 by 1 s, 100 by 2 s, then 100 more each second.
        assert!((25..=27).contains(&by(1.0)), "{}", by(1.0));
        assert!((100..=102).contains(&by(2.0)), "{}", by(2.0));
        assert_eq!(by(3.1), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn the_closed_loop_ramp_raises_the_concurrency() {
        let mut config = config();
        config.devices = 100;
        config.concurrency = 10;
        config.ramp = Duration::from_secs(1);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let begin = Instant::now();
        let tally = drive(&config, fake(Duration::from_millis(100), &starts), |_| {}).await;
        assert_eq!((tally.assigned, tally.max_in_flight), (100, 10));
        let starts = starts.lock().unwrap();
        let by = |secs: f64| {
            starts
                .iter()
                .filter(|(_, at)| (*at - begin).as_secs_f64() < secs)
                .count()
        };
        // At most ceil(10 t) at once: 1 in the first 100 ms, 10 only after 900 ms.
        assert_eq!(by(0.1), 1);
        assert!(by(0.5) < 20, "{}", by(0.5));
        // Flat out afterwards: 10 per 100 ms.
        assert!(by(1.5) - by(1.0) >= 45, "{} {}", by(1.0), by(1.5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_duration_ends_the_starts_and_the_running_devices_finish() {
        let mut config = config();
        config.devices = MAX_DEVICES;
        config.duration = Some(Duration::from_secs(1));
        config.rate = Some(Rate::per_sec(10.0).unwrap());
        let starts = Arc::new(Mutex::new(Vec::new()));
        let tally = drive(&config, fake(Duration::from_millis(300), &starts), |_| {}).await;
        // Due at 0, 100, ..., 900 ms; the last ones still finish.
        assert_eq!((tally.started, tally.assigned), (10, 10));
        assert_eq!((tally.not_started, tally.unfinished), (0, 0));
        assert!(!tally.timed_out);

        // Closed loop: 2 at once for 100 ms each, for a second.
        config.rate = None;
        config.concurrency = 2;
        let tally = drive(&config, fake(Duration::from_millis(100), &starts), |_| {}).await;
        assert!((20..=22).contains(&tally.started), "{}", tally.started);
        assert_eq!(tally.assigned, tally.started);
        assert_eq!(tally.not_started, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hard_limit_stops_the_run_and_counts_what_is_left() {
        let mut config = config();
        config.devices = 100;
        config.rate = Some(Rate::per_sec(10.0).unwrap());
        config.duration_limit = Duration::from_millis(950);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let mut seen = Vec::new();
        config.progress_every = Duration::from_millis(400);
        let tally = drive(&config, fake(Duration::from_secs(60), &starts), |p| {
            seen.push(*p)
        })
        .await;
        assert!(tally.timed_out);
        assert_eq!((tally.started, tally.unfinished), (10, 10));
        assert_eq!((tally.assigned, tally.not_started), (0, 90));
        // Progress at 400 and 800 ms, with the devices in flight.
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].started, seen[0].in_flight), (4, 4));
        assert_eq!(seen[1].started, 8);
    }
}
