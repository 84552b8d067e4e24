//! When devices start, as plain functions of the time since the start (no clock inside, so
//! the tests need no waiting):
//!
//! - **open loop**: a target arrival [`Rate`]; device `k` is due when the cumulative arrivals
//!   reach `k`, so at `k / rate` without a ramp. A ramp grows the rate linearly from zero to the
//!   target: the arrivals by time `t < ramp` are `rate * t^2 / (2 * ramp)`.
//! - **closed loop**: a number of devices at once; a ramp grows it linearly from one to the
//!   target.

use std::time::Duration;

use crate::LoadError;

/// Highest arrival rate: far above what one dpsd on this machine registers (thousands per
/// second), low enough that the schedule's arithmetic stays exact to the microsecond.
pub const MAX_RATE: f64 = 100_000.0;
/// Lowest arrival rate: one device a minute.
const MIN_RATE: f64 = 1.0 / 60.0;

/// A target arrival rate, devices per second, within `MIN_RATE..=`[`MAX_RATE`].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Rate(f64);

impl Rate {
    /// A rate in devices per second.
    pub fn per_sec(rate: f64) -> Result<Self, LoadError> {
        if rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate) {
            Ok(Self(rate))
        } else {
            Err(LoadError::Invalid {
                setting: "--rate",
                why: format!("must be one a minute (0.017/s) to {MAX_RATE}/s"),
            })
        }
    }

    /// `200`, `200/s`, `0.5/s` or `600/m`.
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        let (number, per) = match text.split_once('/') {
            Some((number, "s")) => (number, 1.0),
            Some((number, "m")) => (number, 60.0),
            Some(_) => {
                return Err(LoadError::Invalid {
                    setting: "--rate",
                    why: format!("{text:?}: the unit must be /s or /m"),
                })
            }
            None => (text, 1.0),
        };
        let value: f64 = number.parse().map_err(|_| LoadError::Invalid {
            setting: "--rate",
            why: format!("{text:?} is not a number of devices per second, e.g. 200/s"),
        })?;
        Self::per_sec(value / per)
    }

    /// Devices per second.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

/// How devices are started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// A target arrival rate; the concurrency is only a safety cap.
    Open {
        /// The target rate (reached at the end of the ramp).
        rate: Rate,
        /// Linear growth of the rate from zero; zero for none.
        ramp: Duration,
    },
    /// A number of devices at once.
    Closed {
        /// Devices at once (reached at the end of the ramp).
        concurrency: usize,
        /// Linear growth of the concurrency from one; zero for none.
        ramp: Duration,
    },
}

impl Schedule {
    /// Open loop: when device `k` (0-based) is due, from the start. Closed loop: `None`.
    pub fn due(&self, k: usize) -> Option<Duration> {
        let Schedule::Open { rate, ramp } = *self else {
            return None;
        };
        let (rate, ramp, k) = (rate.get(), ramp.as_secs_f64(), k as f64);
        // Arrivals during the ramp: rate * ramp / 2.
        let in_ramp = rate * ramp / 2.0;
        let secs = if k < in_ramp {
            (2.0 * k * ramp / rate).sqrt()
        } else {
            ramp + (k - in_ramp) / rate
        };
        Some(Duration::from_secs_f64(secs))
    }

    /// How many devices may run at once `elapsed` after the start: the closed loop's
    /// concurrency on its ramp; the open loop's `cap` (the ramp is in the arrivals).
    pub fn allowed(&self, elapsed: Duration, cap: usize) -> usize {
        match *self {
            Schedule::Closed { concurrency, ramp } if elapsed < ramp => {
                let share = elapsed.as_secs_f64() / ramp.as_secs_f64();
                ((concurrency as f64 * share).ceil() as usize).clamp(1, concurrency)
            }
            Schedule::Closed { concurrency, .. } => concurrency.min(cap),
            Schedule::Open { .. } => cap,
        }
    }

    /// Closed loop on its ramp: when [`Schedule::allowed`] next grows past `now_allowed`.
    /// `None` after the ramp and in the open loop.
    pub fn next_growth(&self, elapsed: Duration, now_allowed: usize) -> Option<Duration> {
        match *self {
            Schedule::Closed { concurrency, ramp } if elapsed < ramp => {
                // `allowed` is `ceil(concurrency * t / ramp)`: it passes `now_allowed` just
                // after `t = now_allowed * ramp / concurrency`.
                let at = ramp.mul_f64(now_allowed as f64 / concurrency as f64);
                Some(at.max(elapsed) + Duration::from_micros(1))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(rate: f64, ramp_secs: u64) -> Schedule {
        Schedule::Open {
            rate: Rate::per_sec(rate).unwrap(),
            ramp: Duration::from_secs(ramp_secs),
        }
    }

    fn close_to(actual: Option<Duration>, expected_ms: f64) -> bool {
        actual.is_some_and(|d| (d.as_secs_f64() * 1000.0 - expected_ms).abs() < 0.01)
    }

    #[test]
    fn rates_parse_and_are_bounded() {
        assert_eq!(Rate::parse("200").unwrap().get(), 200.0);
        assert_eq!(Rate::parse("200/s").unwrap().get(), 200.0);
        assert_eq!(Rate::parse("0.5/s").unwrap().get(), 0.5);
        assert_eq!(Rate::parse("600/m").unwrap().get(), 10.0);
        for bad in [
            "", "0", "-5/s", "nan", "inf", "1e9", "200/h", "200 /s", "fast", "0.001/s",
        ] {
            assert!(
                matches!(Rate::parse(bad), Err(LoadError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn without_a_ramp_device_k_is_due_at_k_over_the_rate() {
        let s = open(200.0, 0);
        assert!(close_to(s.due(0), 0.0));
        assert!(close_to(s.due(1), 5.0));
        assert!(close_to(s.due(400), 2000.0));
        assert!(close_to(s.due(1_000_000), 5_000_000.0));
    }

    #[test]
    fn a_ramp_grows_the_rate_linearly_then_holds_it() {
        // 100/s after a 2 s ramp: 100 devices arrive during the ramp.
        let s = open(100.0, 2);
        assert!(close_to(s.due(0), 0.0));
        // rate * t^2 / (2 * ramp) = 25 at t = 1 s: a quarter of the ramp's arrivals by half-way.
        assert!(close_to(s.due(25), 1000.0));
        assert!(close_to(s.due(100), 2000.0));
        assert!(close_to(s.due(200), 3000.0));
        // Gaps shrink during the ramp and are 1/rate after it.
        let gap = |k| s.due(k + 1).unwrap() - s.due(k).unwrap();
        assert!(gap(10) > gap(50) && gap(50) > gap(99));
        assert!(close_to(Some(gap(150)), 10.0));
    }

    #[test]
    fn the_closed_loop_ramp_raises_the_concurrency_to_its_target() {
        let s = Schedule::Closed {
            concurrency: 10,
            ramp: Duration::from_secs(1),
        };
        let ms = Duration::from_millis;
        assert_eq!(s.allowed(ms(0), 64), 1);
        assert_eq!(s.allowed(ms(50), 64), 1);
        assert_eq!(s.allowed(ms(150), 64), 2);
        assert_eq!(s.allowed(ms(990), 64), 10);
        assert_eq!(s.allowed(ms(5000), 64), 10);
        let next = s.next_growth(ms(150), 2).unwrap();
        assert!(next > ms(200) && next < ms(201), "{next:?}");
        assert_eq!(s.allowed(next, 64), 3);
        assert_eq!(s.next_growth(ms(1000), 10), None);
        // Without a ramp, and in the open loop, the cap holds from the start.
        let flat = Schedule::Closed {
            concurrency: 10,
            ramp: Duration::ZERO,
        };
        assert_eq!(flat.allowed(ms(0), 64), 10);
        assert_eq!(open(100.0, 2).allowed(ms(0), 64), 64);
        assert_eq!(open(100.0, 2).next_growth(ms(0), 64), None);
        assert_eq!(flat.due(0), None);
    }
}
