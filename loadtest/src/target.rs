//! Where the load goes: loopback only. [`Loopback`] and [`ApiEndpoint`] can only be built by
//! checking that the address is in 127.0.0.0/8 or `::1`, and every connection the tool makes
//! goes to one of them, so no caller can aim the load anywhere else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::LoadError;

/// The one host name accepted besides IP literals. It is never looked up: it means
/// 127.0.0.1, so a hosts file or resolver cannot send the load elsewhere.
const LOCALHOST: &str = "localhost";

/// A socket address on this machine's loopback interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loopback(SocketAddr);

impl Loopback {
    /// Accepts `addr` only if its IP is a loopback address.
    pub fn new(addr: SocketAddr) -> Result<Self, LoadError> {
        if addr.ip().is_loopback() {
            Ok(Self(addr))
        } else {
            Err(LoadError::NotLoopback {
                target: addr.to_string(),
            })
        }
    }

    /// Parses `host:port` where host is an IP literal (`[::1]` for IPv6) or `localhost`.
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        let refused = || LoadError::NotLoopback {
            target: text.to_owned(),
        };
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Self::new(addr).map_err(|_| refused());
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| LoadError::BadTarget {
            target: text.to_owned(),
            why: "expected HOST:PORT",
        })?;
        let port: u16 = port.parse().map_err(|_| LoadError::BadTarget {
            target: text.to_owned(),
            why: "the port is not a number from 0 to 65535",
        })?;
        if host.eq_ignore_ascii_case(LOCALHOST) {
            Ok(Self(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)))
        } else {
            Err(refused())
        }
    }

    /// The address.
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl std::fmt::Display for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The service API's base URL (`https://` + a loopback host + port) and the address it
/// must connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// `https://host:port`, without a trailing slash; `host` as given (so TLS checks the
    /// name the user chose: `localhost` or the IP, both in the dev certificate).
    base: String,
    /// The host part as it appears in `base` (for pinning its resolution).
    host: String,
    addr: Loopback,
}

impl ApiEndpoint {
    /// Parses `https://HOST:PORT[/]`, HOST being a loopback IP literal or `localhost`.
    pub fn parse(url: &str) -> Result<Self, LoadError> {
        let bad = |why| LoadError::BadTarget {
            target: url.to_owned(),
            why,
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("the service API URL must start with https://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("expected https://HOST:PORT with no path"));
        }
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:443")
        } else {
            authority.to_owned()
        };
        let addr = Loopback::parse(&with_port).map_err(|e| match e {
            LoadError::NotLoopback { .. } => LoadError::NotLoopback {
                target: url.to_owned(),
            },
            other => other,
        })?;
        let host = match with_port.rsplit_once(':') {
            Some((host, _)) => host.to_owned(),
            None => with_port.clone(),
        };
        Ok(Self {
            base: format!("https://{with_port}"),
            host,
            addr,
        })
    }

    /// For an API known by its socket address (tests on port 0): `https://localhost:PORT`
    /// (the name in the development server certificate).
    pub fn from_addr(addr: SocketAddr) -> Result<Self, LoadError> {
        let addr = Loopback::new(addr)?;
        Ok(Self {
            base: format!("https://{LOCALHOST}:{}", addr.addr().port()),
            host: LOCALHOST.to_owned(),
            addr,
        })
    }

    /// `https://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The host as written in [`Self::base`].
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The address every request connects to.
    pub fn addr(&self) -> Loopback {
        self.addr
    }

    /// Whether the host is a name (not an IP literal), so its resolution must be pinned.
    pub fn host_is_name(&self) -> bool {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_accepted() {
        for text in [
            "127.0.0.1:8883",
            "127.3.2.1:1",
            "[::1]:8883",
            "localhost:18883",
        ] {
            let addr = Loopback::parse(text).unwrap();
            assert!(addr.addr().ip().is_loopback(), "{text}");
        }
        assert_eq!(
            Loopback::parse("LOCALHOST:8883").unwrap().addr(),
            "127.0.0.1:8883".parse().unwrap()
        );
    }

    #[test]
    fn non_loopback_targets_are_refused() {
        for text in [
            "10.0.0.1:8883",
            "192.168.1.10:8883",
            "172.16.0.1:8883",
            "8.8.8.8:8883",
            "0.0.0.0:8883",
            "[::]:8883",
            "[2001:db8::1]:8883",
            "[::ffff:10.0.0.1]:8883",
            "example.com:8883",
            "localhost.example.com:8883",
        ] {
            let err = Loopback::parse(text).unwrap_err();
            assert!(
                matches!(err, LoadError::NotLoopback { .. }),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("loopback"), "{err}");
        }
        assert!(Loopback::new("10.1.2.3:80".parse().unwrap()).is_err());
        assert!(matches!(
            Loopback::parse("127.0.0.1"),
            Err(LoadError::BadTarget { .. })
        ));
    }

    #[test]
    fn api_urls_must_be_https_on_loopback() {
        let api = ApiEndpoint::parse("https://127.0.0.1:8443/").unwrap();
        assert_eq!(api.base(), "https://127.0.0.1:8443");
        assert!(!api.host_is_name());
        let api = ApiEndpoint::parse("https://localhost:9000").unwrap();
        assert_eq!(api.addr().addr(), "127.0.0.1:9000".parse().unwrap());
        assert!(api.host_is_name());
        let api = ApiEndpoint::parse("https://[::1]").unwrap();
        assert_eq!(api.base(), "https://[::1]:443");
        assert!(!api.host_is_name());

        for url in [
            "https://10.0.0.5:8443",
            "https://example.com:8443",
            "https://192.168.0.1",
        ] {
            assert!(
                matches!(ApiEndpoint::parse(url), Err(LoadError::NotLoopback { .. })),
                "{url}"
            );
        }
        for url in [
            "http://127.0.0.1:8443",
            "https://127.0.0.1:8443/enrollments",
            "https://user@127.0.0.1:8443",
        ] {
            assert!(
                matches!(ApiEndpoint::parse(url), Err(LoadError::BadTarget { .. })),
                "{url}"
            );
        }
        assert!(ApiEndpoint::from_addr("192.0.2.1:443".parse().unwrap()).is_err());
    }
}
