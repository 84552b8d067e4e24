//! Target: start-up with 1,000,000 enrollments in sled serving within 15 s, and cache memory
//! under 1 KiB per X.509-less enrollment.
//!
//! "Start-up" is `Store::open`: opening sled and loading every record into the cache, the
//! only part of `dpsd serve` that grows with the data.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dps_benches::{fill_store, live_heap_bytes, rss_bytes, CountingAlloc};
use dps_store::Store;

const COUNT: usize = 1_000_000;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn startup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    fill_store(dir.path(), COUNT).unwrap_or_else(|e| panic!("fill: {e}"));

    // Memory per enrollment: live heap growth across one open (the cache, plus sled's own page
    // cache of at most 64 MiB), and RSS growth for comparison.
    let (heap_before, rss_before) = (live_heap_bytes(), rss_bytes());
    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
    let took = started.elapsed();
    let heap = live_heap_bytes().saturating_sub(heap_before);
    let rss = rss_bytes().saturating_sub(rss_before);
    println!(
        "open with {} enrollments: {:.2} s; live heap +{} MiB = {} B/enrollment; RSS +{} MiB = {} B/enrollment",
        store.cache().enrollment_count(),
        took.as_secs_f64(),
        heap >> 20,
        heap / COUNT,
        rss >> 20,
        rss / COUNT
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
