//! TLS for the frontends' tests: PEM into rustls types, the server configuration every device
//! listener runs with in tests (the test PKI's server certificate, client certificates checked
//! by the caller's verifier), and a client configuration that trusts one root and presents a
//! device's chain when given.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;

use crate::{DeviceCert, TestPki};

/// The crypto provider of every test configuration (the service's own).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM text.
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The private key of a PEM text.
pub fn key(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .unwrap()
        .unwrap()
}

/// A device listener's configuration: `pki`'s server certificate for `localhost`, client
/// certificates optional and checked by `verifier` (made with [`provider`]).
pub fn server_config(
    pki: &TestPki,
    verifier: impl FnOnce(Arc<rustls::crypto::CryptoProvider>) -> Arc<dyn ClientCertVerifier>,
) -> Arc<rustls::ServerConfig> {
    let server_cert = pki.server("localhost");
    let provider = provider();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier(provider))
        .with_single_cert(certs(&server_cert.chain_pem), key(&server_cert.key_pem))
        .unwrap();
    Arc::new(config)
}

/// A client that trusts `root_der` only and presents `device`'s chain if given.
pub fn client_config(root_der: &[u8], device: Option<&DeviceCert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match device {
        Some(d) => builder
            .with_client_auth_cert(certs(&d.chain_pem), key(&d.key_pem))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}
