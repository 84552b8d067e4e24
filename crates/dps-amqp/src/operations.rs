//! The registration operations of one connection, without I/O: requests in, answers and
//! registrations to run out (the same rules as the MQTT frontend's session, so a device sees
//! one DPS whatever its transport).
//!
//! * register: answered `202` + `assigning` with a fresh operation id at once, and the
//!   registration starts ([`Start`]);
//! * poll (`iotdps-get-operationstatus`): `202` while it runs, `200` with the registration
//!   state when done, `404` for an operation this connection does not know;
//! * the registrar was busy: the next poll gets `429` + `retry-after`, the poll after it starts
//!   the registration again (every SDK re-polls after a throttled poll);
//! * our own failure: the next poll gets `500` and the operation is forgotten;
//! * limits: requests per connection and registrations running at once (`429`).

use std::collections::HashMap;

use dps_types::{
    DeviceRegistrationResult, ErrorCode, ErrorDetails, RegistrationId, RegistrationOperationStatus,
};

/// `retry-after` on the register `202`: registrations take milliseconds (one durable write),
/// 1 is the smallest value C accepts (it clamps to 1..300), and Node waits exactly this long.
pub const REGISTER_RETRY_AFTER_SECS: u32 = 1;

/// `retry-after` on a poll `202` (the registration still runs): as above.
pub const POLL_RETRY_AFTER_SECS: u32 = 1;

/// `retry-after` on a `429` for too many registrations running on one connection: long enough
/// for the running ones (milliseconds each) to finish.
pub const OPERATIONS_RETRY_AFTER_SECS: u32 = 2;

/// `retry-after` on a `429` once a connection has used its request budget: SDKs retry on the
/// same connection, so this only slows a looping client down to one request per SDK timeout.
pub const REQUEST_BUDGET_RETRY_AFTER_SECS: u32 = 30;

/// A device's request, parsed from its message.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `iotdps-register`, with the body's custom `payload` (for an allocation webhook).
    Register {
        /// The `payload` member of the `DeviceRegistration` body.
        payload: Option<serde_json::Value>,
    },
    /// `iotdps-get-operationstatus` with `iotdps-operation-id`.
    Poll {
        /// The operation id the register answer gave.
        operation_id: String,
    },
}

/// What to tell the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A response message (status 200 or 202) with this body.
    Status {
        /// 200 (done) or 202 (assigning).
        status: u16,
        /// The `RegistrationOperationStatus`.
        body: Box<RegistrationOperationStatus>,
        /// The `retry-after` application property.
        retry_after_secs: Option<u32>,
    },
    /// A rejected disposition whose error carries DPS's error JSON.
    Error {
        /// The HTTP-style status (`errorCode / 1000`).
        status: u16,
        /// The error JSON.
        details: ErrorDetails,
        /// `retry-after` / `Retry-After` in the error's info.
        retry_after_secs: Option<u32>,
    },
}

impl Answer {
    fn error(code: ErrorCode, message: &str, retry_after_secs: Option<u32>) -> Self {
        Answer::Error {
            status: code.status(),
            details: ErrorDetails::new(code, message),
            retry_after_secs,
        }
    }

    /// The status, for logs and tests.
    pub fn status(&self) -> u16 {
        match self {
            Answer::Status { status, .. } | Answer::Error { status, .. } => *status,
        }
    }
}

/// A registration the driver must run, then report with [`Operations::done`].
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// The operation it belongs to.
    pub operation_id: String,
    /// The device's custom payload.
    pub payload: Option<serde_json::Value>,
}

/// How a registration ended, as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The registrar answered (assigned, failed or disabled: see `status`).
    Done(Box<DeviceRegistrationResult>),
    /// The registrar is overloaded (or its broker unreachable): the next poll gets `429` with
    /// this `retry-after`, and the poll after it starts the registration again.
    Busy {
        /// Seconds the device should wait.
        retry_after_secs: u32,
    },
    /// Our own failure: the next poll gets `500`, then the operation is forgotten.
    Failed,
}

/// Per-connection bounds.
#[derive(Debug, Clone, Copy)]
pub struct OperationLimits {
    /// Requests (register + poll) served per connection; later ones get `429`.
    pub max_requests: u32,
    /// Registrations running at once per connection; more get `429`.
    pub max_running: usize,
}

#[derive(Debug)]
enum Operation {
    Running {
        payload: Option<serde_json::Value>,
    },
    Throttled {
        retry_after_secs: u32,
        payload: Option<serde_json::Value>,
    },
    Deferred {
        payload: Option<serde_json::Value>,
    },
    Done(Box<DeviceRegistrationResult>),
    Failed,
}

/// The operations of one authenticated device's connection.
#[derive(Debug)]
pub struct Operations {
    limits: OperationLimits,
    registration_id: RegistrationId,
    requests: u32,
    /// Bounded by `max_requests`: only a request creates an operation.
    operations: HashMap<String, Operation>,
    running: usize,
}

impl Operations {
    /// No operations yet, for the device `registration_id`.
    pub fn new(limits: OperationLimits, registration_id: RegistrationId) -> Self {
        Self {
            limits,
            registration_id,
            requests: 0,
            operations: HashMap::new(),
            running: 0,
        }
    }

    /// Registrations running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Counts a request that could not be parsed against the budget; `Some` answer once the
    /// budget is spent (the caller answers its own `400` otherwise).
    pub fn handle_malformed(&mut self) -> Option<Answer> {
        self.over_budget()
    }

    /// A request: its answer, and a registration to start.
    pub fn handle(&mut self, request: Request) -> (Answer, Option<Start>) {
        if let Some(answer) = self.over_budget() {
            return (answer, None);
        }
        match request {
            Request::Register { payload } => {
                if self.running >= self.limits.max_running {
                    return (throttle_running(), None);
                }
                let operation_id = new_operation_id();
                let body = RegistrationOperationStatus::assigning(
                    operation_id.clone(),
                    self.registration_id.clone(),
                );
                let start = self.start(&operation_id, payload);
                (
                    Answer::Status {
                        status: 202,
                        body: Box::new(body),
                        retry_after_secs: Some(REGISTER_RETRY_AFTER_SECS),
                    },
                    Some(start),
                )
            }
            Request::Poll { operation_id } => self.poll(&operation_id),
        }
    }

    /// A registration started by [`Start`] ended.
    pub fn done(&mut self, operation_id: &str, outcome: Outcome) {
        let Some(operation) = self.operations.get_mut(operation_id) else {
            return;
        };
        if matches!(operation, Operation::Running { .. }) {
            self.running = self.running.saturating_sub(1);
        }
        let payload = match operation {
            Operation::Running { payload } => payload.take(),
            _ => None,
        };
        *operation = match outcome {
            Outcome::Done(result) => Operation::Done(result),
            Outcome::Busy { retry_after_secs } => Operation::Throttled {
                retry_after_secs,
                payload,
            },
            Outcome::Failed => Operation::Failed,
        };
    }

    fn over_budget(&mut self) -> Option<Answer> {
        self.requests = self.requests.saturating_add(1);
        (self.requests > self.limits.max_requests).then(|| {
            Answer::error(
                ErrorCode::Throttled,
                "too many requests on this connection",
                Some(REQUEST_BUDGET_RETRY_AFTER_SECS),
            )
        })
    }

    fn poll(&mut self, operation_id: &str) -> (Answer, Option<Start>) {
        let assigning = |id: &RegistrationId| Answer::Status {
            status: 202,
            body: Box::new(RegistrationOperationStatus::assigning(
                operation_id.to_owned(),
                id.clone(),
            )),
            retry_after_secs: Some(POLL_RETRY_AFTER_SECS),
        };
        let Some(operation) = self.operations.get_mut(operation_id) else {
            let answer = Answer::error(
                ErrorCode::NotFound,
                "no such operation on this connection",
                None,
            );
            return (answer, None);
        };
        match operation {
            Operation::Running { .. } => (assigning(&self.registration_id), None),
            Operation::Throttled {
                retry_after_secs,
                payload,
            } => {
                let retry = *retry_after_secs;
                *operation = Operation::Deferred {
                    payload: payload.take(),
                };
                let answer = Answer::error(
                    ErrorCode::Throttled,
                    "the service is busy; poll again later",
                    Some(retry),
                );
                (answer, None)
            }
            Operation::Deferred { payload } => {
                if self.running >= self.limits.max_running {
                    return (throttle_running(), None);
                }
                let payload = payload.take();
                let start = self.start(operation_id, payload);
                (assigning(&self.registration_id), Some(start))
            }
            Operation::Done(result) => {
                let body = RegistrationOperationStatus {
                    operation_id: operation_id.to_owned(),
                    status: result.status,
                    registration_state: Some((**result).clone()),
                };
                let answer = Answer::Status {
                    status: 200,
                    body: Box::new(body),
                    retry_after_secs: None,
                };
                (answer, None)
            }
            Operation::Failed => {
                self.operations.remove(operation_id);
                let answer = Answer::error(
                    ErrorCode::InternalServerError,
                    "the registration failed; register again",
                    None,
                );
                (answer, None)
            }
        }
    }

    fn start(&mut self, operation_id: &str, payload: Option<serde_json::Value>) -> Start {
        self.running += 1;
        self.operations.insert(
            operation_id.to_owned(),
            Operation::Running {
                payload: payload.clone(),
            },
        );
        Start {
            operation_id: operation_id.to_owned(),
            payload,
        }
    }
}

fn throttle_running() -> Answer {
    Answer::error(
        ErrorCode::Throttled,
        "too many registrations running on this connection",
        Some(OPERATIONS_RETRY_AFTER_SECS),
    )
}

/// A URL-safe operation id in DPS's shape, `4.<16 hex>.<uuid>` (55 bytes).
fn new_operation_id() -> String {
    format!("4.{:016x}.{}", rand::random::<u64>(), uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use dps_types::RegistrationStatus;

    use super::*;

    fn ops(max_requests: u32, max_running: usize) -> Operations {
        Operations::new(
            OperationLimits {
                max_requests,
                max_running,
            },
            RegistrationId::parse("dev-1").unwrap(),
        )
    }

    fn register(ops: &mut Operations) -> (Answer, Option<Start>) {
        ops.handle(Request::Register { payload: None })
    }

    fn poll(ops: &mut Operations, operation_id: &str) -> (Answer, Option<Start>) {
        ops.handle(Request::Poll {
            operation_id: operation_id.to_owned(),
        })
    }

    fn assigned() -> Outcome {
        let mut result = DeviceRegistrationResult::new(
            RegistrationId::parse("dev-1").unwrap(),
            RegistrationStatus::Assigned,
        );
        result.device_id = Some(dps_types::DeviceId::parse("dev-1").unwrap());
        Outcome::Done(Box::new(result))
    }

    #[test]
    fn register_answers_assigning_then_polls_follow_the_registration() {
        let mut ops = ops(64, 4);
        let (answer, start) = register(&mut ops);
        let start = start.expect("a registration starts");
        let Answer::Status {
            status: 202,
            body,
            retry_after_secs: Some(REGISTER_RETRY_AFTER_SECS),
        } = answer
        else {
            panic!("{answer:?}");
        };
        assert_eq!(body.operation_id, start.operation_id);
        assert_eq!(body.status, RegistrationStatus::Assigning);
        assert_eq!(ops.running(), 1);

        let (answer, again) = poll(&mut ops, &start.operation_id);
        assert_eq!(answer.status(), 202);
        assert!(again.is_none());

        ops.done(&start.operation_id, assigned());
        assert_eq!(ops.running(), 0);
        let (answer, _) = poll(&mut ops, &start.operation_id);
        let Answer::Status {
            status: 200, body, ..
        } = answer
        else {
            panic!("{answer:?}");
        };
        assert_eq!(body.status, RegistrationStatus::Assigned);
        assert_eq!(
            body.registration_state
                .and_then(|s| s.device_id)
                .map(|d| d.as_str().to_owned()),
            Some("dev-1".to_owned())
        );
    }

    #[test]
    fn an_unknown_operation_is_not_found() {
        let (answer, start) = poll(&mut ops(64, 4), "4.0.nope");
        assert_eq!(answer.status(), 404);
        assert!(start.is_none());
    }

    #[test]
    fn a_busy_registrar_throttles_one_poll_and_the_next_starts_it_again_with_its_payload() {
        let mut ops = ops(64, 4);
        let (_, start) = ops.handle(Request::Register {
            payload: Some(serde_json::json!({"a": 1})),
        });
        let start = start.unwrap();
        ops.done(
            &start.operation_id,
            Outcome::Busy {
                retry_after_secs: 7,
            },
        );
        let (answer, none) = poll(&mut ops, &start.operation_id);
        assert!(
            matches!(
                answer,
                Answer::Error {
                    status: 429,
                    retry_after_secs: Some(7),
                    ..
                }
            ),
            "{answer:?}"
        );
        assert!(none.is_none());
        let (answer, again) = poll(&mut ops, &start.operation_id);
        assert_eq!(answer.status(), 202);
        assert_eq!(
            again,
            Some(Start {
                operation_id: start.operation_id.clone(),
                payload: Some(serde_json::json!({"a": 1}))
            })
        );
    }

    #[test]
    fn our_failure_answers_500_once_then_the_operation_is_gone() {
        let mut ops = ops(64, 4);
        let start = register(&mut ops).1.unwrap();
        ops.done(&start.operation_id, Outcome::Failed);
        assert_eq!(poll(&mut ops, &start.operation_id).0.status(), 500);
        assert_eq!(poll(&mut ops, &start.operation_id).0.status(), 404);
    }

    #[test]
    fn running_registrations_and_requests_are_bounded() {
        let mut ops = ops(4, 1);
        let first = register(&mut ops).1.unwrap();
        let (answer, start) = register(&mut ops);
        assert!(
            matches!(
                answer,
                Answer::Error {
                    status: 429,
                    retry_after_secs: Some(OPERATIONS_RETRY_AFTER_SECS),
                    ..
                }
            ),
            "{answer:?}"
        );
        assert!(start.is_none());
        ops.done(&first.operation_id, assigned());
        assert!(
            ops.handle_malformed().is_none(),
            "the fourth request is within budget"
        );
        assert!(register(&mut ops).1.is_some());
        let over = ops
            .handle_malformed()
            .expect("the fifth request is over budget");
        assert!(
            matches!(
                over,
                Answer::Error {
                    status: 429,
                    retry_after_secs: Some(REQUEST_BUDGET_RETRY_AFTER_SECS),
                    ..
                }
            ),
            "{over:?}"
        );
        assert_eq!(poll(&mut ops, &first.operation_id).0.status(), 429);
    }

    #[test]
    fn operation_ids_are_fresh_and_url_safe() {
        let mut ops = ops(64, 8);
        let a = register(&mut ops).1.unwrap().operation_id;
        let b = register(&mut ops).1.unwrap().operation_id;
        assert_ne!(a, b);
        assert_eq!(a.len(), 55);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-'));
    }
}
