//! Path normalization, applied before routing: DPS matches paths case-insensitively and
//! clients rely on it (Node calls `/enrollmentgroups/{id}/attestationmechanism`, the C SDK
//! posts bulk operations to `/enrollments/`). Rewriting the fixed segments to the spec's
//! spelling keeps one route per operation; ids are left exactly as sent.

use axum::extract::Request;
use axum::http::{Method, Uri};

/// The first segment of every route, as the spec spells it.
const ROOTS: [&str; 4] = [
    "enrollments",
    "enrollmentGroups",
    "registrations",
    "diagnostics",
];
/// The fixed third segments.
const ACTIONS: [&str; 3] = ["query", "attestationmechanism", "attempts"];

/// Rewrites the request's path to its canonical form (see [`canonical_path`]).
pub(crate) fn normalize_request(mut request: Request) -> Request {
    if let Some(path) = canonical_path(request.method(), request.uri().path()) {
        let rebuilt = match request.uri().query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        // The rebuilt text only changes the case of known ASCII segments and drops
        // trailing slashes, so it parses whenever the original did; if not, routing sees the
        // original and answers 404.
        if let Ok(uri) = rebuilt.parse::<Uri>() {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// The canonical spelling of `path`, or `None` when it already is canonical: trailing slashes
/// removed, the first segment and a trailing `query`/`attestationmechanism` in the spec's
/// spelling. A second segment `query` is only the query operation on `POST`; on other methods
/// it is an id.
fn canonical_path(method: &Method, path: &str) -> Option<String> {
    let trimmed = path.trim_end_matches('/');
    let mut segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    let Some(root) = segments.first_mut() else {
        return (path != "/").then(|| "/".to_owned());
    };
    *root = canonical(root, &ROOTS);
    match segments.as_mut_slice() {
        [_, second] if method == Method::POST => *second = canonical(second, &ACTIONS[..1]),
        [_, _, third] => *third = canonical(third, &ACTIONS),
        _ => {}
    }
    let canonical = format!("/{}", segments.join("/"));
    (canonical != path).then_some(canonical)
}

/// `segment` in the spelling of the member of `known` it equals case-insensitively.
fn canonical<'a>(segment: &'a str, known: &[&'static str]) -> &'a str {
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(segment))
        .copied()
        .unwrap_or(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(method: Method, path: &str) -> String {
        canonical_path(&method, path).unwrap_or_else(|| path.to_owned())
    }

    #[test]
    fn fixed_segments_take_the_spec_spelling() {
        assert_eq!(
            canon(Method::POST, "/enrollmentgroups/G1/AttestationMechanism"),
            "/enrollmentGroups/G1/attestationmechanism"
        );
        assert_eq!(canon(Method::POST, "/ENROLLMENTS/"), "/enrollments");
        assert_eq!(
            canon(Method::POST, "/Enrollments/Query/"),
            "/enrollments/query"
        );
        assert_eq!(
            canon(Method::GET, "/Registrations/My-Dev"),
            "/registrations/My-Dev"
        );
        assert_eq!(
            canon(Method::POST, "/registrations/Grp/QUERY"),
            "/registrations/Grp/query"
        );
    }

    #[test]
    fn ids_are_untouched() {
        assert_eq!(
            canon(Method::GET, "/enrollments/Query"),
            "/enrollments/Query"
        );
        assert_eq!(
            canon(Method::PUT, "/enrollments/My%3ADev/"),
            "/enrollments/My%3ADev"
        );
        assert!(canonical_path(&Method::GET, "/enrollments/dev-1").is_none());
    }

    #[test]
    fn odd_paths_pass_through() {
        assert_eq!(canon(Method::GET, "/"), "/");
        assert_eq!(canon(Method::GET, "///"), "/");
        assert_eq!(canon(Method::GET, "/unknown/x"), "/unknown/x");
    }

    #[test]
    fn query_string_is_kept() {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/EnrollmentGroups/query/?api-version=2021-10-01")
            .body(axum::body::Body::empty())
            .unwrap();
        let request = normalize_request(request);
        assert_eq!(
            request.uri().to_string(),
            "/enrollmentGroups/query?api-version=2021-10-01"
        );
    }
}
