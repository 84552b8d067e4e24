//! A store in a temporary directory, an API router over it with two policies, and helpers to
//! send authenticated requests without a socket.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use dps_api::{router, ApiState, Rights, SharedAccessPolicy};
use dps_attest::{EnrollmentRules, SasToken};
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig};
use dps_store::Store;
use dps_types::{HubName, IdScope, SymmetricKey, Timestamp, WebhookPolicy};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub const HOST: &str = "localhost:8443";
/// The IoT hubs the test service is linked to.
pub const LINKED_HUBS: [&str; 2] = ["hub-a.example.net", "hub-b.example.net"];
/// The api-version requests get when their path names none.
pub const API_VERSION: &str = "2021-10-01";

/// A registrar over `store` whose linked hubs and webhook policy are `rules`.
pub fn registrar(store: Store, rules: EnrollmentRules) -> Registrar {
    let hubs = rules
        .linked_hubs
        .into_iter()
        .map(|host_name| LinkedHub {
            host_name,
            allocation_weight: 1,
            apply_allocation_policy: true,
        })
        .collect();
    let mut config = RegistrarConfig::new(IdScope::parse("0ne00000001").expect("scope"), hubs);
    config.webhook_policy = rules.webhook;
    Registrar::new(store, config).expect("registrar")
}

pub struct Api {
    pub app: Router,
    pub store: Store,
    pub owner: SharedAccessPolicy,
    pub reader: SharedAccessPolicy,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

pub fn policy(name: &str, rights: Rights) -> SharedAccessPolicy {
    SharedAccessPolicy {
        name: name.into(),
        primary_key: SymmetricKey::generate(),
        secondary_key: Some(SymmetricKey::generate()),
        rights,
    }
}

pub fn token_for(policy: &SharedAccessPolicy, audience: &str, expiry: i64) -> String {
    SasToken::generate(audience, &policy.primary_key, Some(&policy.name), expiry)
}

pub fn in_an_hour() -> i64 {
    Timestamp::now().unix() + 3600
}

impl Api {
    pub fn new() -> Api {
        Self::with_max_body(dps_api::DEFAULT_MAX_BODY_BYTES)
    }

    /// The rules of [`Api::new`]: [`LINKED_HUBS`], webhooks `https` only.
    pub fn rules() -> EnrollmentRules {
        EnrollmentRules {
            linked_hubs: LINKED_HUBS
                .map(|h| HubName::parse(h).expect("hub"))
                .to_vec(),
            webhook: WebhookPolicy::default(),
        }
    }

    pub fn with_max_body(max_body_bytes: usize) -> Api {
        Self::with(max_body_bytes, Self::rules())
    }

    pub fn with_rules(rules: EnrollmentRules) -> Api {
        Self::with(dps_api::DEFAULT_MAX_BODY_BYTES, rules)
    }

    fn with(max_body_bytes: usize, rules: EnrollmentRules) -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store opens");
        let owner = policy("provisioningserviceowner", Rights::ALL);
        let reader = policy(
            "enrollmentread",
            Rights::ENROLLMENT_READ | Rights::REGISTRATION_STATUS_READ,
        );
        let state = ApiState::new(
            registrar(store.clone(), rules),
            HOST,
            vec![owner.clone(), reader.clone()],
        )
        .with_max_body_bytes(max_body_bytes);
        Api {
            app: router(state),
            store,
            owner,
            reader,
            _dir: dir,
        }
    }

    pub fn owner_token(&self) -> String {
        token_for(&self.owner, HOST, in_an_hour())
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "response is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A request with the owner's token and, when there is a body, a JSON content type.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Request<Body> {
        self.raw(
            method,
            path,
            &self.owner_token(),
            &[],
            body.map(Value::to_string),
        )
    }

    /// A request to `path`, with `api-version` [`API_VERSION`] added when the path has none.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        authorization: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Request<Body> {
        let uri = if path.contains("api-version=") {
            path.to_owned()
        } else if path.contains('?') {
            format!("{path}&api-version={API_VERSION}")
        } else {
            format!("{path}?api-version={API_VERSION}")
        };
        self.exact(method, &uri, authorization, headers, body)
    }

    /// A request to exactly `uri` (no `api-version` added).
    pub fn exact(
        &self,
        method: &str,
        uri: &str,
        authorization: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(uri);
        if !authorization.is_empty() {
            builder = builder.header("authorization", authorization);
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header("content-type", "application/json; charset=utf-8");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(body.map_or_else(Body::empty, Body::from))
            .expect("request")
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.send(self.request(method, path, body.as_ref())).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let token = self.owner_token();
        self.send(self.raw(method, path, &token, headers, body.map(|b| b.to_string())))
            .await
    }
}
