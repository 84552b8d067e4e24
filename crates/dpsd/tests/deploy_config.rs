//! The configuration files shipped in deploy/ (the container image's, the Kubernetes
//! ConfigMap's) are valid and put the listeners and the data directory where the image, the
//! manifests and their probes expect them.

use std::path::Path;

fn load(relative: &str) -> dpsd::Config {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../")
        .join(relative);
    dpsd::Config::load(Some(&file), std::iter::empty(), &dpsd::Flags::default())
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

#[test]
fn container_and_kubernetes_configs_listen_where_their_manifests_expect() {
    for file in ["deploy/docker/dpsd.toml", "deploy/kubernetes/dpsd.toml"] {
        let c = load(file);
        assert_eq!(c.data_dir, Path::new("/var/lib/dpsd"), "{file}");
        assert_eq!(c.api.listen.to_string(), "0.0.0.0:8443", "{file}");
        assert_eq!(c.mqtt.listen.to_string(), "0.0.0.0:8883", "{file}");
        assert!(c.metrics.enabled, "{file}");
        assert_eq!(c.metrics.listen.to_string(), "0.0.0.0:9464", "{file}");
    }
}
