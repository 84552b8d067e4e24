//! The custom allocation policy's fields ("Custom (use Azure Function)" in the Azure portal):
//! the webhook the registrar POSTs each allocation request to, and the api-version of the
//! enrollment JSON it expects.

use dps_types::CustomAllocationDefinition;

use super::{EnrollmentForm, FieldErrors};

/// The API version the Azure portal preselects for a new custom allocation.
pub(crate) const DEFAULT_API_VERSION: &str = "2021-10-01";
/// Longest webhook URL accepted: the service's own limit, so the form refuses nothing the API
/// would take and the reverse.
pub(crate) const MAX_WEBHOOK_URL: usize = dps_types::MAX_WEBHOOK_URL_LEN;
/// Longest API version accepted (`2021-10-01`, `2019-03-31-preview`, …).
const MAX_API_VERSION: usize = 32;

/// The definition of the form's custom policy; each problem is reported on its field.
pub(super) fn definition(
    form: &EnrollmentForm,
    errors: &mut FieldErrors,
) -> Option<CustomAllocationDefinition> {
    let url = check_webhook_url(&form.webhook_url)
        .map_err(|e| errors.insert("webhook_url", e))
        .ok();
    let version = check_api_version(&form.api_version)
        .map_err(|e| errors.insert("api_version", e))
        .ok();
    Some(CustomAllocationDefinition {
        webhook_url: url?.to_owned(),
        api_version: version?.to_owned(),
    })
}

/// An absolute `http` or `https` URL with a host, without spaces or control characters.
pub(crate) fn check_webhook_url(url: &str) -> Result<&str, String> {
    if url.is_empty() {
        return Err("the custom policy needs the webhook URL to call".into());
    }
    if url.len() > MAX_WEBHOOK_URL {
        return Err(format!(
            "the webhook URL is longer than {MAX_WEBHOOK_URL} characters"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the webhook URL must not contain spaces or control characters".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("enter an absolute URL starting with https:// or http://".into());
    };
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return Err("the webhook URL must start with https:// or http://".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err("the webhook URL has no host name".into());
    }
    Ok(url)
}

/// A service api-version: letters, digits, `-` and `.`.
fn check_api_version(version: &str) -> Result<&str, String> {
    if version.is_empty() {
        return Err(format!(
            "the API version is required (for example {DEFAULT_API_VERSION})"
        ));
    }
    if version.len() > MAX_API_VERSION
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "not an API version; use a date such as {DEFAULT_API_VERSION}"
        ));
    }
    Ok(version)
}
