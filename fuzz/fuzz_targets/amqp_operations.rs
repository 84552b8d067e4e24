//! The operation table of one AMQP connection (`dps_amqp::operations::Operations`), driven by
//! an arbitrary sequence of requests and registration outcomes and checked against a model of
//! its rules.
//!
//! Input: one byte of limits (bits 0..=4: requests per connection - 1, bits 5..=6: running
//! registrations - 1), then one byte per step: bits 0..=2 the step (register, register with a
//! payload, poll a known operation (twice as likely), poll an unknown one, a malformed request,
//! end a running registration (twice as likely)), bits 3..=7 its argument (which operation,
//! which outcome, the `retry-after`).
//!
//! Checked: no panic; every answer (status, `retry-after`, operation id, registration state)
//! and every registration started is the model's; running registrations never exceed the
//! limit and are counted exactly; operation ids are fresh.

#![no_main]

use std::collections::HashMap;

use dps_amqp::operations::{
    Answer, OperationLimits, Operations, Outcome, Request, Start, OPERATIONS_RETRY_AFTER_SECS,
    POLL_RETRY_AFTER_SECS, REGISTER_RETRY_AFTER_SECS, REQUEST_BUDGET_RETRY_AFTER_SECS,
};
use dps_types::{DeviceRegistrationResult, RegistrationId, RegistrationStatus};
use libfuzzer_sys::fuzz_target;

type Payload = Option<serde_json::Value>;

/// What the model expects of one operation.
#[derive(Debug, Clone)]
enum Model {
    Running(Payload),
    Throttled(u32, Payload),
    Deferred(Payload),
    Done(Box<DeviceRegistrationResult>),
    Failed,
}

/// What the model expects as an answer.
#[derive(Debug, PartialEq)]
enum Expected {
    /// A status answer: status, `retry-after`, the registration state of a 200.
    Status(u16, Option<u32>, Option<Box<DeviceRegistrationResult>>),
    /// An error answer: status and `retry-after`.
    Error(u16, Option<u32>),
}

struct Harness {
    ops: Operations,
    limits: OperationLimits,
    device: RegistrationId,
    requests: u32,
    running: usize,
    model: HashMap<String, Model>,
    /// Every operation id handed out, in order (polls pick from these).
    known: Vec<String>,
    /// Registrations started and not yet ended, as the driver holds them.
    started: Vec<Start>,
}

impl Harness {
    fn request(&mut self, request: Request) {
        let (answer, start) = self.ops.handle(request.clone());
        self.requests += 1;
        let (expected, expected_start) = if self.requests > self.limits.max_requests {
            (
                Expected::Error(429, Some(REQUEST_BUDGET_RETRY_AFTER_SECS)),
                None,
            )
        } else {
            match request {
                Request::Register { payload } => self.register(payload, &answer, start.as_ref()),
                Request::Poll { operation_id } => self.poll(&operation_id),
            }
        };
        assert_eq!(summary(&answer), expected, "{answer:?}");
        if let Answer::Status { body, .. } = &answer {
            assert_eq!(
                body.registration_state.as_ref().map(|s| &s.registration_id),
                Some(&self.device)
            );
        }
        assert_eq!(start, expected_start);
        if let Some(start) = start {
            self.started.push(start);
        }
    }

    fn register(
        &mut self,
        payload: Payload,
        answer: &Answer,
        start: Option<&Start>,
    ) -> (Expected, Option<Start>) {
        if self.running >= self.limits.max_running {
            return (
                Expected::Error(429, Some(OPERATIONS_RETRY_AFTER_SECS)),
                None,
            );
        }
        let Answer::Status { body, .. } = answer else {
            panic!("a register within the limits was refused: {answer:?}");
        };
        let id = body.operation_id.clone();
        assert_eq!(start.map(|s| s.operation_id.as_str()), Some(id.as_str()));
        assert!(
            !self.model.contains_key(&id) && !self.known.contains(&id),
            "reused {id}"
        );
        assert_eq!(body.status, RegistrationStatus::Assigning);
        self.known.push(id.clone());
        self.model
            .insert(id.clone(), Model::Running(payload.clone()));
        self.running += 1;
        let expected = Expected::Status(202, Some(REGISTER_RETRY_AFTER_SECS), None);
        (
            expected,
            Some(Start {
                operation_id: id,
                payload,
            }),
        )
    }

    fn poll(&mut self, id: &str) -> (Expected, Option<Start>) {
        let assigning = Expected::Status(202, Some(POLL_RETRY_AFTER_SECS), None);
        let Some(state) = self.model.get(id).cloned() else {
            return (Expected::Error(404, None), None);
        };
        match state {
            Model::Running(_) => (assigning, None),
            Model::Throttled(retry, payload) => {
                self.model.insert(id.to_owned(), Model::Deferred(payload));
                (Expected::Error(429, Some(retry)), None)
            }
            Model::Deferred(payload) => {
                if self.running >= self.limits.max_running {
                    return (
                        Expected::Error(429, Some(OPERATIONS_RETRY_AFTER_SECS)),
                        None,
                    );
                }
                self.running += 1;
                self.model
                    .insert(id.to_owned(), Model::Running(payload.clone()));
                let start = Start {
                    operation_id: id.to_owned(),
                    payload,
                };
                (assigning, Some(start))
            }
            Model::Done(result) => (Expected::Status(200, None, Some(result)), None),
            Model::Failed => {
                self.model.remove(id);
                (Expected::Error(500, None), None)
            }
        }
    }

    fn malformed(&mut self) {
        let answer = self.ops.handle_malformed();
        self.requests += 1;
        if self.requests > self.limits.max_requests {
            let answer = answer.as_ref().map(summary);
            let budget = Expected::Error(429, Some(REQUEST_BUDGET_RETRY_AFTER_SECS));
            assert_eq!(answer, Some(budget));
        } else {
            assert!(answer.is_none(), "{answer:?}");
        }
    }

    fn end(&mut self, which: usize, arg: u8) {
        if self.started.is_empty() {
            return;
        }
        let start = self.started.remove(which % self.started.len());
        let id = start.operation_id;
        let Some(Model::Running(payload)) = self.model.get(&id).cloned() else {
            panic!("a started registration is not running in the model: {id}");
        };
        let outcome = match arg % 4 {
            0 | 1 => {
                let status = if arg % 4 == 0 {
                    RegistrationStatus::Assigned
                } else {
                    RegistrationStatus::Failed
                };
                let mut result = DeviceRegistrationResult::new(self.device.clone(), status);
                result.payload = payload.clone();
                Outcome::Done(Box::new(result))
            }
            2 => Outcome::Busy {
                retry_after_secs: u32::from(arg),
            },
            _ => Outcome::Failed,
        };
        let next = match &outcome {
            Outcome::Done(result) => Model::Done(result.clone()),
            Outcome::Busy { retry_after_secs } => Model::Throttled(*retry_after_secs, payload),
            Outcome::Failed => Model::Failed,
        };
        self.ops.done(&id, outcome);
        self.running -= 1;
        self.model.insert(id, next);
    }
}

fn summary(answer: &Answer) -> Expected {
    match answer {
        Answer::Status {
            status,
            body,
            retry_after_secs,
        } => {
            let state = (*status == 200).then(|| {
                let state = body.registration_state.clone().expect("a 200 has a state");
                assert_eq!(body.status, state.status);
                Box::new(state)
            });
            Expected::Status(*status, *retry_after_secs, state)
        }
        Answer::Error {
            status,
            details,
            retry_after_secs,
        } => {
            assert_eq!(i32::from(*status), details.error_code / 1000);
            Expected::Error(*status, *retry_after_secs)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&limits, steps)) = data.split_first() else {
        return;
    };
    let Ok(device) = RegistrationId::parse("dev-1") else {
        return;
    };
    let limits = OperationLimits {
        max_requests: u32::from(limits & 0x1f) + 1,
        max_running: usize::from((limits >> 5) & 0b11) + 1,
    };
    let mut h = Harness {
        ops: Operations::new(limits, device.clone()),
        limits,
        device,
        requests: 0,
        running: 0,
        model: HashMap::new(),
        known: Vec::new(),
        started: Vec::new(),
    };
    for &step in steps {
        let arg = step >> 3;
        match step & 0b111 {
            0 => h.request(Request::Register { payload: None }),
            1 => h.request(Request::Register {
                payload: Some(serde_json::json!({ "n": arg })),
            }),
            2 | 3 => {
                let id = match h.known.len() {
                    0 => "4.0000000000000000.none".to_owned(),
                    n => h.known[usize::from(arg) % n].clone(),
                };
                h.request(Request::Poll { operation_id: id });
            }
            4 => h.request(Request::Poll {
                operation_id: format!("4.{arg:016x}.unknown"),
            }),
            5 => h.malformed(),
            _ => h.end(usize::from(arg >> 2), arg),
        }
        assert_eq!(h.ops.running(), h.running);
        assert!(h.running <= limits.max_running);
        assert_eq!(h.started.len(), h.running);
    }
});
