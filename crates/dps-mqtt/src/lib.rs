//! The MQTT frontend of the provisioning service: devices register over MQTT 3.1.1 on TLS
//! (port 8883), or over WebSocket on the HTTPS listener (the stream handed over by `dps-api`), exactly as the Azure IoT SDKs expect from DPS.
//!
//! What it does: [`codec`] frames packets with `rumqttd`'s public v4 codec; [`topics`] parses
//! the CONNECT username and the two request topics and formats the response topics;
//! [`Session`] is the DPS protocol of one connection without any I/O (packets, results and
//! time in; packets to send, credentials to check, registrations to run out); [`serve`] is
//! the thin tokio driver on the project's one accept loop (`dps-listener`: global and
//! per-address limits that shed load before TLS), one task per connection, a cap on each
//! device's connections, attestation through `dps-attest` and registration through
//! `dps-registrar`.
//!
//! What it must never do: read the store (it calls the registrar), act as a broker (response
//! topics are private to one connection; unknown topics close it), panic or grow without
//! bound on anything a peer sends, or log a password.
//!
//! Main types: [`Session`] and its [`Action`]s, [`MqttFrontend`] (one per process, shared by
//! the MQTT/TLS listener and MQTT over WebSocket), [`MqttLimits`], [`MqttCounters`] /
//! [`MqttStats`], and [`MqttError`], the crate's error enum.

pub mod codec;
mod connection;
mod error;
mod server;
pub mod session;
mod stats;
pub mod topics;

pub use error::MqttError;
pub use server::{serve, serve_with_counters, MqttFrontend, MqttLimits, DEFAULT_MAX_PACKET_SIZE};
pub use session::{Action, CloseReason, Credentials, RegistrationOutcome, Session, SessionConfig};
pub use stats::{MqttCounters, MqttStats};
