//! The X.509 fleet: the CA the enrollment group trusts, and one leaf certificate per X.509
//! device, all minted before the clock starts.
//!
//! The issuer is either given (`--x509-ca-cert`, `--x509-ca-key`: the first certificate of
//! the file signs the leaves, the last one is the group's signing certificate, those between
//! are sent by every device after its leaf) or made here: a root, and with
//! `--x509-intermediate` an intermediate under it that signs the leaves, so each device
//! presents `[leaf, intermediate]` as real fleets do while the group names the root.
//!
//! Bounded: a leaf is its DER (about 400 bytes) and its PKCS#8 P-256 key (138 bytes); at most
//! [`MAX_X509_DEVICES`] of them. Minting runs on every core and takes a few tens of
//! microseconds per leaf.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::LoadError;

/// Most X.509 devices in one run: their leaves and keys stay in memory (about 600 bytes
/// each, so 120 MB here) and minting them takes seconds before the run.
pub const MAX_X509_DEVICES: usize = 200_000;
/// Largest CA file read: a chain of a few certificates, or a key.
const MAX_CA_FILE: u64 = 64 * 1024;
/// Leaves and made CAs are valid from a little before now (clock skew) ...
const NOT_BEFORE_SKEW: Duration = Duration::hours(1);
/// ... to a day after: longer than any run ([`crate::MAX_DURATION`]).
const VALIDITY: Duration = Duration::days(1);

/// Where the issuing CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Made for this run: a root, and an intermediate under it when `intermediate`.
    Generated {
        /// Leaves are signed by an intermediate the devices send along.
        intermediate: bool,
    },
    /// Given as PEM files: the chain (issuer first, group certificate last) and the issuer's
    /// private key.
    Files {
        /// Certificates, issuer first.
        cert: PathBuf,
        /// The issuer's key.
        key: PathBuf,
    },
}

/// The issuing CA and what devices send with their leaf.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Sent after each leaf: the certificates between the leaf and the group's certificate.
    chain_tail: Vec<CertificateDer<'static>>,
    /// The certificate the enrollment group names, PEM.
    group_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("chain_tail", &self.chain_tail.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// The CA from `source`; a bad file is a clear error.
    pub fn load(source: &CaSource) -> Result<Self, LoadError> {
        match source {
            CaSource::Generated { intermediate } => Self::generate(*intermediate),
            CaSource::Files { cert, key } => Self::from_files(cert, key),
        }
    }

    fn generate(intermediate: bool) -> Result<Self, LoadError> {
        let params = ca_params("dps-loadtest root CA", BasicConstraints::Unconstrained);
        let key = p256()?;
        let root_cert = params.self_signed(&key).map_err(mint)?;
        let root = Issuer::new(params, key);
        if !intermediate {
            return Ok(Self {
                issuer: root,
                chain_tail: Vec::new(),
                group_pem: root_cert.pem(),
            });
        }
        let params = ca_params(
            "dps-loadtest intermediate CA",
            BasicConstraints::Constrained(0),
        );
        let key = p256()?;
        let cert = params.signed_by(&key, &root).map_err(mint)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain_tail: vec![cert.der().clone()],
            group_pem: root_cert.pem(),
        })
    }

    fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, LoadError> {
        let bad = |path: &Path, why: String| LoadError::DataFile {
            path: path.to_owned(),
            why,
        };
        let cert_pem = read_small(cert_path)?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert_path, format!("not PEM certificates: {e}")))?;
        let (Some(first), Some(last)) = (certs.first(), certs.last()) else {
            return Err(bad(cert_path, "no certificate".into()));
        };
        let key = KeyPair::from_pem(&read_small(key_path)?).map_err(|e| {
            bad(
                key_path,
                format!("not a PEM private key rcgen can sign with: {e}"),
            )
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(first)
            .map_err(|e| bad(cert_path, format!("not an X.509 certificate: {e}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(bad(
                key_path,
                format!(
                    "this key does not belong to the first certificate of {}",
                    cert_path.display()
                ),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(first, key)
            .map_err(|e| bad(cert_path, format!("cannot sign with it: {e}")))?;
        let group_pem = pem(last);
        let chain_tail = certs[..certs.len() - 1].to_vec();
        Ok(Self {
            issuer,
            chain_tail,
            group_pem,
        })
    }

    /// The certificate the enrollment group's `signingCertificates.primary` holds, PEM.
    pub fn group_pem(&self) -> &str {
        &self.group_pem
    }

    /// Certificates each device sends after its leaf.
    pub fn chain_tail(&self) -> &[CertificateDer<'static>] {
        &self.chain_tail
    }

    /// A fresh P-256 leaf for `registration_id` (its CN), `clientAuth`.
    pub fn mint(&self, registration_id: &str) -> Result<Leaf, LoadError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, registration_id);
        (params.not_before, params.not_after) = window();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = p256()?;
        let cert = params.signed_by(&key, &self.issuer).map_err(mint)?;
        Ok(Leaf {
            cert: cert.der().to_vec().into_boxed_slice(),
            key: key.serialize_der().into_boxed_slice(),
        })
    }
}

/// One device's certificate and key, DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    cert: Box<[u8]>,
    key: Box<[u8]>,
}

impl Leaf {
    /// The leaf certificate.
    pub fn cert(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert.to_vec())
    }

    /// Its PKCS#8 private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()))
    }
}

/// Mints a leaf for each registration id of `ids`, spread over the cores; the leaves come
/// in `ids` order.
pub async fn mint_all(ca: Arc<Ca>, ids: Vec<String>) -> Result<Vec<Leaf>, LoadError> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::task::spawn_blocking(move || {
        let chunk = ids.len().div_ceil(cores).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = ids
                .chunks(chunk)
                .map(|part| {
                    let ca = &ca;
                    scope.spawn(move || {
                        part.iter()
                            .map(|id| ca.mint(id))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut leaves = Vec::with_capacity(ids.len());
            for worker in workers {
                match worker.join() {
                    Ok(part) => leaves.extend(part?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok(leaves)
        })
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn read_small(path: &Path) -> Result<String, LoadError> {
    let read = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_CA_FILE {
        return Err(LoadError::DataFile {
            path: path.to_owned(),
            why: format!("{len} bytes is over the {MAX_CA_FILE}-byte limit"),
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn window() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - NOT_BEFORE_SKEW, now + VALIDITY)
}

fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    (params.not_before, params.not_after) = window();
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn p256() -> Result<KeyPair, LoadError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(mint)
}

fn mint(e: rcgen::Error) -> LoadError {
    LoadError::Mint(e.to_string())
}
