//! Target (issue 9): symmetric-key registrations per second over AMQP at least 0.8x the same
//! over MQTT, in the same run. One in-process dpsd (both device listeners on loopback), one
//! symmetric-key enrollment group, `DEVICES` fresh devices per pass, `CONCURRENCY` at a time.
//! Each device is a whole session as a real one runs it: TCP, a full TLS handshake (no
//! resumption), SASL PLAIN or CONNECT, register, polls every `POLL_DELAY`, close. MQTT devices
//! are the load tool's; AMQP devices are fe2o3-amqp's client (`dps_test_util::amqp`). Clients
//! and server share this process's cores, so the ratio, not the absolute rate, is the result.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dps_loadtest::device::{self, DeviceContext};
use dps_loadtest::Loopback;
use dps_store::Precondition;
use dps_test_util::amqp;
use dps_types::{EnrollmentGroup, SymmetricKey};
use fe2o3_amqp::sasl_profile::SaslProfile;

const CONCURRENCY: usize = 32;
const DEVICES: usize = 256;
const POLL_DELAY: Duration = Duration::from_millis(1);

/// The in-process service and what its devices need.
struct Bench {
    running: dpsd::Running,
    group_key: SymmetricKey,
    root_der: Vec<u8>,
    mqtt: Arc<DeviceContext>,
    next: AtomicUsize,
    _dir: tempfile::TempDir,
}

async fn start() -> Bench {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("dpsd.toml");
    std::fs::write(
        &file,
        "[[linked_hubs]]\nhost_name = \"hub-1.example.net\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let flags = dpsd::Flags {
        data_dir: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        log: Some("error".into()),
        ..Default::default()
    };
    let env = [("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned())];
    let config = dpsd::Config::load(Some(&file), env, &flags).unwrap_or_else(|e| panic!("{e}"));
    let running = dpsd::start(config).await.unwrap_or_else(|e| panic!("{e}"));
    let group_key = SymmetricKey::generate();
    let group: EnrollmentGroup = serde_json::from_value(serde_json::json!({
        "enrollmentGroupId": "bench",
        "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key.expose_base64()}}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let registrar = &running.registrar;
    let group = dps_attest::prepare_group(group, &registrar.enrollment_rules())
        .unwrap_or_else(|e| panic!("{e}"));
    registrar
        .store()
        .put_group(group, &Precondition::Any)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ca = std::fs::read(&running.ca_file).unwrap_or_else(|e| panic!("{e}"));
    let ca_text = String::from_utf8_lossy(&ca).into_owned();
    let root_der = dps_test_util::tls::certs(&ca_text).remove(0).to_vec();
    let mqtt = Arc::new(DeviceContext {
        mqtt: Loopback::new(running.mqtt_addr).unwrap_or_else(|e| panic!("{e}")),
        tls: device::tls_connector(&ca).unwrap_or_else(|e| panic!("{e}")),
        id_scope: running.id_scope.to_string(),
        group_key: group_key.clone(),
        step_timeout: Duration::from_secs(30),
        poll_delay: POLL_DELAY,
        max_requests: 64,
    });
    Bench {
        running,
        group_key,
        root_der,
        mqtt,
        next: AtomicUsize::new(0),
        _dir: dir,
    }
}

/// One AMQP device: connect with SASL PLAIN, register, poll until assigned, close.
async fn amqp_device(bench: &Bench, id: &str) {
    let address = format!("{}/registrations/{id}", bench.running.id_scope);
    let key = dps_attest::derive_device_key(&bench.group_key, id);
    let expiry = dps_types::Timestamp::now().unix() + 3600;
    let token = dps_attest::SasToken::generate(&address, &key, Some("registration"), expiry);
    let amqp_addr = bench
        .running
        .amqp_addr
        .unwrap_or_else(|| panic!("AMQP is on"));
    let tls = amqp::tls(amqp_addr, &bench.root_der, None).await;
    let profile = SaslProfile::Plain {
        username: address.clone(),
        password: token,
    };
    let mut device = amqp::Device::attach(amqp::connect(tls, Some(profile)).await, &address).await;
    let amqp::Reply::Answer { mut body, .. } = device.register().await else {
        panic!("register rejected");
    };
    while body["status"] == "assigning" {
        tokio::time::sleep(POLL_DELAY).await;
        let operation = body["operationId"].as_str().unwrap_or_default().to_owned();
        body = match device.poll(&operation).await {
            amqp::Reply::Answer { body, .. } => body,
            other => panic!("poll: {other:?}"),
        };
    }
    assert_eq!(body["status"], "assigned", "{body}");
    device.close().await;
}

/// `iters` passes of `DEVICES` fresh devices, `CONCURRENCY` at a time, over `transport`.
async fn run(bench: &Arc<Bench>, iters: u64, amqp_transport: bool) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        let first = bench.next.fetch_add(DEVICES, Ordering::Relaxed);
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..CONCURRENCY {
            let bench = Arc::clone(bench);
            tasks.spawn(async move {
                for n in (first + worker..first + DEVICES).step_by(CONCURRENCY) {
                    let id = format!("bench-{n}");
                    if amqp_transport {
                        amqp_device(&bench, &id).await;
                    } else {
                        device::run(&bench.mqtt, &id)
                            .await
                            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    started.elapsed()
}

fn amqp_vs_mqtt(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let bench = Arc::new(runtime.block_on(start()));
    let mut group = c.benchmark_group("register_over");
    group.throughput(Throughput::Elements(DEVICES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("mqtt", |b| {
        b.iter_custom(|iters| runtime.block_on(run(&bench, iters, false)))
    });
    group.bench_function("amqp", |b| {
        b.iter_custom(|iters| runtime.block_on(run(&bench, iters, true)))
    });
    group.finish();
}

criterion_group!(benches, amqp_vs_mqtt);
criterion_main!(benches);
