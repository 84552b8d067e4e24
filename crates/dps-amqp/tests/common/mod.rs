//! An in-process AMQP frontend on 127.0.0.1 port 0 over a temporary store, and the test
//! device of `dps_test_util::amqp` (fe2o3-amqp's client over our own tokio-rustls stream, for
//! client certificates) that talks to it as the DPS SDKs do, or misbehaves on purpose.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_amqp::{AmqpCounters, AmqpLimits, AmqpStats};
use dps_attest::SasToken;
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig};
use dps_store::{Precondition, Store};
pub use dps_test_util::amqp::*;
use dps_test_util::{amqp, tls};
use dps_test_util::{DeviceCert, TestPki};
use dps_types::{EnrollmentGroup, HubName, IdScope, IndividualEnrollment, SymmetricKey};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

pub const SCOPE: &str = "0ne00000A1B";
pub const HUB: &str = "hub-a.azure-devices.net";

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn address(id: &str) -> String {
    format!("{SCOPE}/registrations/{id}")
}

/// A device SAS token as the Node SDK signs it (raw `sr`, `skn=registration`).
pub fn sas_token(id: &str, key: &SymmetricKey) -> String {
    SasToken::generate(&address(id), key, Some("registration"), unix_now() + 3600)
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A running frontend.
pub struct Server {
    pub addr: SocketAddr,
    pub pki: TestPki,
    pub store: Store,
    pub registrar: Registrar,
    pub counters: AmqpCounters,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Self::with_limits(AmqpLimits::default()).await
    }

    pub async fn with_limits(limits: AmqpLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hubs = vec![LinkedHub {
            host_name: HubName::parse(HUB).unwrap(),
            allocation_weight: 1,
            apply_allocation_policy: true,
        }];
        let config = RegistrarConfig::new(IdScope::parse(SCOPE).unwrap(), hubs);
        let registrar = Registrar::new(store.clone(), config).unwrap();
        let pki = TestPki::new();
        let tls = tls::server_config(&pki, |provider| {
            Arc::new(dps_attest::PossessionVerifier::new(provider))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = AmqpCounters::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dps_amqp::serve_with_counters(
            listener,
            tls,
            registrar.clone(),
            limits,
            counters.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            pki,
            store,
            registrar,
            counters,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn stats(&self) -> AmqpStats {
        self.counters.snapshot()
    }

    /// The refusal reasons the registrar recorded for `id`, oldest first, and their transport.
    pub fn refusals(&self, id: &str) -> Vec<(&'static str, String)> {
        self.registrar
            .diagnostics()
            .attempts(id)
            .iter()
            .map(|a| {
                (
                    a.reason,
                    serde_json::to_value(a.transport)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
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

    pub async fn enroll(&self, body: serde_json::Value) {
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        let e = dps_attest::prepare_individual(e, &self.registrar.enrollment_rules()).unwrap();
        self.store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
    }

    pub async fn enroll_group(&self, body: serde_json::Value) {
        let g: EnrollmentGroup = serde_json::from_value(body).unwrap();
        let g = dps_attest::prepare_group(g, &self.registrar.enrollment_rules()).unwrap();
        self.store.put_group(g, &Precondition::Any).await.unwrap();
    }

    /// An individual symmetric-key enrollment; returns its primary key.
    pub async fn enroll_sas(&self, id: &str) -> SymmetricKey {
        let key = SymmetricKey::generate();
        self.enroll(json!({"registrationId": id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": key.expose_base64()}}}))
            .await;
        key
    }

    /// A TLS connection, with `device`'s chain as client certificate if given.
    pub async fn tls(&self, device: Option<&DeviceCert>) -> TlsStream<TcpStream> {
        amqp::tls(self.addr, &self.pki.root().der(), device).await
    }

    /// An AMQP connection: SASL `profile` if given (else none), `device`'s certificate if given.
    pub async fn connection(
        &self,
        device: Option<&DeviceCert>,
        profile: Option<SaslProfile>,
    ) -> ConnectionHandle<()> {
        amqp::connect(self.tls(device).await, profile).await
    }

    /// A symmetric-key device's connection with SASL PLAIN.
    pub async fn sas_connection(&self, id: &str, key: &SymmetricKey) -> ConnectionHandle<()> {
        let profile = SaslProfile::Plain {
            username: address(id),
            password: sas_token(id, key),
        };
        self.connection(None, Some(profile)).await
    }

    /// A device with both links attached on its own address.
    pub async fn sas_device(&self, id: &str, key: &SymmetricKey) -> Device {
        let connection = self.sas_connection(id, key).await;
        Device::attach(connection, &address(id)).await
    }

    /// Proves the frontend still serves: a fresh device registers to `assigned`.
    pub async fn assert_still_serving(&self) {
        let id = unique("canary");
        let key = self.enroll_sas(&id).await;
        let mut device = self.sas_device(&id, &key).await;
        let state = device.register_until_done().await;
        assert_eq!(state["status"], "assigned", "{state}");
        device.close().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Checks `condition` until it holds; fails the test after [`ANSWER_TIMEOUT`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
