//! `dpsd` started in-process with no configuration, used as a new user would use it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{start_in, ServiceClient};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn first_start_creates_pki_scope_and_credentials_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_in(dir.path()).await;
    for file in [
        "pki/ca.pem",
        "pki/server.pem",
        "pki/server-key.pem",
        "id-scope",
        "service-connection-string",
    ] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    let scope = std::fs::read_to_string(dir.path().join("id-scope")).unwrap();
    assert_eq!(scope.trim(), running.id_scope.as_str());
    let conn = std::fs::read_to_string(dir.path().join("service-connection-string")).unwrap();
    assert_eq!(conn.trim(), running.connection_string);
    assert!(conn.contains("SharedAccessKeyName=provisioningserviceowner"));

    let client = ServiceClient::new(
        &running.connection_string,
        &running.ca_file,
        running.api_addr,
    );
    let put = client
        .request(Method::PUT, "/enrollments/first-device")
        .json(&json!({"registrationId": "first-device", "attestation": {"type": "symmetricKey"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["registrationId"], "first-device");
    assert_eq!(body["provisioningStatus"], "enabled");

    let unsigned = client
        .http
        .get(format!(
            "{}/enrollments/first-device?api-version=2021-10-01",
            client.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    running.shutdown().await.unwrap();

    // A restart keeps the scope, the key and the data.
    let again = start_in(dir.path()).await;
    assert_eq!(again.id_scope, running_scope(&scope));
    assert_eq!(again.connection_string, conn.trim());
    let client = ServiceClient::new(&again.connection_string, &again.ca_file, again.api_addr);
    let get = client
        .request(Method::GET, "/enrollments/first-device")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_fresh_data_dir_is_owner_only_and_keeps_no_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let running = start_in(&data).await;
    // A write, so the store has flushed data files too.
    let client = ServiceClient::new(
        &running.connection_string,
        &running.ca_file,
        running.api_addr,
    );
    let put = client
        .request(Method::PUT, "/enrollments/private")
        .json(&json!({"registrationId": "private", "attestation": {"type": "symmetricKey"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    running.shutdown().await.unwrap();

    let mut files = Vec::new();
    let mut pending = vec![data.clone()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", path.display());
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else {
            assert!(
                meta.is_file(),
                "{} is neither file nor directory",
                path.display()
            );
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
            files.push(path.strip_prefix(&data).unwrap().to_owned());
        }
    }
    for expected in [
        "pki/ca.pem",
        "pki/server.pem",
        "pki/server-key.pem",
        "id-scope",
        "service-connection-string",
        "store/db",
    ] {
        assert!(
            files.contains(&Path::new(expected).to_owned()),
            "{expected} missing: {files:?}"
        );
    }
    let pki: Vec<_> = files.iter().filter(|f| f.starts_with("pki")).collect();
    assert_eq!(
        pki.len(),
        3,
        "only the CA certificate and the server's files: {pki:?}"
    );
}

fn running_scope(text: &str) -> dps_types::IdScope {
    dps_types::IdScope::parse(text.trim()).unwrap()
}

#[tokio::test]
async fn the_amqp_device_listener_runs_by_default_and_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_in(dir.path()).await;
    let addr = running
        .amqp_addr
        .expect("the AMQP listener runs by default");
    assert!(addr.ip().is_loopback());
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("the AMQP listener accepts");
    running.shutdown().await.unwrap();

    let flags = dpsd::Flags {
        data_dir: Some(dir.path().to_owned()),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let env = [
        ("DPSD_AMQP_ENABLED".to_owned(), "false".to_owned()),
        ("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let config = dpsd::Config::load(None, env, &flags).unwrap();
    let running = dpsd::start(config).await.unwrap();
    assert_eq!(running.amqp_addr, None);
    running.shutdown().await.unwrap();
}
