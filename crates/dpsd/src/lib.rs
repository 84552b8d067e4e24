//! The provisioning service daemon as a library: `main.rs` is a thin shell over [`start`], and
//! tests start the same service in-process on port 0.
//!
//! What it does: loads [`Config`], creates on first start what a new user needs (the
//! development PKI in `<data>/pki/`, the ID scope in `<data>/id-scope`, the owner policy and
//! `<data>/service-connection-string`), all owner-only, opens the store, and serves the HTTPS
//! API (the service API, the portal and the device API on one listener), MQTT, AMQP and the
//! metrics and health probes (`[metrics]`), with the assignment feed
//! when `[feed]` is on, until told to stop - or until a listener ends on its own, which
//! [`Running::wait`] reports so the process can exit instead of half-living.
//!
//! What it must never do: hold business logic (that lives in the crates it wires together),
//! leave anything in the data directory readable by other users, or print secrets other than
//! the connection string it has just created.
//!
//! Main types: [`Config`], [`Running`], [`DpsdError`].

pub mod config;
mod credentials;
mod listeners;
mod observability;
pub mod pki;
mod private;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dps_types::IdScope;
use listeners::Listeners;

pub use config::{Config, ConfigError, Flags, LogFilter};
pub use credentials::OWNER_POLICY;
pub use dps_metrics::{Health, Metrics};
pub use observability::METRICS_LISTENER;

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
    /// The assignment feed's first connection to the broker failed (`[feed]` is on); named
    /// by the key to look at (`feed.url` for the link, `feed.hub_queue_type` for a queue that
    /// exists with another kind, ...).
    #[error("feed.{key}: {0}", key = .0.key())]
    Feed(#[source] dps_feed::FeedError),
    /// A metric could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[source] dps_metrics::MetricsError),
    /// The registration service could not be created.
    #[error("registration service: {0}")]
    Registrar(#[source] dps_registrar::RegistrarError),
    /// A listener's `serve` returned before shutdown was asked for.
    #[error("the {listener} listener stopped without being asked to")]
    ListenerStopped {
        /// Which listener.
        listener: &'static str,
    },
    /// A listener's `serve` failed (its accept loop gave up) or its task panicked.
    #[error("the {listener} listener failed: {source}")]
    ListenerFailed {
        /// Which listener.
        listener: &'static str,
        /// Why (a panic is wrapped as an `io::Error` carrying the task's `JoinError`).
        #[source]
        source: std::io::Error,
    },
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
    /// Whether that listener also serves the DPS device API (`api.device_api`).
    pub device_api: bool,
    /// Where the MQTT device listener listens.
    pub mqtt_addr: SocketAddr,
    /// Where the AMQP device listener listens (`None` when `amqp.enabled` is false).
    pub amqp_addr: Option<SocketAddr>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: `metrics.enabled` is
    /// false).
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics every part reports to ([`Metrics::register`] adds a collector).
    pub metrics: Arc<Metrics>,
    /// The readiness checks of `/readyz` ([`Health::add_check`] adds one).
    pub health: Health,
    /// The registration service (diagnostics, store).
    pub registrar: dps_registrar::Registrar,
    /// The service's ID scope.
    pub id_scope: IdScope,
    /// The owner policy's connection string.
    pub connection_string: String,
    /// The file that keeps it (`<data>/service-connection-string`).
    pub connection_string_file: PathBuf,
    /// Whether this start generated the owner key: only then is the connection string shown.
    pub connection_string_created: bool,
    /// The CA certificate file clients should trust.
    pub ca_file: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the assignment feed publishes (broker without password, exchange), when on.
    pub feed: Option<String>,
    listeners: Listeners,
}

/// Name of the HTTPS listener (service API and portal) in logs and errors.
pub const API_LISTENER: &str = "service API";
/// Name of the MQTT device listener in logs and errors.
pub const MQTT_LISTENER: &str = "device MQTT";
/// Name of the AMQP device listener in logs and errors.
pub const AMQP_LISTENER: &str = "device AMQP";

impl Running {
    /// Resolves when a listener ends before [`Running::shutdown`] was called, with an error
    /// naming it; never while every listener runs. Cancel-safe, for a `select!` next to the
    /// signals.
    pub async fn wait(&mut self) -> DpsdError {
        self.listeners.wait().await
    }

    /// Stops accepting, lets in-flight requests finish, and returns when all is closed (the
    /// assignment feed last: registrations still in flight wait for its confirmations).
    pub async fn shutdown(self) -> Result<(), DpsdError> {
        let result = self.listeners.shutdown().await;
        if let Some(feed) = self.registrar.feed() {
            feed.shutdown().await;
        }
        result
    }
}

/// Prepares the data directory and starts every listener.
///
/// Sets the process umask to `077` first: everything this process creates from then on is
/// owner-only (see the data directory in README.md).
pub async fn start(config: Config) -> Result<Running, DpsdError> {
    let data = &config.data_dir;
    private::restrict_umask();
    private::create_dir(data)?;
    private::tighten(data)?;
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
    let observability = observability::Observability::new(&store)?;
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let devices: Arc<dyn rustls::server::danger::ClientCertVerifier> =
        Arc::new(dps_attest::PossessionVerifier::new(provider.clone()));
    // The API listener asks for client certificates only when it serves devices (X.509
    // attestation over HTTPS or WebSocket); the service API's own authentication is the SAS
    // token.
    let api_verifier =
        (config.api.device_api || config.api.websocket).then(|| Arc::clone(&devices));
    let api_tls = tls_config(&cert, &key, api_verifier, Alpn::Http, &provider)?;
    let mqtt_tls = tls_config(&cert, &key, Some(devices), Alpn::None, &provider)?;

    let mut registrar_config = dps_registrar::RegistrarConfig::new(
        id_scope.clone(),
        config
            .linked_hubs
            .iter()
            .map(|h| dps_registrar::LinkedHub {
                host_name: h.host_name.clone(),
                allocation_weight: h.allocation_weight,
                apply_allocation_policy: h.apply_allocation_policy,
            })
            .collect(),
    );
    registrar_config.default_allocation_policy = config.registration.default_allocation_policy;
    registrar_config.webhook_timeout = config.registration.webhook_timeout;
    registrar_config.webhook_policy = config.registration.webhook_policy.clone();
    registrar_config.max_in_flight = config.registration.max_in_flight;
    registrar_config.operations = dps_registrar::OperationLimits {
        max_operations: config.registration.max_operations,
        ttl: config.registration.operation_ttl,
        ..dps_registrar::OperationLimits::default()
    };
    let hubs: Vec<_> = config
        .linked_hubs
        .iter()
        .map(|h| h.host_name.clone())
        .collect();
    let metrics = &observability.metrics;
    registrar_config.observer = Some(
        metrics
            .registrar_observer(&hubs)
            .map_err(DpsdError::Metrics)?,
    );
    let feed = match &config.feed {
        section if !section.enabled => None,
        section => Some(
            dps_registrar::FeedLink::start(&store, section.config.clone(), hubs.clone())
                .await
                .map_err(DpsdError::Feed)?,
        ),
    };
    let registrar = dps_registrar::Registrar::with_feed(store.clone(), registrar_config, feed)
        .map_err(DpsdError::Registrar)?;
    metrics
        .watch_registrar(&registrar)
        .map_err(DpsdError::Metrics)?;
    if let Some(feed) = registrar.feed() {
        metrics.watch_feed(feed).map_err(DpsdError::Metrics)?;
        let feed = feed.clone();
        observability
            .health
            .add_check("broker", move || feed.is_up());
    }
    let presenting: &[&str] = if config.amqp.enabled {
        &["api", "mqtt", "amqp"]
    } else {
        &["api", "mqtt"]
    };
    observability.certificate(&cert, presenting);

    let mut listeners = Listeners::new();
    let api_listener = bind(config.api.listen).await?;
    let api_addr = local_addr(&api_listener, config.api.listen)?;
    let portal = dps_portal::PortalState::new(registrar.clone(), policies.clone());
    let state = dps_api::ApiState::new(registrar.clone(), &config.service.host_name, policies)
        .with_max_body_bytes(config.api.max_body.0);
    let limits = dps_api::HttpLimits {
        max_connections: config.api.max_connections,
        max_connections_per_ip: config.api.max_connections_per_ip,
        max_unauthenticated_per_ip: config.api.max_unauthenticated_per_ip,
        tls_handshake_timeout: config.api.tls_handshake_timeout,
        header_read_timeout: config.api.header_read_timeout,
        request_timeout: config.api.request_timeout,
        max_body_bytes: config.api.max_body.0,
        ..dps_api::HttpLimits::default()
    };
    let mut app = dps_api::router(state);
    if config.api.device_api {
        app = dps_device_http::mount(dps_device_http::DeviceApi::new(registrar.clone()), app);
    }
    let mqtt_listener = bind(config.mqtt.listen).await?;
    let mqtt_addr = local_addr(&mqtt_listener, config.mqtt.listen)?;
    let m = &config.mqtt;
    let mqtt_limits = dps_mqtt::MqttLimits {
        max_connections: m.max_connections,
        max_connections_per_ip: m.max_connections_per_ip,
        max_unauthenticated_per_ip: m.max_unauthenticated_per_ip,
        max_keep_alive: m.max_keep_alive,
        max_connection_lifetime: m.max_connection_lifetime,
        max_connections_per_device: m.max_connections_per_device,
        tls_handshake_timeout: m.tls_handshake_timeout,
        connect_timeout: m.connect_timeout,
        max_packet_size: m.max_packet.0,
        max_requests_per_connection: m.max_requests_per_connection,
        max_operations_per_connection: m.max_operations_per_connection,
        ..dps_mqtt::MqttLimits::default()
    };
    let mqtt = dps_mqtt::MqttFrontend::new(
        registrar.clone(),
        mqtt_limits,
        metrics.mqtt().map_err(DpsdError::Metrics)?,
    );
    let amqp = config
        .amqp
        .enabled
        .then(|| {
            metrics.amqp().map(|counters| {
                dps_amqp::AmqpFrontend::new(registrar.clone(), config.amqp.limits(), counters)
            })
        })
        .transpose()
        .map_err(DpsdError::Metrics)?;
    let websockets = if config.api.websocket {
        websockets(&mqtt, amqp.as_ref())
    } else {
        dps_api::WebSockets::new()
    };
    let api = dps_api::serve_with_websockets(
        api_listener,
        api_tls,
        with_portal(app, portal),
        websockets,
        limits,
        metrics.listener("api").map_err(DpsdError::Metrics)?,
        listeners.until_stopped(),
    );
    listeners.spawn(API_LISTENER, api);

    let shutdown = listeners.until_stopped();
    let tls = Arc::clone(&mqtt_tls);
    listeners.spawn(MQTT_LISTENER, async move {
        mqtt.serve(mqtt_listener, tls, shutdown).await
    });
    let amqp_addr = start_amqp(&config, amqp, &mqtt_tls, &mut listeners).await?;
    let metrics_addr = observability.start(&config.metrics, &mut listeners).await?;

    Ok(Running {
        api_addr,
        device_api: config.api.device_api,
        mqtt_addr,
        amqp_addr,
        metrics_addr,
        metrics: observability.metrics,
        health: observability.health,
        registrar,
        id_scope,
        connection_string: owner.connection_string,
        connection_string_file: owner.path,
        connection_string_created: owner.created,
        ca_file: pki.ca_cert,
        data_dir: data.clone(),
        feed: config.feed.enabled.then(|| {
            format!(
                "{} exchange {}",
                config.feed.config.url, config.feed.config.exchange
            )
        }),
        listeners,
    })
}

/// Starts the AMQP device listener when enabled (`amqp` is its frontend then), with the MQTT
/// listener's TLS (client certificates optional, checked for possession); returns where it
/// listens.
async fn start_amqp(
    config: &Config,
    amqp: Option<dps_amqp::AmqpFrontend>,
    tls: &Arc<rustls::ServerConfig>,
    listeners: &mut Listeners,
) -> Result<Option<SocketAddr>, DpsdError> {
    let Some(amqp) = amqp else {
        return Ok(None);
    };
    let listener = bind(config.amqp.listen).await?;
    let addr = local_addr(&listener, config.amqp.listen)?;
    let shutdown = listeners.until_stopped();
    let tls = Arc::clone(tls);
    listeners.spawn(AMQP_LISTENER, async move {
        amqp.serve(listener, tls, shutdown).await
    });
    Ok(Some(addr))
}

/// MQTT (subprotocol `mqtt`) and, with its frontend, AMQP (`AMQPWSB10`) over WebSocket on
/// the HTTPS listener: the same frontends as their own listeners, so a device's connection
/// cap counts both ways in.
fn websockets(
    mqtt: &dps_mqtt::MqttFrontend,
    amqp: Option<&dps_amqp::AmqpFrontend>,
) -> dps_api::WebSockets {
    let mqtt = mqtt.clone();
    let mut websockets = dps_api::WebSockets::new().protocol(
        "mqtt",
        Arc::new(move |admitted, chain| {
            let mqtt = mqtt.clone();
            Box::pin(async move { mqtt.serve_stream(admitted, chain).await })
        }),
    );
    if let Some(amqp) = amqp.cloned() {
        websockets = websockets.protocol(
            "AMQPWSB10",
            Arc::new(move |admitted, chain| {
                let amqp = amqp.clone();
                Box::pin(async move { amqp.serve_stream(admitted, chain).await })
            }),
        );
    }
    websockets
}

/// The operator portal under `/portal` (`/portal` itself redirects to `/portal/`); every
/// other path goes to `api` (the service API, with the device API in front).
fn with_portal(api: axum::Router, portal: dps_portal::PortalState) -> axum::Router {
    dps_portal::mount(portal).fallback_service(api)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, DpsdError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DpsdError::Bind { addr, source })
}

fn local_addr(
    listener: &tokio::net::TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, DpsdError> {
    listener
        .local_addr()
        .map_err(|source| DpsdError::Bind { addr, source })
}

/// The ALPN protocols a listener announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` (the HTTPS listener).
    Http,
    /// None: MQTT and AMQP clients (paho, the C SDK) send none.
    None,
}

/// A rustls server configuration from PEM files (chain and key), asking for client
/// certificates when a verifier is given (the device listeners, and the HTTPS listener when it
/// serves devices).
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    alpn: Alpn,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>, DpsdError> {
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
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DpsdError::Tls(e.to_string()))?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| DpsdError::Tls(e.to_string()))?;
    if alpn == Alpn::Http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}
