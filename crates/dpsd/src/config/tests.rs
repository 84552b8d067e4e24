//! Configuration parsing: defaults, sources, ranges, and every bad key reported at once.
use super::*;

fn parse(text: &str, env: &[(&str, &str)], flags: &Flags) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_table(table, env, flags)
}

#[test]
fn defaults_need_nothing() {
    let c = Config::defaults().unwrap();
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.api.listen.port(), 8443);
    assert_eq!(c.api.max_body, ByteSize(256 * 1024));
}

#[test]
fn documented_file_matches_the_defaults() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/dpsd.toml");
    let loaded = Config::load(Some(&file), std::iter::empty(), &Flags::default()).unwrap();
    assert_eq!(
        format!("{loaded:?}"),
        format!("{:?}", Config::defaults().unwrap())
    );
}

#[test]
fn defaults_are_the_libraries() {
    let c = Config::defaults().unwrap();
    let http = dps_api::HttpLimits::default();
    assert_eq!(c.api.max_connections, http.max_connections);
    assert_eq!(c.api.tls_handshake_timeout, http.tls_handshake_timeout);
    assert_eq!(c.api.header_read_timeout, http.header_read_timeout);
    assert_eq!(c.api.request_timeout, http.request_timeout);
    assert_eq!(c.api.max_body.0, http.max_body_bytes);
    let mqtt = dps_mqtt::MqttLimits::default();
    assert_eq!(c.mqtt.max_connections, mqtt.max_connections);
    assert_eq!(c.mqtt.tls_handshake_timeout, mqtt.tls_handshake_timeout);
    assert_eq!(c.mqtt.connect_timeout, mqtt.connect_timeout);
    assert_eq!(c.mqtt.max_packet.0, mqtt.max_packet_size);
    assert_eq!(
        c.mqtt.max_requests_per_connection,
        mqtt.max_requests_per_connection
    );
    assert_eq!(
        c.mqtt.max_operations_per_connection,
        mqtt.max_operations_per_connection
    );
    let amqp = dps_amqp::AmqpLimits::default();
    assert!(c.amqp.enabled);
    assert_eq!(c.amqp.listen.port(), 5671);
    assert_eq!(format!("{:?}", c.amqp.limits()), format!("{amqp:?}"));
    let reg = dps_registrar::RegistrarConfig::new(IdScope::generate(), Vec::new());
    assert_eq!(
        c.registration.default_allocation_policy,
        reg.default_allocation_policy
    );
    assert_eq!(c.registration.webhook_timeout, reg.webhook_timeout);
    assert_eq!(c.registration.max_in_flight, reg.max_in_flight);
    assert_eq!(c.registration.max_operations, reg.operations.max_operations);
    assert_eq!(c.registration.operation_ttl, reg.operations.ttl);
    assert!(c.api.device_api);
    assert!(c.api.websocket);
    let c = parse("[api]\nwebsocket = false", &[], &Flags::default()).unwrap();
    assert!(!c.api.websocket);
}

#[test]
fn an_id_scope_the_service_api_uses_is_refused_while_devices_use_https() {
    for scope in ["registrations", "EnrollmentGroups", "portal"] {
        let text = format!("[service]\nid_scope = \"{scope}\"");
        let err = parse(&text, &[], &Flags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("service.id_scope"), "{err}");
        assert!(err.contains("api.device_api"), "{err}");
        let text = format!("{text}\n[api]\ndevice_api = false");
        let c = parse(&text, &[], &Flags::default()).unwrap();
        assert!(!c.api.device_api);
    }
    let c = parse(
        "[service]\nid_scope = \"0ne00000A1B\"",
        &[],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.service.id_scope.unwrap().as_str(), "0ne00000A1B");
}

#[test]
fn values_out_of_range_name_their_keys_at_once() {
    let text = r#"
        [api]
        max_connections = 0
        tls_handshake_timeout = "0s"
        header_read_timeout = "0ms"
        request_timeout = "2h"
        max_body = "0B"
        [mqtt]
        max_connections = 0
        tls_handshake_timeout = "3601s"
        connect_timeout = "0s"
        max_packet = "0B"
        max_requests_per_connection = 0
        max_operations_per_connection = 0
        [amqp]
        open_timeout = "0s"
        max_frame = "511B"
        max_message = "0B"
        link_credit = 0
        [registration]
        webhook_timeout = "0s"
        max_in_flight = 0
        max_operations = 0
        operation_ttl = "0s"
    "#;
    let err = parse(text, &[], &Flags::default()).unwrap_err().to_string();
    for key in [
        "api.max_connections: is 0: must be at least 1",
        "api.tls_handshake_timeout",
        "api.header_read_timeout",
        "api.request_timeout",
        "api.max_body",
        "mqtt.max_connections",
        "mqtt.tls_handshake_timeout",
        "mqtt.connect_timeout",
        "mqtt.max_packet",
        "mqtt.max_requests_per_connection",
        "mqtt.max_operations_per_connection",
        "amqp.open_timeout",
        "amqp.max_frame",
        "amqp.max_message",
        "amqp.link_credit",
        "registration.webhook_timeout",
        "registration.max_in_flight",
        "registration.max_operations",
        "registration.operation_ttl",
    ] {
        assert!(err.contains(key), "missing {key} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 20, "one line per key:\n{err}");
}

#[test]
fn limits_at_the_edges_are_accepted() {
    let c = parse(
        "[api]\nmax_connections = 1\nrequest_timeout = \"1h\"\nmax_body = \"1B\"\n[mqtt]\nmax_packet = \"268435455B\"\nconnect_timeout = \"1ms\"",
        &[],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.api.max_connections, 1);
    assert_eq!(c.api.request_timeout, MAX_TIMEOUT);
    assert_eq!(c.mqtt.max_packet, ByteSize(268_435_455));
    let err = parse("[mqtt]\nmax_packet = \"256MiB\"", &[], &Flags::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("mqtt.max_packet"), "{err}");
}

#[test]
fn an_override_out_of_range_names_its_source() {
    let err = parse(
        "",
        &[("DPSD_REGISTRATION_MAX_IN_FLIGHT", "0")],
        &Flags::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("registration.max_in_flight: environment variable DPSD_REGISTRATION_MAX_IN_FLIGHT is '0': must be at least 1"),
        "{err}"
    );
}

#[test]
fn an_invalid_log_filter_is_an_error() {
    let flags = Flags {
        log: Some("dps_api=loud".into()),
        ..Default::default()
    };
    let err = parse("", &[], &flags).unwrap_err().to_string();
    assert!(
        err.contains("log: 'dps_api=loud' is not a log filter"),
        "{err}"
    );
    let ok = parse("log = \"dps_api=debug,info\"", &[], &Flags::default()).unwrap();
    assert_eq!(ok.log.as_str(), "dps_api=debug,info");
}

#[test]
fn flags_beat_env_beat_file() {
    let flags = Flags {
        data_dir: Some("/flag".into()),
        ..Default::default()
    };
    let c = parse(
        "data_dir = \"/file\"\n[api]\nlisten = \"127.0.0.1:1\"",
        &[
            ("DPSD_DATA_DIR", "/env"),
            ("DPSD_API_LISTEN", "127.0.0.1:2"),
        ],
        &flags,
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/flag"));
    assert_eq!(c.api.listen.port(), 2);
}

#[test]
fn webhook_policy_keys() {
    let c = Config::defaults().unwrap();
    assert_eq!(
        c.registration.webhook_policy,
        dps_types::WebhookPolicy::default()
    );
    let c = parse(
        "[registration]\nwebhook_allow_http = true\nwebhook_allowed_hosts = [\"Alloc.example.com\", \"[::1]\"]",
        &[],
        &Flags::default(),
    )
    .unwrap();
    assert!(c.registration.webhook_policy.allow_http);
    assert_eq!(
        c.registration.webhook_policy.allowed_hosts,
        ["Alloc.example.com", "[::1]"]
    );
    let c = parse(
        "",
        &[(
            "DPSD_REGISTRATION_WEBHOOK_ALLOWED_HOSTS",
            "a.example, 10.0.0.7",
        )],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(
        c.registration.webhook_policy.allowed_hosts,
        ["a.example", "10.0.0.7"]
    );
    let err = parse(
        "[registration]\nwebhook_allowed_hosts = [\"https://a.example/\", \"b.example:443\"]\nwebhook_allow_http = \"maybe\"",
        &[],
        &Flags::default(),
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "'https://a.example/' is not a host",
        "'b.example:443' is not a host",
        "registration.webhook_allow_http",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
}

#[test]
fn every_bad_key_is_named_at_once() {
    let text = r#"
        colour = "blue"
        [api]
        max_connections = "many"
        request_timeout = "30"
        [[linked_hubs]]
        host_name = "bad host"
        allocation_weight = 0
    "#;
    let err = parse(text, &[("DPSD_NOPE", "1")], &Flags::default())
        .unwrap_err()
        .to_string();
    for needle in [
        "colour: unknown key",
        "api.max_connections",
        "api.request_timeout",
        "linked_hubs[0].host_name",
        "linked_hubs[0].allocation_weight",
        "DPSD_NOPE",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
}

#[test]
fn the_amqp_listener_is_configured_by_file_environment_and_flag() {
    let c = parse(
        "[amqp]\nenabled = false\nmax_frame = \"512B\"\nidle_timeout = \"2m\"",
        &[("DPSD_AMQP_LINK_CREDIT", "2")],
        &Flags {
            amqp_listen: Some("127.0.0.1:15671".into()),
            ..Flags::default()
        },
    )
    .unwrap();
    assert!(!c.amqp.enabled);
    assert_eq!(c.amqp.listen, "127.0.0.1:15671".parse().unwrap());
    let limits = c.amqp.limits();
    assert_eq!(limits.max_frame_size, 512);
    assert_eq!(limits.idle_timeout, Duration::from_secs(120));
    assert_eq!(limits.link_credit, 2);
    let err = parse(
        "[amqp]\nenabled = \"yes\"\nport = 1",
        &[],
        &Flags::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("amqp.enabled"), "{err}");
    assert!(err.contains("amqp.port"), "{err}");
}

#[test]
fn the_feed_is_off_by_default_and_its_keys_are_checked() {
    let c = Config::defaults().unwrap();
    assert!(!c.feed.enabled);
    assert_eq!(c.feed.config, dps_feed::FeedConfig::default());

    let c = parse(
        "[feed]\nexchange = \"hub.events\"\nhub_queues = true\ninclude_device_keys = false\n\
         hub_queue_type = \"quorum\"",
        &[
            ("DPSD_FEED_ENABLED", "true"),
            (
                "DPSD_FEED_URL",
                "amqps://dps:secret@broker.example:5671/prod",
            ),
        ],
        &Flags::default(),
    )
    .unwrap();
    assert!(c.feed.enabled);
    assert_eq!(c.feed.config.exchange, "hub.events");
    assert!(c.feed.config.hub_queues && !c.feed.config.include_device_keys);
    assert_eq!(c.feed.config.hub_queue_type, dps_feed::HubQueueType::Quorum);
    assert!(c.feed.config.url.is_tls());
    assert_eq!(c.feed.config.url.vhost(), "prod");
    assert!(!format!("{c:?}").contains("secret"), "the password shows");

    let err = parse(
        "[feed]\nurl = \"http://user:hunter2@broker\"\nexchange = \"has space\"\n\
         reconnect_min = \"1m\"\nreconnect_max = \"1s\"\nmax_unconfirmed = 0\n\
         hub_queue_type = \"stream\"\nqueue_prefix = \"amq.q.\"",
        &[],
        &Flags::default(),
    )
    .unwrap_err()
    .to_string();
    for key in [
        "feed.url",
        "feed.exchange",
        "feed.reconnect_min",
        "feed.max_unconfirmed",
        "feed.hub_queue_type: is \"stream\": must be \"classic\", \"classic-v2\" or \"quorum\"",
        "feed.queue_prefix: is \"amq.q.\": must not start with amq.",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "the password shows: {err}");
}
