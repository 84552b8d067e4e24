//! The dashboard's data and its hand-written SVG charts.
//!
//! Two honest sources: registration records (each device counted once, at its latest
//! registration, by `lastUpdatedDateTimeUtc`) and the registrar's failure counters, sampled
//! every [`SAMPLE_EVERY`] into a ring buffer covering the last hour since the portal started.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dps_types::Timestamp;

use crate::PortalState;

/// How often the failure counters are sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// One hour of samples.
const SAMPLES_KEPT: usize = 360;

/// `(unix seconds, total failed attempts since start)`, oldest first.
#[derive(Default)]
pub(crate) struct Samples {
    ring: Mutex<VecDeque<(i64, u64)>>,
}

impl Samples {
    pub(crate) fn push(&self, at: i64, total: u64) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == SAMPLES_KEPT {
            ring.pop_front();
        }
        ring.push_back((at, total));
    }

    /// Failed attempts per minute over the 60 minutes before `now` (oldest first), from the
    /// differences between consecutive samples.
    pub(crate) fn per_minute(&self, now: i64) -> Vec<u64> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut buckets = vec![0u64; 60];
        for pair in ring.iter().collect::<Vec<_>>().windows(2) {
            let (_, before) = *pair[0];
            let (at, after) = *pair[1];
            if let Some(slot) = minute_slot(now, at) {
                buckets[slot] += after.saturating_sub(before);
            }
        }
        buckets
    }
}

/// The index (0 = oldest, 59 = the current minute) of `at` within the hour before `now`.
pub(crate) fn minute_slot(now: i64, at: i64) -> Option<usize> {
    let age = now - at;
    (0..3600)
        .contains(&age)
        .then(|| 59 - usize::try_from(age / 60).unwrap_or(59))
}

/// Starts the sampler when a runtime is there; it stops once the portal state is dropped.
pub(crate) fn spawn_sampler(state: &PortalState) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(&state.inner);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let total = inner
                .registrar
                .diagnostics()
                .counts()
                .iter()
                .map(|(_, n)| n)
                .sum();
            inner.samples.push(Timestamp::now().unix(), total);
        }
    });
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A column chart of 60 per-minute values, labelled in minutes ago.
pub(crate) fn minute_columns(title: &str, values: &[u64], colour: &str) -> String {
    let (w, h, left, bottom) = (640.0_f64, 200.0_f64, 40.0_f64, 24.0_f64);
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let plot_h = h - bottom - 10.0;
    let bar_w = (w - left) / values.len().max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = escape(title)
    );
    for (y, label) in [
        (10.0, max),
        (10.0 + plot_h / 2.0, max / 2),
        (10.0 + plot_h, 0),
    ] {
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{y}" x2="{w}" y2="{y}" stroke="#d0d4da"/><text x="{x}" y="{ty}" font-size="11" text-anchor="end" fill="#555">{label}</text>"##,
            x = left - 4.0,
            ty = y + 4.0
        );
    }
    for (i, v) in values.iter().enumerate() {
        let bh = plot_h * (*v as f64) / (max as f64);
        let x = left + i as f64 * bar_w;
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{colour}"><title>{ago} min ago: {v}</title></rect>"#,
            y = 10.0 + plot_h - bh,
            bw = (bar_w - 1.0).max(1.0),
            ago = values.len() - 1 - i
        );
    }
    for (i, label) in [(0, "60 min ago"), (30, "30"), (59, "now")] {
        let _ = write!(
            s,
            r##"<text x="{x:.1}" y="{y}" font-size="11" text-anchor="middle" fill="#555">{label}</text>"##,
            x = left + (i as f64 + 0.5) * bar_w,
            y = h - 6.0
        );
    }
    s.push_str("</svg>");
    s
}

/// A horizontal bar chart of labelled counts.
pub(crate) fn labelled_bars(title: &str, items: &[(String, u64)], colour: &str) -> String {
    let row = 26.0_f64;
    let (w, label_w) = (640.0_f64, 230.0_f64);
    let h = (items.len().max(1) as f64) * row + 8.0;
    let max = items.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = escape(title)
    );
    if items.is_empty() {
        let _ = write!(
            s,
            r##"<text x="8" y="20" font-size="13" fill="#555">Nothing recorded yet.</text>"##
        );
    }
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 4.0 + i as f64 * row;
        let bw = (w - label_w - 60.0) * (*v as f64) / (max as f64);
        let _ = write!(
            s,
            r##"<text x="{lx}" y="{ty}" font-size="12" text-anchor="end" fill="#222">{label}</text><rect x="{label_w}" y="{y}" width="{bw:.1}" height="{bh}" fill="{colour}"/><text x="{vx:.1}" y="{ty}" font-size="12" fill="#222">{v}</text>"##,
            lx = label_w - 8.0,
            ty = y + 15.0,
            label = escape(label),
            bh = row - 8.0,
            vx = label_w + bw + 6.0
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_become_per_minute_deltas_within_the_hour() {
        let s = Samples::default();
        let now = 100_000;
        s.push(now - 4000, 0); // older than an hour: only a baseline
        s.push(now - 3500, 5);
        s.push(now - 70, 7);
        s.push(now - 10, 10);
        let m = s.per_minute(now);
        assert_eq!(m.len(), 60);
        assert_eq!(m[59], 3);
        assert_eq!(m[58], 2);
        assert_eq!(m.iter().sum::<u64>(), 10);
        assert_eq!(minute_slot(now, now + 1), None);
    }

    #[test]
    fn charts_escape_labels() {
        let svg = labelled_bars("t", &[("<x>".into(), 3)], "#000");
        assert!(svg.contains("&lt;x&gt;") && !svg.contains("<x>"));
        let svg = minute_columns("t", &[0; 60], "#000");
        assert_eq!(svg.matches("<rect").count(), 60);
    }
}
