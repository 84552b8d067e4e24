//! The provisioning service daemon as a library: `main.rs` is a thin shell over [`start`], and
//! tests start the same service in-process on port 0.
//!
//! What it does: loads [`Config`], creates on first start what a new user needs (the
//! development PKI in `<data>/pki/`, the ID scope in `<data>/id-scope`, the owner policy and
//! `<data>/service-connection-string`), opens the store, and serves the HTTPS API until told
//! to stop.
//!
//! What it must never do: hold business logic (that lives in the crates it wires together) or
//! print secrets other than the connection string it was asked to create.
//!
//! Main types: [`Config`], [`Running`], [`DpsdError`].

pub mod config;
mod credentials;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dps_types::IdScope;
use tokio::sync::oneshot;

pub use config::{Config, ConfigError, Flags};
pub use credentials::OWNER_POLICY;

/// Why `dpsd` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DpsdError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The development PKI could not be created or loaded.
    #[error("PKI: {0}")]
    Pki(String),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A generated credential file is damaged.
    #[error("{path}: {why}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] dps_store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl DpsdError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DpsdError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// A started service.
pub struct Running {
    /// Where the HTTPS API listens (the real port when configured with port 0).
    pub api_addr: SocketAddr,
    /// The service's ID scope.
    pub id_scope: IdScope,
    /// The owner policy's connection string.
    pub connection_string: String,
    /// The CA certificate file clients should trust.
    pub ca_file: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    stop: oneshot::Sender<()>,
    api: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and returns when all is closed.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.api.await.map_err(std::io::Error::other)?
    }
}

/// Prepares the data directory and starts every listener.
pub async fn start(config: Config) -> Result<Running, DpsdError> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data).map_err(|e| DpsdError::io(data, e))?;
    let pki = pki::ensure(&data.join("pki"), &config.service.host_name)?;
    let id_scope = credentials::id_scope(data, config.service.id_scope.as_ref())?;
    let owner = credentials::owner_policy(data, &config.service.host_name)?;

    let mut policies = vec![owner.policy];
    policies.extend(config.policies.iter().map(|p| dps_api::SharedAccessPolicy {
        name: p.name.clone(),
        primary_key: p.primary_key.clone(),
        secondary_key: p.secondary_key.clone(),
        rights: p.rights,
    }));

    let store = dps_store::Store::open(&data.join("store"))?;
    let cert = config
        .api
        .tls_cert
        .clone()
        .unwrap_or_else(|| pki.server_cert.clone());
    let key = config
        .api
        .tls_key
        .clone()
        .unwrap_or_else(|| pki.server_key.clone());
    let tls = tls_config(&cert, &key)?;

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| DpsdError::Bind {
            addr: config.api.listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| DpsdError::Bind {
        addr: config.api.listen,
        source,
    })?;
    let state = dps_api::ApiState::new(store, &config.service.host_name, policies)
        .with_max_body_bytes(config.api.max_body.0);
    let limits = dps_api::HttpLimits {
        max_connections: config.api.max_connections as usize,
        tls_handshake_timeout: config.api.tls_handshake_timeout,
        header_read_timeout: config.api.header_read_timeout,
        request_timeout: config.api.request_timeout,
        max_body_bytes: config.api.max_body.0,
        ..dps_api::HttpLimits::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let api = tokio::spawn(dps_api::serve(
        listener,
        tls,
        dps_api::router(state),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Running {
        api_addr,
        id_scope,
        connection_string: owner.connection_string,
        ca_file: pki.ca_cert,
        data_dir: data.clone(),
        stop,
        api,
    })
}

/// A rustls server configuration from PEM files (chain and key).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, DpsdError> {
    let cert_pem = std::fs::read(cert).map_err(|e| DpsdError::io(cert, e))?;
    let key_pem = std::fs::read(key).map_err(|e| DpsdError::io(key, e))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DpsdError::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(DpsdError::Tls(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| DpsdError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| DpsdError::Tls(format!("{}: no private key in the file", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DpsdError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| DpsdError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
