use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use super::*;

/// Replacements per test: enough that a reader spinning on another core lands in the middle
/// of many of them.
const REPLACEMENTS: usize = 20_000;

fn info(thumbprint: &str, subject: &str) -> serde_json::Value {
    json!({
        "subjectName": subject,
        "sha1Thumbprint": "00",
        "sha256Thumbprint": thumbprint,
        "issuerName": subject,
        "notBeforeUtc": "2025-01-01T00:00:00Z",
        "notAfterUtc": "2035-01-01T00:00:00Z",
        "serialNumber": "01",
        "version": 3,
    })
}

/// Version `n` of one X.509 group: the primary certificate always, a secondary on odd `n`.
fn x509_group(n: usize) -> Arc<EnrollmentGroup> {
    let mut certs = json!({"primary": {"info": info("AA01", "CN=root")}});
    if n % 2 == 1 {
        certs["secondary"] = json!({"info": info("BB02", "CN=other")});
    }
    let group = json!({
        "enrollmentGroupId": "x509-group",
        "attestation": {"type": "x509", "x509": {"signingCertificates": certs}},
        "provisioningStatus": if n.is_multiple_of(2) { "enabled" } else { "disabled" },
    });
    Arc::new(serde_json::from_value(group).unwrap_or_else(|e| panic!("group JSON: {e}")))
}

/// Version `n` of one symmetric-key group (a new key each time).
fn symmetric_group(n: usize) -> Arc<EnrollmentGroup> {
    let key = dps_types::SymmetricKey::generate();
    let group = json!({
        "enrollmentGroupId": "sas-group",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key.expose_base64()}},
        "provisioningStatus": if n.is_multiple_of(2) { "enabled" } else { "disabled" },
    });
    Arc::new(serde_json::from_value(group).unwrap_or_else(|e| panic!("group JSON: {e}")))
}

/// What a device of either group sees: (found by id, by thumbprint, by subject, by the
/// symmetric-key walk).
fn lookups(cache: &Cache) -> [bool; 4] {
    let mut symmetric = false;
    cache.visit_symmetric_key_groups(&mut |g| {
        symmetric |= g.enrollment_group_id.as_str() == "sas-group";
        ControlFlow::Continue(())
    });
    [
        cache.group("x509-group").is_some(),
        !cache.groups_by_thumbprint("aa01").is_empty(),
        !cache.groups_by_subject("CN=root").is_empty(),
        symmetric,
    ]
}

#[test]
fn replacing_a_group_never_hides_it_from_readers() {
    let cache = Cache::default();
    cache.put_group("x509-group", x509_group(0));
    cache.put_group("sas-group", symmetric_group(0));
    assert_eq!(lookups(&cache), [true; 4]);
    // Two versions of each, built once, so the loop below does nothing but replace.
    let x509 = [x509_group(0), x509_group(1)];
    let symmetric = [symmetric_group(0), symmetric_group(1)];
    let done = AtomicBool::new(false);
    let misses = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut misses = [0usize; 4];
            while !done.load(Ordering::Acquire) {
                for (miss, found) in misses.iter_mut().zip(lookups(&cache)) {
                    *miss += usize::from(!found);
                }
            }
            misses
        });
        for n in 1..=REPLACEMENTS {
            cache.put_group("x509-group", Arc::clone(&x509[n % 2]));
            cache.put_group("sas-group", Arc::clone(&symmetric[n % 2]));
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap_or_else(|_| panic!("reader panicked"))
    });
    assert_eq!(
        misses, [0; 4],
        "lookups (id, thumbprint, subject, walk) that missed"
    );
}

#[test]
fn a_replacement_drops_only_the_index_entries_the_new_version_lacks() {
    let cache = Cache::default();
    cache.put_group("x509-group", x509_group(1));
    assert_eq!(cache.groups_by_thumbprint("BB02").len(), 1);
    cache.put_group("x509-group", x509_group(2));
    assert!(cache.groups_by_thumbprint("BB02").is_empty());
    assert!(cache.groups_by_subject("CN=other").is_empty());
    assert_eq!(cache.groups_by_thumbprint("AA01").len(), 1);
    cache.put_group("x509-group", symmetric_group(0));
    assert!(cache.groups_by_thumbprint("AA01").is_empty());
    cache.remove_group("x509-group");
    let mut visited = 0;
    cache.visit_symmetric_key_groups(&mut |_| {
        visited += 1;
        ControlFlow::Continue(())
    });
    assert_eq!(visited, 0);
}
