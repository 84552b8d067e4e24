//! Symmetric-key attestation (dps-protocol.md §2.2, §9.1): a device's SAS token against its
//! individual enrollment's keys, or against the device keys derived from each symmetric-key
//! enrollment group's keys.

use std::ops::ControlFlow;
use std::sync::Arc;

use dps_types::{
    Attestation, AttestationType, EnrollmentLookup, IdScope, RegistrationId, SymmetricKey,
    SymmetricKeyAttestation,
};

use crate::refusal::{parse_claimed_id, quoted};
use crate::{
    derive_device_key, AttestedDevice, FailureReason, MatchedEnrollment, Refusal, SasToken,
};

/// The path between ID scope and registration id in a device token's `sr`.
const REGISTRATIONS: &str = "/registrations/";

/// Attests a device by the SAS token it sent as password (MQTT) or `Authorization` (HTTP).
///
/// Checks, in order: the token parses; the claimed registration id is valid; the token has
/// not expired at `now_unix` (seconds since the Unix epoch, beyond
/// [`crate::sas::CLOCK_SKEW_SECS`]); its decoded `sr` is `{id_scope}/registrations/{claimed id}`
/// (any letter case). Then the individual enrollment with that id, if there is one, decides
/// alone: a symmetric-key enrollment whose primary or secondary key signed the token (enabled
/// or not), any other attestation type is refused. Without one, each symmetric-key group is
/// tried in lookup order with the device keys derived from its primary and secondary key for
/// the id as the device spelled it; the first that verifies wins. The groups are visited in
/// place ([`EnrollmentLookup::visit_symmetric_key_groups`]): nothing is collected or cloned
/// per group, only the group that matched.
///
/// Cost: one HMAC set per candidate key; with `g` symmetric-key groups a refused token costs
/// up to `4g` (two derived keys and, to name [`FailureReason::DerivedKeyExpected`], two group
/// keys), bounded by the number of groups the service holds.
pub fn attest_sas(
    password: &str,
    id_scope: &IdScope,
    claimed_registration_id: &str,
    lookup: &dyn EnrollmentLookup,
    now_unix: i64,
) -> Result<AttestedDevice, Refusal> {
    let (token, registration_id) =
        checked_device_token(password, id_scope, claimed_registration_id, now_unix)?;
    let claimed = registration_id.as_str();

    if let Some(enrollment) = lookup.enrollment(claimed) {
        let Attestation::SymmetricKey(keys) = &enrollment.attestation else {
            return Err(Refusal::new(
                FailureReason::WrongAttestationType,
                format!(
                    "individual enrollment {} uses {} attestation, but the device sent a SAS \
                     token",
                    quoted(enrollment.registration_id.as_str()),
                    enrollment.attestation.kind()
                ),
            ));
        };
        if !signed_with_any(&token, keys_of(keys)) {
            return Err(Refusal::new(
                FailureReason::SasSignatureMismatch,
                format!(
                    "the token is signed with neither the primary nor the secondary key of \
                     individual enrollment {}",
                    quoted(enrollment.registration_id.as_str())
                ),
            ));
        }
        return Ok(AttestedDevice::new(
            registration_id,
            MatchedEnrollment::Individual(enrollment),
            AttestationType::SymmetricKey,
            None,
            None,
        ));
    }

    let mut groups = 0usize;
    let mut matched = None;
    lookup.visit_symmetric_key_groups(&mut |group| {
        let Attestation::SymmetricKey(keys) = &group.attestation else {
            return ControlFlow::Continue(());
        };
        groups += 1;
        let mut derived = keys_of(keys).map(|k| derive_device_key(k, claimed));
        if derived.any(|key| token.verify_signature(&key).is_ok()) {
            matched = Some(Arc::clone(group));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if let Some(group) = matched {
        return Ok(AttestedDevice::new(
            registration_id,
            MatchedEnrollment::Group(group),
            AttestationType::SymmetricKey,
            None,
            None,
        ));
    }
    if groups == 0 {
        return Err(Refusal::new(
            FailureReason::NoEnrollment,
            format!(
                "no individual enrollment has registration id {} and there is no \
                 symmetric-key enrollment group",
                quoted(claimed)
            ),
        ));
    }
    // Only a refused token pays for this second walk, to name the group whose own key signed.
    let mut signed_by_group = None;
    lookup.visit_symmetric_key_groups(&mut |group| match &group.attestation {
        Attestation::SymmetricKey(keys) if signed_with_any(&token, keys_of(keys)) => {
            signed_by_group = Some(Arc::clone(group));
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    if let Some(group) = signed_by_group {
        return Err(Refusal::new(
            FailureReason::DerivedKeyExpected,
            format!(
                "the token is signed with a key of enrollment group {} itself; sign with \
                 HMAC-SHA256(group key, {})",
                quoted(group.enrollment_group_id.as_str()),
                quoted(claimed)
            ),
        ));
    }
    Err(Refusal::new(
        FailureReason::SasSignatureMismatch,
        format!(
            "no individual enrollment has registration id {}, and the token is signed with no \
             device key derived from the {groups} symmetric-key enrollment groups",
            quoted(claimed),
        ),
    ))
}

/// The checks every device token passes before a key is tried, for symmetric keys and TPM
/// alike: the token parses; the claimed registration id is valid; the token has not expired
/// at `now_unix` (beyond [`crate::sas::CLOCK_SKEW_SECS`]); its decoded `sr` is
/// `{id_scope}/registrations/{claimed id}` (any letter case).
pub(crate) fn checked_device_token(
    password: &str,
    id_scope: &IdScope,
    claimed_registration_id: &str,
    now_unix: i64,
) -> Result<(SasToken, RegistrationId), Refusal> {
    let token = SasToken::parse(password)
        .map_err(|e| Refusal::new(FailureReason::SasMalformed, e.to_string()))?;
    let registration_id = parse_claimed_id(claimed_registration_id)?;
    token
        .check_expiry(now_unix)
        .map_err(|e| Refusal::new(FailureReason::SasExpired, e.to_string()))?;
    let claimed = registration_id.as_str();
    if !is_device_resource(token.resource_decoded(), id_scope, claimed) {
        return Err(Refusal::new(
            FailureReason::SasWrongResource,
            format!(
                "the token's sr is {}; this device must sign {}",
                quoted(token.resource_decoded()),
                quoted(&format!("{}{REGISTRATIONS}{claimed}", id_scope.as_str()))
            ),
        ));
    }
    Ok((token, registration_id))
}

/// Whether `resource` is `{scope}/registrations/{registration_id}`, ignoring ASCII case.
fn is_device_resource(resource: &str, scope: &IdScope, registration_id: &str) -> bool {
    let resource = resource.as_bytes();
    let parts = [
        scope.as_str().as_bytes(),
        REGISTRATIONS.as_bytes(),
        registration_id.as_bytes(),
    ];
    if resource.len() != parts.iter().map(|p| p.len()).sum::<usize>() {
        return false;
    }
    let mut rest = resource;
    parts.iter().all(|part| {
        let (head, tail) = rest.split_at(part.len());
        rest = tail;
        head.eq_ignore_ascii_case(part)
    })
}

/// The primary and secondary key, those present.
fn keys_of(keys: &SymmetricKeyAttestation) -> impl Iterator<Item = &SymmetricKey> {
    keys.primary_key.iter().chain(keys.secondary_key.iter())
}

/// Whether any of `keys` signed the token; stops at the first that did.
fn signed_with_any<'k>(token: &SasToken, keys: impl IntoIterator<Item = &'k SymmetricKey>) -> bool {
    keys.into_iter()
        .any(|key| token.verify_signature(key).is_ok())
}

#[cfg(test)]
mod tests;
