//! The store's timings for the metrics: every durable write is timed once, and the flushes'
//! batch sizes add up to the writers they served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dps_store::{Precondition, RegistrationRecord, Store, StoreObserver};
use dps_types::{DeviceRegistrationState, RegistrationId};

#[derive(Debug, Default)]
struct Recorded {
    writes: Mutex<Vec<Duration>>,
    flushes: Mutex<Vec<(Duration, usize)>>,
}

impl StoreObserver for Recorded {
    fn write_done(&self, elapsed: Duration) {
        self.writes.lock().unwrap().push(elapsed);
    }
    fn flush_done(&self, elapsed: Duration, batch: usize) {
        self.flushes.lock().unwrap().push((elapsed, batch));
    }
}

fn record(id: &str) -> RegistrationRecord {
    RegistrationRecord {
        state: DeviceRegistrationState::unassigned(RegistrationId::parse(id).unwrap()),
        enrollment_group_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_each_timed_and_flush_batches_cover_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let recorded = Arc::new(Recorded::default());
    assert!(store.observe(recorded.clone()));
    assert!(
        !store.observe(Arc::new(Recorded::default())),
        "the first observer stays"
    );

    const WRITERS: usize = 64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..WRITERS {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .put_registration(record(&format!("dev-{n}")), &Precondition::Any)
                .await
                .unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // A refused precondition never reaches the backend: not a write.
    let refused = store
        .put_registration(record("dev-0"), &Precondition::MustNotExist)
        .await;
    assert!(refused.is_err());
    store
        .delete_registration(&RegistrationId::parse("dev-1").unwrap(), &Precondition::Any)
        .await
        .unwrap();

    assert_eq!(recorded.writes.lock().unwrap().len(), WRITERS + 1);
    let flushes = recorded.flushes.lock().unwrap().clone();
    let served: usize = flushes.iter().map(|(_, batch)| batch).sum();
    assert_eq!(served, WRITERS + 1, "{flushes:?}");
    assert!(flushes.iter().all(|(_, batch)| *batch >= 1));
}
