//! The baselines' throw-away PKI: a root CA (ECDSA P-256, like dpsd's development CA), a
//! server certificate for `localhost` and 127.0.0.1 signed by it, and one client certificate
//! for the mutual-TLS and MQTT baselines. Minted before any clock starts, kept in memory.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use crate::LoadError;

/// The name the server certificate holds and the clients check.
pub const SERVER_NAME: &str = "localhost";

/// PEM text of everything a baseline needs.
#[derive(Debug, Clone)]
pub struct BaselinePki {
    /// The CA certificate both sides trust.
    pub ca_pem: String,
    /// Server certificate (`localhost`, 127.0.0.1).
    pub server_cert_pem: String,
    /// Its PKCS#8 key.
    pub server_key_pem: String,
    /// A client certificate (clientAuth) from the same CA.
    pub client_cert_pem: String,
    /// Its PKCS#8 key.
    pub client_key_pem: String,
}

impl BaselinePki {
    /// Mints the CA and both leaves.
    pub fn mint() -> Result<Self, LoadError> {
        let failed = |source: rcgen::Error| LoadError::Setup {
            what: "minting the baseline certificates",
            source: Box::new(source),
        };
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name("dps-loadtest baseline CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(ca, key().map_err(failed)?).map_err(failed)?;

        let leaf = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name = name(cn);
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![eku];
            let key = key()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()],
            SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .map_err(failed)?;
        let (client_cert_pem, client_key_pem) = leaf(
            Vec::new(),
            "baseline-device",
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .map_err(failed)?;
        Ok(Self {
            ca_pem: issuer.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn key() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
}
