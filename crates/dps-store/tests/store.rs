//! Store behaviour as the API and the registration path rely on it.

use std::sync::Arc;

use dps_attest::{EnrollmentRules, Prepared};
use dps_store::{Precondition, RegistrationRecord, Store, StoreError};
use dps_test_util::TestCa;
use dps_types::{
    Attestation, DeviceRegistrationState, EnrollmentGroup, EnrollmentGroupId, IndividualEnrollment,
    RegistrationId, RegistrationStatus,
};

fn enrollment(id: &str) -> Prepared<IndividualEnrollment> {
    let e = serde_json::from_value(serde_json::json!({
        "registrationId": id,
        "attestation": {"type": "symmetricKey"}
    }))
    .unwrap();
    dps_attest::prepare_individual(e, &EnrollmentRules::default()).unwrap()
}

/// A group signed by a fresh root CA `CN={id}-ca, O=DPS Test`, and that CA's SHA-256
/// thumbprint.
fn x509_group(id: &str) -> (Prepared<EnrollmentGroup>, String) {
    let ca = TestCa::root(&format!("{id}-ca"));
    let g = serde_json::from_value(serde_json::json!({
        "enrollmentGroupId": id,
        "attestation": {"type": "x509", "x509": {"signingCertificates": {
            "primary": {"certificate": ca.pem()}}}}
    }))
    .unwrap();
    let g = dps_attest::prepare_group(g, &EnrollmentRules::default()).unwrap();
    let Attestation::X509(x509) = &g.attestation else {
        unreachable!("an x509 group")
    };
    let thumbprint = x509
        .signing_certificates
        .as_ref()
        .and_then(|c| c.primary.as_ref())
        .and_then(|c| c.info.as_ref())
        .map(|i| i.sha256_thumbprint.clone())
        .unwrap();
    (g, thumbprint)
}

fn rid(id: &str) -> RegistrationId {
    RegistrationId::parse(id).unwrap()
}

#[tokio::test]
async fn write_read_update_with_etags_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let first = store
        .put_enrollment(enrollment("Dev-1"), &Precondition::MustNotExist)
        .await
        .unwrap();
    let etag = first.etag.clone().unwrap();
    assert!(
        store.enrollment(&rid("dev-1")).is_some(),
        "lookups ignore letter case"
    );
    assert!(store.cache().enrollment("DEV-1").is_some());

    let again = store
        .put_enrollment(enrollment("dev-1"), &Precondition::MustNotExist)
        .await;
    assert!(matches!(again, Err(StoreError::AlreadyExists)));

    let updated = store
        .put_enrollment(
            enrollment("dev-1"),
            &Precondition::IfMatch(etag.as_str().to_owned()),
        )
        .await
        .unwrap();
    assert_ne!(updated.etag, first.etag);
    assert_eq!(updated.created_date_time_utc, first.created_date_time_utc);
    assert_eq!(
        updated.attestation, first.attestation,
        "generated keys survive an update without keys"
    );

    let stale = store
        .put_enrollment(
            enrollment("dev-1"),
            &Precondition::IfMatch(etag.to_string()),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::PreconditionFailed)));
    let stale = store
        .delete_enrollment(&rid("dev-1"), &Precondition::IfMatch(etag.to_string()))
        .await;
    assert!(matches!(stale, Err(StoreError::PreconditionFailed)));

    store
        .delete_enrollment(&rid("dev-1"), &Precondition::Any)
        .await
        .unwrap();
    assert!(store.enrollment(&rid("dev-1")).is_none());
    let gone = store
        .delete_enrollment(&rid("dev-1"), &Precondition::Any)
        .await;
    assert!(matches!(gone, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (group, thumbprint) = x509_group("grp");
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .put_enrollment(enrollment("dev-a"), &Precondition::Any)
            .await
            .unwrap();
        store.put_group(group, &Precondition::Any).await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.cache().enrollment_count(), 1);
    assert_eq!(
        store
            .cache()
            .groups_by_thumbprint(&thumbprint.to_ascii_lowercase())
            .len(),
        1,
        "index rebuilt on load"
    );
}

#[tokio::test]
async fn group_indexes_follow_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (first, old) = x509_group("grp");
    let (second, new) = x509_group("grp");
    store.put_group(first, &Precondition::Any).await.unwrap();
    assert_eq!(
        store
            .cache()
            .groups_by_subject("CN=grp-ca, O=DPS Test")
            .len(),
        1
    );

    store.put_group(second, &Precondition::Any).await.unwrap();
    assert!(
        store.cache().groups_by_thumbprint(&old).is_empty(),
        "old certificate unindexed"
    );
    assert_eq!(store.cache().groups_by_thumbprint(&new).len(), 1);

    store
        .delete_group(
            &EnrollmentGroupId::parse("grp").unwrap(),
            &Precondition::Any,
        )
        .await
        .unwrap();
    assert!(store.cache().groups_by_thumbprint(&new).is_empty());
    assert!(store
        .cache()
        .groups_by_subject("CN=grp-ca, O=DPS Test")
        .is_empty());
}

#[tokio::test]
async fn queries_page_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..5 {
        store
            .put_enrollment(enrollment(&format!("dev-{i}")), &Precondition::Any)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.query_enrollments(2, token.as_deref()).unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|e| e.registration_id.to_string()));
        match page.continuation {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"]);
    assert!(matches!(
        store.query_enrollments(2, Some("not a token!")),
        Err(StoreError::InvalidContinuation)
    ));
}

#[tokio::test]
async fn registration_records_are_queryable_by_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let group = EnrollmentGroupId::parse("grp").unwrap();
    for (id, g) in [
        ("a", Some(group.clone())),
        ("b", None),
        ("c", Some(group.clone())),
    ] {
        let mut state = DeviceRegistrationState::unassigned(rid(id));
        state.status = Some(RegistrationStatus::Assigned);
        let stored = store
            .put_registration(
                RegistrationRecord {
                    state,
                    enrollment_group_id: g,
                },
                &Precondition::Any,
            )
            .await
            .unwrap();
        assert!(stored.state.etag.is_some() && stored.state.created_date_time_utc.is_some());
    }
    let page = store.query_registrations(&group, 10, None).unwrap();
    let ids: Vec<_> = page
        .items
        .iter()
        .map(|r| r.state.registration_id.to_string())
        .collect();
    assert_eq!(ids, ["a", "c"]);
    store
        .delete_registration(&rid("a"), &Precondition::Any)
        .await
        .unwrap();
    assert!(store.registration(&rid("a")).is_none());
}

/// Many concurrent writers: every acknowledged write is in the cache and, after reopening,
/// on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .put_enrollment(enrollment(&format!("c-{i}")), &Precondition::Any)
                    .await
                    .map(|_| ())
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.cache().enrollment_count(), 200);
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.cache().enrollment_count(), 200);
    let e: Arc<IndividualEnrollment> = store.enrollment(&rid("c-199")).unwrap();
    assert!(e.etag.is_some());
}

/// A store opened while another still holds the directory waits for it (restart in the same
/// process, or a previous process still exiting) instead of failing at once.
#[test]
fn open_waits_for_the_previous_holder_to_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    let path = dir.path().to_owned();
    let second =
        std::thread::spawn(move || Store::open(&path).map(|s| s.cache().enrollment_count()));
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(first);
    assert_eq!(second.join().unwrap().unwrap(), 0);
}
