//! The load tool against an in-process dpsd on loopback port 0 with one linked hub: every
//! kind of device (MQTT, AMQP and HTTPS, symmetric key and X.509) and a mix of them.

use std::path::Path;
use std::time::Duration;

use dps_loadtest::report::csv;
use dps_loadtest::{ApiEndpoint, CaSource, Cleanup, CleanupSummary, Config, Loopback, Mix, Rate};
use dps_types::EnrollmentGroupId;

mod common;

use common::{config_for, start_dpsd};

fn group_exists(running: &dpsd::Running, group: &EnrollmentGroupId) -> bool {
    running.registrar.store().group(group).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_is_assigned_and_cleanup_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let store = running.registrar.store().clone();

    let mut config = config_for(&running);
    config.devices = 200;
    config.concurrency = 32;
    config.keep = true;
    let report = dps_loadtest::run(&config, |_| {}).await.unwrap();
    assert_eq!(report.assigned, 200, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!((report.unfinished, report.not_started), (0, 0));
    assert!(!report.timed_out);
    assert!(report.all_assigned());
    assert_eq!(report.flow_ms.samples, 200);
    assert!(report.flow_ms.p50 > 0.0 && report.flow_ms.p50 <= report.flow_ms.max);
    assert!(report.tls_ms.p99 <= report.flow_ms.max);
    assert!(report.registrations_per_sec > 0.0);
    assert_eq!(report.cleanup, Cleanup::Kept);

    // --keep: the records and the group are there.
    assert_eq!(store.cache().registration_count(), 200);
    assert!(group_exists(&running, &config.group));

    let summary = dps_loadtest::cleanup(&config).await.unwrap();
    assert_eq!(
        summary,
        CleanupSummary {
            registrations_deleted: 200,
            group_deleted: true
        }
    );
    assert_eq!(store.cache().registration_count(), 0);
    assert!(!group_exists(&running, &config.group));

    // Without --keep the run cleans up after itself.
    config.devices = 20;
    config.keep = false;
    config.group = EnrollmentGroupId::parse("second-group").unwrap();
    let report = dps_loadtest::run(&config, |_| {}).await.unwrap();
    assert_eq!(report.assigned, 20, "{report}");
    assert_eq!(
        report.cleanup,
        Cleanup::Done(CleanupSummary {
            registrations_deleted: 20,
            group_deleted: true
        })
    );
    assert_eq!(store.cache().registration_count(), 0);
    assert!(!group_exists(&running, &config.group));

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_duration_limit_stops_the_run_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;

    let mut config = config_for(&running);
    config.devices = 50;
    config.concurrency = 4;
    // Each device waits dpsd's retry-after (1 s) before its poll: none can finish in 300 ms.
    config.poll_delay = Duration::from_secs(5);
    config.duration_limit = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let report = dps_loadtest::run(&config, |_| {}).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(report.timed_out, "{report}");
    assert_eq!(report.assigned, 0, "{report}");
    assert_eq!(report.started, 4, "{report}");
    assert_eq!(report.unfinished, 4, "{report}");
    assert_eq!(report.not_started, 46, "{report}");
    assert!(!report.all_assigned());
    // The registrations dpsd finished for the stopped devices are cleaned up too.
    assert!(matches!(report.cleanup, Cleanup::Done(_)), "{report}");
    assert_eq!(
        running.registrar.store().cache().registration_count(),
        0,
        "{report}"
    );

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_assigns_every_device_it_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;

    // 200 devices a second for 2 s: 400 devices, each counted from its scheduled start.
    let mut config = config_for(&running);
    config.rate = Some(Rate::parse("200/s").unwrap());
    config.duration = Some(Duration::from_secs(2));
    config.devices = 10_000;
    config.concurrency = 256;
    let report = dps_loadtest::run(&config, |_| {}).await.unwrap();
    assert_eq!((report.started, report.assigned), (400, 400), "{report}");
    assert_eq!((report.failed, report.unfinished), (0, 0), "{report}");
    assert_eq!(report.not_started, 0, "{report}");
    assert!(report.all_assigned(), "{report}");
    assert_eq!(report.flow_ms.samples, 400);
    assert_eq!(report.lag_ms.samples, 400);
    // Latency counts from the scheduled start, so it includes the lag.
    assert!(report.flow_ms.max >= report.lag_ms.max, "{report}");
    assert!(report.max_in_flight >= 1 && report.max_in_flight <= 256);
    assert!(report.registrations_per_sec > 0.0, "{report}");
    // dpsd holds exactly the records the report counts, and cleanup removed them.
    assert_eq!(
        report.cleanup,
        Cleanup::Done(CleanupSummary {
            registrations_deleted: 400,
            group_deleted: true
        }),
        "{report}"
    );

    // The same numbers in the JSON object and the CSV row.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        (json["mode"].as_str(), json["assigned"].as_u64()),
        (Some("open"), Some(400))
    );
    let table = dir.path().join("runs.csv");
    csv::append(&table, &report).unwrap();
    let text = std::fs::read_to_string(&table).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], csv::HEADER);
    let column = csv::HEADER
        .split(',')
        .position(|c| c == "assigned")
        .unwrap();
    assert_eq!(lines[1].split(',').nth(column), Some("400"));

    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_non_loopback_target_is_refused_before_any_traffic() {
    let err = Loopback::parse("192.0.2.10:8883").unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    let err = ApiEndpoint::parse("https://203.0.113.5:8443").unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    assert!(ApiEndpoint::from_addr("198.51.100.1:8443".parse().unwrap()).is_err());
}

/// Runs `config` (`devices` of them) to the end and checks that every device was assigned and
/// that the cleanup removed every record and the groups.
async fn assert_all_assigned_and_cleaned(running: &dpsd::Running, config: &Config) {
    let report = dps_loadtest::run(config, |_| {}).await.unwrap();
    assert_eq!(report.assigned, config.devices, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.cleanup,
        Cleanup::Done(CleanupSummary {
            registrations_deleted: config.devices,
            group_deleted: true
        }),
        "{report}"
    );
    assert_eq!(running.registrar.store().cache().registration_count(), 0);
    for group in config.groups() {
        assert!(!group_exists(running, &group), "{group:?} is left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_group_devices_over_mqtt_present_leaf_and_intermediate_and_are_assigned() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let mut config = config_for(&running);
    config.mix = Mix::parse("mqtt-x509").unwrap();
    config.x509_ca = CaSource::Generated { intermediate: true };
    config.devices = 40;
    config.concurrency = 8;
    assert_all_assigned_and_cleaned(&running, &config).await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_key_devices_over_amqp_are_assigned() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let mut config = config_for(&running);
    config.mix = Mix::parse("amqp-sas").unwrap();
    config.devices = 40;
    config.concurrency = 8;
    assert_all_assigned_and_cleaned(&running, &config).await;
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_over_the_https_device_api_are_assigned_with_keys_and_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let mut config = config_for(&running);
    config.mix = Mix::parse("https-sas:1,https-x509:1,https-sas-individual:1").unwrap();
    config.x509_ca = CaSource::Generated { intermediate: true };
    config.devices = 60;
    config.concurrency = 8;
    assert_all_assigned_and_cleaned(&running, &config).await;
    running.shutdown().await.unwrap();
}

/// Writes a root and an intermediate under it (`ca.pem`: intermediate then root) and the
/// intermediate's key, as a user would hand them to the tool.
fn ca_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca = |name: &str, constraints| {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(constraints);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
    };
    let root_params = ca("user root", BasicConstraints::Unconstrained);
    let root_key = KeyPair::generate().unwrap();
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let key = KeyPair::generate().unwrap();
    let intermediate = ca("user intermediate", BasicConstraints::Constrained(0))
        .signed_by(&key, &root)
        .unwrap();
    let (cert_file, key_file) = (dir.join("ca.pem"), dir.join("ca.key"));
    std::fs::write(&cert_file, intermediate.pem() + &root_cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_devices_over_amqp_under_a_given_ca_are_assigned() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let (cert, key) = ca_files(dir.path());
    let mut config = config_for(&running);
    config.mix = Mix::parse("amqp-x509").unwrap();
    config.x509_ca = CaSource::Files {
        cert: cert.clone(),
        key,
    };
    config.devices = 40;
    config.concurrency = 8;
    assert_all_assigned_and_cleaned(&running, &config).await;

    // A key that does not belong to the issuer is refused before any group is made.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key) = ca_files(&other);
    config.x509_ca = CaSource::Files {
        cert,
        key: other_key,
    };
    let err = dps_loadtest::run(&config, |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    assert!(!group_exists(&running, &config.x509_group()));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_of_every_kind_is_assigned_and_kept_until_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let store = running.registrar.store().clone();
    let mut config = config_for(&running);
    config.mix =
        Mix::parse("mqtt-x509:2,amqp-sas:1,mqtt-sas:1,amqp-x509:1,amqp-sas-individual:1").unwrap();
    config.devices = 50;
    config.concurrency = 10;
    config.keep = true;
    let report = dps_loadtest::run(&config, |_| {}).await.unwrap();
    assert_eq!(report.assigned, 50, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(store.cache().registration_count(), 50);
    let groups = config.groups();
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().all(|g| group_exists(&running, g)));

    // As `--cleanup-only` runs it, without the run's device count: what to delete comes
    // from the service.
    config.devices = 1;
    let summary = dps_loadtest::cleanup(&config).await.unwrap();
    assert_eq!(
        summary,
        CleanupSummary {
            registrations_deleted: 50,
            group_deleted: true
        }
    );
    assert_eq!(store.cache().registration_count(), 0);
    assert!(groups.iter().all(|g| !group_exists(&running, g)));
    assert_eq!(store.cache().enrollment_count(), 0);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn individual_symmetric_key_devices_are_enrolled_in_bulk_and_removed_after() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let store = running.registrar.store().clone();
    let mut config = config_for(&running);
    config.mix = Mix::parse("mqtt-sas-individual:1,amqp-sas-individual:1").unwrap();
    config.devices = 35; // four bulk operations, the last one partial
    config.concurrency = 8;
    assert!(config.groups().is_empty());
    let ids = config.individual_ids();
    assert_eq!(ids.len(), 35);
    assert_all_assigned_and_cleaned(&running, &config).await;
    for id in &ids {
        let id = dps_types::RegistrationId::parse(id).unwrap();
        assert!(store.enrollment(&id).is_none(), "{id:?} is left");
    }
    running.shutdown().await.unwrap();
}
