//! The DPS MQTT names: the CONNECT username, the two request topics a device publishes to,
//! the one filter it subscribes to, and the response topics we publish on.
//!
//! Everything here is a plain function over `&str`; every input is bounded before it is
//! looked at, and nothing a device sends is ever echoed back unless it passed the checks
//! below (the `$rid` goes back byte for byte, so it must be safe inside a topic name that
//! every SDK's parser splits on `$`, `?`, `&` and `=`).

use dps_types::{IdScope, RegistrationId};

/// The only filter a device may subscribe to (every SDK uses exactly this one).
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

/// Prefix of the register request topic; the query (`$rid=...`) follows.
pub const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/?";

/// Prefix of the operation-status (poll) request topic; the query follows.
pub const POLL_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/?";

/// Prefix of every response topic.
pub const RESPONSE_PREFIX: &str = "$dps/registrations/res/";

/// Longest request topic we look at. The longest real one is a poll with a 36-byte uuid
/// `$rid` and a ~60-byte operation id (~150 bytes); 512 leaves room for any SDK while
/// keeping a hostile topic from costing more than a glance.
pub const MAX_TOPIC_LEN: usize = 512;

/// Longest `$rid`. Real ones are a uuid (Python, Node: 36 bytes), a packet id (C, C#: at
/// most 5 digits) or `1` (embedded C). It is echoed in every response, so it is kept short.
pub const MAX_RID_LEN: usize = 128;

/// Longest operation id we accept in a poll; ours are 55 bytes (`4.<16 hex>.<uuid>`), Python
/// percent-encodes nothing in them, so anything longer cannot be one of ours.
pub const MAX_OPERATION_ID_LEN: usize = 128;

/// Most query pairs in a request topic: `$rid` and `operationId` are the only ones any SDK
/// sends; a few more are tolerated (and ignored) for forward compatibility.
pub const MAX_QUERY_PAIRS: usize = 8;

/// Longest CONNECT username. Python's is the longest real one (~150 bytes with its user
/// agent in `ClientVersion`); 1 KiB tolerates verbose user agents without letting a peer make
/// us scan an arbitrarily long string.
pub const MAX_USERNAME_LEN: usize = 1024;

/// A device's request, parsed from the topic it published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `$dps/registrations/PUT/iotdps-register/?$rid=<rid>`.
    Register {
        /// The request id, echoed in the response.
        rid: String,
    },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=<rid>&operationId=<id>`.
    Poll {
        /// The request id, echoed in the response.
        rid: String,
        /// The operation id the register response gave (percent-decoded).
        operation_id: String,
    },
}

impl Request {
    /// The request id to echo.
    pub fn rid(&self) -> &str {
        match self {
            Request::Register { rid } | Request::Poll { rid, .. } => rid,
        }
    }
}

/// Why a topic or username was not accepted. Peer errors: the connection (topic) or the
/// CONNECT (username) is refused; nothing here is our bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is longer than its bound.
    #[error("the {what} is longer than {max} bytes")]
    TooLong {
        /// Which name.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// The topic is not one of the two request topics.
    #[error("not a DPS request topic")]
    UnknownTopic,
    /// The request topic's query is malformed (missing `$rid`, duplicate key, pair without
    /// `=`, too many pairs, or a poll without `operationId`).
    #[error("malformed request query: {0}")]
    BadQuery(&'static str),
    /// A request topic whose `$rid` can be echoed but whose query is otherwise malformed
    /// (a poll without `operationId`, a bad `operationId`, a pair without `=`, ...): the
    /// device is answered `400` on `rid`.
    #[error("malformed request query: {why}")]
    BadRequest {
        /// The request id to answer on (passed [`is_valid_rid`]).
        rid: String,
        /// What is wrong, for the `400`'s message.
        why: &'static str,
    },
    /// The `$rid` contains characters that cannot be echoed safely in a response topic.
    #[error("the $rid must be 1 to 128 printable ASCII characters without $ & # + = ? or space")]
    BadRid,
    /// The username is not `{idScope}/registrations/{registrationId}/api-version=...`.
    #[error(
        "the username must be {{idScope}}/registrations/{{registrationId}}/api-version=...: {0}"
    )]
    BadUsername(&'static str),
    /// The username's registration id or ID scope breaks the DPS grammar.
    #[error("invalid username: {0}")]
    InvalidId(#[source] dps_types::TypeError),
}

/// Parses a request topic (a device PUBLISH). Query pairs may come in any order; unknown
/// keys are ignored; `$rid` is required and kept byte for byte.
///
/// A request topic with exactly one valid `$rid` among its first [`MAX_QUERY_PAIRS`] pieces
/// but an otherwise malformed query is a [`NameError::BadRequest`] carrying that `$rid`.
pub fn parse_request(topic: &[u8]) -> Result<Request, NameError> {
    let (is_poll, query) = request_query(topic)?;
    parse_query(is_poll, query).map_err(|e| match (e, answerable_rid(query)) {
        (NameError::BadQuery(why), Some(rid)) => NameError::BadRequest {
            rid: rid.to_owned(),
            why,
        },
        (e, _) => e,
    })
}

/// The `$rid` of a malformed query, if exactly one valid one is there to answer on.
fn answerable_rid(query: &str) -> Option<&str> {
    let mut rids = query
        .split('&')
        .take(MAX_QUERY_PAIRS)
        .filter_map(|pair| pair.strip_prefix("$rid="));
    let rid = rids.next()?;
    (rids.next().is_none() && is_valid_rid(rid)).then_some(rid)
}

/// Whether `topic` is the register (`false`) or the poll (`true`) topic, and its query.
fn request_query(topic: &[u8]) -> Result<(bool, &str), NameError> {
    if topic.len() > MAX_TOPIC_LEN {
        return Err(NameError::TooLong {
            what: "topic",
            max: MAX_TOPIC_LEN,
        });
    }
    // MQTT topic names are UTF-8; anything else cannot be a DPS topic.
    let topic = std::str::from_utf8(topic).map_err(|_| NameError::UnknownTopic)?;
    let (is_poll, query) = if let Some(query) = topic.strip_prefix(REGISTER_PREFIX) {
        (false, query)
    } else if let Some(query) = topic.strip_prefix(POLL_PREFIX) {
        (true, query)
    } else {
        return Err(NameError::UnknownTopic);
    };
    Ok((is_poll, query))
}

fn parse_query(is_poll: bool, query: &str) -> Result<Request, NameError> {
    let mut rid = None;
    let mut operation_id = None;
    for (index, pair) in query.split('&').enumerate() {
        if index >= MAX_QUERY_PAIRS {
            return Err(NameError::BadQuery("too many query pairs"));
        }
        let (key, value) = pair
            .split_once('=')
            .ok_or(NameError::BadQuery("a query pair has no '='"))?;
        let slot = match key {
            "$rid" => &mut rid,
            "operationId" => &mut operation_id,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(NameError::BadQuery("duplicate query key"));
        }
    }

    let rid = rid.ok_or(NameError::BadQuery("no $rid"))?;
    if !is_valid_rid(rid) {
        return Err(NameError::BadRid);
    }
    let rid = rid.to_owned();
    if !is_poll {
        return Ok(Request::Register { rid });
    }
    let operation_id = operation_id.ok_or(NameError::BadQuery("a poll needs an operationId"))?;
    if operation_id.is_empty() || operation_id.len() > MAX_OPERATION_ID_LEN {
        return Err(NameError::BadQuery(
            "the operationId must be 1 to 128 bytes",
        ));
    }
    let operation_id = dps_types::percent_decode(operation_id)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(NameError::BadQuery(
            "the operationId is not valid percent-encoding",
        ))?;
    Ok(Request::Poll { rid, operation_id })
}

/// A `$rid` we can echo: printable ASCII without the characters the SDK response parsers
/// split on (`$` Python, `&` `=` everyone) or that MQTT forbids in topic names (`#` `+`),
/// nor `?` (C#'s regex anchors on the first one).
pub fn is_valid_rid(rid: &str) -> bool {
    !rid.is_empty()
        && rid.len() <= MAX_RID_LEN
        && rid
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'$' | b'&' | b'#' | b'+' | b'=' | b'?'))
}

/// The response topic: `$dps/registrations/res/<status>/?$rid=<rid>[&retry-after=<n>]`.
///
/// `$rid` comes first and is the only `$` after the prefix (Python splits on `$`); there is
/// no trailing `&`. The caller passes a `rid` that [`parse_request`] accepted.
pub fn response_topic(status: u16, rid: &str, retry_after_secs: Option<u32>) -> String {
    match retry_after_secs {
        Some(secs) => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}&retry-after={secs}"),
        None => format!("{RESPONSE_PREFIX}{status}/?$rid={rid}"),
    }
}

/// The identity a CONNECT username claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    /// The ID scope the device dialled.
    pub id_scope: IdScope,
    /// The registration id it claims.
    pub registration_id: RegistrationId,
    /// The api-version it asked for (any value is accepted; kept for diagnostics).
    pub api_version: String,
}

/// Parses `{idScope}/registrations/{registrationId}/api-version=<any>[&ClientVersion=<any>]`.
/// Any api-version is accepted and everything after it (`ClientVersion`, which some SDKs do
/// not percent-encode) is ignored.
pub fn parse_username(username: &str) -> Result<Username, NameError> {
    if username.len() > MAX_USERNAME_LEN {
        return Err(NameError::TooLong {
            what: "username",
            max: MAX_USERNAME_LEN,
        });
    }
    let (scope, rest) = username
        .split_once('/')
        .ok_or(NameError::BadUsername("no '/' after the ID scope"))?;
    let rest = rest
        .strip_prefix("registrations/")
        .ok_or(NameError::BadUsername(
            "'registrations/' must follow the ID scope",
        ))?;
    let (registration_id, query) = rest
        .split_once('/')
        .ok_or(NameError::BadUsername("no '/' after the registration id"))?;
    let query = query
        .strip_prefix("api-version=")
        .ok_or(NameError::BadUsername(
            "'api-version=' must follow the registration id",
        ))?;
    let api_version = query.split('&').next().unwrap_or_default();
    Ok(Username {
        id_scope: IdScope::parse(scope).map_err(NameError::InvalidId)?,
        registration_id: RegistrationId::parse(registration_id).map_err(NameError::InvalidId)?,
        api_version: api_version.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_topics_of_every_sdk() {
        for (topic, rid) in [
            ("$dps/registrations/PUT/iotdps-register/?$rid=1", "1"),
            (
                "$dps/registrations/PUT/iotdps-register/?$rid=0f0c1f2e-8b2d-4c8e-9a43-7d7b1b6f2a11",
                "0f0c1f2e-8b2d-4c8e-9a43-7d7b1b6f2a11",
            ),
            (
                "$dps/registrations/PUT/iotdps-register/?$rid=65535",
                "65535",
            ),
        ] {
            assert_eq!(
                parse_request(topic.as_bytes()),
                Ok(Request::Register { rid: rid.into() }),
                "{topic}"
            );
        }
    }

    #[test]
    fn poll_topic_pairs_in_any_order() {
        let want = Request::Poll {
            rid: "7".into(),
            operation_id: "4.0123456789abcdef.2d1c".into(),
        };
        for topic in [
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&operationId=4.0123456789abcdef.2d1c",
            "$dps/registrations/GET/iotdps-get-operationstatus/?operationId=4.0123456789abcdef.2d1c&$rid=7",
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&x=y&operationId=4.0123456789abcdef.2d1c",
            // Python percent-encodes the operation id (quote(..., safe="")).
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&operationId=4%2E0123456789abcdef.2d1c",
        ] {
            assert_eq!(parse_request(topic.as_bytes()), Ok(want.clone()), "{topic}");
        }
    }

    #[test]
    fn bad_request_topics() {
        let cases: [(&[u8], NameError); 10] = [
            (
                b"$dps/registrations/res/200/?$rid=1",
                NameError::UnknownTopic,
            ),
            (b"devices/x/messages/events/", NameError::UnknownTopic),
            (
                b"$dps/registrations/PUT/iotdps-register/?$rid=1\xff",
                NameError::UnknownTopic,
            ),
            (
                b"$dps/registrations/PUT/iotdps-register/?rid=1",
                NameError::BadQuery("no $rid"),
            ),
            (
                b"$dps/registrations/PUT/iotdps-register/?$rid=1&",
                answer_400("a query pair has no '='"),
            ),
            (
                b"$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2",
                NameError::BadQuery("duplicate query key"),
            ),
            (
                b"$dps/registrations/PUT/iotdps-register/?$rid=",
                NameError::BadRid,
            ),
            (
                b"$dps/registrations/PUT/iotdps-register/?$rid=a$b",
                NameError::BadRid,
            ),
            (
                b"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1",
                answer_400("a poll needs an operationId"),
            ),
            (
                b"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=%zz",
                answer_400("the operationId is not valid percent-encoding"),
            ),
        ];
        for (topic, err) in cases {
            assert_eq!(
                parse_request(topic),
                Err(err),
                "{}",
                String::from_utf8_lossy(topic)
            );
        }
        let long = format!("{REGISTER_PREFIX}$rid={}", "a".repeat(MAX_TOPIC_LEN));
        assert!(matches!(
            parse_request(long.as_bytes()),
            Err(NameError::TooLong { .. })
        ));
        let many = format!("{REGISTER_PREFIX}$rid=1{}", "&a=b".repeat(MAX_QUERY_PAIRS));
        assert_eq!(
            parse_request(many.as_bytes()),
            Err(answer_400("too many query pairs"))
        );
        let many_without_rid = format!("{REGISTER_PREFIX}{}$rid=1", "a=b&".repeat(MAX_QUERY_PAIRS));
        assert_eq!(
            parse_request(many_without_rid.as_bytes()),
            Err(NameError::BadQuery("too many query pairs"))
        );
    }

    /// A malformed query with `$rid=1`: answerable.
    fn answer_400(why: &'static str) -> NameError {
        NameError::BadRequest {
            rid: "1".into(),
            why,
        }
    }

    #[test]
    fn response_topic_grammar() {
        assert_eq!(
            response_topic(200, "1", None),
            "$dps/registrations/res/200/?$rid=1"
        );
        assert_eq!(
            response_topic(202, "ab-cd", Some(1)),
            "$dps/registrations/res/202/?$rid=ab-cd&retry-after=1"
        );
    }

    #[test]
    fn usernames_of_every_sdk() {
        for (name, api) in [
            (
                "0ne00000000/registrations/my-device/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11.7%3BLinux%205.15.0%3Bx86_64%29",
                "2019-03-31",
            ),
            ("0ne00000000/registrations/my-device/api-version=2021-06-01&ClientVersion=1.15.0", "2021-06-01"),
            ("0ne00000000/registrations/my-device/api-version=2019-03-31", "2019-03-31"),
            ("0ne00000000/registrations/my-device/api-version=2025-07-01-preview&ClientVersion=a/b c", "2025-07-01-preview"),
            ("0ne00000000/registrations/my-device/api-version=", ""),
        ] {
            let parsed = parse_username(name).unwrap();
            assert_eq!(parsed.id_scope.as_str(), "0ne00000000");
            assert_eq!(parsed.registration_id.as_str(), "my-device");
            assert_eq!(parsed.api_version, api);
        }
    }

    #[test]
    fn bad_usernames() {
        for name in [
            "",
            "0ne00000000",
            "0ne00000000/devices/my-device/api-version=1",
            "0ne00000000/registrations/my-device",
            "0ne00000000/registrations/my-device/?api-version=1",
            "0ne00000000/registrations//api-version=1",
            "0ne0000000!/registrations/my-device/api-version=1",
            "0ne00000000/registrations/my device/api-version=1",
        ] {
            assert!(parse_username(name).is_err(), "{name}");
        }
        let long = format!(
            "0ne00000000/registrations/d/api-version={}",
            "x".repeat(MAX_USERNAME_LEN)
        );
        assert!(matches!(
            parse_username(&long),
            Err(NameError::TooLong { .. })
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn rid() -> impl Strategy<Value = String> {
            "[!%'-*,-/0-9:;<>@A-Z\\[\\]^_`a-z{|}~]{1,128}"
        }

        proptest! {
            #[test]
            fn rid_round_trips_through_every_query_order(rid in rid(), op in "[A-Za-z0-9.-]{1,64}", swap: bool) {
                prop_assume!(is_valid_rid(&rid));
                let query = if swap {
                    format!("operationId={op}&$rid={rid}")
                } else {
                    format!("$rid={rid}&operationId={op}")
                };
                let parsed = parse_request(format!("{POLL_PREFIX}{query}").as_bytes()).unwrap();
                prop_assert_eq!(parsed, Request::Poll { rid: rid.clone(), operation_id: op });
                let reg = parse_request(format!("{REGISTER_PREFIX}$rid={rid}").as_bytes()).unwrap();
                prop_assert_eq!(reg.rid(), rid.as_str());
            }

            #[test]
            fn response_topic_parses_like_python(status in 200u16..600, rid in rid(), retry in proptest::option::of(0u32..10_000)) {
                prop_assume!(is_valid_rid(&rid));
                let topic = response_topic(status, &rid, retry);
                // Python: topic.split("$") -> [_, "dps/registrations/res/<status>/?", "rid=...&retry-after=n"].
                let parts: Vec<&str> = topic.split('$').collect();
                prop_assert_eq!(parts.len(), 3);
                let status_text = status.to_string();
                prop_assert_eq!(parts[1].split('/').nth(3), Some(status_text.as_str()));
                let pairs: Vec<(&str, &str)> = parts[2].split('&').map(|p| p.split_once('=').unwrap()).collect();
                prop_assert_eq!(pairs[0], ("rid", rid.as_str()));
                prop_assert_eq!(pairs.get(1).map(|p| p.1.parse::<u32>().unwrap()), retry);
                prop_assert!(!topic.contains('#') && !topic.contains('+') && !topic.ends_with('&'));
            }

            #[test]
            fn parsers_never_panic(topic in proptest::collection::vec(any::<u8>(), 0..600), name in ".{0,1100}") {
                let _ = parse_request(&topic);
                let _ = parse_username(&name);
            }

            #[test]
            fn arbitrary_queries_never_panic(query in "[$a-zA-Z=&%0-9.]{0,200}") {
                let _ = parse_request(format!("{POLL_PREFIX}{query}").as_bytes());
            }
        }
    }
}
