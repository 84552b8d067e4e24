//! The metrics listener as Prometheus and a Kubernetes probe see it: `/metrics` in the text
//! format with the series the observers and collectors fill, `/healthz`, `/readyz` following
//! its checks, and nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dps_metrics::{Health, Metrics, MetricsLimits};
use dps_types::HubName;

struct Served {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve(metrics: Arc<Metrics>, health: Health) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let counters = metrics.listener("metrics").unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(dps_metrics::serve(
        listener,
        metrics,
        health,
        MetricsLimits::default(),
        counters,
        async move {
            let _ = rx.await;
        },
    ));
    Served {
        base,
        stop: Some(tx),
        task,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The value of the sample line that starts with `series` (name and labels exactly).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn probes_follow_the_checks_and_only_three_paths_answer() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let health = Health::default();
    let store_ok = Arc::new(AtomicBool::new(false));
    let flag = store_ok.clone();
    health.add_check("store", move || flag.load(Ordering::SeqCst));
    let mut served = serve(metrics, health.clone()).await;
    let http = client();
    let get = |path: &str| http.get(format!("{}{path}", served.base)).send();

    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let not_ready = get("/readyz").await.unwrap();
    assert_eq!(not_ready.status(), 503);
    assert_eq!(not_ready.text().await.unwrap(), "not ready: store\n");
    store_ok.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    // A check added while serving counts at once (the assignment feed adds its broker).
    health.add_check("broker", || false);
    assert_eq!(
        get("/readyz").await.unwrap().text().await.unwrap(),
        "not ready: broker\n"
    );

    assert_eq!(get("/metrics/x").await.unwrap().status(), 404);
    assert_eq!(get("/").await.unwrap().status(), 404);
    let post = http
        .post(format!("{}/metrics", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);

    if let Some(stop) = served.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::timeout(Duration::from_secs(30), &mut served.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn metrics_carry_build_process_listener_registration_and_store_series() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let hub = HubName::parse("hub-1.example.net").unwrap();
    let observer = metrics
        .registrar_observer(std::slice::from_ref(&hub))
        .unwrap();
    let store_observer = metrics.store_observer();
    metrics.certificate_not_after("mqtt", 1_900_000_000);
    let served = serve(metrics.clone(), Health::default()).await;

    let dir = tempfile::tempdir().unwrap();
    let store = dps_store::Store::open(dir.path()).unwrap();
    assert!(store.observe(store_observer));
    let mut config = dps_registrar::RegistrarConfig::new(
        dps_types::IdScope::parse("0ne00000001").unwrap(),
        vec![dps_registrar::LinkedHub {
            host_name: hub.clone(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        }],
    );
    config.observer = Some(observer);
    let registrar = dps_registrar::Registrar::new(store.clone(), config).unwrap();
    metrics.watch_registrar(&registrar).unwrap();
    // A refusal, as a frontend records it.
    registrar.record_refusal(
        "made-up-id",
        dps_registrar::Transport::Mqtt,
        &dps_attest::Refusal {
            reason: dps_attest::FailureReason::NoEnrollment,
            detail: "no enrollment".into(),
        },
    );
    store
        .put_registration(
            dps_store::RegistrationRecord {
                state: dps_types::DeviceRegistrationState::unassigned(
                    dps_types::RegistrationId::parse("dev-1").unwrap(),
                ),
                enrollment_group_id: None,
            },
            &dps_store::Precondition::Any,
        )
        .await
        .unwrap();

    let response = client()
        .get(format!("{}/metrics", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = response.text().await.unwrap();
    let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(v(r#"dps_build_info{version="0.1.0"}"#), 1.0);
    assert!(v("process_open_fds") > 0.0);
    assert!(v("process_resident_memory_bytes") > 0.0);
    // The scrape itself holds a connection of the metrics listener.
    assert_eq!(v(r#"dps_connections_open{listener="metrics"}"#), 1.0);
    assert_eq!(
        v(r#"dps_tls_handshakes_total{listener="metrics",result="ok"}"#),
        0.0
    );
    assert_eq!(
        v(r#"dps_tls_certificate_not_after_seconds{listener="mqtt"}"#),
        1_900_000_000.0
    );
    assert_eq!(
        v(r#"dps_attestation_failures_total{reason="no_enrollment"}"#),
        1.0
    );
    assert_eq!(
        v(r#"dps_attestation_failures_total{reason="sas_expired"}"#),
        0.0
    );
    assert_eq!(
        v(r#"dps_registration_failures_total{reason="no_hub"}"#),
        0.0
    );
    assert_eq!(
        v(r#"dps_registrations_total{attestation="x509",outcome="assigned",transport="mqtt"}"#),
        0.0
    );
    assert_eq!(v(r#"dps_assignments_total{hub="hub-1.example.net"}"#), 0.0);
    assert_eq!(v("dps_registration_records"), 1.0);
    assert_eq!(v(r#"dps_enrollments{kind="individual"}"#), 0.0);
    assert_eq!(v("dps_store_healthy"), 1.0);
    assert_eq!(v("dps_store_write_duration_seconds_count"), 1.0);
    assert_eq!(v("dps_store_flush_batch_size_sum"), 1.0);
    assert!(v("dps_store_flush_duration_seconds_count") >= 1.0);
    // No label carries an id.
    assert!(!text.contains("made-up-id") && !text.contains("dev-1"));
}
