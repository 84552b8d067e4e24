//! The enrollment JSON model (`dps_types`): the input as an `IndividualEnrollment`, an
//! `EnrollmentGroup` and a bulk operation (`mode` plus an `enrollments` or `enrollmentGroups`
//! array), as the service API reads request bodies.
//!
//! Checked: no panic; whatever was read serializes, the serialized JSON reads back as an equal
//! value, and serializing that gives the same bytes (the round trip is stable).

#![no_main]

use dps_types::{BulkMode, EnrollmentGroup, IndividualEnrollment};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Asserts that `value` survives serialize → deserialize → serialize unchanged.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let first = serde_json::to_vec(value).expect("a model value serializes");
    let back: T = serde_json::from_slice(&first).unwrap_or_else(|e| {
        panic!(
            "{} does not read back: {e}",
            String::from_utf8_lossy(&first)
        )
    });
    assert_eq!(&back, value, "{}", String::from_utf8_lossy(&first));
    let second = serde_json::to_vec(&back).expect("a model value serializes");
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second)
    );
}

fn items<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: Option<&Value>) {
    for item in value.and_then(Value::as_array).into_iter().flatten() {
        if let Ok(parsed) = serde_json::from_value::<T>(item.clone()) {
            round_trip(&parsed);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(enrollment) = serde_json::from_slice::<IndividualEnrollment>(data) {
        round_trip(&enrollment);
    }
    if let Ok(group) = serde_json::from_slice::<EnrollmentGroup>(data) {
        round_trip(&group);
    }
    let Ok(Value::Object(operation)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Some(mode) = operation.get("mode").and_then(Value::as_str) {
        let _ = BulkMode::parse(mode);
    }
    items::<IndividualEnrollment>(operation.get("enrollments"));
    items::<EnrollmentGroup>(operation.get("enrollmentGroups"));
});
