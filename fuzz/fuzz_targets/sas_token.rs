//! `SharedAccessSignature` tokens as both sides receive them: a device's MQTT password
//! (`dps_attest::attest_sas` against symmetric-key enrollments) and a service client's
//! `Authorization` header (the service API's router, which refuses before touching the store).
//!
//! Checked: no panic; a token that parses can be rebuilt with `SasToken::generate` from what
//! was read and the rebuilt one verifies with the key it was signed with; the fuzzer's tokens
//! (it does not know the keys) are never accepted, by the device path or the service API, and
//! a refusal is never a 5xx.

#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use dps_api::{ApiState, Rights, SharedAccessPolicy};
use dps_attest::sas::MAX_TOKEN_LEN;
use dps_attest::{attest_sas, SasToken};
use dps_registrar::{Registrar, RegistrarConfig};
use dps_store::{Backend, Store, StoreError, Table, Visit, Write};
use dps_test_util::MemoryLookup;
use dps_types::{EnrollmentGroup, IdScope, IndividualEnrollment, SymmetricKey};
use http::{header, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tower::ServiceExt;

const SCOPE: &str = "0ne00000001";
const HOST: &str = "localhost:8443";
/// 2023-11-14: tokens before it (beyond the skew) are expired.
const NOW: i64 = 1_700_000_000;
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

/// A store with nothing in it and no disk behind it: the token check refuses every request
/// the fuzzer can build before the store is read.
struct EmptyBackend;

impl Backend for EmptyBackend {
    fn write(&self, _: &[Write<'_>]) -> Result<(), StoreError> {
        Ok(())
    }
    fn scan(&self, _: Table, _: Option<&str>, _: &mut Visit<'_>) -> Result<(), StoreError> {
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    api: axum::Router,
    lookup: MemoryLookup,
    scope: IdScope,
    key: SymmetricKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = SymmetricKey::parse(KEY).expect("fixed key");
        let keys = json!({"type": "symmetricKey", "symmetricKey": {
            "primaryKey": KEY, "secondaryKey": OTHER_KEY}});
        let group: EnrollmentGroup =
            serde_json::from_value(json!({"enrollmentGroupId": "group-1", "attestation": keys}))
                .expect("fixed group");
        let enrollment: IndividualEnrollment =
            serde_json::from_value(json!({"registrationId": "device-1", "attestation": keys}))
                .expect("fixed enrollment");
        let store = Store::with_backend(Arc::new(EmptyBackend)).expect("empty store");
        let scope = IdScope::parse(SCOPE).expect("fixed scope");
        let registrar = Registrar::new(store, RegistrarConfig::new(scope.clone(), Vec::new()))
            .expect("registrar");
        let policy = SharedAccessPolicy {
            name: "provisioningserviceowner".into(),
            primary_key: key.clone(),
            secondary_key: SymmetricKey::parse(OTHER_KEY).ok(),
            rights: Rights::ALL,
        };
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            api: dps_api::router(ApiState::new(registrar, HOST, vec![policy])),
            lookup: MemoryLookup::new()
                .with_enrollment(enrollment)
                .with_group(group),
            scope,
            key,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();

    let mut claimed = "device-1".to_owned();
    if let Ok(token) = SasToken::parse(text) {
        let _ = token.check_expiry(NOW);
        if let Some(id) = token.resource_decoded().rsplit('/').next() {
            claimed = id.to_owned();
        }
        if token.expiry() >= 0 {
            let rebuilt = SasToken::generate(
                token.resource_decoded(),
                &f.key,
                token.key_name(),
                token.expiry(),
            );
            // Re-encoding can triple the length past the parser's bound.
            if rebuilt.len() <= MAX_TOKEN_LEN {
                let reparsed = SasToken::parse(&rebuilt)
                    .unwrap_or_else(|e| panic!("generated {rebuilt:?} does not parse: {e}"));
                assert_eq!(reparsed.resource_decoded(), token.resource_decoded());
                assert_eq!(reparsed.key_name(), token.key_name());
                assert_eq!(reparsed.expiry(), token.expiry());
                assert!(reparsed.verify_signature(&f.key).is_ok(), "{rebuilt:?}");
            }
        }
    }

    assert!(
        attest_sas(text, &f.scope, &claimed, &f.lookup, NOW).is_err(),
        "a token signed without the key was accepted"
    );

    let Ok(request) = Request::get("/enrollments/device-1?api-version=2021-10-01")
        .header(header::AUTHORIZATION, text)
        .body(Body::empty())
    else {
        return;
    };
    let status = f
        .runtime
        .block_on(f.api.clone().oneshot(request))
        .map(|response| response.status())
        .unwrap_or_else(|never| match never {});
    assert!(
        status.is_client_error(),
        "the service API answered {status} to a forged token"
    );
});
