//! Targets (issue 12): TPM challenge construction and verification timed and reported; the
//! pending TPM challenges bounded in memory under 100,000 abandoned registrations.
//!
//! `challenge`: one `TpmChallenges::challenge` as a frontend calls it for an unauthenticated
//! TPM registration: parsing the EK and SRK `TPM2B_PUBLIC`s, the enrollment check, the
//! activation blob (two RSA-2048 OAEP encryptions, KDFa, AES-CFB, HMACs) and its base64, the
//! table insert. `attest`: one `TpmChallenges::attest` of the retry's token against the
//! pending key: token parsing and checks, the enrollment and EK checks, the HMAC and its
//! constant-time comparison. The token is signed with another key (a valid one needs the
//! TPM), so it is refused after all the work a valid one costs, and the challenge stays for
//! the next iteration; a valid token only adds removing the entry.
//!
//! Before timing, 100,000 registrations take a challenge and never answer it; the live heap
//! growth is what the table holds (at most `max_pending` challenges).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dps_attest::{
    prepare_individual, EnrollmentRules, FailureReason, SasToken, TpmChallengeLimits, TpmChallenges,
};
use dps_benches::{live_heap_bytes, CountingAlloc};
use dps_types::{
    EnrollmentGroup, EnrollmentLookup, IdScope, IndividualEnrollment, SymmetricKey, Timestamp,
};
use serde_json::json;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The keys of a real software TPM (swtpm), as dps-attest's tests use them.
const EK: &[u8] = include_bytes!("../../crates/dps-attest/tests/data/swtpm-ek.pub");
const SRK: &[u8] = include_bytes!("../../crates/dps-attest/tests/data/swtpm-srk.pub");
const ABANDONED: usize = 100_000;

/// Every registration id has the same TPM enrollment: what the table holds is the point here,
/// not the enrollments.
struct AnyId(Arc<IndividualEnrollment>);

impl EnrollmentLookup for AnyId {
    fn enrollment(&self, _: &str) -> Option<Arc<IndividualEnrollment>> {
        Some(Arc::clone(&self.0))
    }
    fn groups_by_thumbprint(&self, _: &str) -> Vec<Arc<EnrollmentGroup>> {
        Vec::new()
    }
    fn groups_by_subject(&self, _: &str) -> Vec<Arc<EnrollmentGroup>> {
        Vec::new()
    }
    fn visit_symmetric_key_groups(
        &self,
        _: &mut dyn FnMut(&Arc<EnrollmentGroup>) -> ControlFlow<()>,
    ) {
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn tpm(c: &mut Criterion) {
    let enrollment: IndividualEnrollment = serde_json::from_value(json!({
        "registrationId": "bench-tpm-device",
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": b64(EK)}},
    }))
    .unwrap_or_else(|e| panic!("enrollment JSON: {e}"));
    let mut enrollment = prepare_individual(enrollment, &EnrollmentRules::default())
        .unwrap_or_else(|e| panic!("prepare: {e}"))
        .into_inner();
    enrollment.stamp(None, Timestamp::now());
    let lookup = AnyId(Arc::new(enrollment));
    let (ek, srk) = (b64(EK), b64(SRK));
    let now = Timestamp::now().unix();

    let table = TpmChallenges::new(TpmChallengeLimits::default());
    let heap_before = live_heap_bytes();
    for n in 0..ABANDONED {
        table
            .challenge(&format!("abandoned-device-{n:06}"), &ek, &srk, &lookup, now)
            .unwrap_or_else(|e| panic!("challenge: {e}"));
    }
    let heap = live_heap_bytes().saturating_sub(heap_before);
    println!(
        "{ABANDONED} abandoned TPM challenges: {} pending (max_pending {}), live heap +{:.1} MiB \
         = {} B per pending challenge",
        table.len(),
        table.limits().max_pending,
        heap as f64 / f64::from(1 << 20),
        heap / table.len().max(1)
    );
    drop(table);

    let scope = IdScope::parse("0ne00000A1B").unwrap_or_else(|e| panic!("{e}"));
    let table = TpmChallenges::default();
    table
        .challenge("bench-tpm-device", &ek, &srk, &lookup, now)
        .unwrap_or_else(|e| panic!("challenge: {e}"));
    let token = SasToken::generate(
        "0ne00000A1B/registrations/bench-tpm-device",
        &SymmetricKey::from_bytes(&[7; 32]).unwrap_or_else(|e| panic!("{e}")),
        Some("registration"),
        now + 3600,
    );
    let refusal = table
        .attest(&token, &scope, "bench-tpm-device", Some(&ek), &lookup, now)
        .expect_err("a token of another key");
    assert_eq!(
        refusal.reason,
        FailureReason::TpmSignatureInvalid,
        "{refusal}"
    );

    let mut group = c.benchmark_group("tpm");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("challenge", |b| {
        b.iter(|| {
            table
                .challenge("bench-tpm-device", &ek, &srk, &lookup, now)
                .is_ok()
        })
    });
    group.bench_function("attest", |b| {
        b.iter(|| {
            table
                .attest(&token, &scope, "bench-tpm-device", Some(&ek), &lookup, now)
                .is_err()
        })
    });
    group.finish();
}

criterion_group!(benches, tpm);
criterion_main!(benches);
