//! The page layout, shared pieces of markup, the static stylesheet and script, and the error
//! type that renders as a page.

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use dps_types::Timestamp;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::session::{Auth, Need, CSRF_FIELD};
use crate::BASE;

const CSS: &str = include_str!("../static/portal.css");
const JS: &str = include_str!("../static/portal.js");

/// Why a request failed, rendered as a page without internals.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PortalError {
    /// The signed-in policy lacks a right.
    #[error("this policy does not have the {0} right")]
    Forbidden(&'static str),
    /// The form's CSRF token is missing or wrong.
    #[error("the form is out of date (security token mismatch); reload the page and try again")]
    Csrf,
    /// No such record or page.
    #[error("not found")]
    NotFound,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] dps_store::StoreError),
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let status = match &self {
            PortalError::Forbidden(_) | PortalError::Csrf => StatusCode::FORBIDDEN,
            PortalError::NotFound => StatusCode::NOT_FOUND,
            PortalError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PortalError::Store(e) => {
                tracing::error!(error = %e, "portal: store operation failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let body = html! {
            section.card.narrow {
                h1 { (title) }
                p.error role="alert" { (self.to_string()) }
                p { a href={(BASE) "/"} { "Back to the start page" } }
            }
        };
        (status, Page(page(title, None, body))).into_response()
    }
}

/// The top navigation's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Enrollments,
    Registrations,
    Hubs,
    Dashboard,
}

impl Nav {
    /// What the section's pages need; the navigation offers only what the policy may open.
    fn need(self) -> Need {
        match self {
            Nav::Enrollments => Need::ENROLLMENT_READ,
            Nav::Registrations | Nav::Hubs | Nav::Dashboard => Need::REGISTRATION_READ,
        }
    }
}

/// A whole page: head, header with navigation (when signed in), main content.
pub(crate) fn page(title: &str, nav: Option<(&Auth, Nav)>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · DPS portal" }
                link rel="stylesheet" href={(BASE) "/static/portal.css"};
                script src={(BASE) "/static/portal.js"} defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href={(BASE) "/"} { "Device Provisioning Service" }
                    @if let Some((auth, active)) = nav {
                        nav aria-label="Main" {
                            @for (item, href, label) in [
                                (Nav::Enrollments, "/enrollments", "Manage enrollments"),
                                (Nav::Registrations, "/registrations", "Registration records"),
                                (Nav::Hubs, "/hubs", "Linked IoT hubs"),
                                (Nav::Dashboard, "/dashboard", "Dashboard"),
                            ] {
                                @if auth.may(item.need()) {
                                    a href={(BASE) (href)} aria-current=[(item == active).then_some("page")] { (label) }
                                }
                            }
                        }
                        div.who {
                            span { (auth.policy) }
                            @if !auth.can_write() { span.badge { "read-only" } }
                            form.inline method="post" action={(BASE) "/signout"} {
                                (csrf(auth))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf(auth: &Auth) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(auth.csrf); }
}

/// An error message next to a field (nothing when there is none).
pub(crate) fn field_error(message: Option<&String>, id: &str) -> Markup {
    html! {
        @if let Some(message) = message {
            p.field-error id={(id) "-error"} role="alert" { (message) }
        }
    }
}

/// A timestamp as `2024-05-01 12:34:56 UTC`, or a dash.
pub(crate) fn when(t: Option<&Timestamp>) -> String {
    match t {
        Some(t) => {
            let text = t.to_string();
            format!("{} {} UTC", &text[..10], &text[11..19])
        }
        None => "—".to_owned(),
    }
}

/// An SVG fragment produced by our own code (numbers and escaped text only).
pub(crate) fn svg(markup: String) -> Markup {
    PreEscaped(markup)
}

/// `GET /static/portal.css`.
pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

/// `GET /static/portal.js`.
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

/// The portal's Content-Security-Policy: everything from the portal's own origin, nothing
/// inline (the stylesheet and script are static files; the charts are SVG elements styled by
/// attributes, which the policy does not govern), no plugins, no `<base>` rewriting, forms
/// only to the portal and no framing by any page (clickjacking).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Adds the security headers to every portal response: the [`CONTENT_SECURITY_POLICY`],
/// `X-Frame-Options` for browsers without `frame-ancestors`, `nosniff` so no response is read
/// as another type than declared, and no `Referer` to other sites (portal URLs carry ids).
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// Unknown portal paths.
pub(crate) async fn not_found() -> PortalError {
    PortalError::NotFound
}

/// Renders markup as an HTML response (maud's own integration targets another axum).
pub(crate) struct Page(pub Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = Html(self.0.into_string()).into_response();
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        response
    }
}
