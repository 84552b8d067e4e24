//! Sign-in, sessions and CSRF.
//!
//! A session is a random 256-bit id in an `HttpOnly; Secure; SameSite=Strict` cookie, mapped
//! server-side to the policy that signed in, its rights and a per-session CSRF token. The map
//! is bounded in total and per policy (least recently used evicted, from the signing-in policy
//! or else from the policy holding the most) and sessions idle too long are dropped. Failed
//! sign-ins are throttled per source address ([`crate::throttle`]). [`Need`] says which rights
//! a page asks for, the same as the API asks for the same data. The sign-in
//! form itself is protected by a double-submit token (cookie and hidden field must agree), so
//! another site cannot sign a browser in to an account of its choosing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use dps_api::Rights;
use dps_types::SymmetricKey;
use maud::html;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::form::FormData;
use crate::html::{page, Page, PortalError};
use crate::throttle::Source;
use crate::{PortalState, BASE};

/// Removes the least recently used session of `policy`.
fn evict_oldest(map: &mut HashMap<String, Entry>, policy: &str) {
    let oldest = map
        .iter()
        .filter(|(_, e)| e.policy == policy)
        .min_by_key(|(_, e)| e.last_seen)
        .map(|(k, _)| k.clone());
    if let Some(oldest) = oldest {
        map.remove(&oldest);
    }
}

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "dps_portal_session";
/// The sign-in form's double-submit cookie.
pub(crate) const SIGNIN_COOKIE: &str = "dps_portal_signin";
/// The hidden form field that carries the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";

/// 32 random bytes from the thread's CSPRNG, hex-encoded.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Clone)]
struct Entry {
    policy: String,
    rights: Rights,
    csrf: String,
    last_seen: Instant,
}

/// The server-side session map: bounded in total and per policy.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    idle: Duration,
    max: usize,
    max_per_policy: usize,
}

impl Sessions {
    pub(crate) fn new(idle: Duration, max: usize, max_per_policy: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle,
            max: max.max(1),
            max_per_policy: max_per_policy.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a consistent map (every update is one call).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; returns its id. Makes room first: when `policy` already holds its
    /// share, its least recently used session goes; when the whole table is full, idle
    /// sessions go, then the least recently used session of the policy holding the most. So
    /// signing in again and again with one policy only ever pushes out that policy's sessions.
    pub(crate) fn create(&self, policy: &str, rights: Rights, now: Instant) -> String {
        let id = random_token();
        let mut map = self.lock();
        map.retain(|_, e| now.duration_since(e.last_seen) < self.idle);
        let held = map.values().filter(|e| e.policy == policy).count();
        if held >= self.max_per_policy {
            evict_oldest(&mut map, policy);
        } else if map.len() >= self.max {
            let mut per_policy: HashMap<&str, usize> = HashMap::new();
            for e in map.values() {
                *per_policy.entry(e.policy.as_str()).or_default() += 1;
            }
            let largest = per_policy
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(p, _)| p.to_owned());
            if let Some(largest) = largest {
                evict_oldest(&mut map, &largest);
            }
        }
        map.insert(
            id.clone(),
            Entry {
                policy: policy.to_owned(),
                rights,
                csrf: random_token(),
                last_seen: now,
            },
        );
        id
    }

    /// The live session with this id, marked as used at `now`; an idle one is dropped.
    pub(crate) fn touch(&self, id: &str, now: Instant) -> Option<Auth> {
        let mut map = self.lock();
        let entry = map.get_mut(id)?;
        if now.duration_since(entry.last_seen) >= self.idle {
            map.remove(id);
            return None;
        }
        entry.last_seen = now;
        Some(Auth {
            session: id.to_owned(),
            policy: entry.policy.clone(),
            rights: entry.rights,
            csrf: entry.csrf.clone(),
        })
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// What a page or form needs, the same as the service API asks for the operation behind it:
/// any one of `any_of` (a write right also allows reading), named in the refusal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    any_of: Rights,
    name: &'static str,
}

impl Need {
    /// Enrollment and group pages (lists, details, the add and edit forms).
    pub(crate) const ENROLLMENT_READ: Need = Need {
        any_of: Rights::ENROLLMENT_READ.union(Rights::ENROLLMENT_WRITE),
        name: "EnrollmentRead",
    };
    /// Adding, changing and deleting enrollments and groups.
    pub(crate) const ENROLLMENT_WRITE: Need = Need {
        any_of: Rights::ENROLLMENT_WRITE,
        name: "EnrollmentWrite",
    };
    /// Registration records, failed attempts, hub shares and the dashboard.
    pub(crate) const REGISTRATION_READ: Need = Need {
        any_of: Rights::REGISTRATION_STATUS_READ.union(Rights::REGISTRATION_STATUS_WRITE),
        name: "RegistrationStatusRead",
    };
    /// Deleting a registration record.
    pub(crate) const REGISTRATION_WRITE: Need = Need {
        any_of: Rights::REGISTRATION_STATUS_WRITE,
        name: "RegistrationStatusWrite",
    };
}

/// The first page a policy with `rights` may open: the enrollments, else the registration
/// records (sign-in refuses a policy with neither).
fn start_page(rights: Rights) -> String {
    if rights.intersects(Need::ENROLLMENT_READ.any_of) {
        format!("{BASE}/enrollments")
    } else {
        format!("{BASE}/registrations")
    }
}

/// The signed-in operator of a request. Extracting it redirects to the sign-in page when
/// there is no live session.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    session: String,
    /// The policy name.
    pub policy: String,
    /// Its rights.
    pub rights: Rights,
    /// The session's CSRF token, rendered into every form.
    pub csrf: String,
}

impl Auth {
    /// Whether the policy may change enrollments.
    pub(crate) fn can_write(&self) -> bool {
        self.may(Need::ENROLLMENT_WRITE)
    }

    /// Whether the policy holds one of the rights `need` accepts.
    pub(crate) fn may(&self, need: Need) -> bool {
        self.rights.intersects(need.any_of)
    }

    /// Refuses with 403 unless the policy holds one of the rights `need` accepts.
    pub(crate) fn require(&self, need: Need) -> Result<(), PortalError> {
        if self.may(need) {
            Ok(())
        } else {
            Err(PortalError::Forbidden(need.name))
        }
    }

    /// Refuses with 403 unless the form carries this session's CSRF token.
    pub(crate) fn check_csrf(&self, form: &FormData) -> Result<(), PortalError> {
        match form.get(CSRF_FIELD) {
            Some(token) if same(token, &self.csrf) => Ok(()),
            _ => Err(PortalError::Csrf),
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    let text = format!("{name}={value}; Path={BASE}; HttpOnly; Secure; SameSite=Strict{age}");
    // Names and values are hex or fixed ASCII, always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl FromRequestParts<PortalState> for Auth {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|id| state.sessions().touch(id, Instant::now()))
            .ok_or_else(|| Redirect::to(&format!("{BASE}/signin")).into_response())
    }
}

/// `GET /portal/`: the first page the signed-in policy may open.
pub(crate) async fn start(auth: Auth) -> Redirect {
    Redirect::to(&start_page(auth.rights))
}

/// `GET /signin`.
pub(crate) async fn signin_page() -> Response {
    signin_form("", None)
}

fn signin_form(policy: &str, error: Option<&str>) -> Response {
    let token = random_token();
    let body = html! {
        section.card.narrow {
            h1 { "Sign in" }
            p.hint { "Use a shared access policy of this provisioning service, as in its connection string (SharedAccessKeyName and SharedAccessKey)." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form method="post" action={(BASE) "/signin"} {
                input type="hidden" name=(CSRF_FIELD) value=(token);
                label for="policy" { "Policy name" }
                input #policy name="policy" required autocomplete="username" value=(policy);
                label for="key" { "Key" }
                input #key name="key" type="password" required autocomplete="current-password";
                div.actions { button.primary type="submit" { "Sign in" } }
            }
        }
    };
    let mut response = Page(page("Sign in", None, body)).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGNIN_COOKIE, &token, Some(600)),
    );
    response
}

/// The sign-in form with a 429 status: too many failed attempts from this address.
fn too_many_attempts(policy: &str, wait: Duration) -> Response {
    // Whole seconds, rounded up, so a client that waits that long is let in.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let message = format!("Too many failed sign-ins from your address. Try again in {seconds} s.");
    let mut response = signin_form(policy, Some(&message));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The policy whose name matches and whose primary or secondary key equals `key`, compared in
/// constant time (every configured key is compared, so the time does not tell which matched).
pub(crate) fn authenticate(state: &PortalState, name: &str, key: &str) -> Option<(String, Rights)> {
    let given = SymmetricKey::parse(key.trim()).ok()?;
    let mut found = None;
    for policy in state.policies() {
        let name_ok = policy.name.eq_ignore_ascii_case(name.trim());
        let mut key_ok = policy.primary_key.bytes().ct_eq(given.bytes());
        if let Some(second) = &policy.secondary_key {
            key_ok |= second.bytes().ct_eq(given.bytes());
        }
        if name_ok && bool::from(key_ok) && found.is_none() {
            found = Some((policy.name.clone(), policy.rights));
        }
    }
    found
}

/// `POST /signin`. Failed attempts count against the source address (see
/// [`crate::throttle`]); while it must wait, its attempts are refused unchecked.
pub(crate) async fn signin_submit(
    State(state): State<PortalState>,
    source: Source,
    headers: HeaderMap,
    form: FormData,
) -> Response {
    let policy = form.get("policy").unwrap_or_default();
    let now = Instant::now();
    if let Err(wait) = state.throttle().check(source, now) {
        return too_many_attempts(policy, wait);
    }
    let double_submit_ok = match (cookie(&headers, SIGNIN_COOKIE), form.get(CSRF_FIELD)) {
        (Some(a), Some(b)) => same(a, b),
        _ => false,
    };
    if !double_submit_ok {
        return signin_form(
            policy,
            Some("The sign-in form expired or cookies are disabled. Please try again."),
        );
    }
    let Some((name, rights)) = authenticate(&state, policy, form.get("key").unwrap_or_default())
    else {
        state.throttle().failed(source, now);
        return signin_form(policy, Some("Unknown policy name or wrong key."));
    };
    state.throttle().succeeded(source);
    let readable = Rights::ENROLLMENT_READ
        .union(Rights::ENROLLMENT_WRITE)
        .union(Rights::REGISTRATION_STATUS_READ)
        .union(Rights::REGISTRATION_STATUS_WRITE);
    if !rights.intersects(readable) {
        return signin_form(
            policy,
            Some("This policy has no enrollment or registration right."),
        );
    }
    let id = state.sessions().create(&name, rights, Instant::now());
    let mut response = Redirect::to(&start_page(rights)).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, None));
    headers.append(header::SET_COOKIE, set_cookie(SIGNIN_COOKIE, "", Some(0)));
    response
}

/// `POST /signout`.
pub(crate) async fn signout(
    State(state): State<PortalState>,
    auth: Auth,
    form: FormData,
) -> Result<Response, PortalError> {
    auth.check_csrf(&form)?;
    state.sessions().remove(&auth.session);
    let mut response = Redirect::to(&format!("{BASE}/signin")).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0)));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_stay_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60), 2, 2);
        let t0 = Instant::now();
        let a = sessions.create("p", Rights::ALL, t0);
        assert_eq!(a.len(), 64, "256-bit id, hex");
        assert!(sessions.touch(&a, t0 + Duration::from_secs(59)).is_some());
        // Touching moved its idle clock.
        assert!(sessions.touch(&a, t0 + Duration::from_secs(100)).is_some());
        assert!(sessions.touch(&a, t0 + Duration::from_secs(161)).is_none());
        assert_eq!(sessions.len(), 0, "an expired session is dropped");

        let b = sessions.create("p", Rights::ALL, t0);
        let c = sessions.create("p", Rights::ALL, t0 + Duration::from_secs(1));
        let d = sessions.create("p", Rights::ALL, t0 + Duration::from_secs(2));
        assert_eq!(sessions.len(), 2);
        let now = t0 + Duration::from_secs(3);
        assert!(
            sessions.touch(&b, now).is_none(),
            "least recently used evicted"
        );
        assert!(sessions.touch(&c, now).is_some() && sessions.touch(&d, now).is_some());
        assert_ne!(
            sessions.touch(&c, now).unwrap().csrf,
            sessions.touch(&d, now).unwrap().csrf,
            "per-session CSRF tokens"
        );
    }

    #[test]
    fn one_policy_signing_in_in_a_loop_evicts_only_its_own_sessions() {
        let sessions = Sessions::new(Duration::from_secs(600), 8, 3);
        let t0 = Instant::now();
        let others: Vec<String> = (0..5)
            .map(|i| sessions.create(&format!("operator-{i}"), Rights::ALL, t0))
            .collect();
        let mut flood = Vec::new();
        for i in 0..1000 {
            flood.push(sessions.create("flood", Rights::ALL, t0 + Duration::from_millis(i)));
        }
        let now = t0 + Duration::from_secs(2);
        for id in &others {
            assert!(
                sessions.touch(id, now).is_some(),
                "other policies keep theirs"
            );
        }
        assert_eq!(sessions.len(), 8);
        assert!(flood[..997]
            .iter()
            .all(|id| sessions.touch(id, now).is_none()));
        assert!(flood[997..]
            .iter()
            .all(|id| sessions.touch(id, now).is_some()));

        // A full table with every policy under its share: the largest holder gives way.
        let sessions = Sessions::new(Duration::from_secs(600), 4, 3);
        let a1 = sessions.create("a", Rights::ALL, t0);
        let b1 = sessions.create("b", Rights::ALL, t0 + Duration::from_secs(1));
        let b2 = sessions.create("b", Rights::ALL, t0 + Duration::from_secs(2));
        let b3 = sessions.create("b", Rights::ALL, t0 + Duration::from_secs(3));
        let c1 = sessions.create("c", Rights::ALL, t0 + Duration::from_secs(4));
        let now = t0 + Duration::from_secs(5);
        assert!(sessions.touch(&b1, now).is_none(), "b's oldest went");
        for id in [&a1, &b2, &b3, &c1] {
            assert!(sessions.touch(id, now).is_some());
        }
    }

    #[test]
    fn cookies_are_parsed_from_every_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("dps_portal_session=xyz"),
        );
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "abc", None);
        let set = set.to_str().unwrap();
        for needle in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/portal"] {
            assert!(set.contains(needle), "{set}");
        }
    }
}
