//! Target (issue 10): X.509 registrations per second with `/metrics` scraped every second stay
//! at least 0.98x the rate without scraping. Both variants run the full metrics (observers in
//! the registrar and the store, collectors over the registrar); `scraped` also has a client
//! fetching `/metrics` over HTTP from the metrics listener every second, as Prometheus does.
//! A third variant without any metrics shows what the instrumentation itself costs. Each
//! variant has its own store and metrics.
//!
//! A registration here is what a device's CONNECT and register cost dpsd after TLS:
//! `attest_x509` of a leaf + intermediate chain against an intermediate-CA group, then
//! `Registrar::register` with its durable record, 64 at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dps_metrics::{Health, Metrics, MetricsLimits};
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig, Transport};
use dps_store::{Precondition, Store};
use dps_test_util::TestPki;
use dps_types::{EnrollmentGroup, HubName, IdScope, RegistrationStatus};

const CONCURRENCY: usize = 64;
const DEVICES: usize = 2000;

struct Fleet {
    registrar: Registrar,
    /// Each device's chain (leaf, intermediate) as DER, with its registration id.
    devices: Arc<Vec<(String, Vec<Vec<u8>>)>>,
    _dir: tempfile::TempDir,
}

fn fleet(runtime: &tokio::runtime::Runtime, pki: &TestPki, metrics: Option<&Metrics>) -> Fleet {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let hubs: Vec<HubName> = ["hub-1.example.net", "hub-2.example.net"]
        .iter()
        .map(|h| HubName::parse(h).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let mut config = RegistrarConfig::new(
        IdScope::parse("0ne00000BEN").unwrap_or_else(|e| panic!("{e}")),
        hubs.iter()
            .map(|h| LinkedHub {
                host_name: h.clone(),
                allocation_weight: 1,
                apply_allocation_policy: true,
            })
            .collect(),
    );
    if let Some(m) = metrics {
        store.observe(m.store_observer());
        config.observer = Some(
            m.registrar_observer(&hubs)
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let registrar = Registrar::new(store.clone(), config).unwrap_or_else(|e| panic!("{e}"));
    if let Some(m) = metrics {
        m.watch_registrar(&registrar)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let group: EnrollmentGroup = serde_json::from_value(serde_json::json!({
        "enrollmentGroupId": "fleet",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {
            "primary": {"certificate": pki.intermediate_pem()}}}}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let group = dps_attest::prepare_group(group, &registrar.enrollment_rules())
        .unwrap_or_else(|e| panic!("{e}"));
    runtime
        .block_on(store.put_group(group, &Precondition::Any))
        .unwrap_or_else(|e| panic!("{e}"));
    let devices = (0..DEVICES)
        .map(|n| {
            let id = format!("x509-bench-{n}");
            let cert = pki.device(&id);
            (id, cert.chain_der)
        })
        .collect();
    Fleet {
        registrar,
        devices: Arc::new(devices),
        _dir: dir,
    }
}

/// Every device attests and registers once, `CONCURRENCY` at a time; `iters` passes.
async fn run(iters: u64, fleet: &Fleet) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..CONCURRENCY {
            let (devices, registrar) = (Arc::clone(&fleet.devices), fleet.registrar.clone());
            tasks.spawn(async move {
                for (id, chain) in devices.iter().skip(worker).step_by(CONCURRENCY) {
                    let chain: Vec<&[u8]> = chain.iter().map(Vec::as_slice).collect();
                    let device = dps_attest::attest_x509(
                        &chain,
                        id,
                        registrar.lookup(),
                        dps_attest::UnixTime::now(),
                    )
                    .unwrap_or_else(|r| panic!("{:?}", r.reason));
                    let result = registrar
                        .register(&device, Transport::Mqtt, None)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(result.status, RegistrationStatus::Assigned);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    started.elapsed()
}

fn metrics_scrape(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let pki = TestPki::new();

    // Each variant has a store of its own, so none pays for the others' history (the
    // sled log grows with every re-registration).
    let bare = fleet(&runtime, &pki, None);
    let unscraped_metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
    let unscraped = fleet(&runtime, &pki, Some(&unscraped_metrics));
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}")));
    let scraped = fleet(&runtime, &pki, Some(&metrics));

    // The metrics listener and a scraper that fetches /metrics every second while `scraping`.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (scrape, scraping) = tokio::sync::watch::channel(false);
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let counters = metrics
            .listener("metrics")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stopped = stopped.clone();
        tokio::spawn(dps_metrics::serve(
            listener,
            Arc::clone(&metrics),
            Health::default(),
            MetricsLimits::default(),
            counters,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        addr
    });
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    runtime.spawn({
        let scrapes = Arc::clone(&scrapes);
        let mut scraping = scraping.clone();
        async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if !*scraping.borrow_and_update() && scraping.changed().await.is_err() {
                    return;
                }
                if *scraping.borrow() {
                    let body = http
                        .get(format!("http://{addr}/metrics"))
                        .send()
                        .await
                        .and_then(|r| r.error_for_status());
                    if let Ok(r) = body {
                        if r.bytes().await.is_ok() {
                            scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });

    let mut group = c.benchmark_group("x509_register_64_concurrent");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(DEVICES as u64));
    group.bench_function("no_metrics", |b| {
        b.iter_custom(|iters| runtime.block_on(run(iters, &bare)))
    });
    group.bench_function("metrics_unscraped", |b| {
        b.iter_custom(|iters| runtime.block_on(run(iters, &unscraped)))
    });
    let scraped_runs = std::sync::atomic::AtomicU64::new(0);
    group.bench_function("metrics_scraped_every_second", |b| {
        b.iter_custom(|iters| {
            scraped_runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            scrape.send_replace(true);
            let elapsed = runtime.block_on(run(iters, &scraped));
            scrape.send_replace(false);
            elapsed
        })
    });
    group.finish();
    // What one scrape costs the service (gather every collector and encode the text, with
    // the fleet's series in it): at one scrape a second, its share of a core.
    c.bench_function("metrics_scrape/gather_and_encode", |b| {
        b.iter(|| metrics.encode().unwrap_or_else(|e| panic!("{e}")))
    });
    let done = scrapes.load(std::sync::atomic::Ordering::Relaxed);
    let ran = scraped_runs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(ran == 0 || done > 0, "the scraper never fetched /metrics");
    eprintln!("scrapes of /metrics during the scraped variant: {done}");
    stop.send_replace(true);
}

criterion_group!(benches, metrics_scrape);
criterion_main!(benches);
