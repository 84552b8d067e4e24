//! The operator web portal, served by `dpsd` under `/portal` on the HTTPS management listener:
//! the Azure portal's "Manage enrollments" page (enrollment groups and individual enrollments:
//! list, search, add, details, update, delete) plus what the Azure portal lacks: registration
//! records, failed-attempt diagnostics, linked hubs and a dashboard.
//!
//! What it does: server-rendered HTML (compile-time `maud` templates), a small hand-written
//! stylesheet and script (every form works without the script, nothing is inline, and every
//! response carries a Content-Security-Policy that forbids inline code, framing and foreign
//! origins), sign-in with a shared access policy of the service API (failed attempts throttled
//! per source address), a server-side session map (bounded in total and per policy, idle
//! expiry) behind an `HttpOnly; Secure; SameSite=Strict` cookie, and a per-session CSRF token
//! checked on every POST. Each page asks for the right the API asks for the same data.
//! Writes go through the same validation as the API (`dps_attest::prepare_*` with the
//! registrar's [`EnrollmentRules`]: linked hubs, webhook policy) and the same store
//! preconditions (an update carries the etag it was opened with).
//!
//! What it must never do: show a key or a private key (symmetric keys and certificate text are
//! never rendered), show enrollments to a policy without `EnrollmentRead` or registrations to
//! one without `RegistrationStatusRead`, let a policy without `EnrollmentWrite` change an
//! enrollment (the buttons are hidden *and* the server refuses the POST), or load anything
//! from a third party.
//!
//! Main types: [`PortalState`], [`PortalLimits`] and [`router`]; [`validate_enrollment_form`]
//! runs the add-enrollment handlers' form reading and validation on bytes alone (for the fuzz
//! targets).

mod charts;
mod enrollments;
mod form;
mod html;
mod operations;
mod session;
mod throttle;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use dps_api::SharedAccessPolicy;
use dps_attest::EnrollmentRules;
use dps_registrar::{LinkedHub, Registrar};
use dps_store::Store;

use crate::charts::Samples;
use crate::session::Sessions;
pub use crate::throttle::SigninLimits;
use crate::throttle::SigninThrottle;

pub use validate::{validate_enrollment_form, ValidatedForm};

/// Where [`router`] is mounted; every link and redirect the portal renders starts with it.
pub const BASE: &str = "/portal";

/// Largest form the portal accepts (certificate uploads included). A CA or device certificate
/// is a few KiB; 256 KiB leaves room for a long chain or a large initial twin and matches the
/// API's default body limit.
pub const MAX_FORM_BYTES: usize = 256 * 1024;

/// The portal's bounds on sessions and sign-ins. `Default` gives the documented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortalLimits {
    /// Sessions idle longer than this are signed out. Default 30 min (the Azure portal's
    /// default is similar).
    pub idle_timeout: Duration,
    /// Sessions kept at once. An operator portal has a handful of users; the default 1024
    /// bounds memory (about 200 B each) even when someone signs in in a loop.
    pub max_sessions: usize,
    /// Sessions one policy holds at once; its least recently used goes first. Default 64: a
    /// team sharing a policy, each with a few browsers, and a sixteenth of the table, so a
    /// loop signing in with one policy never pushes out another policy's operators.
    pub max_sessions_per_policy: usize,
    /// Throttling of failed sign-ins per source address.
    pub signin: SigninLimits,
}

impl Default for PortalLimits {
    fn default() -> Self {
        PortalLimits {
            idle_timeout: Duration::from_secs(30 * 60),
            max_sessions: 1024,
            max_sessions_per_policy: 64,
            signin: SigninLimits::default(),
        }
    }
}

/// What every handler needs. Cheap to clone.
#[derive(Clone)]
pub struct PortalState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registrar: Registrar,
    policies: Vec<SharedAccessPolicy>,
    linked_hubs: Vec<LinkedHub>,
    rules: EnrollmentRules,
    sessions: Sessions,
    throttle: SigninThrottle,
    samples: Samples,
}

impl PortalState {
    /// The portal over `registrar`'s store, signing in with `policies` (the API's shared
    /// access policies). Linked hubs (the only hubs an enrollment may name), the webhook
    /// policy, diagnostics and the dashboard come from the registrar, and deletes go through
    /// it so the assignment feed learns of them.
    pub fn new(registrar: Registrar, policies: impl Into<Vec<SharedAccessPolicy>>) -> PortalState {
        Self::with_limits(registrar, policies, PortalLimits::default())
    }

    /// [`PortalState::new`] with other bounds (tests use small ones).
    pub fn with_limits(
        registrar: Registrar,
        policies: impl Into<Vec<SharedAccessPolicy>>,
        limits: PortalLimits,
    ) -> PortalState {
        let linked_hubs = registrar.linked_hubs().to_vec();
        let rules = registrar.enrollment_rules();
        PortalState {
            inner: Arc::new(Inner {
                store: registrar.store().clone(),
                registrar,
                policies: policies.into(),
                linked_hubs,
                rules,
                sessions: Sessions::new(
                    limits.idle_timeout,
                    limits.max_sessions,
                    limits.max_sessions_per_policy,
                ),
                throttle: SigninThrottle::new(limits.signin),
                samples: Samples::default(),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn registrar(&self) -> &Registrar {
        &self.inner.registrar
    }

    pub(crate) fn policies(&self) -> &[SharedAccessPolicy] {
        &self.inner.policies
    }

    pub(crate) fn linked_hubs(&self) -> &[LinkedHub] {
        &self.inner.linked_hubs
    }

    /// What written enrollments may name (the registrar's linked hubs and webhook policy).
    pub(crate) fn rules(&self) -> &EnrollmentRules {
        &self.inner.rules
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    pub(crate) fn throttle(&self) -> &SigninThrottle {
        &self.inner.throttle
    }

    pub(crate) fn samples(&self) -> &Samples {
        &self.inner.samples
    }
}

/// The portal's routes, relative to where it is mounted (`.nest("/portal", router(state))`).
///
/// When called inside a tokio runtime it also starts the dashboard's sampler, a task that
/// reads the registrar's failure counters every 10 s and stops when the router is dropped.
pub fn router(state: PortalState) -> Router {
    charts::spawn_sampler(&state);
    Router::new()
        .route("/static/portal.css", get(html::stylesheet))
        .route("/static/portal.js", get(html::script))
        .route(
            "/signin",
            get(session::signin_page).post(session::signin_submit),
        )
        .route("/signout", post(session::signout))
        .route("/enrollments", get(enrollments::list))
        .route(
            "/groups/new",
            get(enrollments::new_group).post(enrollments::create_group),
        )
        .route(
            "/individual/new",
            get(enrollments::new_individual).post(enrollments::create_individual),
        )
        .route(
            "/{kind}/{id}",
            get(enrollments::details).post(enrollments::update),
        )
        .route(
            "/{kind}/{id}/delete",
            get(enrollments::confirm_delete).post(enrollments::delete),
        )
        .route("/registrations", get(operations::registrations))
        .route("/registrations/{id}", get(operations::registration))
        .route(
            "/registrations/{id}/delete",
            get(operations::confirm_delete_registration).post(operations::delete_registration),
        )
        .route("/hubs", get(operations::hubs))
        .route("/dashboard", get(operations::dashboard))
        .fallback(html::not_found)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::map_response(html::security_headers))
        .with_state(state)
}

/// [`router`] nested under [`BASE`], with `/portal` and `/portal/` redirecting to the start
/// page. Give it the API as fallback: `mount(state).fallback_service(api)`.
pub fn mount(state: PortalState) -> Router {
    Router::new()
        .route(BASE, get(redirect_to_portal))
        .route(
            &format!("{BASE}/"),
            get(session::start).with_state(state.clone()),
        )
        .layer(middleware::map_response(html::security_headers))
        .nest(BASE, router(state))
}

/// Redirects `/portal` (no slash) to `/portal/`.
pub async fn redirect_to_portal() -> Redirect {
    Redirect::permanent(&format!("{BASE}/"))
}
