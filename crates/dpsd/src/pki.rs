//! The development PKI that `dpsd serve` creates on first start, so the service speaks TLS
//! with no setup: a CA (`ca.pem`, the file clients trust) and an ECDSA P-256 server
//! certificate for `localhost`, `127.0.0.1`, `::1` and the configured service host.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::DpsdError;

/// Lifetime of the development CA.
const CA_DAYS: i64 = 3650;
/// Lifetime of the server certificate (825 days is the longest most TLS clients accept).
const SERVER_DAYS: i64 = 825;

/// Paths of the PKI files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// CA certificate clients trust.
    pub ca_cert: PathBuf,
    /// CA private key (signs the server certificate).
    pub ca_key: PathBuf,
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
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }
}

/// Creates whatever is missing: a CA when there is none, a server certificate signed by the
/// CA when there is none. Existing files are never replaced (clients already trust the CA).
pub fn ensure(dir: &Path, extra_host: &str) -> Result<PkiFiles, DpsdError> {
    std::fs::create_dir_all(dir).map_err(|e| DpsdError::io(dir, e))?;
    let files = PkiFiles::in_dir(dir);
    let pki_err = |e: rcgen::Error| DpsdError::Pki(e.to_string());

    if !files.ca_cert.exists() || !files.ca_key.exists() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(pki_err)?;
        let cert = ca_params().self_signed(&key).map_err(pki_err)?;
        write_secret(&files.ca_key, &key.serialize_pem())?;
        write(&files.ca_cert, &cert.pem())?;
        // A new CA invalidates any server certificate signed by an old one.
        let _ = std::fs::remove_file(&files.server_cert);
    }
    if !files.server_cert.exists() || !files.server_key.exists() {
        let ca_pem = read(&files.ca_cert)?;
        let ca_key = KeyPair::from_pem(&read(&files.ca_key)?).map_err(pki_err)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(pki_err)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(pki_err)?;
        let cert = server_params(extra_host)?
            .signed_by(&key, &issuer)
            .map_err(pki_err)?;
        write_secret(&files.server_key, &key.serialize_pem())?;
        write(&files.server_cert, &format!("{}{}", cert.pem(), ca_pem))?;
    }
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

fn read(path: &Path) -> Result<String, DpsdError> {
    std::fs::read_to_string(path).map_err(|e| DpsdError::io(path, e))
}

fn write(path: &Path, text: &str) -> Result<(), DpsdError> {
    std::fs::write(path, text).map_err(|e| DpsdError::io(path, e))
}

/// Writes a file only the owner can read (private keys, credentials).
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), DpsdError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DpsdError::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| DpsdError::io(path, e))
}
