//! Target: cache lookup by registration id with 1,000,000 enrollments loaded, median under
//! 200 ns, also with two threads reading while one writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dps_benches::{fill_store, id};
use dps_store::{Precondition, Store};

const COUNT: usize = 1_000_000;

fn lookups(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    fill_store(dir.path(), COUNT).unwrap_or_else(|e| panic!("fill: {e}"));
    let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(store.cache().enrollment_count(), COUNT);

    let mut group = c.benchmark_group("cache_lookup_1M");
    group.measurement_time(Duration::from_secs(5));
    let ids: Vec<String> = (0..4096).map(|i| id((i * 7919) % COUNT)).collect();
    let mut i = 0;
    group.bench_function("idle", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            store.cache().enrollment(black_box(&ids[i])).is_some()
        })
    });

    // One writer (durable API-path writes) and a second reader run while we measure.
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let writer = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let e = serde_json::from_slice(&dps_benches::enrollment_json(n % COUNT))
                    .unwrap_or_else(|e| panic!("{e}"));
                let e = dps_attest::prepare_individual(e, &Default::default())
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = runtime.block_on(store.put_enrollment(e, &Precondition::Any));
                n += 1;
            }
            n
        })
    };
    let reader = {
        // Other devices than the measured thread's, as two concurrent registrations would be.
        let ids: Vec<String> = (0..4096).map(|i| id((i * 7919 + 1) % COUNT)).collect();
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut hits = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for id in &ids {
                    hits += usize::from(store.cache().enrollment(id).is_some());
                }
            }
            hits
        })
    };
    group.bench_function("two_readers_one_writer", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            store.cache().enrollment(black_box(&ids[i])).is_some()
        })
    });
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap_or(0);
    let _ = reader.join();
    println!("background writer completed {writes} durable writes during the measurement");
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
