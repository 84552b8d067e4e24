//! `[metrics]`: the Prometheus metrics and health listener.

use std::net::SocketAddr;

use super::reader::Reader;

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Whether the metrics listener runs (the metrics are kept either way).
    pub enabled: bool,
    /// Plain-HTTP listen address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

/// Prometheus' registered default port for exporters (9464: OpenTelemetry's Prometheus
/// exporter), on loopback: metrics are not for the internet, and need no key.
const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9464);

/// Reads `[metrics]` out of `root`.
pub(super) fn read(r: &mut Reader, root: &mut toml::Table) -> MetricsConfig {
    let mut t = r.table(root, "", "metrics");
    let config = MetricsConfig {
        enabled: r.take(&mut t, "metrics", "enabled", true),
        listen: r.take(
            &mut t,
            "metrics",
            "listen",
            SocketAddr::from(DEFAULT_LISTEN),
        ),
    };
    r.finish_table(t, "metrics");
    config
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Flags};

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, crate::ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_table(text.parse().unwrap(), env, &Flags::default())
    }

    #[test]
    fn on_and_on_loopback_by_default_and_overridable() {
        let c = Config::defaults().unwrap();
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9464");
        let c = load(
            "[metrics]\nenabled = false\nlisten = \"0.0.0.0:9100\"\n",
            &[("DPSD_METRICS_LISTEN", "127.0.0.1:0")],
        )
        .unwrap();
        assert!(!c.metrics.enabled);
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:0");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let err = load(
            "[metrics]\nenabled = \"yes\"\nlisten = \"nowhere\"\nport = 1\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in ["metrics.enabled", "metrics.listen", "metrics.port"] {
            assert!(err.contains(key), "{key} in {err}");
        }
    }
}
