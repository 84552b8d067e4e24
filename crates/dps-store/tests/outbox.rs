//! The outbox: events written with the change they describe (and dropped at open when a crash
//! kept them but lost the change), visible to the relay once durable, in sequence order, and
//! gone once delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dps_attest::{EnrollmentRules, Prepared};
use dps_store::{
    Backend, Precondition, RegistrationRecord, SledBackend, Store, StoreError, Table, Visit, Write,
};
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

/// The real sled backend that, while `losing` is set, reports writes of registration records
/// as done without making them: what a crash leaves that kept a change's outbox entries (they
/// are written first) and lost the change.
struct LosesRecords {
    inner: SledBackend,
    losing: AtomicBool,
}

impl Backend for LosesRecords {
    fn write(&self, batch: &[Write<'_>]) -> Result<(), StoreError> {
        let record = |w: &Write<'_>| {
            matches!(
                w,
                Write::Put(Table::Registrations, ..) | Write::Remove(Table::Registrations, _)
            )
        };
        if self.losing.load(Ordering::SeqCst) && batch.iter().all(record) {
            return Ok(());
        }
        self.inner.write(batch)
    }
    fn scan(
        &self,
        table: Table,
        after: Option<&str>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        self.inner.scan(table, after, visit)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

#[tokio::test]
async fn entries_whose_change_a_crash_lost_are_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    // An entry from before entries carried their origin: kept as it is.
    let sled = SledBackend::open(dir.path()).unwrap();
    sled.write(&[Write::Put(
        Table::Outbox,
        "00000000000000000000",
        b"written by an earlier version",
    )])
    .unwrap();
    sled.flush().unwrap();
    drop(sled);

    let backend = Arc::new(LosesRecords {
        inner: SledBackend::open(dir.path()).unwrap(),
        losing: AtomicBool::new(false),
    });
    let store = Store::with_backend(Arc::clone(&backend) as Arc<dyn Backend>).unwrap();
    let put = |id: &'static str, event: &'static str| {
        let store = store.clone();
        async move {
            store
                .put_registration_with(record(id, None), &Precondition::Any, |_, _| {
                    vec![event.as_bytes().to_vec()]
                })
                .await
                .unwrap();
        }
    };
    put("twice", "twice 1").await;
    put("twice", "twice 2").await;
    put("replaced", "replaced 1").await;
    put("deleted", "deleted created").await;

    backend.losing.store(true, Ordering::SeqCst);
    put("created", "created: lost").await;
    put("replaced", "replaced 2: lost").await;
    store
        .delete_registration_with(&rid("deleted"), &Precondition::Any, |_| {
            vec![b"deleted: lost".to_vec()]
        })
        .await
        .unwrap();
    assert_eq!(store.outbox_len(), 8, "the store did not notice");
    drop(store);
    drop(backend);

    let expected = [
        "written by an earlier version",
        "twice 1",
        "twice 2",
        "replaced 1",
        "deleted created",
    ];
    let store = Store::open(dir.path()).unwrap();
    assert!(store.registration(&rid("created")).is_none());
    assert!(store.registration(&rid("deleted")).is_some());
    assert_eq!(waiting(&store), expected);
    assert_eq!(store.outbox_len(), expected.len());
    let (_, seqs) = store
        .put_registration_with(record("next", None), &Precondition::Any, |_, _| {
            vec![b"next".to_vec()]
        })
        .await
        .unwrap();
    assert_eq!(seqs, [8], "numbering goes on after the dropped entries");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(waiting(&store).len(), expected.len() + 1);
}
