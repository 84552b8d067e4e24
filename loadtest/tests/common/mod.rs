//! An in-process dpsd with one linked hub, and a load-tool configuration aimed at it.

use std::path::Path;
use std::time::Duration;

use dps_loadtest::{ApiEndpoint, Config, Loopback};

/// Starts dpsd in `dir` with one linked hub, so devices can be assigned.
pub async fn start_dpsd(dir: &Path) -> dpsd::Running {
    let config_file = dir.join("dpsd.toml");
    std::fs::write(
        &config_file,
        "[[linked_hubs]]\nhost_name = \"hub-1.example.net\"\n",
    )
    .unwrap();
    let flags = dpsd::Flags {
        data_dir: Some(dir.join("data")),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let config = dpsd::Config::load(
        Some(&config_file),
        [("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned())],
        &flags,
    )
    .unwrap();
    dpsd::start(config).await.unwrap()
}

pub fn config_for(running: &dpsd::Running) -> Config {
    let mut config = Config::new(
        running.data_dir.clone(),
        ApiEndpoint::from_addr(running.api_addr).unwrap(),
        Loopback::new(running.mqtt_addr).unwrap(),
    );
    config.amqp = Loopback::new(running.amqp_addr.expect("AMQP is on")).unwrap();
    config.duration_limit = Duration::from_secs(60);
    config.poll_delay = Duration::from_millis(20);
    config
}
