//! Where a custom-allocation webhook may point. One rule, checked when an enrollment is
//! written and again before every call, so a stored enrollment cannot reach further than the
//! configuration allows.

use url::Url;

use crate::TypeError;

/// Longest webhook URL accepted: Azure Functions URLs with their function key are a few
/// hundred characters; 2048 is the common limit of HTTP clients and proxies.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;

/// The operator's rules for webhook URLs. `Default` is the safe setting: `https` only, any
/// host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookPolicy {
    /// Also accept plain `http://` URLs. Off unless the configuration turns it on: plain HTTP
    /// exposes the function key in the URL and the allocation answer to the network.
    pub allow_http: bool,
    /// When not empty, the only hosts (exact names or IP literals, any letter case) a webhook
    /// may name. Empty: any host.
    pub allowed_hosts: Vec<String>,
}

impl WebhookPolicy {
    /// Parses `url` and checks it against the policy: an absolute `https` URL (or `http` when
    /// allowed) with a host, no user name or password, at most [`MAX_WEBHOOK_URL_LEN`]
    /// characters, and a host on the allow-list when there is one.
    pub fn check(&self, url: &str) -> Result<Url, TypeError> {
        let invalid = |why: String| TypeError::WebhookUrl(why);
        if url.len() > MAX_WEBHOOK_URL_LEN {
            return Err(invalid(format!(
                "is longer than {MAX_WEBHOOK_URL_LEN} characters"
            )));
        }
        let parsed =
            Url::parse(url).map_err(|e| invalid(format!("is not an absolute URL ({e})")))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(invalid(
                    "uses plain http, which this service does not allow (https only)".into(),
                ))
            }
            other => {
                return Err(invalid(format!(
                    "uses the scheme '{other}'; only https is allowed"
                )))
            }
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("carries a user name or password".into()));
        }
        let Some(host) = parsed.host_str() else {
            return Err(invalid("has no host".into()));
        };
        if !self.allowed_hosts.is_empty()
            && !self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
        {
            return Err(invalid(format!(
                "names the host '{host}', which is not on the webhook allow-list"
            )));
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_only_by_default() {
        let p = WebhookPolicy::default();
        assert!(p.check("https://alloc.example.com/api/f?code=abc").is_ok());
        for bad in [
            "http://127.0.0.1:8080/",
            "file:///etc/passwd",
            "gopher://127.0.0.1:70/",
            "javascript:alert(1)",
            "https://user:pw@example.com/",
            "/relative/path",
            "https://",
        ] {
            assert!(p.check(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn http_when_allowed_and_the_allow_list() {
        let p = WebhookPolicy {
            allow_http: true,
            allowed_hosts: vec!["Alloc.example.com".into()],
        };
        assert!(p.check("http://alloc.example.com/x").is_ok());
        assert!(p.check("https://ALLOC.example.com/x").is_ok());
        let err = p.check("https://127.0.0.1/x").unwrap_err();
        assert!(err.to_string().contains("allow-list"), "{err}");
        assert!(p.check("ftp://alloc.example.com/").is_err());
    }

    #[test]
    fn overlong_urls_are_refused() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_WEBHOOK_URL_LEN));
        assert!(WebhookPolicy::default().check(&long).is_err());
    }
}
