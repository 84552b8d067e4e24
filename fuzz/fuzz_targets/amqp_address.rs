//! The AMQP link address and PLAIN username parser (`dps_amqp::address::parse_device_path`).
//!
//! Checked: no panic; an accepted name is within `MAX_ADDRESS_LEN`, its ID scope is one
//! non-empty path segment and its registration id is the name's last segment verbatim; the
//! plain form `{idScope}/registrations/{registrationId}` rebuilt from them, and the URL form
//! the C SDK sends (when it still fits `MAX_ADDRESS_LEN`), read back alike.

#![no_main]

use dps_amqp::address::{parse_device_path, MAX_ADDRESS_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((scope, id)) = parse_device_path(text) else {
        return;
    };
    assert!(
        text.len() <= MAX_ADDRESS_LEN,
        "accepted {} bytes",
        text.len()
    );
    assert!(!scope.is_empty() && !scope.contains('/'), "scope {scope:?}");
    let tail = format!("/{}", id.as_str());
    assert!(text.ends_with(&tail), "{text:?} read as id {id:?}");
    let plain = format!("{scope}/registrations/{}", id.as_str());
    let url = format!("amqps://dps.example.net/{plain}");
    // A name accepted near the limit is too long once a scheme and host are put in front.
    let forms = if url.len() <= MAX_ADDRESS_LEN {
        vec![plain, url]
    } else {
        assert!(
            parse_device_path(&url).is_none(),
            "{url:?} over the limit accepted"
        );
        vec![plain]
    };
    for form in forms {
        let (scope_again, id_again) =
            parse_device_path(&form).unwrap_or_else(|| panic!("{form:?} (from {text:?}) refused"));
        assert_eq!(scope_again, scope);
        assert_eq!(id_again.as_str(), id.as_str());
    }
});
