//! Hold mode against an in-process dpsd. Alone in its test binary: it reads this process's
//! open files and memory, which tests running beside it would change.

use std::time::Duration;

use dps_loadtest::hold::{self, HoldConfig};
use dps_loadtest::procfs::Pid;

mod common;

use common::{config_for, start_dpsd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_devices_all_connect_ping_and_show_in_the_server_memory() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_dpsd(dir.path()).await;
    let mut config = config_for(&running);
    config.concurrency = 32;
    let hold = HoldConfig {
        devices: 200,
        hold_for: Duration::from_secs(3),
        keep_alive: Duration::from_secs(1),
        // dpsd runs in this process.
        server: Some(Pid::own()),
    };
    let report = hold::run(&config, &hold).await.unwrap();
    assert_eq!(report.connected, 200, "{report}");
    assert!(report.failures.is_empty(), "{report}");
    assert_eq!(report.dropped, 0, "{report}");
    assert!(report.all_held());
    // Every device pinged at least once during a hold three times its keep-alive.
    assert!(report.pings >= 200, "{report}");
    let (before, at_hold) = (report.before.unwrap(), report.at_hold.unwrap());
    assert!(report.after.is_some(), "{report}");
    // Both ends of 200 connections are in this process.
    assert!(
        at_hold.open_fds.unwrap() >= before.open_fds.unwrap() + 400,
        "{report}"
    );
    assert!(report.rss_per_device_bytes.is_some(), "{report}");
    assert!(report.to_string().contains("per held device"), "{report}");
    // The group is gone afterwards.
    assert!(running.registrar.store().group(&config.group).is_none());
    running.shutdown().await.unwrap();
}
