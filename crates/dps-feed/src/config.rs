//! The feed's configuration, and its validation into the settings the link uses.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};

use crate::FeedError;

/// The broker [`BrokerUrl::default`] names: the local RabbitMQ's default user and virtual host.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker URL. Its `Debug` and `Display` hide the password.
#[derive(Clone)]
pub struct BrokerUrl {
    text: String,
    uri: AMQPUri,
}

impl BrokerUrl {
    /// Parses `amqp://user:password@host:port/vhost` or `amqps://...` (the virtual host
    /// percent-encoded: `%2f` is `/`). Errors never repeat the URL.
    pub fn parse(text: &str) -> Result<Self, FeedError> {
        let invalid = |why: String| FeedError::InvalidUrl { why };
        // `url` describes a syntax error without echoing the input; lapin's parser would.
        let url = url::Url::parse(text).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err(invalid(format!(
                "the scheme must be amqp or amqps, not {}",
                url.scheme().chars().take(16).collect::<String>()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("it names no host".into()));
        }
        let uri = AMQPUri::from_str(text).map_err(|_| {
            invalid("its user name, password, virtual host or query is malformed".into())
        })?;
        Ok(Self {
            text: text.to_owned(),
            uri,
        })
    }

    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// Whether the link uses TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.uri
    }
}

impl Default for BrokerUrl {
    /// The local RabbitMQ's default: `amqp://guest:guest@127.0.0.1:5672/%2f`.
    fn default() -> Self {
        let text = DEFAULT_BROKER_URL;
        Self {
            text: text.to_owned(),
            uri: AMQPUri::from_str(text).unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.is_tls() { "amqps" } else { "amqp" };
        write!(
            f,
            "{scheme}://{}@{}/{}",
            self.user(),
            self.endpoint(),
            url::form_urlencoded::byte_serialize(self.vhost().as_bytes()).collect::<String>()
        )
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

impl PartialEq for BrokerUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// The kind of the per-hub queues (`hub_queue_type`). Measured on one RabbitMQ 3.10 node
/// (`cargo run --release -p dps-feed --example confirm_latency`, `docs/assignment-feed.md`):
/// a persistent message's publisher confirm waits for the queue's write to disk, and the
/// classic queue's version-1 index makes that several times slower than version 2 or quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HubQueueType {
    /// A classic queue declared without arguments (RabbitMQ's default index, version 1 before
    /// 4.0): what earlier releases declared, so their existing queues match.
    Classic,
    /// A classic queue with `x-queue-version: 2` (RabbitMQ >= 3.10; older brokers ignore the
    /// argument): the same semantics for consumers, confirms several times faster.
    #[default]
    ClassicV2,
    /// A quorum queue (`x-queue-type: quorum`, RabbitMQ >= 3.8): replicated over the cluster
    /// (Raft), always durable, no exclusive or auto-delete consumers, no priorities.
    Quorum,
}

impl HubQueueType {
    /// The configuration spellings, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["classic", "classic-v2", "quorum"];

    /// Parses `classic`, `classic-v2` or `quorum`.
    pub fn parse(text: &str) -> Result<Self, FeedError> {
        match text {
            "classic" => Ok(Self::Classic),
            "classic-v2" => Ok(Self::ClassicV2),
            "quorum" => Ok(Self::Quorum),
            _ => Err(FeedError::InvalidSetting {
                what: "hub_queue_type",
                why: "must be \"classic\", \"classic-v2\" or \"quorum\"",
            }),
        }
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => Self::NAMES[0],
            Self::ClassicV2 => Self::NAMES[1],
            Self::Quorum => Self::NAMES[2],
        }
    }

    /// The `queue.declare` arguments of this kind.
    pub(crate) fn arguments(self) -> FieldTable {
        let mut args = FieldTable::default();
        match self {
            Self::Classic => {}
            Self::ClassicV2 => {
                args.insert("x-queue-version".into(), AMQPValue::LongInt(2));
            }
            Self::Quorum => {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
            }
        }
        args
    }
}

impl std::fmt::Display for HubQueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name the configuration gives the broker: [`check_name`] says which rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfiguredName {
    /// `exchange`: the durable topic exchange.
    Exchange,
    /// `queue_prefix`: the start of every hub queue's name.
    QueuePrefix,
}

impl ConfiguredName {
    fn key(self) -> &'static str {
        match self {
            Self::Exchange => "exchange",
            Self::QueuePrefix => "queue_prefix",
        }
    }
}

/// The one check of the exchange name and the queue prefix, used by [`crate::Feed::start`]
/// and by whoever reads the configuration: 1 to 255 bytes of ASCII letters, digits, `-`,
/// `_`, `.` or `:` (names RabbitMQ, its management UI and shells take without quoting), and
/// not starting with `amq.` (reserved by the broker).
pub fn check_name(kind: ConfiguredName, name: &str) -> Result<(), FeedError> {
    let fail = |why| FeedError::InvalidName {
        what: kind.key(),
        why,
    };
    if name.is_empty() {
        return Err(fail(match kind {
            ConfiguredName::Exchange => {
                "must not be empty (the default exchange cannot route by topic)"
            }
            ConfiguredName::QueuePrefix => "must not be empty",
        }));
    }
    if name.len() > 255 {
        return Err(fail("is longer than 255 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(fail("must be letters, digits, '-', '_', '.' or ':'"));
    }
    if name.starts_with("amq.") {
        return Err(fail("must not start with amq. (reserved by the broker)"));
    }
    Ok(())
}

/// How the feed reaches the broker and what it declares there.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    /// The broker.
    pub url: BrokerUrl,
    /// The durable topic exchange events are published to.
    pub exchange: String,
    /// Whether to declare one durable queue per linked hub, bound with `{hub}.#`.
    pub hub_queues: bool,
    /// Name prefix of those queues (`dps.hub.` gives `dps.hub.hub-a.example.net`).
    pub queue_prefix: String,
    /// The kind of those queues.
    pub hub_queue_type: HubQueueType,
    /// Bound on one connection attempt: TCP, TLS, AMQP handshake and declarations.
    pub connect_timeout: Duration,
    /// How long `publish` waits for the broker's confirmation.
    pub confirm_timeout: Duration,
    /// First reconnection delay (doubled after each failure, with jitter).
    pub reconnect_min: Duration,
    /// Longest reconnection delay.
    pub reconnect_max: Duration,
    /// While the link is up, how often the relay looks through the outbox for entries that
    /// are neither in flight nor confirmed.
    pub sweep_interval: Duration,
    /// For `amqps://`: PEM file of the CA that signs the broker's certificate (in addition
    /// to the system roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Whether symmetric keys go into `device.assigned` documents (read by whoever builds
    /// the events with [`crate::assigned_event`]).
    pub include_device_keys: bool,
    /// Bound on the events the feed holds unconfirmed (handed to `publish` or taken from the
    /// outbox); beyond it `publish` fails at once.
    pub max_unconfirmed: usize,
    /// The connection name the broker's management shows.
    pub connection_name: String,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            url: BrokerUrl::default(),
            exchange: "dps.assignments".into(),
            hub_queues: false,
            queue_prefix: "dps.hub.".into(),
            hub_queue_type: HubQueueType::default(),
            connect_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            tls_ca_file: None,
            include_device_keys: true,
            // About two seconds of registrations at the target rates: enough to keep
            // confirms pipelined, small enough that an outage costs little memory.
            max_unconfirmed: 4096,
            connection_name: "dpsd".into(),
        }
    }
}

/// Largest CA file read for `tls_ca_file`; a CA bundle is a few hundred KiB at most.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// The configuration checked and turned into what the link needs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) url: BrokerUrl,
    pub(crate) exchange: ShortString,
    pub(crate) queues: Vec<(ShortString, ShortString)>,
    pub(crate) hub_queue_type: HubQueueType,
    pub(crate) tls: OwnedTLSConfig,
    pub(crate) connect_timeout: Duration,
    pub(crate) confirm_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) max_unconfirmed: usize,
    pub(crate) connection_name: String,
    pub(crate) include_device_keys: bool,
}

fn amqp_name(what: &'static str, text: String) -> Result<ShortString, FeedError> {
    ShortString::try_new(text).map_err(|_| FeedError::InvalidName {
        what,
        why: "is longer than 255 bytes",
    })
}

fn nonzero(what: &'static str, d: Duration) -> Result<Duration, FeedError> {
    if d.is_zero() {
        return Err(FeedError::InvalidSetting {
            what,
            why: "must be greater than zero",
        });
    }
    Ok(d)
}

fn read_ca(path: &PathBuf) -> Result<String, FeedError> {
    let fail = |why: &str, source| FeedError::TlsCa {
        path: path.clone(),
        why: why.to_owned(),
        source,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| fail("cannot read it", Some(e)))?
        .len();
    if len > MAX_CA_FILE_BYTES {
        return Err(fail("it is larger than 1 MiB", None));
    }
    let pem = std::fs::read_to_string(path).map_err(|e| fail("cannot read it", Some(e)))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(fail("it holds no PEM certificate", None));
    }
    Ok(pem)
}

impl Settings {
    pub(crate) fn new(config: &FeedConfig, hubs: &[dps_types::HubName]) -> Result<Self, FeedError> {
        check_name(ConfiguredName::Exchange, &config.exchange)?;
        let exchange = amqp_name("exchange", config.exchange.clone())?;
        let mut queues = Vec::new();
        if config.hub_queues {
            check_name(ConfiguredName::QueuePrefix, &config.queue_prefix)?;
            for hub in hubs {
                let queue = amqp_name("queue_prefix", format!("{}{hub}", config.queue_prefix))?;
                let binding = amqp_name("hub name", format!("{hub}.#"))?;
                queues.push((queue, binding));
            }
        }
        if config.max_unconfirmed == 0 {
            return Err(FeedError::InvalidSetting {
                what: "max_unconfirmed",
                why: "must be greater than zero",
            });
        }
        let reconnect_min = nonzero("reconnect_min", config.reconnect_min)?;
        let reconnect_max = nonzero("reconnect_max", config.reconnect_max)?;
        if reconnect_max < reconnect_min {
            return Err(FeedError::InvalidSetting {
                what: "reconnect_max",
                why: "must not be shorter than reconnect_min",
            });
        }
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: match &config.tls_ca_file {
                Some(path) => Some(read_ca(path)?),
                None => None,
            },
        };
        Ok(Self {
            url: config.url.clone(),
            exchange,
            queues,
            hub_queue_type: config.hub_queue_type,
            tls,
            connect_timeout: nonzero("connect_timeout", config.connect_timeout)?,
            confirm_timeout: nonzero("confirm_timeout", config.confirm_timeout)?,
            reconnect_min,
            reconnect_max,
            sweep_interval: nonzero("sweep_interval", config.sweep_interval)?,
            max_unconfirmed: config.max_unconfirmed,
            connection_name: config.connection_name.clone(),
            include_device_keys: config.include_device_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_never_show_the_password() {
        for bad in [
            "http://guest:s3cret@127.0.0.1:5672/%2f",
            "amqp://guest:s3cret@/%2f",
            "not a url s3cret",
            "amqp://guest:s3cret@127.0.0.1:99999/%2f",
        ] {
            let err = BrokerUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{bad}: {err}");
        }
        let url = BrokerUrl::parse("amqp://guest:s3cret@127.0.0.1:5672/%2f").unwrap();
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        assert_eq!(url.to_string(), "amqp://guest@127.0.0.1:5672/%2F");
        assert_eq!(url.vhost(), "/");
        assert_eq!(url.endpoint(), "127.0.0.1:5672");
    }

    #[test]
    fn default_url_is_the_local_broker() {
        let url = BrokerUrl::default();
        assert_eq!(
            url,
            BrokerUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap()
        );
        assert_eq!(url.endpoint(), "127.0.0.1:5672");
        assert!(!url.is_tls());
    }

    #[test]
    fn names_follow_one_rule() {
        use ConfiguredName::{Exchange, QueuePrefix};
        for good in ["dps.assignments", "a", "x-1_y:z", &"e".repeat(255)] {
            assert!(check_name(Exchange, good).is_ok(), "{good}");
            assert!(check_name(QueuePrefix, good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "amq.topic",
            "with space",
            "slash/",
            "é",
            &"e".repeat(256),
        ] {
            let err = check_name(Exchange, bad).unwrap_err().to_string();
            assert!(err.starts_with("exchange "), "{bad}: {err}");
            let err = check_name(QueuePrefix, bad).unwrap_err().to_string();
            assert!(err.starts_with("queue_prefix "), "{bad}: {err}");
        }
    }

    #[test]
    fn hub_queue_types_parse_from_their_names() {
        for name in HubQueueType::NAMES {
            assert_eq!(HubQueueType::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(HubQueueType::default(), HubQueueType::ClassicV2);
        let err = HubQueueType::parse("stream").unwrap_err().to_string();
        assert!(err.starts_with("hub_queue_type must be"), "{err}");
        assert!(HubQueueType::Classic.arguments().inner().is_empty());
        assert!(HubQueueType::Quorum
            .arguments()
            .inner()
            .contains_key("x-queue-type"));
    }

    #[test]
    fn settings_refuse_bad_values() {
        let hub = dps_types::HubName::parse("hub-a.example.net").unwrap();
        let check = |c: FeedConfig| Settings::new(&c, std::slice::from_ref(&hub)).unwrap_err();
        let err = check(FeedConfig {
            exchange: String::new(),
            ..FeedConfig::default()
        });
        assert!(
            err.to_string().starts_with("exchange must not be empty"),
            "{err}"
        );
        let err = check(FeedConfig {
            hub_queues: true,
            queue_prefix: "q".repeat(250),
            ..FeedConfig::default()
        });
        assert!(err.to_string().contains("longer than 255"), "{err}");
        let err = check(FeedConfig {
            exchange: "amq.topic".into(),
            ..FeedConfig::default()
        });
        assert!(err.to_string().contains("reserved"), "{err}");
        let err = check(FeedConfig {
            hub_queues: true,
            queue_prefix: "dps hub/".into(),
            ..FeedConfig::default()
        });
        assert_eq!(
            err.to_string(),
            "queue_prefix must be letters, digits, '-', '_', '.' or ':'"
        );
        let err = check(FeedConfig {
            reconnect_min: Duration::from_secs(60),
            ..FeedConfig::default()
        });
        assert!(err.to_string().contains("reconnect_min"), "{err}");
        let err = check(FeedConfig {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..FeedConfig::default()
        });
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let ok = Settings::new(
            &FeedConfig {
                hub_queues: true,
                ..FeedConfig::default()
            },
            std::slice::from_ref(&hub),
        )
        .unwrap();
        assert_eq!(ok.queues[0].0.as_str(), "dps.hub.hub-a.example.net");
        assert_eq!(ok.queues[0].1.as_str(), "hub-a.example.net.#");
    }
}
