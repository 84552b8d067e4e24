//! Shared set-up for the benchmarks: a sled data directory filled with many enrollments,
//! written straight through the backend (the fast way to make a large store), and process
//! memory readings.

use std::path::Path;

use dps_store::{Backend, SledBackend, StoreError, Table};

/// Registration id of the `n`th benchmark enrollment.
pub fn id(n: usize) -> String {
    format!("bench-device-{n:07}")
}

/// The stored JSON of a symmetric-key enrollment as the API would have written it.
pub fn enrollment_json(n: usize) -> Vec<u8> {
    let mut e: dps_types::IndividualEnrollment = serde_json::from_value(serde_json::json!({
        "registrationId": id(n),
        "attestation": {"type": "symmetricKey"},
        "iotHubHostName": "hub-1.example.net",
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
        "capabilities": {"iotEdge": false}
    }))
    .unwrap_or_else(|e| panic!("benchmark enrollment JSON: {e}"));
    e.stamp(None, dps_types::Timestamp::now());
    serde_json::to_vec(&e).unwrap_or_else(|e| panic!("encode: {e}"))
}

/// Fills `dir` with `count` symmetric-key enrollments and flushes.
pub fn fill_store(dir: &Path, count: usize) -> Result<(), StoreError> {
    let backend = SledBackend::open(dir)?;
    for n in 0..count {
        backend.put(Table::Enrollments, &id(n), &enrollment_json(n))?;
    }
    backend.flush()
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
