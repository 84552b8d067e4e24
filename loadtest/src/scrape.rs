//! Scraping dpsd's metrics endpoint during the device phase (`--scrape URL --scrape-every
//! 1s`), as Prometheus would, so that one pair of runs measures registrations per second with
//! and without scraping. Reports how many scrapes were made, their latency and errors.
//!
//! Bounded like the rest of the tool: loopback `http://` only, one request at a time, each
//! under a timeout, bodies read up to [`MAX_BODY`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::report::Percentiles;
use crate::target::Loopback;
use crate::LoadError;

/// Largest metrics page read (dpsd's is tens of KiB).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Shortest interval: scraping faster than this measures the scraper, not the server.
pub const MIN_EVERY: Duration = Duration::from_millis(100);

/// A metrics URL on loopback: `http://HOST:PORT/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeUrl {
    addr: Loopback,
    path: String,
}

impl ScrapeUrl {
    /// Parses `http://HOST:PORT[/path]`, HOST a loopback IP literal or `localhost`.
    pub fn parse(url: &str) -> Result<Self, LoadError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| LoadError::BadTarget {
                target: url.to_owned(),
                why: "the metrics URL must start with http://",
            })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/metrics"),
        };
        let addr = Loopback::parse(authority).map_err(|e| match e {
            LoadError::NotLoopback { .. } => LoadError::NotLoopback {
                target: url.to_owned(),
            },
            other => other,
        })?;
        Ok(Self {
            addr,
            path: path.to_owned(),
        })
    }

    /// The URL requested (the address as an IP literal: nothing is looked up).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

/// What the scrapes of one device phase did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrapeReport {
    /// The URL scraped.
    pub url: String,
    /// The interval, milliseconds.
    pub every_ms: u64,
    /// Scrapes answered 200 with a whole body.
    pub ok: u64,
    /// The others, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Latency of the good ones (request to last byte).
    pub latency_ms: Percentiles,
    /// Size of the last page read.
    pub last_bytes: usize,
}

impl std::fmt::Display for ScrapeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency_ms;
        write!(
            f,
            "scrapes     {} ok every {} ms from {} ({} bytes); latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
            self.ok, self.every_ms, self.url, self.last_bytes, l.p50, l.p90, l.p99, l.max
        )?;
        if !self.errors.is_empty() {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            write!(f, "; errors {}", kinds.join(", "))?;
        }
        writeln!(f)
    }
}

/// A running scraper; [`Scraper::stop`] ends it, [`Scraper::finish`] collects its report.
pub struct Scraper {
    stop: watch::Sender<bool>,
    task: JoinHandle<ScrapeReport>,
}

impl Scraper {
    /// Starts scraping `url` every `every` (the first one at once), each under `timeout`.
    pub fn start(url: &ScrapeUrl, every: Duration, timeout: Duration) -> Result<Self, LoadError> {
        if every < MIN_EVERY {
            return Err(LoadError::Invalid {
                setting: "--scrape-every",
                why: format!("must be at least {MIN_EVERY:?}"),
            });
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|source| LoadError::Http {
                operation: "metrics client setup",
                source,
            })?;
        let (stop, mut stopped) = watch::channel(false);
        let mut report = ScrapeReport {
            url: url.url(),
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            ..ScrapeReport::default()
        };
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut latencies = crate::report::histogram();
            // The interval's first tick is now: the first scrape happens however short the
            // phase, the next ones every `every` until stopped.
            ticker.tick().await;
            loop {
                let began = Instant::now();
                match scrape_once(&http, &report.url).await {
                    Ok(bytes) => {
                        report.ok += 1;
                        report.last_bytes = bytes;
                        latencies.saturating_record(crate::report::micros(began.elapsed()));
                    }
                    Err(why) => *report.errors.entry(why).or_default() += 1,
                }
                // Both cancel-safe: `changed` and `tick` lose nothing when the other wins.
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    _ = ticker.tick() => {}
                }
            }
            report.latency_ms = Percentiles::of(&latencies);
            report
        });
        Ok(Self { stop, task })
    }

    /// Stops scraping (a scrape in progress completes).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops and returns the report.
    pub async fn finish(self) -> ScrapeReport {
        self.stop();
        match self.task.await {
            Ok(report) => report,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => ScrapeReport::default(),
        }
    }
}

/// One GET; the body's length, or why it failed (a bounded label).
async fn scrape_once(http: &reqwest::Client, url: &str) -> Result<usize, String> {
    let mut response = http
        .get(url)
        .send()
        .await
        .map_err(|e| if e.is_timeout() { "timeout" } else { "connect" }.to_owned())?;
    if !response.status().is_success() {
        return Err(format!("status-{}", response.status().as_u16()));
    }
    let mut len = 0usize;
    while let Some(chunk) = response.chunk().await.map_err(|_| "body".to_owned())? {
        len += chunk.len();
        if len > MAX_BODY {
            return Err("too-long".to_owned());
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls_must_be_plain_http_on_loopback() {
        let url = ScrapeUrl::parse("http://127.0.0.1:9464/metrics").unwrap();
        assert_eq!(url.url(), "http://127.0.0.1:9464/metrics");
        assert_eq!(
            ScrapeUrl::parse("http://localhost:9464").unwrap().url(),
            "http://127.0.0.1:9464/metrics"
        );
        assert!(matches!(
            ScrapeUrl::parse("http://10.0.0.1:9464/metrics"),
            Err(LoadError::NotLoopback { .. })
        ));
        assert!(matches!(
            ScrapeUrl::parse("https://127.0.0.1:9464/metrics"),
            Err(LoadError::BadTarget { .. })
        ));
        assert!(matches!(
            ScrapeUrl::parse("http://127.0.0.1/metrics"),
            Err(LoadError::BadTarget { .. })
        ));
    }
}
