//! Helpers for the dpsd tests: an in-process service on port 0 and an HTTPS client that
//! trusts its development CA and signs requests with its connection string.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use dps_types::SymmetricKey;

/// Starts dpsd in `dir` on a free loopback port.
pub async fn start_in(dir: &Path) -> dpsd::Running {
    let flags = dpsd::Flags {
        data_dir: Some(dir.to_owned()),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let config = dpsd::Config::load(
        None,
        [("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned())],
        &flags,
    )
    .expect("config");
    dpsd::start(config).await.expect("dpsd starts")
}

/// dpsd in `dir` with `hub` linked, every listener on a free loopback port, `env` added to
/// its environment.
pub async fn start_with_hub(dir: &Path, hub: &str, env: &[(&str, &str)]) -> dpsd::Running {
    let file = dir.join("dpsd.toml");
    std::fs::write(&file, format!("[[linked_hubs]]\nhost_name = \"{hub}\"\n"))
        .expect("config file");
    let flags = dpsd::Flags {
        data_dir: Some(dir.join("data")),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let mut vars = vec![("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = dpsd::Config::load(Some(&file), vars, &flags).expect("config");
    dpsd::start(config).await.expect("dpsd starts")
}

/// A client of the service API, as a user would build one from the data directory.
pub struct ServiceClient {
    pub http: reqwest::Client,
    pub base: String,
    host: String,
    policy: String,
    key: SymmetricKey,
}

impl ServiceClient {
    /// From the connection string and CA file dpsd wrote, talking to `addr`.
    pub fn new(connection_string: &str, ca_file: &Path, addr: std::net::SocketAddr) -> Self {
        let field = |name: &str| {
            connection_string
                .split(';')
                .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                .unwrap_or_else(|| panic!("{name} in connection string"))
                .to_owned()
        };
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .build()
            .unwrap();
        Self {
            http,
            base: format!("https://localhost:{}", addr.port()),
            host: field("HostName"),
            policy: field("SharedAccessKeyName"),
            key: SymmetricKey::parse(&field("SharedAccessKey")).unwrap(),
        }
    }

    /// A fresh service SAS token valid for an hour.
    pub fn sas(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        dps_attest::SasToken::generate(&self.host, &self.key, Some(&self.policy), now + 3600)
    }

    /// `METHOD base/path?api-version=2021-10-01` with a SAS token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                format!("{}{path}?api-version=2021-10-01", self.base),
            )
            .header("Authorization", self.sas())
    }
}
