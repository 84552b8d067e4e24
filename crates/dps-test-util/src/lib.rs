//! Test-only helpers for the provisioning service's crates.
//!
//! What it does: [`TestPki`] builds a throw-away PKI with rcgen — a root CA and an intermediate
//! CA (both ECDSA P-256) — and issues device certificates from it ([`TestPki::device`],
//! [`TestPki::device_with`] for expired, not-yet-valid, self-signed, root-signed or RSA-2048
//! variants, or without the clientAuth extended key usage) and a TLS server certificate
//! ([`TestPki::server`]). [`TestCa`] is one CA of such a PKI, or an unrelated one
//! ([`TestPki::unrelated_ca`]) for "wrong CA" tests, or a certificate that signs without
//! being allowed to ([`TestCa::flawed_intermediate`]). [`MemoryLookup`] is an
//! `EnrollmentLookup` over plain vectors, for attestation tests and benchmarks. [`broker`] is a
//! hub back end's view of the real RabbitMQ on 127.0.0.1:5672 (queues bound to the assignment
//! feed's exchange, deliveries collected and deduplicated), for the feed's tests. [`amqp`] is a
//! DPS device over AMQP 1.0 (fe2o3-amqp's client), for the AMQP frontend's and dpsd's tests;
//! [`tls`] the rustls configurations of the device listeners' tests and their clients.
//! [`swtpm`] is a real software TPM as a TPM device (Debian's `swtpm` driven with
//! `tpm2-tools`), for the TPM attestation tests of `dps-attest` and the device frontends.
//!
//! What it must never do: be a runtime dependency of any shipped crate (only
//! `[dev-dependencies]` name it). Because it only runs inside tests, it panics on failure
//! instead of returning errors: a PKI that cannot be built is a broken test environment.
//!
//! Main types: [`TestPki`], [`TestCa`], [`IssuerFlaw`], [`DeviceCert`], [`DeviceOptions`],
//! [`MemoryLookup`].

pub mod amqp;
pub mod broker;
mod lookup;
pub mod swtpm;
pub mod tls;

pub use lookup::MemoryLookup;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RsaKeySize, PKCS_ECDSA_P256_SHA256,
    PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};

/// A device (leaf) certificate and what a device would hold with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// What a device sends in its TLS handshake: the leaf followed by every CA certificate
    /// below the root (for an intermediate-signed device: leaf + intermediate).
    pub chain_pem: String,
    /// The leaf certificate, DER.
    pub der: Vec<u8>,
    /// [`DeviceCert::chain_pem`] as DER, one entry per certificate, leaf first: what a TLS
    /// client sends.
    pub chain_der: Vec<Vec<u8>>,
}

/// Which key signs a device certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Signer {
    /// The PKI's intermediate CA (the normal case).
    #[default]
    Intermediate,
    /// The root CA directly.
    Root,
    /// The device's own key (a self-signed leaf, as individual enrollments allow).
    SelfSigned,
}

/// The device's key type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256.
    #[default]
    EcdsaP256,
    /// RSA-2048 with PKCS#1 v1.5 SHA-256 (slow to generate: about 0.1 s).
    Rsa2048,
}

/// The validity window of a device certificate, relative to now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Validity {
    /// From a day ago to a year from now.
    #[default]
    Current,
    /// From 30 days ago to a day ago.
    Expired,
    /// From a day from now to 30 days from now.
    NotYetValid,
}

impl Validity {
    fn window(self) -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        match self {
            Validity::Current => (now - Duration::days(1), now + Duration::days(365)),
            Validity::Expired => (now - Duration::days(30), now - Duration::days(1)),
            Validity::NotYetValid => (now + Duration::days(1), now + Duration::days(30)),
        }
    }
}

/// The extended key usage extension of a device certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Eku {
    /// `clientAuth` (the normal case).
    #[default]
    ClientAuth,
    /// Only `serverAuth`: an extension that is present but does not allow client
    /// authentication.
    ServerAuthOnly,
    /// No extended key usage extension at all (any use is allowed).
    Absent,
}

/// Variations of a device certificate; `DeviceOptions::default()` is what
/// [`TestPki::device`] issues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Who signs it.
    pub signer: Signer,
    /// The device key type.
    pub key: KeyKind,
    /// The validity window.
    pub validity: Validity,
    /// The extended key usage.
    pub eku: Eku,
}

/// What is wrong with an issuing certificate made by [`TestCa::flawed_intermediate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerFlaw {
    /// basicConstraints `CA:FALSE` and a leaf's keyUsage: a device certificate whose key signs
    /// other certificates anyway.
    NotCa,
    /// basicConstraints `CA:TRUE`, but a keyUsage extension without `keyCertSign`.
    NoKeyCertSign,
}

/// One certificate authority: its certificate and the key that signs with it.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// PEMs of this CA and the CAs above it, excluding the root: what a device signed by this
    /// CA appends to its own certificate.
    chain_below_root: String,
    /// The same certificates, DER.
    chain_below_root_der: Vec<Vec<u8>>,
}

impl TestCa {
    /// A self-signed root CA (ECDSA P-256) with subject `CN=<common_name>, O=DPS Test`.
    pub fn root(common_name: &str) -> Self {
        let params = ca_params(common_name, BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, ecdsa_key())
            .expect("rcgen cannot self-sign a root CA");
        Self {
            issuer,
            chain_below_root: String::new(),
            chain_below_root_der: Vec::new(),
        }
    }

    /// An intermediate CA (ECDSA P-256, path length 0) signed by `parent`.
    pub fn intermediate(common_name: &str, parent: &TestCa) -> Self {
        Self::intermediate_with_path_len(common_name, parent, 0)
    }

    /// An intermediate CA (ECDSA P-256) signed by `parent` that may have `path_len` more CA
    /// levels below it (use 1 to hang another intermediate under it).
    pub fn intermediate_with_path_len(common_name: &str, parent: &TestCa, path_len: u8) -> Self {
        Self::signed_by(
            ca_params(common_name, BasicConstraints::Constrained(path_len)),
            parent,
        )
    }

    /// A certificate signed by `parent` that may not sign certificates (`flaw` says why), but
    /// whose key is used to sign device certificates anyway: what a group certificate must
    /// never be.
    pub fn flawed_intermediate(common_name: &str, parent: &TestCa, flaw: IssuerFlaw) -> Self {
        let mut params = ca_params(common_name, BasicConstraints::Constrained(0));
        match flaw {
            IssuerFlaw::NotCa => {
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            }
            IssuerFlaw::NoKeyCertSign => {
                params.key_usages =
                    vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
            }
        }
        Self::signed_by(params, parent)
    }

    /// An issuing certificate with `params`, signed by `parent`.
    fn signed_by(params: CertificateParams, parent: &TestCa) -> Self {
        let issuer = CertifiedIssuer::signed_by(params, ecdsa_key(), &parent.issuer)
            .expect("rcgen cannot sign an intermediate certificate");
        let chain_below_root = format!("{}{}", issuer.pem(), parent.chain_below_root);
        let mut chain_below_root_der = vec![issuer.der().to_vec()];
        chain_below_root_der.extend(parent.chain_below_root_der.iter().cloned());
        Self {
            issuer,
            chain_below_root,
            chain_below_root_der,
        }
    }

    /// This CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// This CA's certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// Issues a device certificate for `common_name` with this CA as the issuer. `options.signer`
    /// is ignored: the signer is this CA.
    pub fn issue(&self, common_name: &str, options: DeviceOptions) -> DeviceCert {
        let key = device_key(options.key);
        let cert = leaf_params(common_name, options.validity, options.eku)
            .signed_by(&key, &self.issuer)
            .expect("rcgen cannot sign a device certificate");
        self.leaf(&cert, &key)
    }

    /// Issues a TLS server certificate (ECDSA P-256, serverAuth) for `dns_name`, with the name
    /// as CN and as a DNS subject alternative name.
    pub fn issue_server(&self, dns_name: &str) -> DeviceCert {
        let key = ecdsa_key();
        let mut params = CertificateParams::new(vec![dns_name.to_owned()])
            .expect("rcgen refuses the server DNS name");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, dns_name);
        (params.not_before, params.not_after) = Validity::Current.window();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("rcgen cannot sign a server certificate");
        self.leaf(&cert, &key)
    }

    fn leaf(&self, cert: &rcgen::Certificate, key: &KeyPair) -> DeviceCert {
        let mut chain_der = vec![cert.der().to_vec()];
        chain_der.extend(self.chain_below_root_der.iter().cloned());
        DeviceCert {
            chain_pem: format!("{}{}", cert.pem(), self.chain_below_root),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            chain_der,
        }
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A root CA `CN=DPS Test Root CA` and an intermediate `CN=DPS Test Intermediate CA` signed by
/// it; every call to [`TestPki::new`] makes fresh keys, so two `TestPki`s do not trust each
/// other.
#[derive(Debug)]
pub struct TestPki {
    root: TestCa,
    intermediate: TestCa,
}

impl TestPki {
    /// Generates the root and the intermediate.
    pub fn new() -> Self {
        let root = TestCa::root("DPS Test Root CA");
        let intermediate = TestCa::intermediate("DPS Test Intermediate CA", &root);
        Self { root, intermediate }
    }

    /// A current ECDSA P-256 device certificate `CN=<common_name>` signed by the intermediate,
    /// with the clientAuth extended key usage.
    pub fn device(&self, common_name: &str) -> DeviceCert {
        self.device_with(common_name, DeviceOptions::default())
    }

    /// A device certificate with the given variations.
    pub fn device_with(&self, common_name: &str, options: DeviceOptions) -> DeviceCert {
        match options.signer {
            Signer::Intermediate => self.intermediate.issue(common_name, options),
            Signer::Root => self.root.issue(common_name, options),
            Signer::SelfSigned => self_signed_device(common_name, options),
        }
    }

    /// A TLS server certificate for `dns_name` signed by the intermediate; a client trusts it
    /// with [`TestPki::root_pem`] as its root.
    pub fn server(&self, dns_name: &str) -> DeviceCert {
        self.intermediate.issue_server(dns_name)
    }

    /// The root CA.
    pub fn root(&self) -> &TestCa {
        &self.root
    }

    /// The intermediate CA.
    pub fn intermediate(&self) -> &TestCa {
        &self.intermediate
    }

    /// The root CA certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// The intermediate CA certificate, PEM.
    pub fn intermediate_pem(&self) -> String {
        self.intermediate.pem()
    }

    /// A fresh root CA `CN=DPS Unrelated Root CA` that has nothing to do with any `TestPki`.
    pub fn unrelated_ca() -> TestCa {
        TestCa::root("DPS Unrelated Root CA")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn ecdsa_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("aws-lc-rs cannot generate a P-256 key")
}

fn device_key(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::EcdsaP256 => ecdsa_key(),
        KeyKind::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
            .expect("aws-lc-rs cannot generate an RSA-2048 key"),
    }
}

fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "DPS Test");
    let (not_before, not_after) = Validity::Current.window();
    params.not_before = not_before;
    params.not_after = not_after + Duration::days(365);
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn leaf_params(common_name: &str, validity: Validity, eku: Eku) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    (params.not_before, params.not_after) = validity.window();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match eku {
        Eku::ClientAuth => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Eku::ServerAuthOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Eku::Absent => Vec::new(),
    };
    params.use_authority_key_identifier_extension = true;
    params
}

fn self_signed_device(common_name: &str, options: DeviceOptions) -> DeviceCert {
    let key = device_key(options.key);
    let mut params = leaf_params(common_name, options.validity, options.eku);
    // A self-signed certificate has no separate authority to point at.
    params.use_authority_key_identifier_extension = false;
    let cert = params
        .self_signed(&key)
        .expect("rcgen cannot self-sign a device certificate");
    DeviceCert {
        cert_pem: cert.pem(),
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
        chain_der: vec![cert.der().to_vec()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_blocks(pem: &str) -> usize {
        pem.matches("-----BEGIN CERTIFICATE-----").count()
    }

    #[test]
    fn device_chain_is_leaf_then_intermediate() {
        let pki = TestPki::new();
        let device = pki.device("my-device");
        assert_eq!(pem_blocks(&device.cert_pem), 1);
        assert_eq!(pem_blocks(&device.chain_pem), 2);
        assert!(device.chain_pem.starts_with(&device.cert_pem));
        assert!(device.chain_pem.ends_with(&pki.intermediate_pem()));
        assert!(device.key_pem.contains("PRIVATE KEY"));
        assert!(!device.der.is_empty());
        assert_eq!(
            device.chain_der,
            vec![device.der.clone(), pki.intermediate().der()]
        );
    }

    #[test]
    fn variants_build() {
        let pki = TestPki::new();
        let root_signed = pki.device_with(
            "d1",
            DeviceOptions {
                signer: Signer::Root,
                ..Default::default()
            },
        );
        assert_eq!(pem_blocks(&root_signed.chain_pem), 1);
        let self_signed = pki.device_with(
            "d2",
            DeviceOptions {
                signer: Signer::SelfSigned,
                validity: Validity::Expired,
                ..Default::default()
            },
        );
        assert_eq!(self_signed.chain_pem, self_signed.cert_pem);
        let rsa = pki.device_with(
            "d3",
            DeviceOptions {
                key: KeyKind::Rsa2048,
                ..Default::default()
            },
        );
        assert!(rsa.der.len() > root_signed.der.len(), "RSA keys are bigger");
        assert_ne!(TestPki::unrelated_ca().pem(), pki.root_pem());
        let no_eku = pki.device_with(
            "d4",
            DeviceOptions {
                eku: Eku::Absent,
                ..Default::default()
            },
        );
        assert!(
            no_eku.der.len() < pki.device("d0").der.len(),
            "no EKU extension"
        );
        let server = pki.server("localhost");
        assert_eq!(server.chain_der.len(), 2);
        let second = TestCa::intermediate_with_path_len("Second", pki.root(), 1);
        let third = TestCa::intermediate("Third", &second);
        let deep = third.issue("d5", DeviceOptions::default());
        assert_eq!(deep.chain_der.len(), 3);
        assert_eq!(pem_blocks(&deep.chain_pem), 3);
        for flaw in [IssuerFlaw::NotCa, IssuerFlaw::NoKeyCertSign] {
            let flawed = TestCa::flawed_intermediate("Flawed", pki.root(), flaw);
            let issued = flawed.issue("d6", DeviceOptions::default());
            assert_eq!(issued.chain_der, vec![issued.der.clone(), flawed.der()]);
        }
    }
}
