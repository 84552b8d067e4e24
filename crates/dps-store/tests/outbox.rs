//! The outbox: events written in the same atomic batch as the change they describe, visible
//! to the relay once durable, in sequence order, and gone once delivered.

use dps_attest::{EnrollmentRules, Prepared};
use dps_store::{Precondition, RegistrationRecord, Store, StoreError};
use dps_types::{
    DeviceRegistrationState, EnrollmentGroup, EnrollmentGroupId, RegistrationId, RegistrationStatus,
};

fn rid(id: &str) -> RegistrationId {
    RegistrationId::parse(id).unwrap()
}

fn record(id: &str, group: Option<&str>) -> RegistrationRecord {
    let mut state = DeviceRegistrationState::unassigned(rid(id));
    state.status = Some(RegistrationStatus::Assigned);
    RegistrationRecord {
        state,
        enrollment_group_id: group.map(|g| EnrollmentGroupId::parse(g).unwrap()),
    }
}

fn group(id: &str) -> Prepared<EnrollmentGroup> {
    let g = serde_json::from_value(serde_json::json!({
        "enrollmentGroupId": id,
        "attestation": {"type": "symmetricKey"}
    }))
    .unwrap();
    dps_attest::prepare_group(g, &EnrollmentRules::default()).unwrap()
}

/// The events of the outbox, decoded as text, in order.
fn waiting(store: &Store) -> Vec<String> {
    store
        .outbox_scan(None, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| String::from_utf8(bytes).unwrap())
        .collect()
}

#[tokio::test]
async fn a_registration_and_its_event_are_written_together_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (stored, seqs) = store
        .put_registration_with(record("dev-1", None), &Precondition::Any, |new, old| {
            assert!(old.is_none());
            let etag = new.state.etag.as_ref().unwrap().as_str();
            vec![format!("assigned dev-1 {etag}").into_bytes()]
        })
        .await
        .unwrap();
    let etag = stored.state.etag.clone().unwrap();
    assert_eq!(seqs.len(), 1);
    assert_eq!(
        waiting(&store),
        [format!("assigned dev-1 {}", etag.as_str())]
    );
    assert_eq!(store.outbox_len(), 1);

    // The replacing write sees the record it replaces.
    let (_, second) = store
        .put_registration_with(
            record("dev-1", None),
            &Precondition::unchanged(Some(&etag)),
            |_, old| {
                vec![format!(
                    "after {}",
                    old.unwrap().state.etag.as_ref().unwrap().as_str()
                )
                .into_bytes()]
            },
        )
        .await
        .unwrap();
    assert!(second[0] > seqs[0], "sequence numbers increase");

    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        waiting(&store),
        [
            format!("assigned dev-1 {}", etag.as_str()),
            format!("after {}", etag.as_str())
        ]
    );
    let (_, third) = store
        .put_registration_with(record("dev-2", None), &Precondition::Any, |_, _| {
            vec![b"dev-2".to_vec()]
        })
        .await
        .unwrap();
    assert!(third[0] > second[0], "numbering goes on after a reopen");
}

#[tokio::test]
async fn delivered_events_are_removed_and_scans_resume_after_a_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut all = Vec::new();
    for i in 0..5 {
        let (_, seqs) = store
            .put_registration_with(
                record(&format!("dev-{i}"), None),
                &Precondition::Any,
                |_, _| vec![format!("e{i}").into_bytes()],
            )
            .await
            .unwrap();
        all.extend(seqs);
    }
    let page = store.outbox_scan(Some(all[1]), 2).unwrap();
    assert_eq!(
        page.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [all[2], all[3]]
    );

    store.outbox_remove(&[all[0], all[3]]).unwrap();
    store.outbox_remove(&[all[0]]).unwrap();
    assert_eq!(store.outbox_len(), 3);
    assert_eq!(waiting(&store), ["e1", "e2", "e4"]);
    // A later durable write flushes the removals with it.
    store
        .put_registration(record("dev-9", None), &Precondition::Any)
        .await
        .unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(waiting(&store), ["e1", "e2", "e4"]);
}

#[tokio::test]
async fn deletes_write_the_events_made_of_what_they_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_group(group("g"), &Precondition::Any)
        .await
        .unwrap();
    for id in ["a", "b", "c"] {
        let g = (id != "c").then_some("g");
        store
            .put_registration(record(id, g), &Precondition::Any)
            .await
            .unwrap();
    }

    let seqs = store
        .delete_group_with(
            &EnrollmentGroupId::parse("g").unwrap(),
            &Precondition::Any,
            |g| {
                let members = store
                    .query_registrations(&g.enrollment_group_id, 100, None)
                    .unwrap();
                members
                    .items
                    .iter()
                    .map(|r| format!("gone {}", r.state.registration_id.as_str()).into_bytes())
                    .collect()
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs.len(), 2);
    store
        .delete_registration_with(&rid("c"), &Precondition::Any, |r| {
            vec![format!("gone {}", r.state.registration_id.as_str()).into_bytes()]
        })
        .await
        .unwrap();
    assert_eq!(waiting(&store), ["gone a", "gone b", "gone c"]);

    let missing = store
        .delete_registration_with(&rid("c"), &Precondition::Any, |_| vec![b"never".to_vec()])
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    assert_eq!(store.outbox_len(), 3);
}
