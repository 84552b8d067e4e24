//! The development PKI that `dpsd serve` creates on first start, so the service speaks TLS
//! with no setup: a CA (`ca.pem`, the file clients trust) and an ECDSA P-256 server
//! certificate for `localhost`, `127.0.0.1`, `::1` and the configured service host.
//!
//! The CA's private key is not kept: it signs the one server certificate and is dropped. Kept,
//! anyone who read it could mint a certificate for any name that every client trusting
//! `ca.pem` accepts, for the CA's ten years; the server key, which must be kept to serve,
//! only ever vouches for this service. The price: a new server certificate (after 825 days,
//! or for a new host name) comes with a new CA that clients must trust again - delete
//! `<data>/pki/` and restart. A `ca-key.pem` left by an earlier version is deleted.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::private::{create_dir, write_file};
use crate::DpsdError;

/// Lifetime of the development CA.
const CA_DAYS: i64 = 3650;
/// Lifetime of the server certificate (825 days is the longest most TLS clients accept).
const SERVER_DAYS: i64 = 825;
/// Where versions that kept the CA's private key wrote it, under `<data>/pki/`.
const OLD_CA_KEY: &str = "ca-key.pem";

/// Paths of the PKI files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// CA certificate clients trust.
    pub ca_cert: PathBuf,
    /// Server certificate chain.
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
}

impl PkiFiles {
    /// The files under `<data>/pki/`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }
}

/// Creates the PKI unless all of it is there: a new CA and a server certificate signed by it
/// (the CA's key is then dropped). Complete files are never replaced (clients already trust
/// the CA).
pub fn ensure(dir: &Path, extra_host: &str) -> Result<PkiFiles, DpsdError> {
    create_dir(dir)?;
    let files = PkiFiles::in_dir(dir);
    let old_ca_key = dir.join(OLD_CA_KEY);
    if old_ca_key.exists() {
        std::fs::remove_file(&old_ca_key).map_err(|e| DpsdError::io(&old_ca_key, e))?;
        tracing::warn!(
            path = %old_ca_key.display(),
            "deleted the development CA's private key: dpsd no longer keeps it"
        );
    }
    if files.ca_cert.exists() && files.server_cert.exists() && files.server_key.exists() {
        return Ok(files);
    }
    if files.ca_cert.exists() {
        tracing::warn!(
            path = %files.ca_cert.display(),
            "the server certificate is missing: created a new CA, which clients must trust instead"
        );
    }
    let pki_err = |e: rcgen::Error| DpsdError::Pki(e.to_string());
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(pki_err)?;
    let ca_pem = ca_params().self_signed(&ca_key).map_err(pki_err)?.pem();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(pki_err)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(pki_err)?;
    let cert = server_params(extra_host)?
        .signed_by(&key, &issuer)
        .map_err(pki_err)?;
    write_file(&files.server_key, &key.serialize_pem())?;
    write_file(&files.server_cert, &format!("{}{ca_pem}", cert.pem()))?;
    write_file(&files.ca_cert, &ca_pem)?;
    Ok(files)
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dpsd development CA");
    dn.push(DnType::OrganizationName, "dpsd");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (from, to) = validity(CA_DAYS);
    p.not_before = from;
    p.not_after = to;
    p
}

fn server_params(extra_host: &str) -> Result<CertificateParams, DpsdError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let host = extra_host
        .rsplit_once(':')
        .map_or(extra_host, |(h, _)| h)
        .to_owned();
    if !host.is_empty() && !names.contains(&host) {
        names.push(host.clone());
    }
    let mut p = CertificateParams::default();
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(|e: rcgen::Error| DpsdError::Pki(format!("server name '{host}': {e}")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (from, to) = validity(SERVER_DAYS);
    p.not_before = from;
    p.not_after = to;
    Ok(p)
}

fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // Back-dated a day so a client with a slightly slow clock accepts it at once.
    (
        now - time::Duration::days(1),
        now + time::Duration::days(days),
    )
}
