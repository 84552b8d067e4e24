//! Test support shared by the registrar's test binaries.

use std::time::{SystemTime, UNIX_EPOCH};

use dps_attest::{attest_sas, AttestedDevice};
use dps_registrar::Registrar;
use dps_types::{IdScope, SymmetricKey};

/// The device `id` attested with a SAS token signed by `key`, valid for ten minutes.
pub fn sas_device(
    registrar: &Registrar,
    scope: &IdScope,
    id: &str,
    key: &SymmetricKey,
) -> AttestedDevice {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = dps_attest::SasToken::generate(
        &format!("{scope}/registrations/{id}"),
        key,
        Some("registration"),
        now + 600,
    );
    attest_sas(&token, scope, id, registrar.lookup(), now)
        .unwrap_or_else(|r| panic!("{:?}", r.reason))
}
