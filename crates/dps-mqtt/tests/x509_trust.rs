//! X.509 trust over real TLS: the enrolled certificate nearest the device's leaf decides,
//! whatever order the device sends its CA certificates in, and a disabled group it decides
//! for refuses the device.

mod common;

use common::{username, Server};
use dps_test_util::DeviceCert;
use serde_json::{json, Value};

fn x509_group(id: &str, certificate: &str, status: &str) -> Value {
    json!({"enrollmentGroupId": id, "provisioningStatus": status,
        "attestation": {"type": "x509", "x509": {"signingCertificates": {
            "primary": {"certificate": certificate}}}}})
}

#[tokio::test]
async fn a_disabled_intermediate_group_refuses_whatever_the_chain_order() {
    let server = Server::start().await;
    let pki = &server.pki;
    server
        .enroll_group(x509_group("root", &pki.root_pem(), "enabled"))
        .await;
    server
        .enroll_group(x509_group("int", &pki.intermediate_pem(), "disabled"))
        .await;
    let cert = pki.device("x509-off");
    // The root before the intermediate: the root's group comes first in this order.
    let reordered = DeviceCert {
        chain_pem: format!(
            "{}{}{}",
            cert.cert_pem,
            pki.root_pem(),
            pki.intermediate_pem()
        ),
        ..cert
    };
    let mut device = server.tls(Some(&reordered)).await;
    assert_eq!(
        device
            .connect("x509-off", &username("x509-off"), None)
            .await,
        Some(0)
    );
    device.subscribe().await;
    let body = device
        .register_until_done(json!({"registrationId": "x509-off"}))
        .await;
    assert_eq!(body["status"], "disabled", "{body}");
}
