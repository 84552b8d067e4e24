//! Shared set-up for the benchmarks: a sled data directory filled with many enrollments,
//! written straight through the backend (the fast way to make a large store), and process
//! memory readings.

use std::path::Path;

use dps_store::{Backend, SledBackend, StoreError, Table, Write};

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
        let (key, json) = (id(n), enrollment_json(n));
        backend.write(&[Write::Put(Table::Enrollments, &key, &json)])?;
    }
    backend.flush()
}

/// A global allocator that counts live heap bytes, so benchmarks can report the memory a
/// structure really holds (RSS also counts freed-but-kept pages).
pub struct CountingAlloc;

static LIVE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

/// Live heap bytes, when [`CountingAlloc`] is the global allocator.
pub fn live_heap_bytes() -> usize {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
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
