//! `dpsd` configuration: parsed once into typed values; every bad key is reported in one
//! message. Sources, later ones winning: defaults, the TOML file (`--config`), `DPSD_*`
//! environment variables, command-line flags. `config/dpsd.toml` documents every key.
//!
//! The defaults of the listener and registration keys are the libraries' own
//! (`dps_api::HttpLimits::default()`, `dps_mqtt::MqttLimits::default()`,
//! `dps_amqp::AmqpLimits::default()`,
//! `dps_registrar::RegistrarConfig::new`): one place says what runs. Values that would leave a
//! listener refusing everything or holding connections forever (zero counts, sizes or
//! timeouts, timeouts beyond [`MAX_TIMEOUT`]) are errors naming the key.

mod amqp;
mod checks;
mod feed;
mod metrics;
mod reader;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dps_types::{HubName, IdScope, SymmetricKey};

pub use amqp::AmqpConfig;
use checks::{body_size, packet_size, positive_count, timeout};
pub use checks::{LogFilter, MAX_TIMEOUT};
pub use feed::FeedSection;
pub use metrics::MetricsConfig;
use reader::Reader;
pub use reader::{env_name, ByteSize, ENV_PREFIX};

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store, the PKI and the generated credentials live.
    pub data_dir: PathBuf,
    /// Identity of this service.
    pub service: ServiceConfig,
    /// The HTTPS management listener.
    pub api: ApiConfig,
    /// The MQTT device listener.
    pub mqtt: MqttConfig,
    /// The AMQP device listener.
    pub amqp: AmqpConfig,
    /// Registration behaviour.
    pub registration: RegistrationConfig,
    /// The assignment feed (`[feed]`).
    pub feed: FeedSection,
    /// Shared access policies in addition to the generated owner policy.
    pub policies: Vec<PolicyConfig>,
    /// IoT hubs devices can be assigned to.
    pub linked_hubs: Vec<LinkedHubConfig>,
    /// `tracing` filter, e.g. `info` or `dpsd=debug,info`.
    pub log: LogFilter,
    /// The metrics and health listener.
    pub metrics: MetricsConfig,
}

/// `[service]`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The host name clients use for the service API, the SAS audience (`sr`).
    pub host_name: String,
    /// Fixed ID scope; generated on first start (and kept in `<data>/id-scope`) when absent.
    pub id_scope: Option<IdScope>,
}

/// `[api]`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Server certificate chain (PEM); the generated development one when absent.
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM); the generated development one when absent.
    pub tls_key: Option<PathBuf>,
    /// Connections beyond this are closed at once.
    pub max_connections: usize,
    /// Connections from one source address beyond this are closed at once.
    pub max_connections_per_ip: usize,
    /// Connections from one source address that have not sent a request yet, beyond which
    /// more are closed at once.
    pub max_unauthenticated_per_ip: usize,
    /// Deadline for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Deadline for a request's headers.
    pub header_read_timeout: Duration,
    /// Deadline for a whole request, body included.
    pub request_timeout: Duration,
    /// Largest request body.
    pub max_body: ByteSize,
    /// Whether this listener also serves the DPS device API (and asks for client
    /// certificates, optional, for X.509 devices).
    pub device_api: bool,
    /// Whether this listener also serves MQTT and AMQP over WebSocket (`/$iothub/websocket`,
    /// subprotocols `mqtt` and `AMQPWSB10`; AMQP only while `[amqp]` is enabled), asking for
    /// client certificates (optional) too.
    pub websocket: bool,
}

/// `[mqtt]`.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Listen address (MQTT over TLS).
    pub listen: SocketAddr,
    /// Connections beyond this are closed before the TLS handshake.
    pub max_connections: usize,
    /// Connections from one source address beyond this are closed before the handshake.
    pub max_connections_per_ip: usize,
    /// Connections from one source address without an accepted CONNECT, beyond which more
    /// are closed before the handshake.
    pub max_unauthenticated_per_ip: usize,
    /// Largest keep-alive honoured (0 and larger values get this one).
    pub max_keep_alive: Duration,
    /// Longest a device connection stays open.
    pub max_connection_lifetime: Duration,
    /// Authenticated connections one registration id may hold at once.
    pub max_connections_per_device: usize,
    /// Deadline for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Deadline for CONNECT after the handshake.
    pub connect_timeout: Duration,
    /// Largest MQTT packet.
    pub max_packet: ByteSize,
    /// Register and poll requests per connection.
    pub max_requests_per_connection: u32,
    /// Registrations running at once per connection.
    pub max_operations_per_connection: usize,
}

/// `[registration]`.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// Policy for enrollments that name none.
    pub default_allocation_policy: dps_types::AllocationPolicy,
    /// Deadline for a custom allocation webhook.
    pub webhook_timeout: Duration,
    /// Where custom allocation webhooks may point (`webhook_allow_http`,
    /// `webhook_allowed_hosts`).
    pub webhook_policy: dps_types::WebhookPolicy,
    /// Registrations in progress at once; beyond this devices are asked to retry (429).
    pub max_in_flight: usize,
    /// Operations of the HTTPS device API kept at once (the oldest is forgotten).
    pub max_operations: usize,
    /// How long an HTTPS device API operation can be polled after it started.
    pub operation_ttl: Duration,
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Policy name (`skn` of the SAS token).
    pub name: String,
    /// Primary key.
    pub primary_key: SymmetricKey,
    /// Secondary key.
    pub secondary_key: Option<SymmetricKey>,
    /// Rights.
    pub rights: dps_api::Rights,
}

/// One `[[linked_hubs]]` entry.
#[derive(Debug, Clone)]
pub struct LinkedHubConfig {
    /// Hub host name.
    pub host_name: HubName,
    /// Weight for the hashed policy, 1 to 1000.
    pub allocation_weight: u32,
    /// Whether allocation policies may pick this hub.
    pub apply_allocation_policy: bool,
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--mqtt-listen`.
    pub mqtt_listen: Option<String>,
    /// `--amqp-listen`.
    pub amqp_listen: Option<String>,
    /// `--host-name`.
    pub host_name: Option<String>,
    /// `--log`.
    pub log: Option<String>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// One or more keys are wrong; every one is listed.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The first path segments of the service API and the portal, which the HTTPS listener must
/// not take for an ID scope.
const SERVICE_API_ROOTS: [&str; 5] = [
    "enrollments",
    "enrollmentGroups",
    "registrations",
    "diagnostics",
    "portal",
];

/// Allocation weights DPS allows (`how-to-manage-linked-iot-hubs.md`).
const WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

impl Config {
    /// Defaults only (what `dpsd serve` uses with no config at all).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_table(toml::Table::new(), std::iter::empty(), &Flags::default())
    }

    /// Loads `file` (if any), then applies `env` (`DPSD_*` pairs) and `flags`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<Self, ConfigError> {
        let table = match file {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
        };
        Self::from_table(table, env, flags)
    }

    fn from_table(
        mut root: toml::Table,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<Self, ConfigError> {
        let mut flag_list = Vec::new();
        let mut flag = |path, value: &Option<String>, name| {
            if let Some(v) = value {
                flag_list.push((path, v.clone(), name));
            }
        };
        flag(
            "data_dir",
            &flags.data_dir.as_ref().map(|p| p.display().to_string()),
            "--data-dir",
        );
        flag("api.listen", &flags.listen, "--listen");
        flag("mqtt.listen", &flags.mqtt_listen, "--mqtt-listen");
        flag("amqp.listen", &flags.amqp_listen, "--amqp-listen");
        flag("service.host_name", &flags.host_name, "--host-name");
        flag("log", &flags.log, "--log");
        let mut r = Reader::new(
            env.into_iter().filter(|(k, _)| k != "DPSD_CONFIG"),
            flag_list,
        );

        let data_dir = r.take(&mut root, "", "data_dir", PathBuf::from("./data"));
        if data_dir.as_os_str().is_empty() {
            r.error("data_dir", "must not be empty");
        }
        let log_text = r.take(
            &mut root,
            "",
            "log",
            LogFilter::default().as_str().to_owned(),
        );
        let log = LogFilter::parse(&log_text)
            .map_err(|e| r.error("log", format!("'{log_text}' is not a log filter: {e}")))
            .unwrap_or_default();

        let mut t = r.table(&mut root, "", "service");
        let host_name = r.take(&mut t, "service", "host_name", "localhost:8443".to_owned());
        let scope_text = r.take(&mut t, "service", "id_scope", String::new());
        let id_scope = match scope_text.as_str() {
            "" => None,
            text => IdScope::parse(text)
                .map_err(|e| r.error("service.id_scope", e))
                .ok(),
        };
        r.finish_table(t, "service");

        let http = dps_api::HttpLimits::default();
        let mut t = r.table(&mut root, "", "api");
        let api = ApiConfig {
            listen: r.take(
                &mut t,
                "api",
                "listen",
                SocketAddr::from(([0, 0, 0, 0], 8443)),
            ),
            tls_cert: Some(r.take(&mut t, "api", "tls_cert", PathBuf::new()))
                .filter(|p| !p.as_os_str().is_empty()),
            tls_key: Some(r.take(&mut t, "api", "tls_key", PathBuf::new()))
                .filter(|p| !p.as_os_str().is_empty()),
            max_connections: r.take_valid(
                &mut t,
                "api",
                "max_connections",
                http.max_connections,
                positive_count,
            ),
            max_connections_per_ip: r.take_valid(
                &mut t,
                "api",
                "max_connections_per_ip",
                http.max_connections_per_ip,
                positive_count,
            ),
            max_unauthenticated_per_ip: r.take_valid(
                &mut t,
                "api",
                "max_unauthenticated_per_ip",
                http.max_unauthenticated_per_ip,
                positive_count,
            ),
            tls_handshake_timeout: r.take_valid(
                &mut t,
                "api",
                "tls_handshake_timeout",
                http.tls_handshake_timeout,
                timeout,
            ),
            header_read_timeout: r.take_valid(
                &mut t,
                "api",
                "header_read_timeout",
                http.header_read_timeout,
                timeout,
            ),
            request_timeout: r.take_valid(
                &mut t,
                "api",
                "request_timeout",
                http.request_timeout,
                timeout,
            ),
            max_body: r.take_valid(
                &mut t,
                "api",
                "max_body",
                ByteSize(http.max_body_bytes),
                body_size,
            ),
            device_api: r.take(&mut t, "api", "device_api", true),
            websocket: r.take(&mut t, "api", "websocket", true),
        };
        if api.tls_cert.is_some() != api.tls_key.is_some() {
            r.error(
                "api.tls_cert",
                "tls_cert and tls_key must be given together",
            );
        }
        if let Some(scope) = id_scope.as_ref().filter(|_| api.device_api) {
            if let Some(root) = SERVICE_API_ROOTS.iter().find(|r| scope.matches(r)) {
                r.error(
                    "service.id_scope",
                    format!("'{root}' is a path of the service API; the device API (api.device_api) routes requests by their ID scope"),
                );
            }
        }
        r.finish_table(t, "api");

        let limits = dps_mqtt::MqttLimits::default();
        let mut t = r.table(&mut root, "", "mqtt");
        let mqtt = MqttConfig {
            listen: r.take(
                &mut t,
                "mqtt",
                "listen",
                SocketAddr::from(([0, 0, 0, 0], 8883)),
            ),
            max_connections: r.take_valid(
                &mut t,
                "mqtt",
                "max_connections",
                limits.max_connections,
                positive_count,
            ),
            max_connections_per_ip: r.take_valid(
                &mut t,
                "mqtt",
                "max_connections_per_ip",
                limits.max_connections_per_ip,
                positive_count,
            ),
            max_unauthenticated_per_ip: r.take_valid(
                &mut t,
                "mqtt",
                "max_unauthenticated_per_ip",
                limits.max_unauthenticated_per_ip,
                positive_count,
            ),
            max_keep_alive: r.take_valid(
                &mut t,
                "mqtt",
                "max_keep_alive",
                limits.max_keep_alive,
                timeout,
            ),
            max_connection_lifetime: r.take_valid(
                &mut t,
                "mqtt",
                "max_connection_lifetime",
                limits.max_connection_lifetime,
                timeout,
            ),
            max_connections_per_device: r.take_valid(
                &mut t,
                "mqtt",
                "max_connections_per_device",
                limits.max_connections_per_device,
                positive_count,
            ),
            tls_handshake_timeout: r.take_valid(
                &mut t,
                "mqtt",
                "tls_handshake_timeout",
                limits.tls_handshake_timeout,
                timeout,
            ),
            connect_timeout: r.take_valid(
                &mut t,
                "mqtt",
                "connect_timeout",
                limits.connect_timeout,
                timeout,
            ),
            max_packet: r.take_valid(
                &mut t,
                "mqtt",
                "max_packet",
                ByteSize(limits.max_packet_size),
                packet_size,
            ),
            max_requests_per_connection: r.take_valid(
                &mut t,
                "mqtt",
                "max_requests_per_connection",
                limits.max_requests_per_connection,
                positive_count,
            ),
            max_operations_per_connection: r.take_valid(
                &mut t,
                "mqtt",
                "max_operations_per_connection",
                limits.max_operations_per_connection,
                positive_count,
            ),
        };
        r.finish_table(t, "mqtt");
        let amqp = amqp::read(&mut r, &mut root);

        // The scope is a placeholder: only the defaults are read.
        let registrar = dps_registrar::RegistrarConfig::new(IdScope::generate(), Vec::new());
        let mut t = r.table(&mut root, "", "registration");
        let policy_text = r.take(
            &mut t,
            "registration",
            "default_allocation_policy",
            registrar.default_allocation_policy.as_str().to_owned(),
        );
        let registration = RegistrationConfig {
            default_allocation_policy: dps_types::AllocationPolicy::parse(&policy_text)
                .map_err(|e| r.error("registration.default_allocation_policy", e))
                .unwrap_or(registrar.default_allocation_policy),
            webhook_timeout: r.take_valid(
                &mut t,
                "registration",
                "webhook_timeout",
                registrar.webhook_timeout,
                timeout,
            ),
            max_in_flight: r.take_valid(
                &mut t,
                "registration",
                "max_in_flight",
                registrar.max_in_flight,
                positive_count,
            ),
            max_operations: r.take_valid(
                &mut t,
                "registration",
                "max_operations",
                registrar.operations.max_operations,
                positive_count,
            ),
            operation_ttl: r.take_valid(
                &mut t,
                "registration",
                "operation_ttl",
                registrar.operations.ttl,
                timeout,
            ),
            webhook_policy: dps_types::WebhookPolicy {
                allow_http: r.take(
                    &mut t,
                    "registration",
                    "webhook_allow_http",
                    registrar.webhook_policy.allow_http,
                ),
                allowed_hosts: r.take(
                    &mut t,
                    "registration",
                    "webhook_allowed_hosts",
                    registrar.webhook_policy.allowed_hosts.clone(),
                ),
            },
        };
        for host in &registration.webhook_policy.allowed_hosts {
            if !is_plain_host(host) {
                r.error(
                    "registration.webhook_allowed_hosts",
                    format!("'{host}' is not a host name or IP literal (like alloc.example.com or [::1])"),
                );
            }
        }
        r.finish_table(t, "registration");

        let feed = feed::read(&mut r, &mut root);

        let mut policies = Vec::new();
        for (i, mut t) in r.tables(&mut root, "", "policies").into_iter().enumerate() {
            let p = format!("policies[{i}]");
            let name = r.take(&mut t, &p, "name", String::new());
            if name.is_empty() {
                r.error(&p, "a policy needs a name");
            }
            let primary = r.take(&mut t, &p, "primary_key", String::new());
            let secondary = r.take(&mut t, &p, "secondary_key", String::new());
            let rights = r.take(&mut t, &p, "rights", String::new());
            let primary_key = SymmetricKey::parse(&primary)
                .map_err(|e| r.error(&format!("{p}.primary_key"), e))
                .ok();
            let secondary_key = match secondary.as_str() {
                "" => None,
                s => SymmetricKey::parse(s)
                    .map_err(|e| r.error(&format!("{p}.secondary_key"), e))
                    .ok(),
            };
            let rights = dps_api::Rights::parse_list(&rights)
                .map_err(|e| r.error(&format!("{p}.rights"), e))
                .ok();
            r.finish_table(t, &p);
            if let (Some(primary_key), Some(rights)) = (primary_key, rights) {
                policies.push(PolicyConfig {
                    name,
                    primary_key,
                    secondary_key,
                    rights,
                });
            }
        }

        let mut linked_hubs = Vec::new();
        for (i, mut t) in r
            .tables(&mut root, "", "linked_hubs")
            .into_iter()
            .enumerate()
        {
            let p = format!("linked_hubs[{i}]");
            let host = r.take(&mut t, &p, "host_name", String::new());
            let allocation_weight = r.take(&mut t, &p, "allocation_weight", 1u32);
            let apply_allocation_policy = r.take(&mut t, &p, "apply_allocation_policy", true);
            if !WEIGHT_RANGE.contains(&allocation_weight) {
                r.error(&format!("{p}.allocation_weight"), "must be from 1 to 1000");
            }
            let host_name = HubName::parse(&host)
                .map_err(|e| r.error(&format!("{p}.host_name"), e))
                .ok();
            r.finish_table(t, &p);
            if let Some(host_name) = host_name {
                linked_hubs.push(LinkedHubConfig {
                    host_name,
                    allocation_weight,
                    apply_allocation_policy,
                });
            }
        }

        let metrics = metrics::read(&mut r, &mut root);

        r.finish_table(root, "");
        let errors = r.finish();
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(Config {
            data_dir,
            service: ServiceConfig {
                host_name,
                id_scope,
            },
            api,
            mqtt,
            amqp,
            registration,
            feed,
            policies,
            linked_hubs,
            log,
            metrics,
        })
    }
}

/// Whether `host` is exactly a host as a URL names it (a DNS name, an IPv4 literal or a
/// bracketed IPv6 literal; any letter case), with no scheme, port, path or user.
fn is_plain_host(host: &str) -> bool {
    let any_host = dps_types::WebhookPolicy::default();
    any_host
        .check(&format!("https://{host}/"))
        .is_ok_and(|url| url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(host)))
}

#[cfg(test)]
mod tests;
