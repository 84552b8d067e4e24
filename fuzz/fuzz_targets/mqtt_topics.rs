//! The DPS topic and username parsers (`dps_mqtt::topics`).
//!
//! Checked: no panic; every accepted `$rid` is one `is_valid_rid` accepts and echoes into a
//! response topic that carries it verbatim; every accepted username round-trips its ids.

#![no_main]

use dps_mqtt::topics::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = topics::parse_request(data) {
        let rid = request.rid();
        assert!(topics::is_valid_rid(rid), "accepted an unsafe $rid {rid:?}");
        let topic = topics::response_topic(202, rid, Some(1));
        assert!(topic.starts_with(topics::RESPONSE_PREFIX));
        assert!(
            topic.ends_with(&format!("?$rid={rid}&retry-after=1")),
            "{topic}"
        );
        if let Request::Poll { operation_id, .. } = &request {
            assert!(!operation_id.is_empty());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(username) = topics::parse_username(text) {
            let rebuilt = format!(
                "{}/registrations/{}/api-version={}",
                username.id_scope.as_str(),
                username.registration_id.as_str(),
                username.api_version
            );
            assert!(text.starts_with(&rebuilt), "{text:?} read as {rebuilt:?}");
        }
    }
});
