//! Target: start-up with 1,000,000 enrollments in sled serving within 15 s, and cache memory
//! under 1 KiB per X.509-less enrollment.
//!
//! "Start-up" is `Store::open`: opening sled and loading every record into the cache, the
//! only part of `dpsd serve` that grows with the data.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dps_benches::{fill_store, rss_bytes};
use dps_store::Store;

const COUNT: usize = 1_000_000;

fn startup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    fill_store(dir.path(), COUNT).unwrap_or_else(|e| panic!("fill: {e}"));

    // Memory: RSS growth across one open, per enrollment (sled's own page cache included).
    let before = rss_bytes();
    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
    let took = started.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "open with {} enrollments: {:.2} s, RSS +{} MiB = {} bytes per enrollment",
        store.cache().enrollment_count(),
        took.as_secs_f64(),
        grown / (1024 * 1024),
        grown / COUNT
    );
    drop(store);

    let mut group = c.benchmark_group("startup_1M");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(60));
    group.bench_function("store_open", |b| {
        b.iter(|| {
            Store::open(dir.path())
                .unwrap_or_else(|e| panic!("open: {e}"))
                .cache()
                .enrollment_count()
        })
    });
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
