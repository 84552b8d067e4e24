//! A Mosquitto broker started for the `mqtt` baseline: a TLS listener on a free loopback
//! port that requires a client certificate from the baselines' CA, no persistence. It is
//! killed when dropped; its files live in a temporary directory removed with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::pki::BaselinePki;
use crate::procfs::Pid;
use crate::LoadError;

/// Debian's `mosquitto` package puts the broker here.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// How often readiness is checked while the broker starts.
const READY_POLL: Duration = Duration::from_millis(20);
/// Most of the broker's log quoted when it fails to start.
const MAX_QUOTED_LOG: usize = 2000;

/// A running broker.
pub struct Mosquitto {
    child: Child,
    /// Where it listens (TLS).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn failed(what: &'static str) -> impl Fn(std::io::Error) -> LoadError {
    move |e| LoadError::Setup {
        what,
        source: Box::new(e),
    }
}

impl Mosquitto {
    /// Starts `binary` with a configuration of its own and waits until it accepts TCP
    /// connections (at most `timeout`).
    pub async fn start(
        binary: &Path,
        pki: &BaselinePki,
        timeout: Duration,
    ) -> Result<Self, LoadError> {
        let dir = tempfile::tempdir().map_err(failed("mosquitto directory"))?;
        let file = |name: &str, text: &str| -> Result<PathBuf, LoadError> {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(failed("mosquitto files"))?;
            Ok(path)
        };
        let ca = file("ca.pem", &pki.ca_pem)?;
        let cert = file("server.pem", &pki.server_cert_pem)?;
        let key = file("server-key.pem", &pki.server_key_pem)?;
        let log = dir.path().join("mosquitto.log");
        // A free port: bound and released (the broker binds it right after).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(failed("a free port for mosquitto"))?
            .port();
        // Started as root, mosquitto changes to the `mosquitto` user unless told to stay,
        // and could then not read its files in our owner-only directory.
        let user = if rustix::process::geteuid().is_root() {
            "user root\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}per_listener_settings false\npersistence false\nlog_dest file {log}\n\
             log_type error\nlog_type warning\nconnection_messages false\nallow_anonymous true\n\
             listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\n",
            log = log.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        );
        let conf = file("mosquitto.conf", &conf)?;
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(failed("starting mosquitto"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let began = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(failed("mosquitto"))? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let quoted: String = text.chars().take(MAX_QUOTED_LOG).collect();
                return Err(LoadError::Setup {
                    what: "mosquitto exited at start",
                    source: format!("{status}: {quoted}").into(),
                });
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if began.elapsed() > timeout {
                return Err(LoadError::Setup {
                    what: "mosquitto",
                    source: format!("not listening on {addr} after {timeout:?}").into(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(Self {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The broker's process id.
    pub fn pid(&self) -> Option<Pid> {
        self.child.id().map(Pid)
    }
}
