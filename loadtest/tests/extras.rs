//! Baselines (the bare TLS server as a child process of the built binary, Mosquitto), hold
//! mode, metrics scraping and /proc readings, against real servers on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dps_loadtest::baseline::{self, BaselineKind, BaselineSettings, DpsdFigures, MqttBroker};
use dps_loadtest::extras::Watchers;
use dps_loadtest::procfs::Pid;
use dps_loadtest::scrape::ScrapeUrl;

mod common;

use common::{config_for, start_dpsd};

fn settings(kinds: Vec<BaselineKind>, connections: usize) -> BaselineSettings {
    BaselineSettings {
        kinds,
        connections,
        concurrency: 16,
        step_timeout: Duration::from_secs(10),
        duration_limit: Duration::from_secs(120),
        exe: PathBuf::from(env!("CARGO_BIN_EXE_dps-loadtest")),
        broker: MqttBroker::Mosquitto(baseline::MOSQUITTO.into()),
    }
}

const DPSD: DpsdFigures = DpsdFigures {
    registrations_per_sec: 1000.0,
    cpu_us_per_device: Some(400.0),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mtls_baselines_complete_every_connection_and_report_server_cpu() {
    let report = baseline::run(
        &settings(vec![BaselineKind::Tls, BaselineKind::Mtls], 300),
        &DPSD,
    )
    .await;
    assert_eq!(report.runs.len(), 2);
    for (run, kind) in report
        .runs
        .iter()
        .zip([BaselineKind::Tls, BaselineKind::Mtls])
    {
        assert_eq!(run.kind, kind);
        assert!(run.all_ok(), "{run}");
        assert_eq!(run.ok, 300, "{run}");
        assert!(run.per_sec > 0.0, "{run}");
        assert_eq!(run.latency_ms.samples, 300);
        assert!(run.latency_ms.p50 > 0.0 && run.latency_ms.p50 <= run.latency_ms.max);
        // A child process did the handshakes: it spent CPU, and the ratios follow from it.
        assert!(run.server.contains("pid"), "{run}");
        let cpu = run.server_cpu_secs.expect("the child's CPU from /proc");
        assert!(cpu > 0.0, "{run}");
        let per = run.server_cpu_us_per_connection.unwrap();
        assert!((run.cpu_ratio.unwrap() - 400.0 / per).abs() < 1e-6, "{run}");
        assert!(
            (run.rate_ratio.unwrap() - 1000.0 / run.per_sec).abs() < 1e-6,
            "{run}"
        );
        assert!(run.to_string().contains("dpsd/baseline"), "{run}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_baseline_runs_against_mosquitto_or_says_it_is_missing() {
    let report = baseline::run(&settings(vec![BaselineKind::Mqtt], 200), &DPSD).await;
    let run = &report.runs[0];
    if !Path::new(baseline::MOSQUITTO).exists() {
        assert!(
            run.skipped.as_deref().unwrap().contains("not installed"),
            "{run}"
        );
        return;
    }
    assert!(run.all_ok(), "{run}");
    assert_eq!(run.ok, 200, "{run}");
    assert!(run.server.starts_with("mosquitto"), "{run}");
    assert!(run.server_cpu_secs.unwrap() > 0.0, "{run}");
    assert!(run.rate_ratio.is_some() && run.cpu_ratio.is_some(), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_during_the_device_phase_and_server_cpu_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let mut config = config_for(&running);
    config.devices = 200;
    config.concurrency = 16;
    let metrics = running.metrics_addr.expect("metrics listener");
    let url = ScrapeUrl::parse(&format!("http://{metrics}/metrics")).unwrap();
    let mut watchers = Watchers::new(
        Some(Pid::own()),
        Some((url, Duration::from_millis(100))),
        Duration::from_secs(5),
    );
    let report = dps_loadtest::run_observed(&config, |_| {}, &mut watchers)
        .await
        .unwrap();
    assert_eq!(report.assigned, 200, "{report}");
    let phase = watchers.finish(&report).await;
    let scrape = phase.scrape.unwrap();
    // The first scrape is at once: there is at least one however short the phase.
    assert!(scrape.ok >= 1, "{scrape}");
    assert!(scrape.errors.is_empty(), "{scrape}");
    assert!(scrape.last_bytes > 0 && scrape.latency_ms.samples as u64 == scrape.ok);
    let server = &phase.server;
    assert!(server.cpu_secs.unwrap() > 0.0, "{server}");
    assert!(server.cpu_us_per_device.unwrap() > 0.0, "{server}");
    assert!(server.tool_cpu_secs.is_some(), "{server}");
    assert!(
        server
            .note
            .as_deref()
            .unwrap()
            .contains("inside this process"),
        "{server}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_finds_dpsd_by_its_port_and_prints_baseline_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dps-loadtest"))
        .args(["--data-dir", running.data_dir.to_str().unwrap()])
        .args([
            "--api",
            &format!("https://localhost:{}", running.api_addr.port()),
        ])
        .args(["--mqtt", &running.mqtt_addr.to_string()])
        .args([
            "--devices",
            "100",
            "--concurrency",
            "8",
            "--poll-delay",
            "20ms",
        ])
        .args(["--baseline", "tls,mtls", "--json", "--quiet"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["assigned"], 100);
    // dpsd is this test process, found by the MQTT listener's socket.
    assert_eq!(lines[1]["phase"]["server"]["pid"], std::process::id());
    assert!(
        lines[1]["phase"]["server"]["cpu_us_per_device"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let runs = lines[1]["baseline"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{stdout}");
    for run in runs {
        assert_eq!(run["ok"], 100, "{run}");
        assert!(run["rate_ratio"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["cpu_ratio"].as_f64().unwrap() > 0.0, "{run}");
    }
    running.shutdown().await.unwrap();
}
