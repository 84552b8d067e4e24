//! Certificate parsing (`dps_attest::ParsedCertificate`): the input as certificate text (PEM or
//! bare base64, as the API and portal receive it) and as DER (as TLS delivers it), then every
//! accessor, including the `X509CertificateInfo` DPS shows.
//!
//! Checked: no panic; a certificate that parses from text parses the same from its DER; the
//! info's thumbprints are upper-case hex of the right length and serialize to JSON that reads
//! back unchanged.

#![no_main]

use dps_attest::ParsedCertificate;
use dps_types::X509CertificateInfo;
use libfuzzer_sys::fuzz_target;

fn exercise(cert: &ParsedCertificate) {
    let info = cert.info();
    assert_eq!(&info, cert.info_ref());
    assert_eq!(info.sha1_thumbprint.len(), 40);
    assert_eq!(info.sha256_thumbprint.len(), 64);
    for thumbprint in [&info.sha1_thumbprint, &info.sha256_thumbprint] {
        assert!(thumbprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
    }
    let json = serde_json::to_string(&info).expect("info serializes");
    let back: X509CertificateInfo = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("info JSON {json} does not read back: {e}"));
    assert_eq!(back, info);
    assert_eq!(cert.common_name().as_deref(), cert.common_name_ref());
    let _ = (cert.is_ca(), cert.allows_client_auth());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = ParsedCertificate::parse_der(data) {
        exercise(&cert);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cert) = ParsedCertificate::parse(text) {
        exercise(&cert);
        let again = ParsedCertificate::parse_der(cert.der())
            .unwrap_or_else(|e| panic!("its own DER does not parse: {e}"));
        assert_eq!(again, cert);
    }
});
