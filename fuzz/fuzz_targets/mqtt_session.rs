//! The DPS MQTT session (`dps_mqtt::Session`) fed with what the codec decodes from an arbitrary
//! byte stream, on a fixed clock, with a driver whose answers the input picks.
//!
//! Input: one control byte, then the device's byte stream. Control bits: 0 = refuse the
//! credentials, 1..=2 = how registrations end (left running, assigned, busy, failed), 3..=7 =
//! seconds the clock advances per packet. A poll topic's `operationId=OPID` is replaced with
//! the last operation id the session handed out (they are random, so the fuzzer could never
//! guess one).
//!
//! Checked: no panic; every packet the session sends encodes (encoding fails only on our own
//! bug); nothing comes out after `Close`; running registrations stay within the limit.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dps_mqtt::codec::{self, Inbound};
use dps_mqtt::{Action, RegistrationOutcome, Session, SessionConfig};
use dps_types::{
    DeviceId, DeviceRegistrationResult, HubName, IdScope, RegistrationId, RegistrationStatus,
};
use libfuzzer_sys::fuzz_target;

const SCOPE: &str = "0ne00000001";
/// The session's limit on running registrations, small so that the fuzzer reaches it.
const MAX_OPERATIONS: usize = 2;
/// Requests per connection, small so that the fuzzer reaches the budget.
const MAX_REQUESTS: u32 = 16;
/// As in the codec target: small enough for the fuzzer to reach.
const MAX_PACKET_SIZE: usize = 4096;
const PLACEHOLDER: &[u8] = b"operationId=OPID";

/// One instant for the whole run: only offsets from it matter, so runs are deterministic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

struct Driver {
    refuse: bool,
    outcome: u8,
    step: Duration,
    now: Instant,
    last_operation: Option<String>,
    device: Option<RegistrationId>,
    /// Whether a `Close` came out.
    closed: bool,
}

impl Driver {
    /// Runs every action the session has queued, answering as the control byte says.
    fn drain(&mut self, session: &mut Session) {
        while let Some(action) = session.poll_action() {
            assert!(!self.closed, "an action after Close: {action:?}");
            match action {
                Action::Send(packet) => {
                    let mut out = BytesMut::new();
                    codec::encode(packet.clone(), &mut out)
                        .unwrap_or_else(|e| panic!("{packet:?} does not encode: {e}"));
                }
                Action::Authenticate(credentials) => {
                    self.device = Some(credentials.registration_id);
                    if self.refuse {
                        session.handle_refused();
                    } else {
                        session.handle_authenticated(self.now);
                    }
                }
                Action::Register { operation_id, .. } => {
                    self.last_operation = Some(operation_id.clone());
                    if let Some(outcome) = self.outcome() {
                        session.handle_registration_done(&operation_id, outcome);
                    }
                }
                Action::Close(_) => self.closed = true,
            }
            assert!(session.running_operations() <= MAX_OPERATIONS);
        }
        assert_eq!(self.closed, session.is_closed());
    }

    fn outcome(&self) -> Option<RegistrationOutcome> {
        match self.outcome {
            0 => None,
            1 => {
                let id = self.device.clone()?;
                let mut result = DeviceRegistrationResult::new(id, RegistrationStatus::Assigned);
                result.assigned_hub = HubName::parse("hub1.azure-devices.net").ok();
                result.device_id = DeviceId::parse("device-1").ok();
                Some(RegistrationOutcome::Done(Box::new(result)))
            }
            2 => Some(RegistrationOutcome::Busy {
                retry_after_secs: 3,
            }),
            _ => Some(RegistrationOutcome::Failed),
        }
    }

    /// Puts the last operation id where a poll topic names the placeholder.
    fn substitute(&self, packet: Inbound) -> Inbound {
        let (Inbound::Publish(mut publish), Some(op)) = (packet.clone(), &self.last_operation)
        else {
            return packet;
        };
        let Some(at) = publish
            .topic
            .windows(PLACEHOLDER.len())
            .position(|w| w == PLACEHOLDER)
        else {
            return packet;
        };
        let mut topic = publish.topic[..at].to_vec();
        topic.extend_from_slice(b"operationId=");
        topic.extend_from_slice(op.as_bytes());
        topic.extend_from_slice(&publish.topic[at + PLACEHOLDER.len()..]);
        publish.topic = Bytes::from(topic);
        Inbound::Publish(publish)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let Ok(id_scope) = IdScope::parse(SCOPE) else {
        return;
    };
    let mut driver = Driver {
        refuse: control & 1 == 1,
        outcome: (control >> 1) & 0b11,
        step: Duration::from_secs(u64::from(control >> 3)),
        now: epoch(),
        last_operation: None,
        device: None,
        closed: false,
    };
    let config = SessionConfig {
        id_scope,
        connect_timeout: Duration::from_secs(10),
        max_requests: MAX_REQUESTS,
        max_operations: MAX_OPERATIONS,
        max_keep_alive: Duration::from_secs(180),
        max_lifetime: Duration::from_secs(300),
    };
    let mut session = Session::new(config, driver.now);
    let mut buf = BytesMut::from(stream);
    while !session.is_closed() {
        let packet = match codec::decode(&mut buf, MAX_PACKET_SIZE) {
            Ok(Some(packet)) => packet,
            Ok(None) | Err(_) => break,
        };
        driver.now += driver.step;
        session.handle_tick(driver.now);
        driver.drain(&mut session);
        let packet = driver.substitute(packet);
        session.handle_packet(packet, driver.now);
        driver.drain(&mut session);
    }
    // The stream ended: time runs out for whatever is still open.
    driver.now += Duration::from_secs(3600);
    session.handle_tick(driver.now);
    driver.drain(&mut session);
    assert!(session.is_closed(), "the session outlived every deadline");
});
