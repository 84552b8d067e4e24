//! Target: the in-process register path (attested device in, registration record durable,
//! answer out) at 20,000/s or more with 64 concurrent registrations. Baseline in the same run:
//! the durable registration-record write alone (`Store::put_registration`), so the ratio is
//! what matching and allocation add.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dps_attest::{attest_sas, AttestedDevice, SasToken};
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig, Transport};
use dps_store::{Precondition, RegistrationRecord, Store};
use dps_types::{
    DeviceRegistrationState, HubName, IdScope, IndividualEnrollment, RegistrationStatus,
    SymmetricKey,
};

const CONCURRENCY: usize = 64;
const DEVICES: usize = 6400;

fn register(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let scope = IdScope::parse("0ne00000BEN").unwrap_or_else(|e| panic!("{e}"));
    let hubs = [
        "hub-1.example.net",
        "hub-2.example.net",
        "hub-3.example.net",
    ]
    .iter()
    .map(|h| LinkedHub {
        host_name: HubName::parse(h).unwrap_or_else(|e| panic!("{e}")),
        allocation_weight: 1,
        apply_allocation_policy: true,
    })
    .collect();
    let registrar = Registrar::new(store.clone(), RegistrarConfig::new(scope.clone(), hubs))
        .unwrap_or_else(|e| panic!("{e}"));
    let key = SymmetricKey::generate();
    let now = dps_types::Timestamp::now().unix();
    let devices: Arc<Vec<AttestedDevice>> = Arc::new(runtime.block_on(async {
        let mut devices = Vec::with_capacity(DEVICES);
        for n in 0..DEVICES {
            let id = format!("reg-bench-{n}");
            let e: IndividualEnrollment = serde_json::from_value(serde_json::json!({
                "registrationId": id,
                "attestation": {"type": "symmetricKey", "symmetricKey": {
                    "primaryKey": key.expose_base64(), "secondaryKey": key.expose_base64()}}
            }))
            .unwrap_or_else(|e| panic!("{e}"));
            let e = dps_attest::prepare_individual(e, &registrar.enrollment_rules())
                .unwrap_or_else(|e| panic!("{e}"));
            store
                .put_enrollment(e, &Precondition::Any)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let token = SasToken::generate(
                &format!("{scope}/registrations/{id}"),
                &key,
                None,
                now + 3600,
            );
            devices.push(
                attest_sas(&token, &scope, &id, registrar.lookup(), now)
                    .unwrap_or_else(|r| panic!("{r}")),
            );
        }
        devices
    }));

    let mut group = c.benchmark_group("register_64_concurrent");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(DEVICES as u64));
    group.bench_function("record_write_baseline", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(run(iters, &devices, {
                let store = store.clone();
                move |d: AttestedDevice| {
                    let store = store.clone();
                    async move {
                        let mut state =
                            DeviceRegistrationState::unassigned(d.registration_id().clone());
                        state.status = Some(RegistrationStatus::Assigned);
                        let record = RegistrationRecord {
                            state,
                            enrollment_group_id: None,
                        };
                        store
                            .put_registration(record, &Precondition::Any)
                            .await
                            .map(drop)
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                }
            }))
        })
    });
    group.bench_function("register", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(run(iters, &devices, {
                let registrar = registrar.clone();
                move |d: AttestedDevice| {
                    let registrar = registrar.clone();
                    async move {
                        let r = registrar
                            .register(&d, Transport::Mqtt, None)
                            .await
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert_eq!(r.status, RegistrationStatus::Assigned);
                    }
                }
            }))
        })
    });
    group.finish();
}

/// `iters` passes over every device, CONCURRENCY at a time.
async fn run<F, Fut>(iters: u64, devices: &Arc<Vec<AttestedDevice>>, job: F) -> Duration
where
    F: Fn(AttestedDevice) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    for _ in 0..iters {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..CONCURRENCY {
            let (devices, job) = (Arc::clone(devices), job.clone());
            tasks.spawn(async move {
                for d in devices.iter().skip(worker).step_by(CONCURRENCY) {
                    job(d.clone()).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    started.elapsed()
}

criterion_group!(benches, register);
criterion_main!(benches);
