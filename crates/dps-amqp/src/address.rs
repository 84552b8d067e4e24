//! The one name a DPS AMQP device uses twice: `{idScope}/registrations/{registrationId}`, as
//! its PLAIN username and as the address of both of its links (`dps-protocol.md` §6). The C
//! SDK puts the whole URL in the link address (`amqps://{host}/{idScope}/registrations/{id}`),
//! so a scheme and host in front are tolerated; nothing else is.

use dps_types::RegistrationId;

/// Longest name we look at: a scheme and host name (at most ~270 bytes), an ID scope and a
/// 128-character registration id fit well within it.
pub const MAX_ADDRESS_LEN: usize = 512;

/// The ID scope (as sent) and registration id of `{idScope}/registrations/{registrationId}`,
/// with an optional `amqps://{host}/` (or `/`) in front; `None` for anything else.
pub fn parse_device_path(text: &str) -> Option<(&str, RegistrationId)> {
    if text.len() > MAX_ADDRESS_LEN {
        return None;
    }
    let path = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("amqps") => rest.split_once('/')?.1,
        Some(_) => return None,
        None => text.strip_prefix('/').unwrap_or(text),
    };
    let mut parts = path.split('/');
    let (Some(scope), Some(registrations), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if scope.is_empty() || !registrations.eq_ignore_ascii_case("registrations") {
        return None;
    }
    let id = RegistrationId::parse(id).ok()?;
    Some((scope, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_path_in_the_forms_the_sdks_send() {
        for text in [
            "0ne00000001/registrations/dev-1",
            "/0ne00000001/registrations/dev-1",
            "amqps://dps.example.net/0ne00000001/registrations/dev-1",
            "AMQPS://localhost:5671/0ne00000001/Registrations/dev-1",
        ] {
            let (scope, id) = parse_device_path(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(scope.to_ascii_lowercase(), "0ne00000001");
            assert_eq!(id.as_str(), "dev-1");
        }
    }

    #[test]
    fn anything_else_is_not_a_device_path() {
        let long = format!("0ne00000001/registrations/{}", "a".repeat(MAX_ADDRESS_LEN));
        for text in [
            "",
            "0ne00000001",
            "0ne00000001/registrations",
            "0ne00000001/registrations/",
            "0ne00000001/devices/dev-1",
            "/registrations/dev-1",
            "0ne00000001/registrations/dev-1/extra",
            "0ne00000001/registrations/dev 1",
            "https://host/0ne00000001/registrations/dev-1",
            "amqps://host-without-path",
            "$cbs",
            long.as_str(),
        ] {
            assert!(parse_device_path(text).is_none(), "{text:?}");
        }
    }
}
