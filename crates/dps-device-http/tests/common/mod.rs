//! An in-process HTTPS listener on 127.0.0.1 port 0 serving the device API in front of the
//! service API (as `dpsd` mounts them), over a temporary store, and a device that speaks the
//! DPS device REST API with reqwest, over its own TLS connections (with a client certificate
//! for X.509 devices).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_api::{ApiState, HttpLimits, Rights, SharedAccessPolicy};
use dps_attest::SasToken;
use dps_device_http::DeviceApi;
use dps_feed::FeedConfig;
use dps_registrar::{FeedLink, LinkedHub, Registrar, RegistrarConfig};
use dps_store::{Precondition, Store};
use dps_test_util::broker::{self, TestBroker};
use dps_test_util::{tls, DeviceCert, TestPki};
use dps_types::{EnrollmentGroup, HubName, IdScope, IndividualEnrollment, SymmetricKey, Timestamp};
use lapin::Consumer;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

pub const SCOPE: &str = "0ne00000D1E";
pub const HUB: &str = "hub-a.azure-devices.net";
/// The host name devices dial and the service API's SAS audience.
pub const HOST: &str = "localhost";
/// The api-version of the Node and Python device SDKs.
pub const DEVICE_API_VERSION: &str = "2019-03-31";
/// Bound of every request of a test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A device SAS token as the Node SDK signs it (raw `sr`, `skn=registration`).
pub fn sas_token(id: &str, key: &SymmetricKey) -> String {
    SasToken::generate(
        &format!("{SCOPE}/registrations/{id}"),
        key,
        Some("registration"),
        Timestamp::now().unix() + 3600,
    )
}

/// The one linked hub.
fn linked_hubs() -> Vec<LinkedHub> {
    vec![LinkedHub {
        host_name: HubName::parse(HUB).unwrap(),
        allocation_weight: 1,
        apply_allocation_policy: true,
    }]
}

/// A running listener.
pub struct Server {
    pub addr: SocketAddr,
    pub pki: TestPki,
    pub store: Store,
    pub registrar: Registrar,
    pub owner: SharedAccessPolicy,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Self::with_config(|_| {}).await
    }

    /// A server whose registrar configuration `adjust` changes first.
    pub async fn with_config(adjust: impl FnOnce(&mut RegistrarConfig)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut config = RegistrarConfig::new(IdScope::parse(SCOPE).unwrap(), linked_hubs());
        adjust(&mut config);
        let registrar = Registrar::new(store.clone(), config).unwrap();
        Self::serve(dir, store, registrar).await
    }

    /// A server whose assignment feed publishes to a fresh exchange of the local RabbitMQ,
    /// and a hub's connection with a consumer of every event of that exchange.
    pub async fn with_feed() -> (Server, TestBroker, Consumer) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let exchange = broker::unique("exchange");
        let hub_side = TestBroker::connect().await;
        hub_side.declare_exchange(&exchange).await;
        let queue = hub_side.bind_queue(&exchange, "#").await;
        let consumer = hub_side.consume(&queue).await;
        let config = FeedConfig {
            exchange,
            connection_name: broker::unique("conn"),
            ..FeedConfig::default()
        };
        let hubs = linked_hubs();
        let link = FeedLink::start(
            &store,
            config,
            hubs.iter().map(|h| h.host_name.clone()).collect(),
        )
        .await
        .unwrap();
        let config = RegistrarConfig::new(IdScope::parse(SCOPE).unwrap(), hubs);
        let registrar = Registrar::with_feed(store.clone(), config, Some(link)).unwrap();
        (Self::serve(dir, store, registrar).await, hub_side, consumer)
    }

    async fn serve(dir: tempfile::TempDir, store: Store, registrar: Registrar) -> Server {
        let owner = SharedAccessPolicy {
            name: "provisioningserviceowner".into(),
            primary_key: SymmetricKey::generate(),
            secondary_key: None,
            rights: Rights::ALL,
        };
        let service = dps_api::router(ApiState::new(registrar.clone(), HOST, vec![owner.clone()]));
        let app = dps_device_http::mount(DeviceApi::new(registrar.clone()), service);
        let pki = TestPki::new();
        let tls = tls::server_config(&pki, |provider| {
            Arc::new(dps_attest::PossessionVerifier::new(provider))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dps_api::serve(
            listener,
            tls,
            app,
            HttpLimits::default(),
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            pki,
            store,
            registrar,
            owner,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    /// The `(transport, reason)` of the failed attempts the registrar recorded for `id`.
    pub fn attempts(&self, id: &str) -> Vec<(String, &'static str)> {
        self.registrar
            .diagnostics()
            .attempts(id)
            .iter()
            .map(|a| {
                let transport = serde_json::to_value(a.transport).unwrap();
                (transport.as_str().unwrap().to_owned(), a.reason)
            })
            .collect()
    }

    pub async fn enroll(&self, body: Value) {
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        let e = dps_attest::prepare_individual(e, &self.registrar.enrollment_rules()).unwrap();
        self.store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
    }

    pub async fn enroll_group(&self, body: Value) {
        let g: EnrollmentGroup = serde_json::from_value(body).unwrap();
        let g = dps_attest::prepare_group(g, &self.registrar.enrollment_rules()).unwrap();
        self.store.put_group(g, &Precondition::Any).await.unwrap();
    }

    /// `PUT /enrollments/{id}` through the service API on this listener, as an operator
    /// would (owner policy token); returns the status.
    pub async fn enroll_through_service_api(&self, body: Value) -> u16 {
        let id = body["registrationId"].as_str().unwrap().to_owned();
        let token = SasToken::generate(
            HOST,
            &self.owner.primary_key,
            Some(&self.owner.name),
            Timestamp::now().unix() + 3600,
        );
        let device = self.device(&id, Credential::None);
        let url = format!(
            "https://{HOST}:{}/enrollments/{id}?api-version=2021-10-01",
            self.addr.port()
        );
        let answer = device
            .raw(
                device
                    .http()
                    .put(url)
                    .header("authorization", token)
                    .json(&body),
            )
            .await;
        answer.status
    }

    /// An individual symmetric-key enrollment; returns its primary key.
    pub async fn enroll_sas(&self, id: &str) -> SymmetricKey {
        let key = SymmetricKey::generate();
        self.enroll(json!({"registrationId": id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key.expose_base64()}}}))
            .await;
        key
    }

    /// A device with its own connection pool (a new one is a new TLS connection).
    pub fn device(&self, id: &str, credential: Credential<'_>) -> Device {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_der(&self.pki.root().der()).unwrap())
            .resolve(HOST, self.addr)
            .timeout(REQUEST_TIMEOUT);
        let mut authorization = None;
        match credential {
            Credential::Key(key) => authorization = Some(sas_token(id, key)),
            Credential::Token(token) => authorization = Some(token.to_owned()),
            Credential::Certificate(cert) => {
                let pem = format!("{}{}", cert.key_pem, cert.chain_pem);
                builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
            }
            Credential::None => {}
        }
        Device {
            http: builder.build().unwrap(),
            base: format!(
                "https://{HOST}:{}/{SCOPE}/registrations/{id}",
                self.addr.port()
            ),
            authorization,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What a test device proves itself with.
pub enum Credential<'a> {
    /// A SAS token signed with this key.
    Key(&'a SymmetricKey),
    /// This exact `Authorization` header.
    Token(&'a str),
    /// This certificate chain and its key in the TLS handshake.
    Certificate(&'a DeviceCert),
    /// Nothing.
    None,
}

/// An answer: status, the headers a device reads, and the JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub location: Option<String>,
    pub error_code: Option<String>,
    pub body: Value,
}

/// A device of the DPS device REST API.
pub struct Device {
    http: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Device {
    /// `PUT .../register` with `{"registrationId": id}` and the given `payload`.
    pub async fn register(&self, body: Value) -> Answer {
        let url = format!("{}/register?api-version={DEVICE_API_VERSION}", self.base);
        self.send(self.http.put(url).json(&body)).await
    }

    /// `GET .../operations/{operation_id}` with `{}` as body, as the Node SDK polls.
    pub async fn poll(&self, operation_id: &str) -> Answer {
        let url = format!(
            "{}/operations/{operation_id}?api-version={DEVICE_API_VERSION}",
            self.base
        );
        self.send(self.http.get(url).json(&json!({}))).await
    }

    /// `POST .../{registrationId}` (the status lookup).
    pub async fn status(&self, body: Value) -> Answer {
        let url = format!("{}?api-version={DEVICE_API_VERSION}", self.base);
        self.send(self.http.post(url).json(&body)).await
    }

    /// Any request to `path` under the device's base URL.
    pub async fn raw(&self, request: reqwest::RequestBuilder) -> Answer {
        self.send(request).await
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Answer {
        if let Some(token) = &self.authorization {
            request = request.header("authorization", token);
        }
        let response = request.send().await.expect("the request is answered");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (retry_after, location, error_code) = (
            header("retry-after"),
            header("location"),
            header("x-ms-error-code"),
        );
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("the body is read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("the body is JSON")
        };
        Answer {
            status,
            retry_after,
            location,
            error_code,
            body,
        }
    }

    /// Registers, then polls every `retry-after` until the answer is final; returns the
    /// operation id and the final `RegistrationOperationStatus`.
    pub async fn register_until_done(&self) -> (String, Value) {
        let id = self.base.rsplit('/').next().unwrap().to_owned();
        let answer = self.register(json!({ "registrationId": id })).await;
        assert_eq!(answer.status, 202, "{answer:?}");
        let operation_id = answer.body["operationId"].as_str().unwrap().to_owned();
        for _ in 0..50 {
            let answer = self.poll(&operation_id).await;
            match answer.status {
                200 => return (operation_id, answer.body),
                202 => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => panic!("{answer:?}"),
            }
        }
        panic!("still assigning after 50 polls");
    }
}
