//! A failed flush: the write is not acknowledged, the cache does not keep it, the store refuses
//! writes until a flush works again, and no trace of the refused write survives a reopen.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dps_attest::{EnrollmentRules, Prepared};
use dps_store::{Backend, Precondition, SledBackend, Store, StoreError, Table, Visit, Write};
use dps_types::{IndividualEnrollment, RegistrationId};

/// The real sled backend whose flush fails while `failing` is set.
struct FaultyFlush {
    inner: SledBackend,
    failing: AtomicBool,
}

impl Backend for FaultyFlush {
    fn write(&self, batch: &[Write<'_>]) -> Result<(), StoreError> {
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
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected flush failure".into()));
        }
        self.inner.flush()
    }
}

fn open_faulty(dir: &Path) -> (Store, Arc<FaultyFlush>) {
    let backend = Arc::new(FaultyFlush {
        inner: SledBackend::open(dir).unwrap(),
        failing: AtomicBool::new(false),
    });
    let store = Store::with_backend(Arc::clone(&backend) as Arc<dyn Backend>).unwrap();
    (store, backend)
}

fn enrollment(id: &str, device_id: &str) -> Prepared<IndividualEnrollment> {
    let e: IndividualEnrollment = serde_json::from_value(serde_json::json!({
        "registrationId": id,
        "deviceId": device_id,
        "attestation": {"type": "symmetricKey"}
    }))
    .unwrap();
    dps_attest::prepare_individual(e, &EnrollmentRules::default()).unwrap()
}

/// Creates or replaces the symmetric-key enrollment `id` with this device id.
async fn put(
    store: &Store,
    id: &str,
    device_id: &str,
) -> Result<std::sync::Arc<IndividualEnrollment>, StoreError> {
    store
        .put_enrollment(enrollment(id, device_id), &Precondition::Any)
        .await
}

/// The device id of the stored enrollment `id`, if there is one.
fn device_id(store: &Store, id: &str) -> Option<String> {
    let e = store.enrollment(&RegistrationId::parse(id).unwrap())?;
    Some(
        serde_json::to_value(&*e).unwrap()["deviceId"]
            .as_str()?
            .to_owned(),
    )
}

#[tokio::test]
async fn a_failed_flush_is_not_acknowledged_and_writes_are_refused_until_a_flush_works() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open_faulty(dir.path());
    put(&store, "kept", "first").await.unwrap();

    backend.failing.store(true, Ordering::SeqCst);
    let failed = put(&store, "kept", "second").await;
    assert!(matches!(failed, Err(StoreError::Backend(_))), "{failed:?}");
    assert_eq!(device_id(&store, "kept").as_deref(), Some("first"));
    assert!(!store.is_healthy());

    let refused = put(&store, "fresh", "new").await;
    assert!(matches!(refused, Err(StoreError::Unhealthy)), "{refused:?}");
    assert_eq!(
        refused.unwrap_err().to_string(),
        "the store is refusing writes after a failed flush"
    );
    let refused = store
        .delete_enrollment(&RegistrationId::parse("kept").unwrap(), &Precondition::Any)
        .await;
    assert!(matches!(refused, Err(StoreError::Unhealthy)), "{refused:?}");
    assert_eq!(device_id(&store, "fresh"), None);
    assert_eq!(device_id(&store, "kept").as_deref(), Some("first"));

    backend.failing.store(false, Ordering::SeqCst);
    put(&store, "fresh", "new").await.unwrap();
    assert!(store.is_healthy());
    assert_eq!(device_id(&store, "fresh").as_deref(), Some("new"));

    drop(store);
    drop(backend);
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(device_id(&reopened, "kept").as_deref(), Some("first"));
    assert_eq!(device_id(&reopened, "fresh").as_deref(), Some("new"));
}

#[tokio::test]
async fn a_write_whose_flush_failed_leaves_no_trace_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open_faulty(dir.path());
    put(&store, "kept", "first").await.unwrap();

    backend.failing.store(true, Ordering::SeqCst);
    let created = put(&store, "created", "new").await;
    assert!(created.is_err());
    assert_eq!(device_id(&store, "created"), None);
    backend.failing.store(false, Ordering::SeqCst);
    // The next write probes; the refused one must not ride along on that flush.
    put(&store, "kept", "second").await.unwrap();

    backend.failing.store(true, Ordering::SeqCst);
    let replaced = put(&store, "kept", "third").await;
    assert!(replaced.is_err());
    let deleted = store
        .delete_enrollment(&RegistrationId::parse("kept").unwrap(), &Precondition::Any)
        .await;
    assert!(matches!(deleted, Err(StoreError::Unhealthy)), "{deleted:?}");
    assert_eq!(device_id(&store, "kept").as_deref(), Some("second"));

    // Closing flushes once more (sled also flushes when dropped): what it writes is the state
    // from before the refused writes.
    backend.failing.store(false, Ordering::SeqCst);
    drop(store);
    drop(backend);
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(device_id(&reopened, "created"), None);
    assert_eq!(device_id(&reopened, "kept").as_deref(), Some("second"));
}

#[tokio::test]
async fn a_failed_flush_fails_every_writer_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open_faulty(dir.path());
    backend.failing.store(true, Ordering::SeqCst);
    let writes = (0..8).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_enrollment(enrollment(&format!("dev-{n}"), "x"), &Precondition::Any)
                .await
        })
    });
    for write in writes.collect::<Vec<_>>() {
        assert!(write.await.unwrap().is_err());
    }
    assert_eq!(store.cache().enrollment_count(), 0);
    backend.failing.store(false, Ordering::SeqCst);
    drop(store);
    drop(backend);
    assert_eq!(
        Store::open(dir.path()).unwrap().cache().enrollment_count(),
        0
    );
}

#[tokio::test]
async fn the_events_of_a_write_whose_flush_failed_are_taken_back_with_it() {
    use dps_store::RegistrationRecord;
    use dps_types::{DeviceRegistrationState, RegistrationStatus};

    let dir = tempfile::tempdir().unwrap();
    let (store, backend) = open_faulty(dir.path());
    let record = || {
        let mut state = DeviceRegistrationState::unassigned(RegistrationId::parse("dev").unwrap());
        state.status = Some(RegistrationStatus::Assigned);
        RegistrationRecord {
            state,
            enrollment_group_id: None,
        }
    };
    backend.failing.store(true, Ordering::SeqCst);
    let failed = store
        .put_registration_with(record(), &Precondition::Any, |_, _| {
            vec![b"assigned".to_vec()]
        })
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(store.outbox_len(), 0);
    assert!(store.outbox_scan(None, 10).unwrap().is_empty());

    backend.failing.store(false, Ordering::SeqCst);
    store
        .put_registration_with(
            record(),
            &Precondition::Any,
            |_, _| vec![b"second".to_vec()],
        )
        .await
        .unwrap();
    drop(store);
    drop(backend);
    let reopened = Store::open(dir.path()).unwrap();
    let events: Vec<Vec<u8>> = reopened
        .outbox_scan(None, 10)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(events, [b"second".to_vec()]);
}
