//! The DPS MQTT session of one connection, without I/O (quinn style): packets, results and
//! time go in through `handle_*`; what to do comes out of [`Session::poll_action`]; when to
//! call [`Session::handle_tick`] next comes out of [`Session::next_deadline`].
//!
//! The session never touches a socket, a clock, the registrar or a credential check: it asks
//! the driver to [authenticate](Action::Authenticate) a CONNECT and to [start a
//! registration](Action::Register), and is told the outcome. So every rule below is tested in
//! memory, deterministically.
//!
//! Rules (DPS MQTT, `dps-protocol.md` §3 and §11):
//! * the first packet must be CONNECT, within the connect timeout; the client id must equal
//!   the username's registration id (any letter case); CleanSession 0 and 1 are both fine;
//!   CONNACK always has session-present 0; another protocol level gets CONNACK 1, the reserved
//!   flag set a close without CONNACK (MQTT 3.1.1 §3.1.2.2, §3.1.2.3);
//! * SUBSCRIBE `$dps/registrations/res/#` is granted `min(requested, 1)`, any other filter
//!   fails (0x80); UNSUBSCRIBE, PINGREQ are answered; DISCONNECT closes;
//! * a PUBLISH to the register topic (QoS 0 or 1, PUBACK for 1) answers `202` + `assigning`
//!   and starts a registration; a PUBLISH to the poll topic answers `202` while it runs and
//!   `200` with the registration state when done; an unknown operation answers `404`;
//! * a request topic with a valid `$rid` but an otherwise malformed query (a poll without
//!   `operationId`, say) answers `400` on that `$rid`; any other topic closes the connection
//!   (DPS is not a broker);
//! * limits: concurrent operations and requests per connection (`429` + `retry-after`),
//!   unacknowledged responses (the oldest is forgotten: DPS never retransmits), packets
//!   received while the CONNECT is being authenticated, idle time (1.5 × keep-alive, with
//!   keep-alive capped and 0 taken as the cap), and the connection's lifetime.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dps_types::{
    DeviceRegistration, DeviceRegistrationResult, ErrorCode, ErrorDetails, IdScope, RegistrationId,
    RegistrationOperationStatus,
};
use serde::Serialize;

use crate::codec::{BadConnect, ConnAckCode, ConnectPacket, Inbound, Outbound, PublishPacket, QoS};
use crate::topics::{self, NameError, Request};

/// `retry-after` on the register `202`. One second: registrations finish in milliseconds (one
/// durable write), so a longer wait is pure latency; 1 is the smallest value C accepts (it
/// clamps to 1..300) and Node waits exactly this long. Python ignores it and waits 2 s.
pub const REGISTER_RETRY_AFTER_SECS: u32 = 1;

/// `retry-after` on a poll `202` (the registration is still running): as above.
pub const POLL_RETRY_AFTER_SECS: u32 = 1;

/// `retry-after` on a `429` for too many concurrent operations on one connection: long
/// enough for the running ones (milliseconds each) to finish.
pub const OPERATIONS_RETRY_AFTER_SECS: u32 = 2;

/// `retry-after` on a `429` once a connection has used its request budget. Every SDK retries
/// a `429` on the same connection, so this only slows a looping client down (to one request
/// per 30 s, the SDKs' per-request timeout).
pub const REQUEST_BUDGET_RETRY_AFTER_SECS: u32 = 30;

/// Responses whose PUBACK we still track. DPS keeps no session and never retransmits, so the
/// set only keeps fresh packet ids from colliding with ones in flight; when it is full the
/// oldest is forgotten. 16 is four times the default concurrent-operation limit.
pub const MAX_UNACKED: usize = 16;

/// Packets a device may pipeline behind its CONNECT before the CONNACK (MQTT allows it; the
/// SDKs wait). Enough for SUBSCRIBE + PUBLISH with room to spare; more closes the connection.
pub const MAX_PENDING_BEFORE_CONNACK: usize = 8;

/// Most bytes of a parse error echoed in a `400` message (serde messages can quote input).
const MAX_ERROR_MESSAGE: usize = 256;

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The ID scope this service answers to (the username's must match).
    pub id_scope: IdScope,
    /// Time from creation to the CONNECT.
    pub connect_timeout: Duration,
    /// Requests (register + poll publishes) served per connection; later ones get `429`.
    pub max_requests: u32,
    /// Registrations running at once per connection; more get `429`.
    pub max_operations: usize,
    /// The largest keep-alive honoured; keep-alive 0 (none) and larger values get this one.
    pub max_keep_alive: Duration,
    /// Time from creation to the close, whatever the device does.
    pub max_lifetime: Duration,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this packet.
    Send(Outbound),
    /// Check these credentials, then call [`Session::handle_authenticated`] or
    /// [`Session::handle_refused`].
    Authenticate(Credentials),
    /// Run a registration, then call [`Session::handle_registration_done`] with this id.
    Register {
        /// The operation id the device will poll with.
        operation_id: String,
        /// The device's custom `payload` (for an allocation webhook), if any.
        payload: Option<serde_json::Value>,
    },
    /// Flush what was sent and close the connection.
    Close(CloseReason),
}

/// The identity a CONNECT claims. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The registration id from the username (equal to the client id).
    pub registration_id: RegistrationId,
    /// The SAS token, for symmetric-key devices; X.509 devices send none.
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("registration_id", &self.registration_id)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How a registration ended, as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationOutcome {
    /// The registrar answered (assigned, failed or disabled: see `status`).
    Done(Box<DeviceRegistrationResult>),
    /// The registrar is overloaded: the next poll gets `429` + this `retry-after`, and the
    /// poll after it starts the registration again (every SDK re-polls the same operation
    /// after a `429`, none re-registers).
    Busy {
        /// Seconds the device should wait.
        retry_after_secs: u32,
    },
    /// Our own failure: the next poll gets `500`, then the operation is forgotten (so the
    /// poll after it gets `404` and the SDK gives up instead of retrying a 5xx forever).
    Failed,
}

/// Why the session closed. Bounded: usable as a metric label through [`CloseReason::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The device sent DISCONNECT.
    ClientDisconnected,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// Nothing received for 1.5 × keep-alive.
    IdleTimeout,
    /// CONNACK 4: no username, or not `{idScope}/registrations/{id}/api-version=...`.
    BadUsername,
    /// CONNACK 2: the client id is not the username's registration id.
    ClientIdMismatch,
    /// CONNACK 5: the username's ID scope is not this service's.
    WrongIdScope,
    /// CONNACK 5: the credentials were refused.
    NotAuthorized,
    /// A PUBLISH to a topic that is not a DPS request topic.
    UnknownTopic,
    /// The device broke MQTT or DPS rules (named for logs).
    ProtocolViolation(&'static str),
    /// The server is shutting down and the connection had no registration running.
    ServerShutdown,
    /// CONNACK 1: the CONNECT is not MQTT 3.1.1 (another protocol level or name).
    UnsupportedProtocolVersion,
    /// CONNACK 3: the device already holds its maximum of connections.
    DeviceConnectionLimit,
    /// The connection reached its maximum lifetime.
    LifetimeExceeded,
}

impl CloseReason {
    /// A fixed label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnected => "client_disconnected",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::BadUsername => "bad_username",
            CloseReason::ClientIdMismatch => "client_id_mismatch",
            CloseReason::WrongIdScope => "wrong_id_scope",
            CloseReason::NotAuthorized => "not_authorized",
            CloseReason::UnknownTopic => "unknown_topic",
            CloseReason::ProtocolViolation(_) => "protocol_violation",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::UnsupportedProtocolVersion => "unsupported_protocol_version",
            CloseReason::DeviceConnectionLimit => "device_connection_limit",
            CloseReason::LifetimeExceeded => "lifetime_exceeded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Authenticating,
    Connected,
    Closed,
}

/// One registration operation of this connection.
#[derive(Debug)]
enum Operation {
    /// The registrar is working on it (counts against `max_operations`).
    Running { payload: Option<serde_json::Value> },
    /// The registrar was busy: the next poll answers `429`.
    Throttled {
        retry_after_secs: u32,
        payload: Option<serde_json::Value>,
    },
    /// A `429` was answered: the next poll starts it again.
    Deferred { payload: Option<serde_json::Value> },
    /// Finished: polls answer `200` with this.
    Done(Box<DeviceRegistrationResult>),
    /// Our failure: the next poll answers `500` and forgets it.
    Failed,
}

/// The sans-IO state of one DPS MQTT connection.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    phase: Phase,
    actions: VecDeque<Action>,
    /// Connect deadline before the CONNACK, idle deadline after.
    deadline: Instant,
    /// The end of the connection's lifetime.
    expires: Instant,
    idle_timeout: Duration,
    registration_id: Option<RegistrationId>,
    pending: Vec<Inbound>,
    /// QoS granted to the response filter (responses go at `min(1, granted)`).
    granted: Option<QoS>,
    requests: u32,
    /// Bounded by `max_requests`: only a request creates an operation.
    operations: HashMap<String, Operation>,
    running: usize,
    last_pkid: u16,
    unacked: VecDeque<u16>,
}

impl Session {
    /// A session for a connection whose transport (TLS) is up at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let deadline = now + config.connect_timeout;
        let expires = now + config.max_lifetime;
        let idle_timeout = idle_timeout(0, config.max_keep_alive);
        Self {
            config,
            phase: Phase::AwaitingConnect,
            actions: VecDeque::new(),
            deadline,
            expires,
            idle_timeout,
            registration_id: None,
            pending: Vec::new(),
            granted: None,
            requests: 0,
            operations: HashMap::new(),
            running: 0,
            last_pkid: 0,
            unacked: VecDeque::new(),
        }
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Session::handle_tick`] must be called next (`None` once closed).
    pub fn next_deadline(&self) -> Option<Instant> {
        (self.phase != Phase::Closed).then_some(self.deadline.min(self.expires))
    }

    /// Whether a `Close` has been issued (later inputs are ignored).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The registration id the CONNECT claimed (authenticated once CONNACK 0 went out).
    pub fn registration_id(&self) -> Option<&RegistrationId> {
        self.registration_id.as_ref()
    }

    /// Registrations currently running.
    pub fn running_operations(&self) -> usize {
        self.running
    }

    /// A packet from the device.
    pub fn handle_packet(&mut self, packet: Inbound, now: Instant) {
        match self.phase {
            Phase::Closed => {}
            Phase::AwaitingConnect => match packet {
                Inbound::Connect(connect) => self.on_connect(connect),
                Inbound::BadConnect(BadConnect::ProtocolLevel(_)) => self.refuse(
                    ConnAckCode::UnacceptableProtocolVersion,
                    CloseReason::UnsupportedProtocolVersion,
                ),
                // MQTT 3.1.1 §3.1.2.3: disconnect, no CONNACK.
                Inbound::BadConnect(BadConnect::ReservedFlag) => self.close(
                    CloseReason::ProtocolViolation("the reserved CONNECT flag is set"),
                ),
                _ => self.close(CloseReason::ProtocolViolation(
                    "the first packet must be CONNECT",
                )),
            },
            Phase::Authenticating => {
                if self.pending.len() >= MAX_PENDING_BEFORE_CONNACK {
                    self.close(CloseReason::ProtocolViolation(
                        "too many packets before CONNACK",
                    ));
                } else {
                    self.pending.push(packet);
                }
            }
            Phase::Connected => {
                self.deadline = now + self.idle_timeout;
                self.on_packet(packet);
            }
        }
    }

    /// The credentials of [`Action::Authenticate`] were accepted: CONNACK 0, then any
    /// packets that arrived meanwhile.
    pub fn handle_authenticated(&mut self, now: Instant) {
        if self.phase != Phase::Authenticating {
            return;
        }
        self.phase = Phase::Connected;
        self.send(Outbound::ConnAck(ConnAckCode::Accepted));
        self.deadline = now + self.idle_timeout;
        for packet in std::mem::take(&mut self.pending) {
            self.handle_packet(packet, now);
        }
    }

    /// The credentials were refused: CONNACK 5 (not authorized), then close.
    pub fn handle_refused(&mut self) {
        if self.phase == Phase::Authenticating {
            self.pending.clear();
            self.refuse(ConnAckCode::NotAuthorized, CloseReason::NotAuthorized);
        }
    }

    /// The credentials were accepted but the device already holds its maximum of
    /// connections: CONNACK 3 (server unavailable), then close. Every SDK retries a CONNACK 3
    /// later, by which time one of its old connections has ended.
    pub fn handle_device_busy(&mut self) {
        if self.phase == Phase::Authenticating {
            self.pending.clear();
            self.refuse(
                ConnAckCode::ServerUnavailable,
                CloseReason::DeviceConnectionLimit,
            );
        }
    }

    /// A registration started by [`Action::Register`] ended. Unknown ids are ignored.
    pub fn handle_registration_done(&mut self, operation_id: &str, outcome: RegistrationOutcome) {
        let Some(operation) = self.operations.get_mut(operation_id) else {
            return;
        };
        let Operation::Running { payload } = operation else {
            return;
        };
        let payload = payload.take();
        self.running -= 1;
        *operation = match outcome {
            RegistrationOutcome::Done(result) => Operation::Done(result),
            RegistrationOutcome::Busy { retry_after_secs } => Operation::Throttled {
                retry_after_secs,
                payload,
            },
            RegistrationOutcome::Failed => Operation::Failed,
        };
    }

    /// Time passed: closes the session when the connect or idle deadline or the end of its
    /// lifetime is past.
    pub fn handle_tick(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        if now >= self.expires {
            return self.close(CloseReason::LifetimeExceeded);
        }
        if now < self.deadline {
            return;
        }
        let reason = match self.phase {
            Phase::Connected => CloseReason::IdleTimeout,
            _ => CloseReason::ConnectTimeout,
        };
        self.close(reason);
    }

    fn on_connect(&mut self, connect: ConnectPacket) {
        self.idle_timeout = idle_timeout(connect.keep_alive, self.config.max_keep_alive);
        let Some(username) = connect.username.as_deref() else {
            return self.refuse(ConnAckCode::BadUsernameOrPassword, CloseReason::BadUsername);
        };
        let Ok(username) = topics::parse_username(username) else {
            return self.refuse(ConnAckCode::BadUsernameOrPassword, CloseReason::BadUsername);
        };
        if !connect
            .client_id
            .eq_ignore_ascii_case(username.registration_id.as_str())
        {
            return self.refuse(
                ConnAckCode::IdentifierRejected,
                CloseReason::ClientIdMismatch,
            );
        }
        if self.config.id_scope != username.id_scope {
            return self.refuse(ConnAckCode::NotAuthorized, CloseReason::WrongIdScope);
        }
        self.phase = Phase::Authenticating;
        self.registration_id = Some(username.registration_id.clone());
        self.actions.push_back(Action::Authenticate(Credentials {
            registration_id: username.registration_id,
            password: connect.password,
        }));
    }

    fn on_packet(&mut self, packet: Inbound) {
        match packet {
            Inbound::Connect(_) | Inbound::BadConnect(_) => {
                self.close(CloseReason::ProtocolViolation("a second CONNECT"))
            }
            Inbound::Publish(publish) => self.on_publish(publish),
            Inbound::PubAck { pkid } => self.unacked.retain(|&id| id != pkid),
            Inbound::Subscribe { pkid, filters } => {
                let granted = filters
                    .iter()
                    .map(|(filter, qos)| {
                        (filter == topics::RESPONSE_FILTER).then_some(match qos {
                            QoS::AtMostOnce => QoS::AtMostOnce,
                            _ => QoS::AtLeastOnce,
                        })
                    })
                    .collect::<Vec<_>>();
                if let Some(qos) = granted.iter().flatten().last() {
                    self.granted = Some(*qos);
                }
                self.send(Outbound::SubAck { pkid, granted });
            }
            Inbound::Unsubscribe { pkid } => self.send(Outbound::UnsubAck { pkid }),
            Inbound::PingReq => self.send(Outbound::PingResp),
            Inbound::Disconnect => self.close(CloseReason::ClientDisconnected),
            Inbound::Unexpected(_) => self.close(CloseReason::ProtocolViolation(
                "a packet only a server sends",
            )),
        }
    }

    fn on_publish(&mut self, publish: PublishPacket) {
        if publish.qos == QoS::ExactlyOnce {
            return self.close(CloseReason::ProtocolViolation("QoS 2 PUBLISH"));
        }
        // A request topic with an echo-able `$rid` is answered, even when the rest of its
        // query is wrong (the device learns why); without one there is no way to answer.
        let request = match topics::parse_request(&publish.topic) {
            Ok(request) => Ok(request),
            Err(NameError::BadRequest { rid, why }) => Err((rid, why)),
            Err(_) => return self.close(CloseReason::UnknownTopic),
        };
        if publish.qos == QoS::AtLeastOnce {
            self.send(Outbound::PubAck { pkid: publish.pkid });
        }
        let rid = match &request {
            Ok(request) => request.rid(),
            Err((rid, _)) => rid.as_str(),
        };
        self.requests = self.requests.saturating_add(1);
        if self.requests > self.config.max_requests {
            let body =
                ErrorDetails::new(ErrorCode::Throttled, "too many requests on this connection");
            return self.respond(429, rid, Some(REQUEST_BUDGET_RETRY_AFTER_SECS), &body);
        }
        match request {
            Ok(Request::Register { rid }) => self.on_register(&rid, &publish.payload),
            Ok(Request::Poll { rid, operation_id }) => self.on_poll(&rid, &operation_id),
            Err((rid, why)) => {
                let body = ErrorDetails::new(ErrorCode::BadRequest, why);
                self.respond(400, &rid, None, &body);
            }
        }
    }

    fn on_register(&mut self, rid: &str, body: &[u8]) {
        if self.running >= self.config.max_operations {
            return self.throttle_operations(rid);
        }
        let registration = match parse_registration(body) {
            Ok(registration) => registration,
            Err(e) => {
                let mut message = format!("the register body is not a DeviceRegistration: {e}");
                truncate(&mut message, MAX_ERROR_MESSAGE);
                return self.respond(
                    400,
                    rid,
                    None,
                    &ErrorDetails::new(ErrorCode::BadRequest, message),
                );
            }
        };
        let Some(registration_id) = self.registration_id.clone() else {
            // Connected implies a registration id; keep going without a panic if not.
            return self.close(CloseReason::ProtocolViolation("register before CONNECT"));
        };
        let operation_id = new_operation_id();
        let body = RegistrationOperationStatus::assigning(operation_id.clone(), registration_id);
        self.respond(202, rid, Some(REGISTER_RETRY_AFTER_SECS), &body);
        self.start(&operation_id, registration.payload);
    }

    fn on_poll(&mut self, rid: &str, operation_id: &str) {
        let Some(registration_id) = self.registration_id.clone() else {
            return self.close(CloseReason::ProtocolViolation("poll before CONNECT"));
        };
        let assigning = || {
            RegistrationOperationStatus::assigning(operation_id.to_owned(), registration_id.clone())
        };
        let Some(operation) = self.operations.get_mut(operation_id) else {
            let body =
                ErrorDetails::new(ErrorCode::NotFound, "no such operation on this connection");
            return self.respond(404, rid, None, &body);
        };
        match operation {
            Operation::Running { .. } => {
                self.respond(202, rid, Some(POLL_RETRY_AFTER_SECS), &assigning())
            }
            Operation::Throttled {
                retry_after_secs,
                payload,
            } => {
                let retry = *retry_after_secs;
                *operation = Operation::Deferred {
                    payload: payload.take(),
                };
                let body = ErrorDetails::new(
                    ErrorCode::Throttled,
                    "the service is busy; poll again later",
                );
                self.respond(429, rid, Some(retry), &body);
            }
            Operation::Deferred { payload } => {
                if self.running >= self.config.max_operations {
                    return self.throttle_operations(rid);
                }
                let payload = payload.take();
                self.respond(202, rid, Some(POLL_RETRY_AFTER_SECS), &assigning());
                self.start(operation_id, payload);
            }
            Operation::Done(result) => {
                let body = RegistrationOperationStatus {
                    operation_id: operation_id.to_owned(),
                    status: result.status,
                    registration_state: Some((**result).clone()),
                };
                self.respond(200, rid, None, &body);
            }
            Operation::Failed => {
                self.operations.remove(operation_id);
                let body = ErrorDetails::new(
                    ErrorCode::InternalServerError,
                    "the registration failed; register again",
                );
                self.respond(500, rid, None, &body);
            }
        }
    }

    /// Marks `operation_id` running and asks the driver to run it.
    fn start(&mut self, operation_id: &str, payload: Option<serde_json::Value>) {
        self.running += 1;
        self.operations.insert(
            operation_id.to_owned(),
            Operation::Running {
                payload: payload.clone(),
            },
        );
        self.actions.push_back(Action::Register {
            operation_id: operation_id.to_owned(),
            payload,
        });
    }

    fn throttle_operations(&mut self, rid: &str) {
        let body = ErrorDetails::new(
            ErrorCode::Throttled,
            "too many registrations running on this connection",
        );
        self.respond(429, rid, Some(OPERATIONS_RETRY_AFTER_SECS), &body);
    }

    /// Publishes a response on `$dps/registrations/res/<status>/?$rid=<rid>[&retry-after=<n>]`.
    fn respond(
        &mut self,
        status: u16,
        rid: &str,
        retry_after_secs: Option<u32>,
        body: &impl Serialize,
    ) {
        let payload = match serde_json::to_vec(body) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "bug: a response body did not serialize");
                b"{}".to_vec()
            }
        };
        let pkid = match self.granted {
            Some(QoS::AtMostOnce) => None,
            _ => Some(self.allocate_pkid()),
        };
        self.send(Outbound::Publish {
            pkid,
            topic: topics::response_topic(status, rid, retry_after_secs),
            payload: Bytes::from(payload),
        });
    }

    /// The next packet id that is not awaiting a PUBACK (never 0).
    fn allocate_pkid(&mut self) -> u16 {
        if self.unacked.len() >= MAX_UNACKED {
            self.unacked.pop_front();
        }
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.unacked.contains(&self.last_pkid) {
                break;
            }
        }
        self.unacked.push_back(self.last_pkid);
        self.last_pkid
    }

    fn send(&mut self, packet: Outbound) {
        self.actions.push_back(Action::Send(packet));
    }

    fn refuse(&mut self, code: ConnAckCode, reason: CloseReason) {
        self.send(Outbound::ConnAck(code));
        self.close(reason);
    }

    fn close(&mut self, reason: CloseReason) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.actions.push_back(Action::Close(reason));
        }
    }
}

/// 1.5 × keep-alive (MQTT 3.1.1 §3.1.2.10), where keep-alive 0 (none) and values above
/// `max_keep_alive` count as `max_keep_alive`: a device cannot hold an idle connection longer.
fn idle_timeout(keep_alive_secs: u16, max_keep_alive: Duration) -> Duration {
    let asked = Duration::from_secs(u64::from(keep_alive_secs));
    let keep_alive = if asked.is_zero() || asked > max_keep_alive {
        max_keep_alive
    } else {
        asked
    };
    keep_alive * 3 / 2
}

/// The register body. An empty (or blank) body is taken as `{}`: the identity comes from the
/// connection, and the only thing a body adds is the optional custom payload.
fn parse_registration(body: &[u8]) -> Result<DeviceRegistration, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeviceRegistration::default());
    }
    serde_json::from_slice(body)
}

/// A URL-safe operation id in DPS's shape, `4.<16 hex>.<uuid>` (55 bytes).
fn new_operation_id() -> String {
    format!("4.{:016x}.{}", rand::random::<u64>(), uuid::Uuid::new_v4())
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests;
