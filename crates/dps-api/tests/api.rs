//! The service API driven through `router()` without a socket, with real SAS tokens.

mod common;
#[path = "api/writes.rs"]
mod writes;

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{in_an_hour, token_for, Api, HOST};
use dps_store::RegistrationRecord;
use dps_test_util::TestPki;
use dps_types::{EnrollmentGroupId, Timestamp};
use serde_json::{json, Value};

/// A TPM2B_PUBLIC-framed endorsement key: a 2-byte big-endian size, then that many bytes.
fn endorsement_key() -> String {
    let mut ek = vec![0x01, 0x3a];
    ek.extend(std::iter::repeat_n(7u8, 0x13a));
    STANDARD.encode(ek)
}

fn symmetric(id: &str) -> Value {
    json!({"registrationId": id, "attestation": {"type": "symmetricKey"}})
}

fn assert_error(reply: &common::Reply, status: u16, code: i64, needle: &str) {
    assert_eq!(reply.status.as_u16(), status, "{reply:?}");
    assert_eq!(reply.body["errorCode"], code, "{reply:?}");
    assert!(
        reply.message().contains(needle),
        "{:?} lacks {needle:?}",
        reply.message()
    );
    assert!(reply
        .header("x-ms-error-code")
        .is_some_and(|v| !v.is_empty()));
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
}

#[tokio::test]
async fn symmetric_key_enrollment_lifecycle_with_etags() {
    let api = Api::new();
    let created = api
        .call(
            "PUT",
            "/enrollments/dev-1?api-version=2021-10-01",
            Some(symmetric("dev-1")),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{created:?}");
    assert_eq!(
        created.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(created.body["registrationId"], "dev-1");
    assert_eq!(created.body["provisioningStatus"], "enabled");
    let generated = &created.body["attestation"]["symmetricKey"];
    assert!(
        generated["primaryKey"].is_string() && generated["secondaryKey"].is_string(),
        "a create answers with the generated keys, as DPS does: {created:?}"
    );
    let etag = created.body["etag"].as_str().expect("etag").to_owned();

    let read = api.call("GET", "/enrollments/DEV-1", None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        read.body["attestation"],
        json!({"type": "symmetricKey"}),
        "GET must not show keys"
    );
    assert_eq!(
        read.body["registrationState"],
        json!({"registrationId": "dev-1", "status": "unassigned"})
    );

    let mechanism = api
        .call("POST", "/enrollments/dev-1/attestationmechanism", None)
        .await;
    assert_eq!(mechanism.status, StatusCode::OK);
    let primary = mechanism.body["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("key");
    assert_eq!(STANDARD.decode(primary).map(|k| k.len()).ok(), Some(64));
    assert!(mechanism.body["symmetricKey"]["secondaryKey"].is_string());

    let stale = api
        .call_with(
            "PUT",
            "/enrollments/dev-1",
            &[("if-match", "\"stale\"")],
            Some(symmetric("dev-1")),
        )
        .await;
    assert_error(&stale, 412, 412002, "If-Match");

    let bare = etag.trim_matches('"');
    let mut update = symmetric("dev-1");
    update["provisioningStatus"] = json!("disabled");
    let updated = api
        .call_with(
            "PUT",
            "/enrollments/dev-1",
            &[("if-match", bare)],
            Some(update),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    assert_eq!(updated.body["provisioningStatus"], "disabled");
    let new_etag = updated.body["etag"].as_str().expect("etag").to_owned();
    assert_ne!(new_etag, etag);
    let again = api
        .call("POST", "/enrollments/dev-1/attestationmechanism", None)
        .await;
    assert_eq!(
        again.body, mechanism.body,
        "keys survive an update without keys"
    );

    let absent = api
        .call_with(
            "PUT",
            "/enrollments/dev-2",
            &[("if-match", "*")],
            Some(symmetric("dev-2")),
        )
        .await;
    assert_error(&absent, 412, 412002, "enrollment");

    let stale_delete = api
        .call_with("DELETE", "/enrollments/dev-1", &[("if-match", &etag)], None)
        .await;
    assert_error(&stale_delete, 412, 412002, "If-Match");
    let deleted = api
        .call_with(
            "DELETE",
            "/enrollments/dev-1",
            &[("if-match", &new_etag)],
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api.call("GET", "/enrollments/dev-1", None).await;
    assert_error(&gone, 404, 404201, "'dev-1' not found");
    let gone = api.call("DELETE", "/enrollments/dev-1", None).await;
    assert_error(&gone, 404, 404201, "not found");
}

#[tokio::test]
async fn tpm_and_x509_enrollments() {
    let api = Api::new();
    let ek = endorsement_key();
    let tpm = json!({"registrationId": "tpm-1", "deviceId": "tpm-device",
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}});
    let created = api.call("PUT", "/enrollments/tpm-1", Some(tpm)).await;
    assert_eq!(created.status, StatusCode::OK, "{created:?}");
    assert_eq!(created.body["attestation"]["tpm"]["endorsementKey"], ek);
    assert_eq!(created.body["deviceId"], "tpm-device");

    let pki = TestPki::new();
    let device = pki.device("x509-1");
    let x509 = json!({"registrationId": "x509-1", "attestation": {"type": "x509",
        "x509": {"clientCertificates": {"primary": {"certificate": device.cert_pem}}}}});
    let created = api.call("PUT", "/enrollments/x509-1", Some(x509)).await;
    assert_eq!(created.status, StatusCode::OK, "{created:?}");
    let primary = &created.body["attestation"]["x509"]["clientCertificates"]["primary"];
    assert_eq!(primary["info"]["subjectName"], "CN=x509-1");
    assert!(
        primary.get("certificate").is_none(),
        "responses carry no certificate text"
    );
    let read = api.call("GET", "/enrollments/x509-1", None).await;
    assert_eq!(read.body["attestation"], created.body["attestation"]);
    let mechanism = api
        .call("POST", "/enrollments/x509-1/attestationmechanism", None)
        .await;
    assert_eq!(
        mechanism.body["x509"]["clientCertificates"]["primary"]["certificate"],
        device.cert_pem
    );

    // Get-modify-put, as the SDK samples update an enrollment: the read carries only the
    // certificate's info, and the update keeps the stored certificate.
    let mut edited = read.body.clone();
    edited["deviceId"] = json!("renamed-device");
    let updated = api.call("PUT", "/enrollments/x509-1", Some(edited)).await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    assert_eq!(updated.body["deviceId"], "renamed-device");
    let mechanism = api
        .call("POST", "/enrollments/x509-1/attestationmechanism", None)
        .await;
    assert_eq!(
        mechanism.body["x509"]["clientCertificates"]["primary"]["certificate"],
        device.cert_pem
    );

    for id in ["tpm-1", "x509-1"] {
        let deleted = api
            .call("DELETE", &format!("/enrollments/{id}"), None)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn enrollment_groups_of_every_type() {
    let api = Api::new();
    let pki = TestPki::new();
    let groups = [
        ("sym-group", json!({"type": "symmetricKey"})),
        (
            "ca-group",
            json!({"type": "x509", "x509": {"signingCertificates":
            {"primary": {"certificate": pki.intermediate_pem()}}}}),
        ),
        (
            "ref-group",
            json!({"type": "x509", "x509": {"caReferences": {"primary": "my-root"}}}),
        ),
    ];
    for (id, attestation) in &groups {
        let body = json!({"enrollmentGroupId": id, "attestation": attestation});
        let created = api
            .call("PUT", &format!("/enrollmentGroups/{id}"), Some(body))
            .await;
        assert_eq!(created.status, StatusCode::OK, "{id}: {created:?}");
        assert_eq!(created.body["enrollmentGroupId"], *id);
        let etag = created.body["etag"].as_str().expect("etag").to_owned();

        // Node spells the path with a lower-case g.
        let mechanism = api
            .call(
                "POST",
                &format!("/enrollmentgroups/{id}/attestationmechanism"),
                None,
            )
            .await;
        assert_eq!(mechanism.status, StatusCode::OK, "{mechanism:?}");
        assert_eq!(mechanism.body["type"], attestation["type"]);

        let stale = api
            .call_with(
                "DELETE",
                &format!("/enrollmentGroups/{id}"),
                &[("if-match", "\"nope\"")],
                None,
            )
            .await;
        assert_error(&stale, 412, 412002, "enrollment group");
        let deleted = api
            .call_with(
                "DELETE",
                &format!("/enrollmentGroups/{id}"),
                &[("if-match", &etag)],
                None,
            )
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    }
    let sym = api
        .call(
            "PUT",
            "/enrollmentGroups/g2",
            Some(json!({"attestation": {"type": "symmetricKey"}})),
        )
        .await;
    let keys = api
        .call("POST", "/enrollmentGroups/g2/attestationmechanism", None)
        .await;
    assert!(keys.body["symmetricKey"]["primaryKey"].is_string());
    assert_eq!(
        sym.body["attestation"]["symmetricKey"], keys.body["symmetricKey"],
        "a create answers with the generated keys"
    );
    let read = api.call("GET", "/enrollmentGroups/g2", None).await;
    assert_eq!(read.body["attestation"], json!({"type": "symmetricKey"}));
    let missing = api.call("GET", "/enrollmentGroups/nope", None).await;
    assert_error(&missing, 404, 404202, "enrollment group 'nope' not found");
    let tpm_group =
        json!({"attestation": {"type": "tpm", "tpm": {"endorsementKey": endorsement_key()}}});
    let refused = api
        .call("PUT", "/enrollmentGroups/g3", Some(tpm_group))
        .await;
    assert_error(&refused, 400, 400004, "TPM");
}

#[tokio::test]
async fn queries_page_with_continuation_headers() {
    let api = Api::new();
    for i in 0..5 {
        let id = format!("page-{i}");
        let reply = api
            .call("PUT", &format!("/enrollments/{id}"), Some(symmetric(&id)))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let group = format!("group-{i}");
        let reply = api
            .call(
                "PUT",
                &format!("/enrollmentGroups/{group}"),
                Some(json!({"attestation": {"type": "symmetricKey"}})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    for (path, item_type, query) in [
        (
            "/enrollments/query",
            "Enrollment",
            "SELECT * FROM enrollments",
        ),
        ("/enrollmentGroups/query", "EnrollmentGroup", "select *"),
    ] {
        let mut continuation: Option<String> = None;
        let mut sizes = Vec::new();
        loop {
            let mut headers = vec![("x-ms-max-item-count", "2")];
            if let Some(token) = continuation.as_deref() {
                headers.push(("x-ms-continuation", token));
            }
            let page = api
                .call_with("POST", path, &headers, Some(json!({"query": query})))
                .await;
            assert_eq!(page.status, StatusCode::OK, "{page:?}");
            assert_eq!(page.header("x-ms-item-type"), Some(item_type));
            assert_eq!(page.header("x-ms-max-item-count"), Some("2"));
            let items = page.body.as_array().expect("array");
            assert!(
                items
                    .iter()
                    .all(|i| i["attestation"].get("symmetricKey").is_none()),
                "queries show no keys"
            );
            sizes.push(items.len());
            continuation = page.header("x-ms-continuation").map(str::to_owned);
            if continuation.is_none() {
                break;
            }
        }
        assert_eq!(sizes, [2, 2, 1], "{path}");
    }
    let all = api
        .call(
            "POST",
            "/enrollments/query",
            Some(json!({"query": "SELECT *"})),
        )
        .await;
    assert_eq!(all.header("x-ms-max-item-count"), Some("100"));
    assert_eq!(all.body.as_array().map(Vec::len), Some(5));
    assert!(all.header("x-ms-continuation").is_none());

    let empty = api.call("POST", "/enrollments/query", None).await;
    assert_error(&empty, 400, 400001, "empty");
    let blank = api
        .call("POST", "/enrollments/query", Some(json!({"query": " "})))
        .await;
    assert_error(&blank, 400, 400004, "query");
    let bad = api
        .call_with(
            "POST",
            "/enrollments/query",
            &[("x-ms-continuation", "not a token!")],
            Some(json!({"query": "SELECT *"})),
        )
        .await;
    assert_error(&bad, 400, 400004, "x-ms-continuation");
    let bad = api
        .call_with(
            "POST",
            "/enrollments/query",
            &[("x-ms-max-item-count", "many")],
            Some(json!({"query": "SELECT *"})),
        )
        .await;
    assert_error(&bad, 400, 400004, "x-ms-max-item-count");
}

#[tokio::test]
async fn registration_states() {
    let api = Api::new();
    let group = EnrollmentGroupId::parse("grp").expect("id");
    for (id, group) in [
        ("dev-a", Some(group.clone())),
        ("dev-b", Some(group)),
        ("solo", None),
    ] {
        let state = serde_json::from_value(json!({"registrationId": id, "status": "assigned",
            "assignedHub": "hub.example.com", "deviceId": id}))
        .expect("state");
        api.store
            .put_registration(
                RegistrationRecord {
                    state,
                    enrollment_group_id: group,
                },
                &dps_store::Precondition::Any,
            )
            .await
            .expect("stored");
    }
    let created = api
        .call("PUT", "/enrollments/solo", Some(symmetric("solo")))
        .await;
    assert!(created.body.get("registrationState").is_none());
    let read = api.call("GET", "/enrollments/solo", None).await;
    assert_eq!(
        read.body["registrationState"]["assignedHub"],
        "hub.example.com"
    );

    let state = api.call("GET", "/registrations/dev-a", None).await;
    assert_eq!(state.status, StatusCode::OK);
    assert_eq!(state.body["status"], "assigned");
    let page = api
        .call_with(
            "POST",
            "/registrations/GRP/query",
            &[("x-ms-max-item-count", "1")],
            None,
        )
        .await;
    assert_eq!(page.header("x-ms-item-type"), Some("DeviceRegistration"));
    assert_eq!(page.body.as_array().map(Vec::len), Some(1));
    let next = page
        .header("x-ms-continuation")
        .expect("second page")
        .to_owned();
    let page = api
        .call_with(
            "POST",
            "/registrations/grp/query",
            &[("x-ms-continuation", &next)],
            Some(json!({"query": "SELECT *"})),
        )
        .await;
    assert_eq!(page.body.as_array().map(Vec::len), Some(1));
    assert!(page.header("x-ms-continuation").is_none());

    let reader = token_for(&api.reader, HOST, in_an_hour());
    let refused = api
        .send(api.raw("DELETE", "/registrations/dev-a", &reader, &[], None))
        .await;
    assert_error(
        &refused,
        401,
        401000,
        "lacks the RegistrationStatusWrite right",
    );
    let allowed = api
        .send(api.raw("GET", "/registrations/dev-a", &reader, &[], None))
        .await;
    assert_eq!(allowed.status, StatusCode::OK);

    let deleted = api.call("DELETE", "/registrations/dev-a", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = api.call("GET", "/registrations/dev-a", None).await;
    assert_error(&gone, 404, 404203, "'dev-a' not found");
}

#[tokio::test]
async fn bulk_operations_report_per_item_errors() {
    let api = Api::new();
    let op = |mode: &str| json!({"mode": mode, "enrollments": [symmetric("bulk-1"), symmetric("bulk-2")]});
    let first = api.call("POST", "/enrollments", Some(op("create"))).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.body, json!({"isSuccessful": true, "errors": []}));

    // The C SDK posts to "/enrollments/".
    let again = api.call("POST", "/enrollments/", Some(op("CREATE"))).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["isSuccessful"], false);
    assert_eq!(
        again.body["errors"],
        json!([
            {"registrationId": "bulk-1", "errorCode": 409201, "errorStatus": "Enrollment already exists."},
            {"registrationId": "bulk-2", "errorCode": 409201, "errorStatus": "Enrollment already exists."}
        ])
    );
    let update = api.call("POST", "/enrollments", Some(op("update"))).await;
    assert_eq!(update.body["isSuccessful"], true, "{update:?}");

    let mixed = json!({"mode": "create", "enrollments": [symmetric("bulk-3"),
        {"registrationId": "bulk-4", "attestation": {"type": "kerberos"}}]});
    let mixed = api.call("POST", "/enrollments", Some(mixed)).await;
    assert_eq!(mixed.status, StatusCode::OK);
    assert_eq!(mixed.body["errors"][0]["registrationId"], "bulk-4");
    assert_eq!(mixed.body["errors"][0]["errorCode"], 400001);
    let status = mixed.body["errors"][0]["errorStatus"]
        .as_str()
        .unwrap_or_default();
    assert!(
        status.contains("attestation") && status.contains("kerberos"),
        "{status}"
    );
    assert_eq!(
        api.call("GET", "/enrollments/bulk-3", None).await.status,
        StatusCode::OK
    );

    let etag_less = api
        .call("POST", "/enrollments", Some(op("updateIfMatchEtag")))
        .await;
    assert_eq!(etag_less.body["errors"].as_array().map(Vec::len), Some(2));
    let delete = json!({"mode": "delete", "enrollments": [{"registrationId": "bulk-1"}, {"registrationId": "bulk-2"}, {"registrationId": "nope"}]});
    let delete = api.call("POST", "/enrollments", Some(delete)).await;
    assert_eq!(
        delete.body["errors"],
        json!([{"registrationId": "nope", "errorCode": 404201, "errorStatus": "enrollment 'nope' not found"}])
    );

    let group =
        |id: &str| json!({"enrollmentGroupId": id, "attestation": {"type": "symmetricKey"}});
    let groups = json!({"mode": "create", "enrollmentGroups": [group("bg-1")]});
    assert_eq!(
        api.call("POST", "/enrollmentGroups", Some(groups.clone()))
            .await
            .body["isSuccessful"],
        true
    );
    let again = api.call("POST", "/enrollmentGroups", Some(groups)).await;
    assert_eq!(again.body["errors"][0]["errorCode"], 409202);
    assert_eq!(
        again.body["errors"][0]["errorStatus"],
        "EnrollmentGroup already exists."
    );

    let eleven: Vec<Value> = (0..11).map(|i| symmetric(&format!("many-{i}"))).collect();
    let too_many = api
        .call(
            "POST",
            "/enrollments",
            Some(json!({"mode": "create", "enrollments": eleven})),
        )
        .await;
    assert_error(&too_many, 400, 400004, "at most 10");
    let bad_mode = api
        .call(
            "POST",
            "/enrollments",
            Some(json!({"mode": "upsert", "enrollments": []})),
        )
        .await;
    assert_error(&bad_mode, 400, 400001, "mode");
}

#[tokio::test]
async fn bad_inputs_name_what_is_wrong() {
    let api = Api::with_max_body(4096);
    let token = api.owner_token();
    let put = |body: &str| {
        api.raw(
            "PUT",
            "/enrollments/dev-1",
            &token,
            &[],
            Some(body.to_owned()),
        )
    };

    let reply = api.send(put("{\"registrationId\": ")).await;
    assert_error(&reply, 400, 400001, "not valid JSON");
    let reply = api
        .send(put(r#"{"attestation": {"type": "kerberos"}}"#))
        .await;
    assert_error(&reply, 400, 400001, "'attestation.type'");
    let reply = api
        .send(put(
            r#"{"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "AAAA"}}}"#,
        ))
        .await;
    assert_error(&reply, 400, 400001, "'attestation.symmetricKey.primaryKey'");
    let garbage_cert = json!({"attestation": {"type": "x509", "x509": {"clientCertificates":
        {"primary": {"certificate": "-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----"}}}}});
    let reply = api
        .call("PUT", "/enrollments/dev-1", Some(garbage_cert))
        .await;
    assert_error(
        &reply,
        400,
        400004,
        "invalid attestation: attestation.x509.clientCertificates.primary.certificate",
    );
    let long = "a".repeat(129);
    let reply = api
        .call(
            "PUT",
            &format!("/enrollments/{long}"),
            Some(symmetric(&long)),
        )
        .await;
    assert_error(&reply, 400, 400004, "longer than 128");
    let reply = api.call("GET", "/enrollments/bad%20id", None).await;
    assert_error(&reply, 400, 400004, "registration id");
    let reply = api
        .call("PUT", "/enrollments/dev-1", Some(symmetric("dev-2")))
        .await;
    assert_error(&reply, 400, 400004, "does not match");
    let reply = api.send(put("")).await;
    assert_error(&reply, 400, 400001, "empty");
    let reply = api.send(put("[1]")).await;
    assert_error(&reply, 400, 400001, "JSON object");

    let big = json!({"attestation": {"type": "symmetricKey"}, "initialTwin": {"tags": {"x": "y".repeat(5000)}}});
    let reply = api
        .call("PUT", "/enrollments/dev-1", Some(big.clone()))
        .await;
    assert_error(&reply, 413, 413001, "4096 bytes");
    let head = api.raw("PUT", "/enrollments/dev-1", &token, &[], None);
    let (parts, _) = head.into_parts();
    let stream = chunked_body(big.to_string());
    let reply = api
        .send(axum::http::Request::from_parts(parts, stream))
        .await;
    assert_error(&reply, 413, 413001, "limit");

    let text = api.raw(
        "PUT",
        "/enrollments/dev-1",
        &token,
        &[("content-type", "text/plain")],
        Some("{}".into()),
    );
    assert_error(&api.send(text).await, 415, 415001, "text/plain");

    // Explicit nulls, unknown members, no id in the body, a mixed-case path id.
    let lenient = json!({"attestation": {"type": "symmetricKey"}, "capabilities": null,
        "iotHubs": null, "provisioningStatus": null, "futureMember": {"x": 1}});
    let reply = api.call("PUT", "/Enrollments/Dev-1/", Some(lenient)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["registrationId"], "Dev-1");
    assert!(reply.body.get("futureMember").is_none() && reply.body.get("capabilities").is_none());
    // A `{}` body on GET and DELETE is ignored.
    let reply = api
        .call(
            "GET",
            "/enrollments/dev-1?api-version=2018-04-01",
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = api
        .call("DELETE", "/ENROLLMENTS/dev-1/", Some(json!({})))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
}

/// A body with no declared length, as a chunked upload has: 1000-byte frames.
struct Chunked(std::collections::VecDeque<bytes::Bytes>);

impl hyper::body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
    }
}

fn chunked_body(text: String) -> axum::body::Body {
    let bytes = bytes::Bytes::from(text);
    let frames = (0..bytes.len())
        .step_by(1000)
        .map(|i| bytes.slice(i..(i + 1000).min(bytes.len())));
    axum::body::Body::new(Chunked(frames.collect()))
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let api = Api::new();
    let reply = api.call("GET", "/nowhere", None).await;
    assert_error(&reply, 404, 404001, "GET /nowhere");
    let reply = api
        .call("PATCH", "/enrollments/dev-1", Some(json!({})))
        .await;
    assert_error(&reply, 405, 405001, "PATCH");
    let reply = api.call("GET", "/enrollments/query", None).await;
    assert_error(&reply, 405, 405001, "GET");
}

#[tokio::test]
async fn authentication_failures_say_which_part_is_wrong() {
    let api = Api::new();
    let path = "/enrollments/dev-1";
    let attempt = |authorization: String| {
        let request = api.raw(
            "PUT",
            path,
            &authorization,
            &[],
            Some(symmetric("dev-1").to_string()),
        );
        api.send(request)
    };
    assert_error(
        &attempt(String::new()).await,
        401,
        401000,
        "Authorization header is missing",
    );
    assert_error(
        &attempt("Basic dXNlcjpwdw==".into()).await,
        401,
        401000,
        "not a SharedAccessSignature",
    );
    assert_error(
        &attempt("SharedAccessSignature sr=x&sig".into()).await,
        401,
        401000,
        "malformed",
    );
    let now = Timestamp::now().unix();
    let expired = token_for(&api.owner, HOST, now - 3600);
    assert_error(&attempt(expired).await, 401, 401000, "expired at");
    let mut forged = api.owner.clone();
    forged.primary_key = dps_types::SymmetricKey::generate();
    let reply = attempt(token_for(&forged, HOST, in_an_hour())).await;
    assert_error(
        &reply,
        401,
        401000,
        "signature mismatch for policy 'provisioningserviceowner'",
    );
    let mut stranger = api.owner.clone();
    stranger.name = "stranger".into();
    let reply = attempt(token_for(&stranger, HOST, in_an_hour())).await;
    assert_error(
        &reply,
        401,
        401000,
        "unknown shared access policy 'stranger'",
    );
    let reply = attempt(token_for(&api.owner, "other-dps.example.com", in_an_hour())).await;
    assert_error(&reply, 401, 401000, "audience mismatch");
    let reader = token_for(&api.reader, HOST, in_an_hour());
    let reply = attempt(reader.clone()).await;
    assert_error(
        &reply,
        401,
        401000,
        "policy 'enrollmentread' lacks the EnrollmentWrite right",
    );
    assert!(
        !reply.message().contains(&reader),
        "the token is never echoed"
    );

    // Audiences clients really sign: https://host, the bare host name, a path prefix.
    for audience in [
        "https://localhost:8443",
        "localhost",
        "LOCALHOST:8443/enrollments",
    ] {
        let reply = attempt(token_for(&api.owner, audience, in_an_hour())).await;
        assert_eq!(reply.status, StatusCode::OK, "{audience}: {reply:?}");
    }
    let secondary = dps_attest::SasToken::generate(
        HOST,
        api.owner.secondary_key.as_ref().expect("secondary"),
        Some("ProvisioningServiceOwner"),
        in_an_hour(),
    );
    assert_eq!(attempt(secondary).await.status, StatusCode::OK);
    let read = api.send(api.raw("GET", path, &reader, &[], None)).await;
    assert_eq!(read.status, StatusCode::OK);
}
