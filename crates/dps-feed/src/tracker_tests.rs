use super::*;
use crate::EventType;

fn hub(name: &str) -> HubName {
    HubName::parse(name).unwrap()
}

fn event(n: u64, hub_name: &str) -> FeedEvent {
    FeedEvent {
        message_id: format!("id-{n}"),
        routing_key: format!("{hub_name}.device.assigned"),
        hub: hub(hub_name),
        event_type: EventType::Assigned,
        time_utc: dps_types::Timestamp::now(),
        body: "{}".into(),
    }
}

fn waiting(t: &Tracker, name: &str) -> u64 {
    let (hubs, _) = t.hub_counters();
    hubs.iter()
        .find(|(h, _)| h.as_str() == name)
        .map_or(0, |(_, c)| c.waiting)
}

#[test]
fn an_entry_goes_in_flight_then_confirmed() {
    let mut t = Tracker::new(8, &[hub("a.example")]);
    let e = event(1, "a.example");
    let Claim::Send { attempt } = t.claim(1, &e, Source::Publish) else {
        panic!("first claim must send");
    };
    assert_eq!(t.pending("id-1"), Some(1));
    assert_eq!(t.claim(1, &e, Source::Relay), Claim::InFlight);
    assert_eq!(t.claim(1, &e, Source::Publish), Claim::InFlight);
    assert!(matches!(t.observe(1), Observed::InFlight(_)));
    t.published(&e.hub);
    assert!(t.holds(1));
    assert!(t.confirmed(1));
    assert!(!t.holds(1));
    assert!(
        !t.confirmed(1),
        "a second ack must not reach the outbox again"
    );
    assert!(matches!(t.observe(1), Observed::Confirmed));
    assert_eq!(t.pending("id-1"), None);
    assert_eq!(t.claim(1, &e, Source::Relay), Claim::Confirmed);
    let (hubs, _) = t.hub_counters();
    assert_eq!(
        hubs[0].1,
        HubCounters {
            published: 1,
            confirmed: 1,
            waiting: 0
        }
    );
    // A failure report for an attempt of a confirmed entry changes nothing.
    t.failed(1, attempt, Failure::Nacked);
    assert!(matches!(t.observe(1), Observed::Confirmed));
}

#[test]
fn a_failed_entry_waits_and_is_sent_again() {
    let mut t = Tracker::new(8, &[]);
    let e = event(1, "a.example");
    let Claim::Send { attempt: first } = t.claim(1, &e, Source::Publish) else {
        panic!();
    };
    t.failed(1, first, Failure::Nacked);
    assert!(matches!(
        t.observe(1),
        Observed::Waiting(Failure::Nacked, _)
    ));
    assert_eq!(
        t.pending("id-1"),
        Some(1),
        "a failed entry is still pending"
    );
    let Claim::Send { attempt: second } = t.claim(1, &e, Source::Relay) else {
        panic!("a waiting entry must be sent again");
    };
    assert_ne!(first, second);
    // A late failure of the first attempt does not undo the second.
    t.failed(1, first, Failure::LinkDown);
    assert!(matches!(t.observe(1), Observed::InFlight(_)));
}

#[test]
fn entries_in_flight_on_a_lost_link_are_sent_again_on_the_next() {
    let mut t = Tracker::new(8, &[]);
    let e = event(1, "a.example");
    assert!(matches!(
        t.claim(1, &e, Source::Publish),
        Claim::Send { .. }
    ));
    t.link_changed();
    // The old link never reported back, but a new link means the entry must go again.
    assert!(matches!(t.claim(1, &e, Source::Relay), Claim::Send { .. }));
    t.link_down();
    assert!(matches!(
        t.observe(1),
        Observed::Waiting(Failure::LinkDown, _)
    ));
}

#[test]
fn held_entries_are_bounded_and_the_relay_leaves_room_for_publish() {
    let mut t = Tracker::new(4, &[]);
    for seq in 0..2 {
        assert!(matches!(
            t.claim(seq, &event(seq, "a.example"), Source::Relay),
            Claim::Send { .. }
        ));
    }
    assert_eq!(
        t.claim(2, &event(2, "a.example"), Source::Relay),
        Claim::Full
    );
    for seq in 2..4 {
        assert!(matches!(
            t.claim(seq, &event(seq, "a.example"), Source::Publish),
            Claim::Send { .. }
        ));
    }
    assert_eq!(
        t.claim(4, &event(4, "a.example"), Source::Publish),
        Claim::Full
    );
    assert_eq!(t.in_flight(), 4);
    assert!(t.confirmed(0));
    assert!(matches!(
        t.claim(4, &event(4, "a.example"), Source::Publish),
        Claim::Send { .. }
    ));
}

#[test]
fn confirmed_memory_is_bounded() {
    let mut t = Tracker::new(2, &[]);
    for seq in 0..10 {
        assert!(matches!(
            t.claim(seq, &event(seq, "a.example"), Source::Publish),
            Claim::Send { .. }
        ));
        assert!(t.confirmed(seq));
    }
    assert_eq!(t.recent.len(), 4);
    assert!(matches!(t.observe(9), Observed::Confirmed));
    assert!(matches!(t.observe(0), Observed::Unknown));
}

#[test]
fn waiting_counts_follow_publish_confirm_and_relay_passes() {
    let mut t = Tracker::new(100, &[hub("a.example"), hub("b.example")]);
    for seq in 1..=3 {
        let _ = t.claim(seq, &event(seq, "a.example"), Source::Publish);
    }
    assert_eq!(waiting(&t, "a.example"), 3);
    // Publishing the same entry again does not count it twice.
    let _ = t.claim(2, &event(2, "a.example"), Source::Publish);
    assert_eq!(waiting(&t, "a.example"), 3);
    assert!(t.confirmed(1));
    assert_eq!(waiting(&t, "a.example"), 2);

    // A pass over an outbox holding 2, 3 (hub a) and 10, 11 (hub b, written by another node,
    // say); 2 is confirmed after the pass saw it, 12 is handed to publish after its last page.
    t.begin_pass();
    t.scanned(2, &hub("a.example"));
    t.scanned(3, &hub("a.example"));
    assert!(t.confirmed(2));
    t.scanned(10, &hub("b.example"));
    t.scanned(11, &hub("b.example"));
    let _ = t.claim(12, &event(12, "b.example"), Source::Publish);
    t.finish_pass();
    assert_eq!(waiting(&t, "a.example"), 1);
    assert_eq!(waiting(&t, "b.example"), 3);
    // After the pass, new entries count again, and only once.
    let _ = t.claim(13, &event(13, "a.example"), Source::Publish);
    let _ = t.claim(12, &event(12, "b.example"), Source::Publish);
    assert_eq!(waiting(&t, "a.example"), 2);
    assert_eq!(waiting(&t, "b.example"), 3);
}

#[test]
fn hubs_beyond_the_configured_ones_are_bounded() {
    let mut t = Tracker::new(1000, &[hub("a.example")]);
    for seq in 0..(MAX_EXTRA_HUBS as u64 + 10) {
        let name = format!("h{seq}.example");
        assert!(matches!(
            t.claim(seq, &event(seq, &name), Source::Publish),
            Claim::Send { .. }
        ));
    }
    let (hubs, other) = t.hub_counters();
    assert_eq!(hubs.len(), 1 + MAX_EXTRA_HUBS);
    assert_eq!(other.waiting, 10);
}

#[test]
fn events_without_room_still_count_as_waiting_once() {
    let mut t = Tracker::new(2, &[hub("a.example")]);
    for seq in 1..=5 {
        let _ = t.claim(seq, &event(seq, "a.example"), Source::Publish);
    }
    assert_eq!(
        t.claim(5, &event(5, "a.example"), Source::Publish),
        Claim::Full
    );
    assert_eq!(waiting(&t, "a.example"), 5);
}
