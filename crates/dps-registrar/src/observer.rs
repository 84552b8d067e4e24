//! What the registrar reports about each registration and webhook call, for the metrics.
//! Given in [`crate::RegistrarConfig::observer`]; without one nothing is measured. Every
//! value handed over is bounded: enums, the assigned hub (only linked hubs, which the operator
//! configures), durations - never a registration id.

use std::fmt::Debug;
use std::time::Duration;

use dps_types::{AttestationType, HubName};

use crate::Transport;

/// Receives a report of every registration and webhook call. Called on the registering task:
/// implementations must be cheap and never block.
pub trait RegistrarObserver: Send + Sync + Debug + 'static {
    /// A call of [`crate::Registrar::register`] ended.
    fn registration(&self, report: &RegistrationReport<'_>);
    /// A custom allocation webhook call ended with `result` (`"ok"` or a
    /// [`crate::WebhookError::label`]) after `elapsed`.
    fn webhook(&self, result: &'static str, elapsed: Duration);
}

/// One registration, as the metrics see it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RegistrationReport<'a> {
    /// The transport the device used.
    pub transport: Transport,
    /// How the device attested.
    pub attestation: AttestationType,
    /// How it ended.
    pub outcome: Outcome,
    /// The hub it was assigned (with [`Outcome::Assigned`]).
    pub hub: Option<&'a HubName>,
    /// From the call to its answer: for an assigned device, the time from the request the
    /// frontend accepted (and answered `202`) to "assigned", with the durable write.
    pub elapsed: Duration,
}

/// How a registration ended. Its [`Outcome::label`] is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device was assigned a hub; the record is durable.
    Assigned,
    /// The enrollment is disabled.
    Disabled,
    /// No hub could be assigned (no linked hub fits, or the webhook failed).
    Failed,
    /// Too many registrations in progress: the device was asked to retry (`429`).
    Throttled,
    /// Our own failure: the registration record could not be stored.
    Error,
}

impl Outcome {
    /// Every outcome, for pre-registering metric series.
    pub const ALL: [Outcome; 5] = [
        Outcome::Assigned,
        Outcome::Disabled,
        Outcome::Failed,
        Outcome::Throttled,
        Outcome::Error,
    ];

    /// Stable metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Assigned => "assigned",
            Outcome::Disabled => "disabled",
            Outcome::Failed => "failed",
            Outcome::Throttled => "throttled",
            Outcome::Error => "error",
        }
    }
}
