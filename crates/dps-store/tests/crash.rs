//! An acknowledged write survives `kill -9`: a child process writes concurrently and reports
//! each acknowledged id; the parent kills it mid-stream and checks every reported id is on disk.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use dps_store::{Precondition, Store};

const CHILD_ENV: &str = "DPS_STORE_CRASH_CHILD_DIR";

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        return child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.to_owned());
            if acked.len() == 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert_eq!(
        acked.len(),
        300,
        "child acknowledged fewer writes than expected"
    );

    let store = Store::open(dir.path()).unwrap();
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| store.cache().enrollment(id).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but lost after kill -9: {missing:?}"
    );
}

fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(std::path::Path::new(dir)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for worker in 0..32 {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("w{worker}-{n}");
                    let e = serde_json::from_value(serde_json::json!({
                        "registrationId": id, "attestation": {"type": "symmetricKey"}
                    }))
                    .unwrap();
                    let e = dps_attest::prepare_individual(e, &Default::default()).unwrap();
                    store.put_enrollment(e, &Precondition::Any).await.unwrap();
                    if tx.send(id).is_err() {
                        return;
                    }
                }
            });
        }
        let mut out = std::io::stdout();
        while let Some(id) = rx.recv().await {
            writeln!(out, "ACK {id}").unwrap();
            out.flush().unwrap();
        }
    });
}
