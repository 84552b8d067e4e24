//! Target: durable enrollment writes through the API with 64 concurrent clients, at least
//! 5,000/s on a 2-core machine. Baseline in the same run: authenticated GETs of one enrollment
//! (the same TLS, HTTP, auth and JSON work, no store write), so the ratio shows what
//! durability costs. Clients and server share the machine's cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dps_types::SymmetricKey;

const CLIENTS: usize = 64;
const REQUESTS_PER_ITERATION: usize = 6400;

struct Client {
    http: reqwest::Client,
    base: String,
    host: String,
    key: SymmetricKey,
}

impl Client {
    fn sas(&self) -> String {
        let now = dps_types::Timestamp::now().unix();
        dps_attest::SasToken::generate(&self.host, &self.key, Some(dpsd::OWNER_POLICY), now + 3600)
    }
}

fn api_writes(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let flags = dpsd::Flags {
        data_dir: Some(dir.path().to_owned()),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        log: Some("warn".into()),
        ..Default::default()
    };
    let config = dpsd::Config::load(
        None,
        [("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned())],
        &flags,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let running = runtime
        .block_on(dpsd::start(config))
        .unwrap_or_else(|e| panic!("{e}"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&running.ca_file).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let key = running
        .connection_string
        .rsplit("SharedAccessKey=")
        .next()
        .unwrap_or_default();
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .add_root_certificate(ca)
            .pool_max_idle_per_host(CLIENTS)
            .build()
            .unwrap_or_else(|e| panic!("{e}")),
        base: format!("https://localhost:{}", running.api_addr.port()),
        host: "localhost:8443".into(),
        key: SymmetricKey::parse(key).unwrap_or_else(|e| panic!("{e}")),
    });
    // One enrollment for the GET baseline.
    runtime.block_on(put(&client, "baseline-device".into()));

    let mut group = c.benchmark_group("api_64_clients");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(REQUESTS_PER_ITERATION as u64));
    let mut round = 0usize;
    group.bench_function("get_baseline", |b| {
        b.iter_custom(|iters| runtime.block_on(run(&client, iters, |c, _| Box::pin(get(c)))))
    });
    group.bench_function("put_durable", |b| {
        b.iter_custom(|iters| {
            round += 1;
            let r = round;
            runtime.block_on(run(&client, iters, move |c, n| {
                Box::pin(async move { put(&c, format!("bench-{r}-{n}")).await })
            }))
        })
    });
    group.finish();
    let _ = runtime.block_on(running.shutdown());
}

type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// `iters` rounds of REQUESTS_PER_ITERATION requests from CLIENTS concurrent tasks.
async fn run(
    client: &Arc<Client>,
    iters: u64,
    job: impl Fn(Arc<Client>, usize) -> Job + Send + Sync + 'static,
) -> Duration {
    let job = Arc::new(job);
    let started = Instant::now();
    for i in 0..iters as usize {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..CLIENTS {
            let (client, job) = (Arc::clone(client), Arc::clone(&job));
            tasks.spawn(async move {
                for n in 0..REQUESTS_PER_ITERATION / CLIENTS {
                    job(
                        Arc::clone(&client),
                        (i * CLIENTS + t) * REQUESTS_PER_ITERATION + n,
                    )
                    .await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    started.elapsed()
}

async fn put(client: &Client, id: String) {
    let res = client
        .http
        .put(format!(
            "{}/enrollments/{id}?api-version=2021-10-01",
            client.base
        ))
        .header("Authorization", client.sas())
        .json(&serde_json::json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(res.status().is_success(), "PUT answered {}", res.status());
}

async fn get(client: Arc<Client>) {
    let res = client
        .http
        .get(format!(
            "{}/enrollments/baseline-device?api-version=2021-10-01",
            client.base
        ))
        .header("Authorization", client.sas())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(res.status().is_success(), "GET answered {}", res.status());
}

criterion_group!(benches, api_writes);
criterion_main!(benches);
