//! Service authentication exactly as DPS does it: `Authorization: SharedAccessSignature
//! sr=<host>&sig=<sig>&se=<expiry>&skn=<policy>`, checked against the configured shared access
//! policies, then the policy's rights against the operation.
//!
//! Nothing here logs or echoes the token, the signature or a key.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use dps_attest::sas::SasToken;
use dps_types::{SymmetricKey, Timestamp};

use crate::error::truncated;
use crate::{ApiError, ApiState};

/// The access rights of a shared access policy (DPS `how-to-control-access.md`), a small set
/// of flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    /// No right at all.
    pub const NONE: Rights = Rights(0);
    /// Read individual enrollments and enrollment groups.
    pub const ENROLLMENT_READ: Rights = Rights(1);
    /// Create, replace and delete individual enrollments and enrollment groups.
    pub const ENROLLMENT_WRITE: Rights = Rights(1 << 1);
    /// Read device registration states.
    pub const REGISTRATION_STATUS_READ: Rights = Rights(1 << 2);
    /// Delete device registration states.
    pub const REGISTRATION_STATUS_WRITE: Rights = Rights(1 << 3);
    /// Change the service configuration (no operation of this API needs it).
    pub const SERVICE_CONFIG: Rights = Rights(1 << 4);
    /// Every right, as the default `provisioningserviceowner` policy has.
    pub const ALL: Rights = Rights(0b1_1111);

    /// Each right with its DPS name, in the docs' order.
    const NAMED: [(Rights, &'static str); 5] = [
        (Rights::SERVICE_CONFIG, "ServiceConfig"),
        (Rights::ENROLLMENT_READ, "EnrollmentRead"),
        (Rights::ENROLLMENT_WRITE, "EnrollmentWrite"),
        (Rights::REGISTRATION_STATUS_READ, "RegistrationStatusRead"),
        (Rights::REGISTRATION_STATUS_WRITE, "RegistrationStatusWrite"),
    ];

    /// Both sets together.
    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    /// Whether every right of `other` is in `self`.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` share a right.
    pub const fn intersects(self, other: Rights) -> bool {
        self.0 & other.0 != 0
    }

    /// Parses a list such as `"EnrollmentRead, EnrollmentWrite"` (commas and/or spaces,
    /// names in any letter case, as the ARM API and the portal spell them).
    pub fn parse_list(text: &str) -> Result<Rights, ApiError> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|name| !name.is_empty())
            .try_fold(Rights::NONE, |acc, name| {
                Self::NAMED
                    .iter()
                    .find(|(_, known)| known.eq_ignore_ascii_case(name))
                    .map(|(right, _)| acc.union(*right))
                    .ok_or_else(|| ApiError::UnknownRight(truncated(name)))
            })
    }
}

impl std::ops::BitOr for Rights {
    type Output = Rights;
    fn bitor(self, other: Rights) -> Rights {
        self.union(other)
    }
}

impl std::str::FromStr for Rights {
    type Err = ApiError;
    fn from_str(text: &str) -> Result<Rights, ApiError> {
        Rights::parse_list(text)
    }
}

impl std::fmt::Display for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = Self::NAMED
            .iter()
            .filter(|(right, _)| self.contains(*right))
            .map(|(_, name)| *name);
        if let Some(first) = names.next() {
            f.write_str(first)?;
        }
        names.try_for_each(|name| write!(f, ", {name}"))
    }
}

impl std::fmt::Debug for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rights({self})")
    }
}

/// A named pair of keys with rights, like DPS's `provisioningserviceowner`. `Debug` does not
/// show the keys.
#[derive(Debug, Clone)]
pub struct SharedAccessPolicy {
    /// The name tokens carry in `skn` (compared case-insensitively).
    pub name: String,
    /// The primary key.
    pub primary_key: SymmetricKey,
    /// The secondary key, for rotation.
    pub secondary_key: Option<SymmetricKey>,
    /// What tokens signed with these keys may do.
    pub rights: Rights,
}

/// What an operation needs: any one of `ANY_OF` (a write right also allows reading).
pub(crate) trait Permission {
    /// The rights that allow the operation.
    const ANY_OF: Rights;
    /// The right named in the refusal.
    const NAME: &'static str;
}

/// Read enrollments and groups.
pub(crate) struct EnrollmentRead;
impl Permission for EnrollmentRead {
    const ANY_OF: Rights = Rights::ENROLLMENT_READ.union(Rights::ENROLLMENT_WRITE);
    const NAME: &'static str = "EnrollmentRead";
}

/// Write enrollments and groups.
pub(crate) struct EnrollmentWrite;
impl Permission for EnrollmentWrite {
    const ANY_OF: Rights = Rights::ENROLLMENT_WRITE;
    const NAME: &'static str = "EnrollmentWrite";
}

/// Read registration states.
pub(crate) struct RegistrationStatusRead;
impl Permission for RegistrationStatusRead {
    const ANY_OF: Rights =
        Rights::REGISTRATION_STATUS_READ.union(Rights::REGISTRATION_STATUS_WRITE);
    const NAME: &'static str = "RegistrationStatusRead";
}

/// Delete registration states.
pub(crate) struct RegistrationStatusWrite;
impl Permission for RegistrationStatusWrite {
    const ANY_OF: Rights = Rights::REGISTRATION_STATUS_WRITE;
    const NAME: &'static str = "RegistrationStatusWrite";
}

/// Proof that the request carried a valid token of a policy with permission `P`. Handlers take
/// it as their first argument, so no handler runs for an unauthenticated request.
pub(crate) struct Authorized<P>(PhantomData<P>);

impl<P: Permission> FromRequestParts<ApiState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let now = Timestamp::now().unix();
        authorize(
            &parts.headers,
            parts.uri.path(),
            state.service_host(),
            state.policies(),
            P::ANY_OF,
            P::NAME,
            now,
        )?;
        Ok(Authorized(PhantomData))
    }
}

/// The whole check, without I/O: token syntax, policy, signature (primary then secondary
/// key, over the literal `sr`), expiry, audience, rights.
fn authorize<'p>(
    headers: &HeaderMap,
    path: &str,
    host: &str,
    policies: &'p [SharedAccessPolicy],
    any_of: Rights,
    right_name: &'static str,
    now_unix: i64,
) -> Result<&'p SharedAccessPolicy, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingAuthorization)?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::NotSharedAccessSignature)?;
    if !text.trim_start().starts_with("SharedAccessSignature ") {
        return Err(ApiError::NotSharedAccessSignature);
    }
    let token = SasToken::parse(text.trim()).map_err(ApiError::MalformedToken)?;
    let name = token.key_name().ok_or(ApiError::MissingPolicyName)?;
    let policy = policies
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| ApiError::UnknownPolicy(truncated(name)))?;
    if let Err(primary_failure) = token.verify_signature(&policy.primary_key) {
        let secondary_ok = policy
            .secondary_key
            .as_ref()
            .is_some_and(|key| token.verify_signature(key).is_ok());
        if !secondary_ok {
            return Err(ApiError::SignatureMismatch {
                policy: policy.name.clone(),
                source: primary_failure,
            });
        }
    }
    token
        .check_expiry(now_unix)
        .map_err(|source| ApiError::TokenExpired {
            at: Timestamp::from_unix(token.expiry())
                .map_or_else(|_| token.expiry().to_string(), |t| t.to_string()),
            source,
        })?;
    let audience = token.resource_decoded();
    if !audience_matches(audience, host, path) {
        return Err(ApiError::AudienceMismatch {
            audience: truncated(audience),
            expected: truncated(&format!("{host}{path}")),
        });
    }
    if !policy.rights.intersects(any_of) {
        return Err(ApiError::MissingRight {
            policy: policy.name.clone(),
            right: right_name,
        });
    }
    Ok(policy)
}

/// Whether a token for `audience` (the decoded `sr`) covers `path` on the service `host`.
///
/// Rules (DPS: "URI prefix (by segment) of the endpoints"): an optional `http://` or
/// `https://` is ignored; the host compares case-insensitively, and a configured
/// `host:port` also accepts the bare `host` (clients sign the host name they were given,
/// which may omit a default port); anything after the host must be a whole-segment prefix
/// of the requested path.
fn audience_matches(audience: &str, host: &str, path: &str) -> bool {
    let lower = audience.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.to_ascii_lowercase();
    let host_without_port = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    if authority != host && authority != host_without_port {
        return false;
    }
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    let path = path.trim_start_matches('/').to_ascii_lowercase();
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const HOST: &str = "localhost:8443";
    const NOW: i64 = 1_700_000_000;

    fn policy(name: &str, rights: Rights) -> SharedAccessPolicy {
        SharedAccessPolicy {
            name: name.into(),
            primary_key: SymmetricKey::generate(),
            secondary_key: Some(SymmetricKey::generate()),
            rights,
        }
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !token.is_empty() {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(token).unwrap());
        }
        h
    }

    fn check(
        token: &str,
        policies: &[SharedAccessPolicy],
        any_of: Rights,
    ) -> Result<String, String> {
        authorize(
            &headers(token),
            "/enrollments/dev-1",
            HOST,
            policies,
            any_of,
            "EnrollmentWrite",
            NOW,
        )
        .map(|p| p.name.clone())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn rights_parse_and_display() {
        let r = Rights::parse_list("enrollmentread, EnrollmentWrite").unwrap();
        assert_eq!(r, Rights::ENROLLMENT_READ | Rights::ENROLLMENT_WRITE);
        assert_eq!(r.to_string(), "EnrollmentRead, EnrollmentWrite");
        assert_eq!(Rights::parse_list("").unwrap(), Rights::NONE);
        assert!(Rights::ALL.contains(Rights::SERVICE_CONFIG | Rights::REGISTRATION_STATUS_WRITE));
        let err = Rights::parse_list("EnrollmentRead, DeviceConnect").unwrap_err();
        assert!(err.to_string().contains("'DeviceConnect'"), "{err}");
        assert_eq!(
            "ServiceConfig".parse::<Rights>().unwrap(),
            Rights::SERVICE_CONFIG
        );
    }

    #[test]
    fn accepts_primary_and_secondary_keys_any_policy_case() {
        let owner = policy("provisioningserviceowner", Rights::ALL);
        let by_primary = SasToken::generate(
            HOST,
            &owner.primary_key,
            Some("ProvisioningServiceOwner"),
            NOW + 60,
        );
        assert_eq!(
            check(
                &by_primary,
                std::slice::from_ref(&owner),
                Rights::ENROLLMENT_WRITE
            )
            .unwrap(),
            owner.name
        );
        let secondary = owner.secondary_key.clone().unwrap();
        let by_secondary =
            SasToken::generate(HOST, &secondary, Some("provisioningserviceowner"), NOW + 60);
        assert!(check(&by_secondary, &[owner], Rights::ENROLLMENT_WRITE).is_ok());
    }

    #[test]
    fn each_failure_names_its_cause() {
        let p = policy("owner", Rights::ENROLLMENT_READ);
        let policies = [p.clone()];
        assert_eq!(
            check("", &[], Rights::ALL).unwrap_err(),
            "the Authorization header is missing"
        );
        let err = check("Bearer abc", &policies, Rights::ALL).unwrap_err();
        assert!(err.contains("not a SharedAccessSignature"), "{err}");
        let err = check("SharedAccessSignature garbage", &policies, Rights::ALL).unwrap_err();
        assert!(err.contains("malformed"), "{err}");

        let no_skn = SasToken::generate(HOST, &p.primary_key, None, NOW + 60);
        assert!(check(&no_skn, &policies, Rights::ALL)
            .unwrap_err()
            .contains("no skn"));
        let unknown = SasToken::generate(HOST, &p.primary_key, Some("nobody"), NOW + 60);
        assert_eq!(
            check(&unknown, &policies, Rights::ALL).unwrap_err(),
            "unknown shared access policy 'nobody'"
        );
        let wrong_key =
            SasToken::generate(HOST, &SymmetricKey::generate(), Some("owner"), NOW + 60);
        assert_eq!(
            check(&wrong_key, &policies, Rights::ALL).unwrap_err(),
            "signature mismatch for policy 'owner'"
        );
        let expired = SasToken::generate(HOST, &p.primary_key, Some("owner"), NOW - 3600);
        let err = check(&expired, &policies, Rights::ALL).unwrap_err();
        assert!(err.contains("expired at 2023-11-14T21:13:20"), "{err}");
        let elsewhere =
            SasToken::generate("other.example.com", &p.primary_key, Some("owner"), NOW + 60);
        let err = check(&elsewhere, &policies, Rights::ALL).unwrap_err();
        assert!(
            err.contains("audience mismatch") && err.contains("other.example.com"),
            "{err}"
        );
        let fine = SasToken::generate(HOST, &p.primary_key, Some("owner"), NOW + 60);
        assert_eq!(
            check(&fine, &policies, Rights::ENROLLMENT_WRITE).unwrap_err(),
            "policy 'owner' lacks the EnrollmentWrite right"
        );
        assert!(check(
            &fine,
            &policies,
            Rights::ENROLLMENT_READ | Rights::ENROLLMENT_WRITE
        )
        .is_ok());
    }

    #[test]
    fn audience_rules() {
        let path = "/enrollments/dev-1";
        assert!(audience_matches("localhost:8443", HOST, path));
        assert!(audience_matches("LOCALHOST:8443", HOST, path));
        assert!(audience_matches("https://localhost:8443", HOST, path));
        assert!(audience_matches("http://localhost:8443/", HOST, path));
        assert!(audience_matches("localhost", HOST, path));
        assert!(audience_matches("localhost:8443/enrollments", HOST, path));
        assert!(audience_matches(
            "localhost:8443/Enrollments/dev-1",
            HOST,
            path
        ));
        assert!(!audience_matches("localhost:8443/enroll", HOST, path));
        assert!(!audience_matches(
            "localhost:8443/registrations",
            HOST,
            path
        ));
        assert!(!audience_matches("localhost:9999", HOST, path));
        assert!(!audience_matches("localhost.evil.com", HOST, path));
        assert!(!audience_matches("", HOST, path));
    }
}
