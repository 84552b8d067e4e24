//! Targets: SAS attestation against one individual enrollment, median under 2 µs; X.509
//! attestation of a leaf + intermediate chain against a root enrollment group (a
//! three-certificate chain), median under 300 µs.
//!
//! Both run the whole `attest_*` call a frontend makes after CONNECT: token or certificate
//! parsing, the enrollment lookup (an in-memory one; the cache's own lookup is measured in
//! `cache.rs`), and the cryptography.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dps_attest::{
    attest_sas, attest_x509, prepare_group, prepare_individual, EnrollmentRules, SasToken, UnixTime,
};
use dps_test_util::{MemoryLookup, TestPki};
use dps_types::{EnrollmentGroup, IdScope, IndividualEnrollment, SymmetricKey, Timestamp};
use serde_json::json;

fn sas_verify(c: &mut Criterion) {
    let key = SymmetricKey::generate();
    let enrollment: IndividualEnrollment = serde_json::from_value(json!({
        "registrationId": "bench-device",
        "attestation": {"type": "symmetricKey", "symmetricKey": {
            "primaryKey": key.expose_base64(),
            "secondaryKey": SymmetricKey::generate().expose_base64(),
        }},
    }))
    .unwrap_or_else(|e| panic!("enrollment JSON: {e}"));
    let mut enrollment = prepare_individual(enrollment, &EnrollmentRules::default())
        .unwrap_or_else(|e| panic!("prepare: {e}"))
        .into_inner();
    enrollment.stamp(None, Timestamp::now());
    let lookup = MemoryLookup::new().with_enrollment(enrollment);
    let scope = IdScope::parse("0ne00000A1B").unwrap_or_else(|e| panic!("{e}"));
    let now = Timestamp::now().unix();
    // As the C SDK sends it: lower-case percent-encoding, skn last.
    let token = SasToken::generate(
        "0ne00000A1B/registrations/bench-device",
        &key,
        Some("registration"),
        now + 3600,
    );
    attest_sas(&token, &scope, "bench-device", &lookup, now)
        .unwrap_or_else(|e| panic!("the benchmark token must attest: {e}"));

    let mut group = c.benchmark_group("attest");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("sas_verify", |b| {
        b.iter(|| attest_sas(&token, &scope, "bench-device", &lookup, now).is_ok())
    });
    group.finish();
}

fn x509_chain_3(c: &mut Criterion) {
    let pki = TestPki::new();
    let root_group: EnrollmentGroup = serde_json::from_value(json!({
        "enrollmentGroupId": "root-group",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {
            "primary": {"certificate": pki.root_pem()},
        }}},
    }))
    .unwrap_or_else(|e| panic!("group JSON: {e}"));
    let mut root_group = prepare_group(root_group, &EnrollmentRules::default())
        .unwrap_or_else(|e| panic!("prepare: {e}"))
        .into_inner();
    root_group.stamp(None, Timestamp::now());
    let lookup = MemoryLookup::new().with_group(root_group);
    let device = pki.device("bench-device");
    // Leaf + intermediate, as the device sends it; the root is the enrolled third.
    let chain: Vec<&[u8]> = device.chain_der.iter().map(Vec::as_slice).collect();
    assert_eq!(chain.len(), 2);
    let now = UnixTime::now();
    attest_x509(&chain, "bench-device", &lookup, now)
        .unwrap_or_else(|e| panic!("the benchmark chain must attest: {e}"));

    let mut group = c.benchmark_group("attest");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("x509_chain_3", |b| {
        b.iter(|| attest_x509(&chain, "bench-device", &lookup, now).is_ok())
    });
    group.finish();
}

criterion_group!(benches, sas_verify, x509_chain_3);
criterion_main!(benches);
