//! Targets: SAS attestation against one individual enrollment, median under 2 µs; X.509
//! attestation of a leaf + intermediate chain against a root enrollment group (a
//! three-certificate chain), median under 300 µs.
//!
//! Both run the whole `attest_*` call a frontend makes after CONNECT: token or certificate
//! parsing, the enrollment lookup (an in-memory one; the cache's own lookup is measured in
//! `cache.rs`), and the cryptography.
//!
//! Also measured, without a target: SAS attestation of a group-derived device key against the
//! store's own cache holding 1,000 symmetric-key groups, once for a device of the group visited
//! last and once for a device whose key matches no group (the most a CONNECT can cost).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dps_attest::{
    attest_sas, attest_x509, derive_device_key, prepare_group, prepare_individual, EnrollmentRules,
    MatchedEnrollment, SasToken, UnixTime,
};
use dps_store::{Backend, SledBackend, Store, Table, Write};
use dps_test_util::{MemoryLookup, TestPki};
use dps_types::{
    Attestation, EnrollmentGroup, EnrollmentLookup, IdScope, IndividualEnrollment, SymmetricKey,
    Timestamp,
};
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

/// Symmetric-key groups in the store for `sas_groups_1000`.
const SYMMETRIC_GROUPS: usize = 1000;

fn sas_groups_1000(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let backend = SledBackend::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
    for n in 0..SYMMETRIC_GROUPS {
        let mut group: EnrollmentGroup = serde_json::from_value(json!({
            "enrollmentGroupId": format!("bench-group-{n:04}"),
            "attestation": {"type": "symmetricKey", "symmetricKey": {
                "primaryKey": SymmetricKey::generate().expose_base64(),
                "secondaryKey": SymmetricKey::generate().expose_base64(),
            }},
        }))
        .unwrap_or_else(|e| panic!("group JSON: {e}"));
        group.stamp(None, Timestamp::now());
        let bytes = serde_json::to_vec(&group).unwrap_or_else(|e| panic!("encode: {e}"));
        let key = group.enrollment_group_id.key();
        backend
            .write(&[Write::Put(Table::Groups, &key, &bytes)])
            .unwrap_or_else(|e| panic!("put: {e}"));
    }
    let store = Store::with_backend(Arc::new(backend)).unwrap_or_else(|e| panic!("load: {e}"));
    let lookup = store.cache();
    let last = last_symmetric_key_group(lookup);
    let Attestation::SymmetricKey(keys) = &last.attestation else {
        panic!("the last group must be a symmetric-key group");
    };
    let group_key = keys
        .primary_key
        .as_ref()
        .unwrap_or_else(|| panic!("the group has a primary key"));
    let scope = IdScope::parse("0ne00000A1B").unwrap_or_else(|e| panic!("{e}"));
    let now = Timestamp::now().unix();
    let token = |key: &SymmetricKey| {
        SasToken::generate(
            "0ne00000A1B/registrations/bench-device",
            key,
            Some("registration"),
            now + 3600,
        )
    };
    let last_group_token = token(&derive_device_key(group_key, "bench-device"));
    let no_group_token = token(&SymmetricKey::generate());
    let attested = attest_sas(&last_group_token, &scope, "bench-device", lookup, now)
        .unwrap_or_else(|e| panic!("the benchmark token must attest: {e}"));
    assert!(
        matches!(attested.enrollment(), MatchedEnrollment::Group(g) if Arc::ptr_eq(g, &last)),
        "the device must attest through the group visited last"
    );
    assert!(attest_sas(&no_group_token, &scope, "bench-device", lookup, now).is_err());

    let mut group = c.benchmark_group("attest");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("sas_group_last_of_1000", |b| {
        b.iter(|| attest_sas(&last_group_token, &scope, "bench-device", lookup, now).is_ok())
    });
    group.bench_function("sas_no_group_of_1000", |b| {
        b.iter(|| attest_sas(&no_group_token, &scope, "bench-device", lookup, now).is_err())
    });
    group.finish();
}

/// The symmetric-key group the lookup visits last (the costliest one to match).
fn last_symmetric_key_group(lookup: &dyn EnrollmentLookup) -> Arc<EnrollmentGroup> {
    let mut last = None;
    lookup.visit_symmetric_key_groups(&mut |g| {
        last = Some(Arc::clone(g));
        ControlFlow::Continue(())
    });
    last.unwrap_or_else(|| panic!("the store holds symmetric-key groups"))
}

criterion_group!(benches, sas_verify, x509_chain_3, sas_groups_1000);
criterion_main!(benches);
