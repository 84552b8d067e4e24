//! What the registrar reports to its observer (the metrics): one report per registration
//! with its transport, attestation, outcome and hub, and one per webhook call with a bounded
//! result.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dps_attest::{attest_sas, AttestedDevice, SasToken};
use dps_registrar::{
    LinkedHub, Outcome, Registrar, RegistrarConfig, RegistrarObserver, RegistrationReport,
    Transport,
};
use dps_store::{Precondition, Store};
use dps_types::{AttestationType, HubName, IdScope, IndividualEnrollment, WebhookPolicy};
use serde_json::{json, Value};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const HUB: &str = "hub-a.example.net";

/// What one report said: transport, attestation, outcome, hub.
type Seen = (Transport, AttestationType, Outcome, Option<String>);

#[derive(Debug, Default)]
struct Recorded {
    registrations: Mutex<Vec<Seen>>,
    webhooks: Mutex<Vec<&'static str>>,
}

impl RegistrarObserver for Recorded {
    fn registration(&self, r: &RegistrationReport<'_>) {
        self.registrations.lock().unwrap().push((
            r.transport,
            r.attestation,
            r.outcome,
            r.hub.map(|h| h.as_str().to_owned()),
        ));
    }
    fn webhook(&self, result: &'static str, _elapsed: Duration) {
        self.webhooks.lock().unwrap().push(result);
    }
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    registrar: Registrar,
    scope: IdScope,
}

fn env(recorded: &Arc<Recorded>, max_in_flight: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let scope = IdScope::parse("0ne00000001").unwrap();
    let linked = vec![LinkedHub {
        host_name: HubName::parse(HUB).unwrap(),
        allocation_weight: 1,
        apply_allocation_policy: true,
    }];
    let mut config = RegistrarConfig::new(scope.clone(), linked);
    config.max_in_flight = max_in_flight;
    config.webhook_policy.allow_http = true;
    config.observer = Some(recorded.clone());
    let registrar = Registrar::new(store.clone(), config).unwrap();
    Env {
        _dir: dir,
        store,
        registrar,
        scope,
    }
}

impl Env {
    async fn enroll(&self, id: &str, extra: Value) {
        let mut body = json!({"registrationId": id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": KEY}}});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        let rules = dps_attest::EnrollmentRules {
            linked_hubs: vec![HubName::parse(HUB).unwrap()],
            webhook: WebhookPolicy {
                allow_http: true,
                allowed_hosts: Vec::new(),
            },
        };
        let e = dps_attest::prepare_individual(e, &rules).unwrap();
        self.store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
    }

    fn attest(&self, id: &str) -> AttestedDevice {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let key = dps_types::SymmetricKey::parse(KEY).unwrap();
        let token = SasToken::generate(
            &format!("{}/registrations/{id}", self.scope),
            &key,
            None,
            now + 600,
        );
        attest_sas(&token, &self.scope, id, self.registrar.lookup(), now)
            .unwrap_or_else(|r| panic!("{:?}", r.reason))
    }
}

#[tokio::test]
async fn every_registration_is_reported_with_its_outcome_and_hub() {
    let recorded = Arc::new(Recorded::default());
    let env = env(&recorded, 16);
    env.enroll("dev-ok", json!({})).await;
    env.enroll("dev-off", json!({"provisioningStatus": "disabled"}))
        .await;
    // A webhook on a closed loopback port: unreachable, so the registration fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alloc", closed.local_addr().unwrap());
    drop(closed);
    env.enroll(
        "dev-hook",
        json!({"allocationPolicy": "custom",
            "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}}),
    )
    .await;

    for (id, transport) in [
        ("dev-ok", Transport::Mqtt),
        ("dev-off", Transport::Amqp),
        ("dev-hook", Transport::Https),
    ] {
        env.registrar
            .register(&env.attest(id), transport, None)
            .await
            .unwrap();
    }

    let sas = AttestationType::SymmetricKey;
    assert_eq!(
        *recorded.registrations.lock().unwrap(),
        [
            (
                Transport::Mqtt,
                sas,
                Outcome::Assigned,
                Some(HUB.to_owned())
            ),
            (Transport::Amqp, sas, Outcome::Disabled, None),
            (Transport::Https, sas, Outcome::Failed, None),
        ]
    );
    assert_eq!(*recorded.webhooks.lock().unwrap(), ["unreachable"]);
}

#[tokio::test]
async fn a_busy_registrar_reports_throttled() {
    let recorded = Arc::new(Recorded::default());
    let env = env(&recorded, 0);
    env.enroll("dev-busy", json!({})).await;
    let refused = env
        .registrar
        .register(&env.attest("dev-busy"), Transport::Mqtt, None)
        .await;
    assert!(refused.is_err());
    let reports = recorded.registrations.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].2, Outcome::Throttled);
}
