//! [`PossessionVerifier`]: the rustls client-certificate verifier of the device endpoints.
//!
//! It proves possession, not trust: the handshake completes only if the client signed it with
//! the private key of the leaf it sent, but any leaf that parses is let through, because which
//! CA a device may use depends on its enrollment, which is known only once the device says
//! who it is. [`crate::attest_x509`] decides trust afterwards from
//! `peer_certificates()`.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::{AttestError, MAX_CHAIN_CERTS};

/// Accepts any client certificate chain of at most [`MAX_CHAIN_CERTS`] certificates whose
/// leaf parses, and checks the handshake signature with the provider's algorithms. Client
/// authentication is offered but optional: symmetric-key devices send no certificate.
#[derive(Debug)]
pub struct PossessionVerifier {
    provider: Arc<CryptoProvider>,
}

impl PossessionVerifier {
    /// A verifier that checks handshake signatures with `provider`'s
    /// `signature_verification_algorithms`.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ClientCertVerifier for PossessionVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Devices of different enrollments use different CAs; naming them all would leak the
        // service's CA list to anyone who connects, and no device SDK uses the hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = intermediates.len().saturating_add(1);
        if presented > MAX_CHAIN_CERTS {
            let err = AttestError::ChainTooLong {
                len: presented,
                max: MAX_CHAIN_CERTS,
            };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(err)),
            )));
        }
        webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use dps_test_util::{DeviceCert, DeviceOptions, KeyKind, TestPki};
    use rustls::crypto::aws_lc_rs;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::sign::{CertifiedKey, SingleCertAndKey};
    use rustls::{
        ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
        SupportedProtocolVersion,
    };

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(aws_lc_rs::default_provider())
    }

    fn certs(chain: &[Vec<u8>]) -> Vec<CertificateDer<'static>> {
        chain
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect()
    }

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn server_config(pki: &TestPki) -> Arc<ServerConfig> {
        let server = pki.server("localhost");
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(PossessionVerifier::new(provider())))
            .with_single_cert(certs(&server.chain_der), key(&server.key_pem))
            .unwrap();
        Arc::new(config)
    }

    enum ClientAuth<'a> {
        None,
        Cert(&'a DeviceCert),
        /// A certificate with the key of another certificate.
        Mismatched(&'a DeviceCert, &'a DeviceCert),
    }

    fn client_config(
        pki: &TestPki,
        version: &'static SupportedProtocolVersion,
        auth: ClientAuth<'_>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(pki.root().der())).unwrap();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
        let config = match auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Cert(device) => builder
                .with_client_auth_cert(certs(&device.chain_der), key(&device.key_pem))
                .unwrap(),
            ClientAuth::Mismatched(cert, key_of) => {
                let signer = provider()
                    .key_provider
                    .load_private_key(key(&key_of.key_pem))
                    .unwrap();
                let certified = CertifiedKey::new(certs(&cert.chain_der), signer);
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
            }
        };
        Arc::new(config)
    }

    /// Runs a handshake in memory and returns the server side, or the first error.
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<ServerConnection, rustls::Error> {
        let mut server = ServerConnection::new(server)?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client, name)?;
        let mut buf = Vec::new();
        // A TLS 1.2 or 1.3 handshake needs at most a handful of flights each way.
        for _ in 0..10 {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !server.is_handshaking() && !client.is_handshaking() {
                // Application data flows, both ways.
                client.writer().write_all(b"ping").unwrap();
                buf.clear();
                client.write_tls(&mut buf).unwrap();
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets()?;
                let mut got = [0u8; 4];
                server.reader().read_exact(&mut got).unwrap();
                assert_eq!(&got, b"ping");
                return Ok(server);
            }
        }
        panic!("the handshake did not finish");
    }

    const VERSIONS: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    #[test]
    fn device_chain_reaches_the_server_after_the_handshake() {
        let pki = TestPki::new();
        let rsa = pki.device_with(
            "rsa-device",
            DeviceOptions {
                key: KeyKind::Rsa2048,
                ..Default::default()
            },
        );
        for device in [pki.device("ec-device"), rsa] {
            for version in VERSIONS {
                let client = client_config(&pki, version, ClientAuth::Cert(&device));
                let server = handshake(server_config(&pki), client).unwrap();
                let presented = server.peer_certificates().unwrap();
                assert_eq!(presented, certs(&device.chain_der).as_slice());
            }
        }
    }

    #[test]
    fn untrusted_and_expired_leaves_pass_possession() {
        // Trust is decided by attest_x509, with a precise reason; the handshake only proves
        // the key.
        let pki = TestPki::new();
        let stranger = TestPki::unrelated_ca().issue(
            "stranger",
            DeviceOptions {
                validity: dps_test_util::Validity::Expired,
                ..Default::default()
            },
        );
        let client = client_config(&pki, &rustls::version::TLS13, ClientAuth::Cert(&stranger));
        let server = handshake(server_config(&pki), client).unwrap();
        assert_eq!(server.peer_certificates().unwrap().len(), 1);
    }

    #[test]
    fn a_client_without_certificate_completes() {
        let pki = TestPki::new();
        for version in VERSIONS {
            let client = client_config(&pki, version, ClientAuth::None);
            let server = handshake(server_config(&pki), client).unwrap();
            assert!(server.peer_certificates().is_none());
        }
    }

    #[test]
    fn a_key_that_is_not_the_leafs_fails_the_handshake() {
        let pki = TestPki::new();
        let (device, other) = (pki.device("device"), pki.device("other"));
        for version in VERSIONS {
            let client = client_config(&pki, version, ClientAuth::Mismatched(&device, &other));
            let err = handshake(server_config(&pki), client).unwrap_err();
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(CertificateError::BadSignature)
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn long_chains_and_garbage_leaves_are_refused() {
        let verifier = PossessionVerifier::new(provider());
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.root_hint_subjects().is_empty());
        assert!(verifier
            .supported_verify_schemes()
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
        let pki = TestPki::new();
        let device = pki.device("d");
        let leaf = CertificateDer::from(device.der.clone());
        let intermediate = CertificateDer::from(pki.intermediate().der());
        let now = UnixTime::now();
        let four = vec![intermediate.clone(); MAX_CHAIN_CERTS - 1];
        verifier.verify_client_cert(&leaf, &four, now).unwrap();
        let five = vec![intermediate; MAX_CHAIN_CERTS];
        let err = verifier.verify_client_cert(&leaf, &five, now).unwrap_err();
        let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(cause))) = err
        else {
            panic!("{err:?}");
        };
        assert_eq!(
            cause.to_string(),
            "the client presented 6 certificates; at most 5 are accepted"
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(
            verifier.verify_client_cert(&garbage, &[], now).unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        );
    }
}
