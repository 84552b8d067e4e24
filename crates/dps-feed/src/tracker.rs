//! The bookkeeping of unconfirmed events, without I/O: which outbox entries the feed holds,
//! which are on their way to the broker (and on which link), which failed and wait for the
//! relay, the per-hub counters, and the wake-ups of whoever waits for a confirmation.
//!
//! Bounded: at most `limit` entries are held; the relay may fill only `relay_limit` of them
//! with entries nobody handed to `publish`, so fresh events always find room while a backlog
//! drains. An entry leaves only once confirmed; confirmed sequence numbers are remembered (up
//! to `2 * limit`) so that a late question about one is answered "confirmed" rather than
//! "unknown".

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use dps_types::HubName;
use serde::Serialize;
use tokio::sync::Notify;

use crate::{FeedError, FeedEvent, Seq};

/// Hubs that get counters of their own beyond the configured ones (events for hubs unlinked
/// since); the rest are counted together under `otherHubs`.
const MAX_EXTRA_HUBS: usize = 64;

/// Why the last attempt at an entry failed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    LinkDown,
    Nacked,
    Publish(lapin::Error),
}

impl From<Failure> for FeedError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::LinkDown => FeedError::LinkDown,
            Failure::Nacked => FeedError::Nacked,
            Failure::Publish(source) => FeedError::Publish {
                source: Box::new(source),
            },
        }
    }
}

#[derive(Debug)]
enum State {
    InFlight { attempt: u64, generation: u64 },
    Waiting(Failure),
}

#[derive(Debug)]
struct Entry {
    message_id: String,
    hub: HubName,
    state: State,
    notify: Arc<Notify>,
}

/// Who asks to send an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Publish,
    Relay,
}

/// What to do with an entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Send it now, as this attempt.
    Send { attempt: u64 },
    /// It is on its way on the current link; wait for it.
    InFlight,
    /// It was confirmed.
    Confirmed,
    /// No room for it.
    Full,
}

/// An entry's state as a waiter sees it.
#[derive(Debug)]
pub(crate) enum Observed {
    Confirmed,
    Unknown,
    InFlight(Arc<Notify>),
    Waiting(Failure, Arc<Notify>),
}

/// Counters of one hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubCounters {
    /// Publications sent to the broker (re-publications included).
    pub published: u64,
    /// Events the broker confirmed.
    pub confirmed: u64,
    /// Outbox entries not yet confirmed (recounted at every relay pass, kept up to date in
    /// between).
    pub waiting: u64,
}

/// A relay pass in progress: what it counted so far.
#[derive(Debug, Default)]
struct Pass {
    position: Option<Seq>,
    counts: HashMap<HubName, u64>,
    confirmed_behind: HashMap<HubName, u64>,
}

#[derive(Debug)]
pub(crate) struct Tracker {
    limit: usize,
    relay_limit: usize,
    entries: HashMap<Seq, Entry>,
    by_id: HashMap<String, Seq>,
    recent: VecDeque<Seq>,
    recent_set: HashSet<Seq>,
    next_attempt: u64,
    generation: u64,
    hubs: HashMap<HubName, HubCounters>,
    configured: Vec<HubName>,
    other: HubCounters,
    pass: Option<Pass>,
    /// Entries up to here were counted by the last pass (or after it, when first held).
    counted_upto: Option<Seq>,
    /// The newest entry counted although `publish` found no room to hold it.
    unheld_upto: Option<Seq>,
}

impl Tracker {
    pub(crate) fn new(limit: usize, hubs: &[HubName]) -> Self {
        Self {
            limit,
            relay_limit: (limit / 2).max(1),
            entries: HashMap::new(),
            by_id: HashMap::new(),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            next_attempt: 0,
            generation: 0,
            hubs: hubs
                .iter()
                .map(|h| (h.clone(), HubCounters::default()))
                .collect(),
            configured: hubs.to_vec(),
            other: HubCounters::default(),
            pass: None,
            counted_upto: None,
            unheld_upto: None,
        }
    }

    fn counters(&mut self, hub: &HubName) -> &mut HubCounters {
        if !self.hubs.contains_key(hub) && self.hubs.len() < self.configured.len() + MAX_EXTRA_HUBS
        {
            self.hubs.insert(hub.clone(), HubCounters::default());
        }
        self.hubs.get_mut(hub).unwrap_or(&mut self.other)
    }

    /// A new link is up; entries in flight on older links count as not sent.
    pub(crate) fn link_changed(&mut self) {
        self.generation += 1;
    }

    /// The link is gone: everything in flight failed.
    pub(crate) fn link_down(&mut self) {
        self.generation += 1;
        for entry in self.entries.values_mut() {
            if matches!(entry.state, State::InFlight { .. }) {
                entry.state = State::Waiting(Failure::LinkDown);
                entry.notify.notify_waiters();
            }
        }
        self.pass = None;
    }

    pub(crate) fn claim(&mut self, seq: Seq, event: &FeedEvent, source: Source) -> Claim {
        if self.recent_set.contains(&seq) {
            return Claim::Confirmed;
        }
        let generation = self.generation;
        let attempt = self.next_attempt;
        if let Some(entry) = self.entries.get_mut(&seq) {
            if let State::InFlight { generation: g, .. } = entry.state {
                if g == generation {
                    return Claim::InFlight;
                }
            }
            entry.state = State::InFlight {
                attempt,
                generation,
            };
            self.next_attempt += 1;
            return Claim::Send { attempt };
        }
        let bound = match source {
            Source::Publish => self.limit,
            Source::Relay => self.relay_limit,
        };
        if self.entries.len() >= bound {
            if source == Source::Publish {
                self.note_unheld(seq, &event.hub);
            }
            return Claim::Full;
        }
        self.next_attempt += 1;
        self.entries.insert(
            seq,
            Entry {
                message_id: event.message_id.clone(),
                hub: event.hub.clone(),
                state: State::InFlight {
                    attempt,
                    generation,
                },
                notify: Arc::new(Notify::new()),
            },
        );
        self.by_id.insert(event.message_id.clone(), seq);
        if source == Source::Publish {
            self.note_new(seq, &event.hub);
        }
        Claim::Send { attempt }
    }

    /// An attempt was handed to the broker.
    pub(crate) fn published(&mut self, hub: &HubName) {
        self.counters(hub).published += 1;
    }

    /// Whether the feed holds the entry (unconfirmed).
    pub(crate) fn holds(&self, seq: Seq) -> bool {
        self.entries.contains_key(&seq)
    }

    /// The broker confirmed the entry (whichever attempt it was). True when the feed still
    /// held it.
    pub(crate) fn confirmed(&mut self, seq: Seq) -> bool {
        let Some(entry) = self.entries.remove(&seq) else {
            return false;
        };
        self.by_id.remove(&entry.message_id);
        self.recent.push_back(seq);
        self.recent_set.insert(seq);
        while self.recent.len() > 2 * self.limit {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        let counters = self.counters(&entry.hub);
        counters.confirmed += 1;
        counters.waiting = counters.waiting.saturating_sub(1);
        if let Some(pass) = &mut self.pass {
            if pass.position.is_some_and(|p| seq <= p) {
                *pass.confirmed_behind.entry(entry.hub.clone()).or_default() += 1;
            }
        }
        entry.notify.notify_waiters();
        true
    }

    /// The attempt failed; the entry waits for the relay (unless another attempt replaced it).
    pub(crate) fn failed(&mut self, seq: Seq, attempt: u64, failure: Failure) {
        if let Some(entry) = self.entries.get_mut(&seq) {
            if matches!(entry.state, State::InFlight { attempt: a, .. } if a == attempt) {
                entry.state = State::Waiting(failure);
                entry.notify.notify_waiters();
            }
        }
    }

    pub(crate) fn observe(&self, seq: Seq) -> Observed {
        if self.recent_set.contains(&seq) {
            return Observed::Confirmed;
        }
        match self.entries.get(&seq) {
            None => Observed::Unknown,
            Some(Entry {
                state: State::InFlight { .. },
                notify,
                ..
            }) => Observed::InFlight(notify.clone()),
            Some(Entry {
                state: State::Waiting(failure),
                notify,
                ..
            }) => Observed::Waiting(failure.clone(), notify.clone()),
        }
    }

    pub(crate) fn pending(&self, message_id: &str) -> Option<Seq> {
        self.by_id.get(message_id).copied()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.state, State::InFlight { .. }))
            .count()
    }

    /// An entry handed to `publish` is held for the first time: count it as waiting unless a
    /// pass is counting (it will see the entry) or the last pass counted it already.
    fn note_new(&mut self, seq: Seq, hub: &HubName) {
        if self.pass.is_none() && self.counted_upto.is_none_or(|c| seq > c) {
            self.counters(hub).waiting += 1;
        }
    }

    /// An entry handed to `publish` found no room: it waits in the outbox all the same.
    /// Counted once if `publish` sees the entries in order (the registrar hands each over
    /// once); the next pass corrects what this misses.
    fn note_unheld(&mut self, seq: Seq, hub: &HubName) {
        let fresh =
            self.counted_upto.is_none_or(|c| seq > c) && self.unheld_upto.is_none_or(|u| seq > u);
        if self.pass.is_none() && fresh {
            self.counters(hub).waiting += 1;
            self.unheld_upto = Some(seq);
        }
    }

    pub(crate) fn begin_pass(&mut self) {
        self.pass = Some(Pass::default());
    }

    /// The pass could not finish; counting goes on from the running values.
    pub(crate) fn abort_pass(&mut self) {
        self.pass = None;
    }

    pub(crate) fn scanned(&mut self, seq: Seq, hub: &HubName) {
        if let Some(pass) = &mut self.pass {
            pass.position = Some(seq);
            *pass.counts.entry(hub.clone()).or_default() += 1;
        }
    }

    /// The pass read the whole outbox: its count replaces the running one, plus what was
    /// handed to `publish` after the pass's last page.
    pub(crate) fn finish_pass(&mut self) {
        let Some(mut pass) = self.pass.take() else {
            return;
        };
        let position = pass.position;
        for entry in self
            .entries
            .iter()
            .filter_map(|(seq, e)| (position.is_none_or(|p| *seq > p)).then_some(e.hub.clone()))
        {
            *pass.counts.entry(entry).or_default() += 1;
        }
        let mut recount: HashMap<HubName, u64> = HashMap::new();
        for (hub, count) in pass.counts {
            let behind = pass.confirmed_behind.get(&hub).copied().unwrap_or(0);
            recount.insert(hub, count.saturating_sub(behind));
        }
        for counters in self.hubs.values_mut() {
            counters.waiting = 0;
        }
        self.other.waiting = 0;
        for (hub, waiting) in recount {
            self.counters(&hub).waiting += waiting;
        }
        let newest = self.entries.keys().copied().max();
        self.counted_upto = [self.counted_upto, position, newest]
            .into_iter()
            .flatten()
            .max();
    }

    pub(crate) fn hub_counters(&self) -> (Vec<(HubName, HubCounters)>, HubCounters) {
        let mut hubs: Vec<_> = self.hubs.iter().map(|(h, c)| (h.clone(), *c)).collect();
        hubs.sort_by(|a, b| a.0.cmp(&b.0));
        (hubs, self.other)
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
