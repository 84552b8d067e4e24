//! The metrics as their real consumer sees them: a Prometheus server (Debian's `prometheus`,
//! started here on a free loopback port with the scrape config and alert rules from
//! `deploy/prometheus/`) scrapes an in-process dpsd while devices register over MQTT and AMQP,
//! and the results are read back through Prometheus' query API. And the cardinality bound: a thousand
//! distinct devices, made-up ids among them, add no series.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_loadtest::device::{self, DeviceContext, Failure};
use dps_loadtest::{ApiEndpoint, Config, Loopback, Mix};
use dps_test_util::amqp;
use dps_types::{EnrollmentGroupId, SymmetricKey};

const HUB: &str = "hub-1.example.net";
/// Longest wait for Prometheus to start or to show what was scraped.
const WAIT: Duration = Duration::from_secs(120);

/// dpsd in `dir` with one linked hub, every listener on a free loopback port.
async fn start_dpsd(dir: &Path) -> dpsd::Running {
    let file = dir.join("dpsd.toml");
    std::fs::write(&file, format!("[[linked_hubs]]\nhost_name = \"{HUB}\"\n")).unwrap();
    let flags = dpsd::Flags {
        data_dir: Some(dir.join("data")),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        log: Some("warn".into()),
        ..Default::default()
    };
    let env = [("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned())];
    let config = dpsd::Config::load(Some(&file), env, &flags).unwrap();
    dpsd::start(config).await.unwrap()
}

/// Registers `devices` devices of the symmetric-key group `group` with the load tool (the
/// group is created and kept); every one must end assigned.
async fn register(running: &dpsd::Running, group: &str, devices: usize) {
    let mut config = Config::new(
        running.data_dir.clone(),
        ApiEndpoint::from_addr(running.api_addr).unwrap(),
        Loopback::new(running.mqtt_addr).unwrap(),
    );
    config.group = EnrollmentGroupId::parse(group).unwrap();
    config.devices = devices;
    config.concurrency = 32;
    config.keep = true;
    config.duration_limit = Duration::from_secs(600);
    config.poll_delay = Duration::from_millis(20);
    let report = dps_loadtest::run(&config, |_| {}).await.unwrap();
    assert_eq!(report.assigned, devices, "{report}");
}

/// Made-up devices (`prefix-000000`, ...) that sign with a key of their own: every CONNECT is
/// refused (CONNACK 5), whatever enrollment exists.
async fn impostors(running: &dpsd::Running, prefix: &str, count: usize) {
    let ca = std::fs::read(&running.ca_file).unwrap();
    let context = Arc::new(DeviceContext {
        mqtt: Loopback::new(running.mqtt_addr).unwrap(),
        amqp: Loopback::new(running.amqp_addr.unwrap()).unwrap(),
        https: Loopback::new(running.api_addr).unwrap(),
        tls: device::TlsClients::new(&ca).unwrap(),
        id_scope: running.id_scope.to_string(),
        id_prefix: prefix.to_owned(),
        mix: Mix::parse("mqtt-sas:1").unwrap(),
        group_key: SymmetricKey::generate(),
        individual_key: SymmetricKey::generate(),
        leaves: Vec::new(),
        chain_tail: Vec::new(),
        step_timeout: Duration::from_secs(30),
        poll_delay: Duration::from_millis(20),
        max_requests: 4,
    });
    let ids: Vec<usize> = (0..count).collect();
    for chunk in ids.chunks(16) {
        let mut tasks = tokio::task::JoinSet::new();
        for &n in chunk {
            let context = Arc::clone(&context);
            tasks.spawn(async move { device::run(&context, n).await });
        }
        while let Some(done) = tasks.join_next().await {
            assert_eq!(done.unwrap().1.unwrap_err(), Failure::ConnAck(5));
        }
    }
}

/// A Prometheus server scraping one target every second, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

impl Prometheus {
    /// `deploy/prometheus/prometheus.yml` pointed at `target` with a 1 s scrape interval,
    /// next to a copy of the alert rules it loads; returns once Prometheus is ready.
    async fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let deploy = deploy_dir();
        let config = std::fs::read_to_string(deploy.join("prometheus.yml")).unwrap();
        assert!(config.contains("\"127.0.0.1:9464\"") && config.contains("scrape_interval: 15s"));
        let config = config
            .replace("\"127.0.0.1:9464\"", &format!("\"{target}\""))
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
            .replace("scrape_timeout: 10s", "scrape_timeout: 1s");
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        std::fs::copy(deploy.join("alerts.yml"), dir.path().join("alerts.yml")).unwrap();
        // A free port: bound and released; Prometheus takes it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `prometheus` (Debian package prometheus; scripts/test.sh installs it): {e}")
            });
        let prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.base);
        prometheus
            .poll("Prometheus ready", || async {
                let r = prometheus.http.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            })
            .await;
        prometheus
    }

    /// Polls `probe` until it gives a value (at most [`WAIT`]).
    async fn poll<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(started.elapsed() < WAIT, "gave up waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of an instant query's first sample (None: no sample).
    async fn query(&self, promql: &str) -> Option<f64> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// Waits until `promql` evaluates to `expected` (scrapes run every second).
    async fn expect(&self, promql: &str, expected: f64) {
        let mut last = None;
        let found = tokio::time::timeout(WAIT, async {
            loop {
                last = self.query(promql).await;
                if last == Some(expected) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "{promql}: expected {expected}, Prometheus has {last:?}"
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_registrations_failures_by_reason_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let metrics_addr = running
        .metrics_addr
        .expect("metrics listener on by default");
    let prometheus = Prometheus::start(metrics_addr).await;
    prometheus.expect(r#"up{job="dpsd"}"#, 1.0).await;

    // Made-up ids before any enrollment exists, then with a wrong key once a group covers
    // every id.
    impostors(&running, "nobody", 4).await;
    register(&running, "metrics-group", 30).await;
    impostors(&running, "forger", 6).await;

    prometheus
        .expect(
            r#"sum(dps_registrations_total{transport="mqtt", attestation="symmetricKey", outcome="assigned"})"#,
            30.0,
        )
        .await;
    prometheus
        .expect(r#"sum(dps_registrations_total{outcome!="assigned"})"#, 0.0)
        .await;
    prometheus
        .expect(
            r#"dps_attestation_failures_total{reason="no_enrollment"}"#,
            4.0,
        )
        .await;
    prometheus
        .expect(
            r#"dps_attestation_failures_total{reason="sas_signature_mismatch"}"#,
            6.0,
        )
        .await;
    prometheus
        .expect(r#"sum(dps_attestation_failures_total)"#, 10.0)
        .await;
    prometheus
        .expect(
            r#"dps_mqtt_connections_closed_total{reason="not_authorized"}"#,
            10.0,
        )
        .await;
    prometheus
        .expect(&format!(r#"dps_assignments_total{{hub="{HUB}"}}"#), 30.0)
        .await;
    prometheus
        .expect(
            r#"dps_tls_handshakes_total{listener="mqtt", result="ok"}"#,
            40.0,
        )
        .await;
    // The latency histogram: every assigned device observed, a median within the buckets.
    prometheus
        .expect(
            r#"dps_registration_duration_seconds_count{transport="mqtt"}"#,
            30.0,
        )
        .await;
    prometheus
        .expect(
            r#"dps_registration_duration_seconds_bucket{transport="mqtt", le="+Inf"}"#,
            30.0,
        )
        .await;
    let median = prometheus
        .query(r#"histogram_quantile(0.5, sum by (le) (dps_registration_duration_seconds_bucket{transport="mqtt"}))"#)
        .await
        .unwrap();
    assert!(median > 0.0 && median <= 30.0, "{median}");
    let flushes = prometheus
        .query("dps_store_flush_duration_seconds_count")
        .await
        .unwrap();
    assert!(flushes >= 1.0, "{flushes}");
    prometheus.expect("dps_store_healthy", 1.0).await;
    prometheus
        .expect(r#"dps_enrollments{kind="group"}"#, 1.0)
        .await;
    prometheus.expect("dps_registration_records", 30.0).await;
    let expiry = prometheus
        .query(r#"dps_tls_certificate_not_after_seconds{listener="mqtt"}"#)
        .await
        .unwrap();
    assert!(
        expiry > dps_types::Timestamp::now().unix() as f64,
        "{expiry}"
    );

    // Every query of the Grafana dashboard is valid PromQL, and its main panels show data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("../grafana/dpsd.json")).unwrap(),
    )
    .unwrap();
    let mut with_data = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            if prometheus.query(&expr).await.is_some() {
                with_data.push(panel["title"].as_str().unwrap().to_owned());
            }
        }
    }
    for title in [
        "Registrations per second by outcome",
        "Registration latency (accepted to assigned)",
        "Attestation failures by reason",
        "Assignments per linked hub",
        "Open connections",
        "Store flush latency",
    ] {
        assert!(
            with_data.iter().any(|t| t == title),
            "{title}: {with_data:?}"
        );
    }

    // The alert rules loaded and are evaluated: 10 of the 40 attempts were refused, so the
    // failure-ratio alert is pending (it fires after 10 minutes); every other one is quiet.
    let rules = prometheus
        .poll("the failure-ratio alert pending", || async {
            let rules: serde_json::Value = prometheus
                .http
                .get(format!("{}/api/v1/rules", prometheus.base))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let pending = rules["data"]["groups"][0]["rules"]
                .as_array()?
                .iter()
                .any(|r| {
                    r["name"] == "DpsdRegistrationFailureRatioHigh" && r["state"] == "pending"
                });
            pending.then_some(rules)
        })
        .await;
    let loaded = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(loaded.len(), 8, "{rules}");
    for rule in loaded {
        if rule["name"] != "DpsdRegistrationFailureRatioHigh" {
            assert_eq!(rule["state"], "inactive", "{rule}");
        }
    }

    running.shutdown().await.unwrap();
}

/// Enrolls `id` with a fresh symmetric key (straight into the store) and returns a SASL PLAIN
/// profile signed with `key`, or with the enrolled key when `key` is `None`.
async fn amqp_sas(
    running: &dpsd::Running,
    id: &str,
    key: Option<SymmetricKey>,
) -> fe2o3_amqp::sasl_profile::SaslProfile {
    let enrolled = SymmetricKey::generate();
    let enrollment: dps_types::IndividualEnrollment = serde_json::from_value(serde_json::json!({
        "registrationId": id,
        "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": enrolled.expose_base64()}}}))
    .unwrap();
    let registrar = &running.registrar;
    let prepared =
        dps_attest::prepare_individual(enrollment, &registrar.enrollment_rules()).unwrap();
    registrar
        .store()
        .put_enrollment(prepared, &dps_store::Precondition::Any)
        .await
        .unwrap();
    let address = format!("{}/registrations/{id}", running.id_scope);
    let expiry = dps_types::Timestamp::now().unix() + 3600;
    let token = dps_attest::SasToken::generate(
        &address,
        &key.unwrap_or(enrolled),
        Some("registration"),
        expiry,
    );
    fe2o3_amqp::sasl_profile::SaslProfile::Plain {
        username: address,
        password: token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_registration_and_its_connections_show_under_listener_amqp() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let amqp_addr = running.amqp_addr.expect("AMQP listener on by default");
    let prometheus = Prometheus::start(running.metrics_addr.unwrap()).await;
    prometheus.expect(r#"up{job="dpsd"}"#, 1.0).await;
    let ca = std::fs::read_to_string(&running.ca_file).unwrap();
    let root = dps_test_util::tls::certs(&ca).remove(0);

    let profile = amqp_sas(&running, "amqp-metrics-1", None).await;
    let tls = amqp::tls(amqp_addr, &root, None).await;
    let address = format!("{}/registrations/amqp-metrics-1", running.id_scope);
    let mut device = amqp::Device::attach(amqp::connect(tls, Some(profile)).await, &address).await;
    let state = device.register_until_done().await;
    assert_eq!(state["status"], "assigned", "{state}");
    device.close().await;
    let wrong = amqp_sas(&running, "amqp-metrics-2", Some(SymmetricKey::generate())).await;
    let tls = amqp::tls(amqp_addr, &root, None).await;
    let mut refused = amqp::connect(tls, Some(wrong)).await;
    let error = amqp::closed_with(&mut refused).await.unwrap();
    assert!(error.contains("UnauthorizedAccess"), "{error}");

    for (promql, value) in [
        (
            r#"dps_registrations_total{transport="amqp", attestation="symmetricKey", outcome="assigned"}"#,
            1.0,
        ),
        (
            r#"dps_registration_duration_seconds_count{transport="amqp"}"#,
            1.0,
        ),
        (r#"dps_connections_accepted_total{listener="amqp"}"#, 2.0),
        (
            r#"dps_tls_handshakes_total{listener="amqp", result="ok"}"#,
            2.0,
        ),
        (
            r#"dps_tls_handshake_duration_seconds_count{listener="amqp"}"#,
            2.0,
        ),
        (r#"sum(dps_connections_shed_total{listener="amqp"})"#, 0.0),
        (
            r#"dps_amqp_connections_closed_total{reason="not_authorized"}"#,
            1.0,
        ),
        (r#"sum(dps_amqp_connections_closed_total)"#, 1.0),
        (r#"dps_throttled_responses_total{transport="amqp"}"#, 0.0),
        (
            r#"dps_attestation_failures_total{reason="sas_signature_mismatch"}"#,
            1.0,
        ),
        (r#"dps_connections_open{listener="amqp"}"#, 0.0),
        (
            r#"count(dps_tls_certificate_not_after_seconds{listener="amqp"})"#,
            1.0,
        ),
        // Nothing of it was counted as MQTT.
        (r#"dps_connections_accepted_total{listener="mqtt"}"#, 0.0),
    ] {
        prometheus.expect(promql, value).await;
    }
    running.shutdown().await.unwrap();
}

/// Sample lines of a scrape (every series once).
async fn series(metrics: SocketAddr) -> Vec<String> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name).to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_distinct_devices_add_no_series() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let metrics = running.metrics_addr.unwrap();

    // The first ten: refused made-up ids, assigned devices, refused forgers.
    impostors(&running, "first-nobody", 2).await;
    register(&running, "first-group", 6).await;
    impostors(&running, "first-forger", 2).await;
    let after_ten = series(metrics).await;

    // 990 more distinct devices: assigned ones of another group, and made-up ids.
    register(&running, "second-group", 790).await;
    impostors(&running, "made-up", 200).await;
    let after_thousand = series(metrics).await;

    assert_eq!(running.registrar.store().cache().registration_count(), 796);
    let text = after_thousand.join("\n");
    assert!(!text.contains("made-up") && !text.contains("second-group"));
    assert_eq!(after_thousand, after_ten, "the series changed");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_more_checks_and_collectors_can_be_added() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let base = format!("http://{}", running.metrics_addr.unwrap());
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get("/readyz").await, (200, "ready\n".to_owned()));

    // A part that joins later adds a readiness check and a collector.
    let gauge = dps_metrics::prometheus::IntGauge::new("dps_test_part_up", "test").unwrap();
    running.metrics.register(Box::new(gauge.clone())).unwrap();
    let up = gauge.clone();
    running.health.add_check("test part", move || up.get() == 1);
    assert_eq!(
        get("/readyz").await,
        (503, "not ready: test part\n".to_owned())
    );
    gauge.set(1);
    assert_eq!(get("/readyz").await.0, 200);
    let (_, text) = get("/metrics").await;
    assert!(text.contains("\ndps_test_part_up 1\n"), "{text}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_shows_its_broker_link_in_metrics_and_readiness() {
    use dps_test_util::broker::{unique, Cutter, TestBroker};
    let cutter = Cutter::start().await;
    let exchange = unique("exchange");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dpsd.toml");
    std::fs::write(&file, format!("[[linked_hubs]]\nhost_name = \"{HUB}\"\n")).unwrap();
    let flags = dpsd::Flags {
        data_dir: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        log: Some("warn".into()),
        ..Default::default()
    };
    let env = [
        ("DPSD_METRICS_LISTEN", "127.0.0.1:0".to_owned()),
        ("DPSD_FEED_ENABLED", "true".to_owned()),
        ("DPSD_FEED_URL", cutter.url()),
        ("DPSD_FEED_EXCHANGE", exchange.clone()),
        ("DPSD_FEED_RECONNECT_MAX", "200ms".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let config = dpsd::Config::load(Some(&file), env, &flags).unwrap();
    let running = dpsd::start(config).await.unwrap();
    let base = format!("http://{}", running.metrics_addr.unwrap());
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let until = |path: &'static str, status: u16, needle: String| {
        let get = &get;
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let (s, text) = get(path).await;
                if s == status && text.contains(&needle) {
                    return;
                }
                assert!(Instant::now() < deadline, "{path}: {s} {text}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(get("/readyz").await, (200, "ready\n".to_owned()));
    let (_, text) = get("/metrics").await;
    assert!(text.contains("\ndps_feed_link_up 1\n"), "{text}");
    assert!(
        text.contains(&format!("dps_feed_outbox_events{{hub=\"{HUB}\"}} 0")),
        "{text}"
    );

    cutter.cut();
    until("/readyz", 503, "not ready: broker".into()).await;
    until("/metrics", 200, "\ndps_feed_link_up 0\n".into()).await;
    cutter.restore().await;
    until("/readyz", 200, "ready".into()).await;
    let (_, text) = get("/metrics").await;
    assert!(text.contains("\ndps_feed_reconnects_total 1\n"), "{text}");

    // Each assignment waits for the broker's confirm, and the wait is timed.
    register(&running, "feed-group", 5).await;
    let (_, text) = get("/metrics").await;
    assert!(
        text.contains("\ndps_feed_confirm_duration_seconds_count 5\n"),
        "{text}"
    );
    assert!(
        text.contains("\ndps_feed_confirm_duration_seconds_bucket{le=\"10\"} 5\n"),
        "{text}"
    );

    running.shutdown().await.unwrap();
    TestBroker::connect().await.delete(&exchange, &[]).await;
}
