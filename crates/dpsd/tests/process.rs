//! The `dpsd` binary as an operator runs it: exit status on bad configuration, a graceful
//! SIGTERM, the connection string shown once, a loose data directory tightened, and no
//! acknowledged write lost to `kill -9`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

use rustix::process::{kill_process, Pid, Signal};

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
        "colour = 1\n[api]\nlisten = \"nowhere\"\nmax_body = \"lots\"\nmax_connections = 0\n\
         [mqtt]\nconnect_timeout = \"0s\"\n[registration]\nmax_in_flight = 0\n",
    )
    .unwrap();
    let out = Command::new(DPSD)
        .args(["serve", "--log", "dps_api=loud", "--config"])
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
        "api.max_connections",
        "mqtt.connect_timeout",
        "registration.max_in_flight",
        "log: 'dps_api=loud'",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn a_feed_that_cannot_reach_its_broker_stops_the_start_naming_feed_url() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = unused.local_addr().unwrap().port();
    drop(unused);
    for (url, why) in [
        (
            "amqp://guest:not-the-password@127.0.0.1:5672/%2f".to_owned(),
            "access refused",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost".to_owned(),
            "no-such-vhost",
        ),
        (
            format!("amqp://guest:guest@127.0.0.1:{closed_port}/%2f"),
            "refused",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(DPSD)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
            ])
            .args(["--amqp-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("DPSD_FEED_ENABLED", "true")
            .env("DPSD_FEED_URL", &url)
            .env("DPSD_FEED_CONNECT_TIMEOUT", "10s")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: started anyway");
        assert!(err.contains("feed.url"), "{url}: no key named in:\n{err}");
        assert!(err.contains(why), "{url}: '{why}' not said in:\n{err}");
        assert!(
            !err.contains("not-the-password"),
            "the password shows:\n{err}"
        );
    }
}

/// A running `dpsd` binary.
struct Dpsd {
    child: Child,
    /// Where its service API listens.
    addr: SocketAddr,
    /// Standard output read so far, and the rest of it.
    stdout: String,
    rest: BufReader<ChildStdout>,
    /// Standard error, read on its own thread so the child never blocks on a full pipe.
    stderr: std::thread::JoinHandle<String>,
}

/// What a stopped `dpsd` left.
struct Stopped {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Dpsd {
    /// Starts the binary on free ports and returns once it serves.
    #[expect(
        clippy::zombie_processes,
        reason = "the child is returned inside Dpsd, whose stop waits for it"
    )]
    fn spawn(data: &Path) -> Self {
        let mut child = Command::new(DPSD)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--amqp-listen",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--data-dir",
            ])
            .arg(data)
            // The durability test has a thousand requests in flight from 127.0.0.1: lift the
            // per-address limits (they have tests of their own in dps-api).
            .env("DPSD_API_MAX_CONNECTIONS", "2048")
            // Several of these run at once: each its own metrics port.
            .env("DPSD_METRICS_LISTEN", "127.0.0.1:0")
            .env("DPSD_API_MAX_CONNECTIONS_PER_IP", "2048")
            .env("DPSD_API_MAX_UNAUTHENTICATED_PER_IP", "2048")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let mut rest = BufReader::new(child.stdout.take().unwrap());
        let mut stdout = String::new();
        loop {
            let mut line = String::new();
            if rest.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let status = child.wait();
                let err = stderr.join().unwrap();
                panic!("dpsd exited before serving: {status:?}\n{stdout}\n{err}");
            }
            stdout.push_str(&line);
            if let Some(addr) = line.trim().strip_prefix("service API     https://") {
                let addr = addr.parse().unwrap();
                return Self {
                    child,
                    addr,
                    stdout,
                    rest,
                    stderr,
                };
            }
        }
    }

    /// Sends `signal` and waits for the process to end.
    fn stop(mut self, signal: Signal) -> Stopped {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
        let status = self.child.wait().unwrap();
        self.rest.read_to_string(&mut self.stdout).unwrap();
        Stopped {
            status,
            stdout: self.stdout,
            stderr: self.stderr.join().unwrap(),
        }
    }
}

/// Every entry under `dir` (itself included) with its permission bits.
fn modes(dir: &Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        found.push((
            path.clone(),
            meta.is_dir(),
            meta.permissions().mode() & 0o777,
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        }
    }
    found
}

#[test]
fn the_connection_string_is_printed_only_by_the_start_that_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Dpsd::spawn(&data).stop(Signal::TERM);
    assert!(first.status.success(), "SIGTERM: {:?}", first.status);
    let conn = std::fs::read_to_string(data.join("service-connection-string")).unwrap();
    let key = conn
        .trim()
        .split(';')
        .find_map(|p| p.strip_prefix("SharedAccessKey="))
        .unwrap();
    assert!(first.stdout.contains(conn.trim()), "{}", first.stdout);

    let second = Dpsd::spawn(&data).stop(Signal::TERM);
    assert!(second.status.success(), "SIGTERM: {:?}", second.status);
    assert!(
        !second.stdout.contains(key),
        "key shown again:\n{}",
        second.stdout
    );
    let file = data.join("service-connection-string");
    assert!(
        second.stdout.contains(&format!("in {}", file.display())),
        "{}",
        second.stdout
    );
}

#[test]
fn a_loose_data_dir_is_tightened_with_a_warning_per_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(Dpsd::spawn(&data).stop(Signal::TERM).status.success());
    // What an earlier version (or a careless copy) left: the CA's key, and modes for everyone.
    std::fs::write(data.join("pki/ca-key.pem"), "old CA key").unwrap();
    let loosened = modes(&data);
    for (path, is_dir, _) in &loosened {
        let mode = if *is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    let again = Dpsd::spawn(&data).stop(Signal::TERM);
    assert!(again.status.success(), "{:?}", again.status);
    for (path, is_dir, _) in &loosened {
        let (old, new) = if *is_dir {
            ("0755", "0700")
        } else {
            ("0644", "0600")
        };
        let shown = path.display().to_string();
        assert!(
            again
                .stderr
                .lines()
                .any(|l| l.contains(&shown) && l.contains(old) && l.contains(new)),
            "no warning for {shown} ({old} -> {new}):\n{}",
            again.stderr
        );
    }
    assert!(!data.join("pki/ca-key.pem").exists(), "the CA key was kept");
    for (path, is_dir, mode) in modes(&data) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_acknowledged_puts_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let dpsd = Dpsd::spawn(dir.path());
    let addr = dpsd.addr;
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
    dpsd.stop(Signal::KILL); // the instant after the last response

    let dpsd = Dpsd::spawn(dir.path());
    let client = ServiceClient::new(conn.trim(), &ca, dpsd.addr);
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
    dpsd.stop(Signal::KILL);
    assert_eq!(found, 1000, "acknowledged enrollments lost to kill -9");
}
