//! The portal over HTTP without a browser or socket: sign-in, session cookie, CSRF, rights,
//! validation that keeps typed values, the etag conflict, sign-in throttling, per-policy
//! session bounds and security headers — through `oneshot`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use dps_api::{Rights, SharedAccessPolicy};
use dps_portal::{PortalLimits, PortalState, SigninLimits};
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig};
use dps_store::{Precondition, Store};
use dps_types::{EnrollmentGroupId, EnrollmentSettings, HubName, IdScope, SymmetricKey};
use tower::ServiceExt;

struct Portal {
    app: Router,
    store: Store,
    owner_key: String,
    reader_key: String,
    /// A policy with `EnrollmentRead` only.
    enrollments_key: String,
    /// A policy with `RegistrationStatusRead` only.
    registrations_key: String,
    _dir: tempfile::TempDir,
}

fn portal() -> Portal {
    portal_with(PortalLimits::default())
}

fn portal_with(limits: PortalLimits) -> Portal {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let owner = SymmetricKey::generate();
    let reader = SymmetricKey::generate();
    let enrollments = SymmetricKey::generate();
    let registrations = SymmetricKey::generate();
    let policies = vec![
        SharedAccessPolicy {
            name: "enrollments".into(),
            primary_key: enrollments.clone(),
            secondary_key: None,
            rights: Rights::ENROLLMENT_READ,
        },
        SharedAccessPolicy {
            name: "registrations".into(),
            primary_key: registrations.clone(),
            secondary_key: None,
            rights: Rights::REGISTRATION_STATUS_READ,
        },
        SharedAccessPolicy {
            name: "owner".into(),
            primary_key: owner.clone(),
            secondary_key: None,
            rights: Rights::ALL,
        },
        SharedAccessPolicy {
            name: "reader".into(),
            primary_key: reader.clone(),
            secondary_key: None,
            rights: Rights::ENROLLMENT_READ | Rights::REGISTRATION_STATUS_READ,
        },
    ];
    // Linked as dpsd links them: through the registrar's configuration.
    let linked = ["hub-a.example.net", "hub-b.example.net"]
        .map(|h| LinkedHub {
            host_name: HubName::parse(h).unwrap(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        })
        .to_vec();
    let config = RegistrarConfig::new(IdScope::parse("0ne00000001").unwrap(), linked);
    let registrar = Registrar::new(store.clone(), config).unwrap();
    let state = PortalState::with_limits(registrar, policies, limits);
    let app = dps_portal::mount(state);
    Portal {
        app,
        store,
        owner_key: owner.expose_base64(),
        reader_key: reader.expose_base64(),
        enrollments_key: enrollments.expose_base64(),
        registrations_key: registrations.expose_base64(),
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    cookies: Vec<String>,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let location = res
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let cookies = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    Reply {
        status,
        location,
        cookies,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::empty()).unwrap()
}

fn encode(pairs: &[(&str, &str)]) -> String {
    // Only what the tests send: unreserved characters pass, the rest is percent-encoded.
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn post(path: &str, cookie: Option<&str>, pairs: &[(&str, &str)]) -> Request<Body> {
    let mut b =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(encode(pairs))).unwrap()
}

/// The value of the first hidden input named `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in page"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()]
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// Signs in; returns the session cookie pair and the CSRF token.
async fn sign_in(p: &Portal, policy: &str, key: &str) -> (String, String) {
    let form = send(&p.app, get("/portal/signin", None)).await;
    let token = hidden(&form.body, "csrf");
    let signin_cookie = cookie_pair(&form.cookies[0]);
    let res = send(
        &p.app,
        post(
            "/portal/signin",
            Some(&signin_cookie),
            &[("csrf", &token), ("policy", policy), ("key", key)],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let session = res
        .cookies
        .iter()
        .find(|c| c.starts_with("dps_portal_session="))
        .expect("session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/portal"] {
        assert!(session.contains(attr), "{session}");
    }
    let cookie = cookie_pair(session);
    let start = res.location.expect("start page");
    let page = send(&p.app, get(&start, Some(&cookie))).await;
    assert_eq!(page.status, StatusCode::OK);
    (cookie, hidden(&page.body, "csrf"))
}

/// `req` as if it came over a connection from `peer`.
fn from(peer: &str, mut req: Request<Body>) -> Request<Body> {
    let addr: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

fn group_form<'a>(csrf: &'a str, id: &'a str, twin: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("id", id),
        ("mechanism", "symmetricKey"),
        ("generate_keys", "on"),
        ("allocation_policy", "hashed"),
        ("status", "enabled"),
        ("reprovision", "migrate"),
        ("initial_twin", twin),
    ]
}

/// Adds the symmetric-key group `id` through the portal's add form, as an operator would.
async fn add_group(p: &Portal, cookie: &str, csrf: &str, id: &str) {
    let res = send(
        &p.app,
        post(
            "/portal/groups/new",
            Some(cookie),
            &group_form(csrf, id, ""),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
}

#[tokio::test]
async fn pages_need_a_session_and_sign_in_checks_key_and_form_token() {
    let p = portal();
    let res = send(&p.app, get("/portal/enrollments", None)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location.as_deref(), Some("/portal/signin"));
    let res = send(&p.app, get("/portal", None)).await;
    assert_eq!(res.location.as_deref(), Some("/portal/"));
    let res = send(&p.app, get("/portal/", None)).await;
    assert_eq!(res.location.as_deref(), Some("/portal/signin"));

    let form = send(&p.app, get("/portal/signin", None)).await;
    let token = hidden(&form.body, "csrf");
    let signin_cookie = cookie_pair(&form.cookies[0]);
    // Wrong key: no session, the typed policy name stays.
    let res = send(
        &p.app,
        post(
            "/portal/signin",
            Some(&signin_cookie),
            &[
                ("csrf", &token),
                ("policy", "owner"),
                ("key", &p.reader_key),
            ],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("wrong key"), "{}", res.body);
    assert!(res.body.contains("value=\"owner\""));
    assert!(!res
        .cookies
        .iter()
        .any(|c| c.starts_with("dps_portal_session")));
    // Right key without the sign-in cookie (a cross-site form post): refused.
    let res = send(
        &p.app,
        post(
            "/portal/signin",
            None,
            &[("csrf", &token), ("policy", "owner"), ("key", &p.owner_key)],
        ),
    )
    .await;
    assert!(res.body.contains("expired"), "{}", res.body);
    assert!(!res
        .cookies
        .iter()
        .any(|c| c.starts_with("dps_portal_session")));

    let (cookie, csrf) = sign_in(&p, "owner", &p.owner_key).await;
    let res = send(
        &p.app,
        post("/portal/signout", Some(&cookie), &[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let res = send(&p.app, get("/portal/enrollments", Some(&cookie))).await;
    assert_eq!(
        res.location.as_deref(),
        Some("/portal/signin"),
        "signed out"
    );
}

#[tokio::test]
async fn every_post_needs_the_session_csrf_token() {
    let p = portal();
    let (cookie, csrf) = sign_in(&p, "owner", &p.owner_key).await;
    let (_, other_csrf) = sign_in(&p, "owner", &p.owner_key).await;
    for token in ["", "0000", other_csrf.as_str()] {
        let res = send(
            &p.app,
            post(
                "/portal/groups/new",
                Some(&cookie),
                &group_form(token, "g1", ""),
            ),
        )
        .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "token {token:?}");
    }
    assert!(p
        .store
        .group(&EnrollmentGroupId::parse("g1").unwrap())
        .is_none());
    let res = send(
        &p.app,
        post(
            "/portal/groups/new",
            Some(&cookie),
            &group_form(&csrf, "g1", ""),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert!(p
        .store
        .group(&EnrollmentGroupId::parse("g1").unwrap())
        .is_some());
}

#[tokio::test]
async fn validation_errors_keep_what_was_typed() {
    let p = portal();
    let (cookie, csrf) = sign_in(&p, "owner", &p.owner_key).await;
    let twin = r#"{"tags":{"site":"north"},"reported":1}"#;
    let res = send(
        &p.app,
        post(
            "/portal/groups/new",
            Some(&cookie),
            &group_form(&csrf, "typed-name", twin),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("initial_twin-error"), "{}", res.body);
    assert!(res.body.contains("value=\"typed-name\""));
    assert!(
        res.body.contains("&quot;site&quot;:&quot;north&quot;")
            || res.body.contains("\"site\":\"north\"")
    );
    assert!(p
        .store
        .group(&EnrollmentGroupId::parse("typed-name").unwrap())
        .is_none());
}

#[tokio::test]
async fn a_read_only_policy_sees_no_buttons_and_cannot_post() {
    let p = portal();
    let (owner, owner_csrf) = sign_in(&p, "owner", &p.owner_key).await;
    add_group(&p, &owner, &owner_csrf, "g1").await;
    let (cookie, csrf) = sign_in(&p, "reader", &p.reader_key).await;
    let list = send(&p.app, get("/portal/enrollments", Some(&cookie))).await;
    assert!(list.body.contains("g1"));
    assert!(!list.body.contains("Add enrollment group"));
    assert!(!list.body.contains("/delete"));
    let details = send(&p.app, get("/portal/groups/g1", Some(&cookie))).await;
    assert!(!details.body.contains(">Save<") && !details.body.contains(">Delete<"));
    assert!(details.body.contains("<fieldset class=\"plain\" disabled"));

    let res = send(&p.app, get("/portal/groups/new", Some(&cookie))).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = send(
        &p.app,
        post(
            "/portal/groups/new",
            Some(&cookie),
            &group_form(&csrf, "g2", ""),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = send(
        &p.app,
        post(
            "/portal/groups/g1/delete",
            Some(&cookie),
            &[("csrf", &csrf)],
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(p
        .store
        .group(&EnrollmentGroupId::parse("g1").unwrap())
        .is_some());
}

#[tokio::test]
async fn a_stale_etag_is_reported_not_overwritten() {
    let p = portal();
    let (cookie, csrf) = sign_in(&p, "owner", &p.owner_key).await;
    add_group(&p, &cookie, &csrf, "g1").await;
    let opened = send(&p.app, get("/portal/groups/g1", Some(&cookie))).await;
    let etag = hidden(&opened.body, "etag");

    // Someone else changes it meanwhile.
    let id = EnrollmentGroupId::parse("g1").unwrap();
    let mut other = (*p.store.group(&id).unwrap()).clone();
    other.provisioning_status = Some(dps_types::ProvisioningStatus::Disabled);
    let other = dps_attest::prepare_group(other, &Default::default()).unwrap();
    p.store.put_group(other, &Precondition::Any).await.unwrap();

    let mut form = group_form(&csrf, "g1", r#"{"tags":{"mine":true}}"#);
    form.push(("etag", &etag));
    let res = send(&p.app, post("/portal/groups/g1", Some(&cookie), &form)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("changed by someone else"), "{}", res.body);
    let stored = p.store.group(&id).unwrap();
    assert!(stored.initial_twin.is_none(), "not overwritten");
    assert!(!stored.is_enabled());

    // With the current etag the same save goes through.
    let fresh = send(&p.app, get("/portal/groups/g1", Some(&cookie))).await;
    let etag = hidden(&fresh.body, "etag");
    let mut form = group_form(&csrf, "g1", r#"{"tags":{"mine":true}}"#);
    form.push(("etag", &etag));
    let res = send(&p.app, post("/portal/groups/g1", Some(&cookie), &form)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let stored = p.store.group(&id).unwrap();
    assert!(stored.initial_twin.is_some());
    assert!(
        matches!(stored.attestation, dps_types::Attestation::SymmetricKey(ref k) if k.primary_key.is_some()),
        "keys kept"
    );
}

#[tokio::test]
async fn custom_allocation_round_trips_through_the_forms() {
    let p = portal();
    let (cookie, csrf) = sign_in(&p, "owner", &p.owner_key).await;
    let webhook = "https://alloc.example.net/api/allocate?code=abc";
    let mut form = group_form(&csrf, "custom-g", "");
    form.retain(|(k, _)| *k != "allocation_policy");
    form.extend([
        ("allocation_policy", "custom"),
        ("webhook_url", webhook),
        ("api_version", "2021-10-01"),
        ("iot_hubs", "hub-a.example.net"),
    ]);
    let res = send(&p.app, post("/portal/groups/new", Some(&cookie), &form)).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);

    let id = EnrollmentGroupId::parse("custom-g").unwrap();
    let stored = p.store.group(&id).unwrap();
    assert_eq!(
        stored.allocation_policy,
        Some(dps_types::AllocationPolicy::Custom)
    );
    let def = stored.custom_allocation_definition.clone().unwrap();
    assert_eq!(
        (def.webhook_url.as_str(), def.api_version.as_str()),
        (webhook, "2021-10-01")
    );
    assert_eq!(
        stored.iot_hubs.as_ref().unwrap()[0].as_str(),
        "hub-a.example.net"
    );
    let json = serde_json::to_value(&*stored).unwrap();
    assert_eq!(json["customAllocationDefinition"]["webhookUrl"], webhook);
    assert_eq!(
        json["customAllocationDefinition"]["apiVersion"],
        "2021-10-01"
    );

    // The details page shows the definition in editable fields.
    let details = send(&p.app, get("/portal/groups/custom-g", Some(&cookie))).await;
    assert_eq!(details.status, StatusCode::OK);
    assert!(details
        .body
        .contains("<option value=\"custom\" selected>Custom (use Azure Function)</option>"));
    assert_eq!(hidden(&details.body, "webhook_url"), webhook);
    assert_eq!(hidden(&details.body, "api_version"), "2021-10-01");

    // A non-http URL on update is reported next to the field, keeps what was typed and
    // leaves the stored definition alone.
    let etag = hidden(&details.body, "etag");
    let mut edit: Vec<_> = form
        .iter()
        .copied()
        .filter(|(k, _)| *k != "webhook_url")
        .collect();
    edit.extend([
        ("etag", etag.as_str()),
        ("webhook_url", "ftp://alloc.example.net"),
    ]);
    let res = send(
        &p.app,
        post("/portal/groups/custom-g", Some(&cookie), &edit),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("webhook_url-error"), "{}", res.body);
    assert_eq!(hidden(&res.body, "webhook_url"), "ftp://alloc.example.net");
    assert_eq!(
        p.store.group(&id).unwrap().custom_allocation_definition,
        Some(def)
    );
}

#[tokio::test]
async fn pages_ask_for_the_rights_the_api_asks_for() {
    let p = portal();
    let (owner, owner_csrf) = sign_in(&p, "owner", &p.owner_key).await;
    add_group(&p, &owner, &owner_csrf, "g1").await;
    let res = send(&p.app, get("/portal/", Some(&owner))).await;
    assert_eq!(res.location.as_deref(), Some("/portal/enrollments"));

    // Registration rights only: no enrollment page, and the navigation does not offer one.
    let (cookie, csrf) = sign_in(&p, "registrations", &p.registrations_key).await;
    let res = send(&p.app, get("/portal/", Some(&cookie))).await;
    assert_eq!(res.location.as_deref(), Some("/portal/registrations"));
    for path in [
        "/portal/enrollments",
        "/portal/enrollments?tab=individual",
        "/portal/groups/g1",
        "/portal/groups/new",
        "/portal/groups/g1/delete",
    ] {
        let res = send(&p.app, get(path, Some(&cookie))).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            res.body.contains("does not have the Enrollment"),
            "{path}: {}",
            res.body
        );
        assert!(
            !res.body.contains("g1"),
            "{path} shows nothing of the group"
        );
    }
    let records = send(&p.app, get("/portal/registrations", Some(&cookie))).await;
    assert_eq!(records.status, StatusCode::OK);
    assert!(!records.body.contains("href=\"/portal/enrollments\""));
    assert!(records.body.contains("href=\"/portal/dashboard\""));
    let res = send(
        &p.app,
        post(
            "/portal/registrations/dev-1/delete",
            Some(&cookie),
            &[("csrf", &csrf)],
        ),
    )
    .await;
    assert_eq!(
        res.status,
        StatusCode::FORBIDDEN,
        "deleting needs RegistrationStatusWrite"
    );

    // Enrollment rights only: no registration page, and the navigation does not offer one.
    let (cookie, _) = sign_in(&p, "enrollments", &p.enrollments_key).await;
    for path in [
        "/portal/registrations",
        "/portal/registrations/dev-1",
        "/portal/registrations/dev-1/delete",
        "/portal/hubs",
        "/portal/dashboard",
    ] {
        let res = send(&p.app, get(path, Some(&cookie))).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            res.body.contains("RegistrationStatus"),
            "{path}: {}",
            res.body
        );
    }
    let list = send(&p.app, get("/portal/enrollments", Some(&cookie))).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("g1"));
    for section in ["/portal/registrations", "/portal/hubs", "/portal/dashboard"] {
        assert!(
            !list.body.contains(&format!("href=\"{section}\"")),
            "{section} offered"
        );
    }
}

#[tokio::test]
async fn failed_sign_ins_from_one_address_back_off_and_success_resets() {
    let p = portal_with(PortalLimits {
        signin: SigninLimits {
            // Long enough that no test run outlasts it: the test never depends on time passing.
            first_backoff: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(7200),
            ..SigninLimits::default()
        },
        ..PortalLimits::default()
    });
    let form = send(&p.app, get("/portal/signin", None)).await;
    let token = hidden(&form.body, "csrf");
    let signin_cookie = cookie_pair(&form.cookies[0]);
    let attempt = |peer: &'static str, key: String| {
        let app = p.app.clone();
        let (token, signin_cookie) = (token.clone(), signin_cookie.clone());
        async move {
            send(
                &app,
                from(
                    peer,
                    post(
                        "/portal/signin",
                        Some(&signin_cookie),
                        &[("csrf", &token), ("policy", "owner"), ("key", &key)],
                    ),
                ),
            )
            .await
        }
    };
    let wrong = p.reader_key.clone();
    for _ in 0..5 {
        let res = attempt("192.0.2.1:40000", wrong.clone()).await;
        assert_eq!(res.status, StatusCode::OK);
        assert!(res.body.contains("wrong key"));
    }
    // The right key from that address is now refused without being checked.
    let res = attempt("192.0.2.1:40001", p.owner_key.clone()).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{}", res.body);
    assert!(
        res.body.contains("Too many failed sign-ins"),
        "{}",
        res.body
    );
    assert_eq!(res.headers[header::RETRY_AFTER], "3600");
    assert!(!res
        .cookies
        .iter()
        .any(|c| c.starts_with("dps_portal_session")));
    // Another address is not affected.
    let res = attempt("192.0.2.2:40000", p.owner_key.clone()).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);

    // A successful sign-in starts the count afresh.
    for _ in 0..2 {
        for _ in 0..4 {
            let res = attempt("198.51.100.7:1", wrong.clone()).await;
            assert_eq!(res.status, StatusCode::OK);
        }
        let res = attempt("198.51.100.7:1", p.owner_key.clone()).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    }
}

#[tokio::test]
async fn one_policy_signing_in_in_a_loop_leaves_other_operators_signed_in() {
    let p = portal_with(PortalLimits {
        max_sessions: 8,
        max_sessions_per_policy: 4,
        ..PortalLimits::default()
    });
    let (reader, _) = sign_in(&p, "reader", &p.reader_key).await;
    let (first_owner, _) = sign_in(&p, "owner", &p.owner_key).await;
    for _ in 0..20 {
        sign_in(&p, "owner", &p.owner_key).await;
    }
    let res = send(&p.app, get("/portal/enrollments", Some(&reader))).await;
    assert_eq!(res.status, StatusCode::OK, "the reader is still signed in");
    let res = send(&p.app, get("/portal/enrollments", Some(&first_owner))).await;
    assert_eq!(
        res.location.as_deref(),
        Some("/portal/signin"),
        "the flooding policy's oldest session went"
    );
}

#[tokio::test]
async fn every_portal_response_carries_the_security_headers() {
    let p = portal();
    let (cookie, _) = sign_in(&p, "registrations", &p.registrations_key).await;
    let mut seen = 0;
    for (path, session) in [
        ("/portal", None),
        ("/portal/", None),
        ("/portal/signin", None),
        ("/portal/static/portal.css", None),
        ("/portal/static/portal.js", None),
        ("/portal/no-such-page", None),
        ("/portal/enrollments", None),
        ("/portal/enrollments", Some(cookie.as_str())),
        ("/portal/registrations", Some(&cookie)),
        ("/portal/dashboard", Some(&cookie)),
    ] {
        let res = send(&p.app, get(path, session)).await;
        let csp = res.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "object-src 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(res.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(res.headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(res.headers[header::X_FRAME_OPTIONS], "DENY");
        // Nothing inline that the policy would block.
        if res.body.contains("<html") {
            seen += 1;
            for inline in ["<style", " style=", "<script>", " onclick=", "javascript:"] {
                assert!(!res.body.contains(inline), "{path} has {inline}");
            }
        }
    }
    assert!(seen >= 4, "pages were checked");
}

#[tokio::test]
async fn only_linked_hubs_can_be_chosen() {
    let p = portal();
    let (cookie, csrf) = sign_in(&p, "owner", &p.owner_key).await;
    let mut form = group_form(&csrf, "g-rogue", "");
    form.push(("iot_hubs", "rogue.example.net"));
    let res = send(&p.app, post("/portal/groups/new", Some(&cookie), &form)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("iot_hubs-error"), "{}", res.body);
    assert!(
        res.body
            .contains("iotHubs names 'rogue.example.net', which is not a linked IoT hub"),
        "{}",
        res.body
    );
    let id = EnrollmentGroupId::parse("g-rogue").unwrap();
    assert!(p.store.group(&id).is_none(), "nothing refused is stored");

    let mut form = group_form(&csrf, "g-static", "");
    form.retain(|(k, _)| *k != "allocation_policy");
    form.extend([
        ("allocation_policy", "static"),
        ("static_hub", "rogue.example.net"),
    ]);
    let res = send(&p.app, post("/portal/groups/new", Some(&cookie), &form)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("static_hub-error"), "{}", res.body);

    // An update is prepared under the same rules.
    let res = send(
        &p.app,
        post(
            "/portal/groups/new",
            Some(&cookie),
            &group_form(&csrf, "g1", ""),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let opened = send(&p.app, get("/portal/groups/g1", Some(&cookie))).await;
    let etag = hidden(&opened.body, "etag");
    let mut edit = group_form(&csrf, "g1", "");
    edit.extend([("etag", etag.as_str()), ("iot_hubs", "rogue.example.net")]);
    let res = send(&p.app, post("/portal/groups/g1", Some(&cookie), &edit)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body.contains("iot_hubs-error"), "{}", res.body);
    let id = EnrollmentGroupId::parse("g1").unwrap();
    assert!(p.store.group(&id).unwrap().iot_hubs.is_none());
}
