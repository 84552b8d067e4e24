//! The `dpsd` binary as an operator runs it: exit status on bad configuration, and no
//! acknowledged write lost to `kill -9`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::ServiceClient;
use reqwest::{Method, StatusCode};
use serde_json::json;

const DPSD: &str = env!("CARGO_BIN_EXE_dpsd");

#[test]
fn bad_config_names_every_bad_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "colour = 1\n[api]\nlisten = \"nowhere\"\nmax_body = \"lots\"\n",
    )
    .unwrap();
    let out = Command::new(DPSD)
        .args(["serve", "--config"])
        .arg(&file)
        .env("DPSD_API_REQUEST_TIMEOUT", "forever")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "colour",
        "api.listen",
        "api.max_body",
        "DPSD_API_REQUEST_TIMEOUT",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

/// Starts the binary on a free port and returns it with its API address, once it serves.
fn spawn(data: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(DPSD)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(addr) = line.trim().strip_prefix("service API     https://") {
            return (child, addr.parse().unwrap());
        }
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("dpsd exited before serving: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_acknowledged_puts_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(dir.path());
    let conn = std::fs::read_to_string(dir.path().join("service-connection-string")).unwrap();
    let ca = dir.path().join("pki/ca.pem");
    let client = std::sync::Arc::new(ServiceClient::new(conn.trim(), &ca, addr));

    let mut tasks = tokio::task::JoinSet::new();
    // A thousand PUTs in flight at once, each on its own task.
    for n in 0..1000 {
        let client = client.clone();
        tasks.spawn(async move {
            let id = format!("k9-{n}");
            let res = client
                .request(Method::PUT, &format!("/enrollments/{id}"))
                .json(&json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    child.kill().unwrap(); // SIGKILL, the instant after the last response
    child.wait().unwrap();

    let (mut child, addr) = spawn(dir.path());
    let client = ServiceClient::new(conn.trim(), &ca, addr);
    let mut found = 0;
    let mut continuation: Option<String> = None;
    loop {
        let mut req = client
            .request(Method::POST, "/enrollments/query")
            .header("x-ms-max-item-count", "400");
        if let Some(c) = &continuation {
            req = req.header("x-ms-continuation", c);
        }
        let res = req
            .json(&json!({"query": "SELECT * FROM enrollments"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        continuation = res
            .headers()
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_owned());
        found += res.json::<Vec<serde_json::Value>>().await.unwrap().len();
        if continuation.is_none() {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(found, 1000, "acknowledged enrollments lost to kill -9");
}
