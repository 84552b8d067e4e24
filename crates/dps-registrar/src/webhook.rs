//! The custom allocation policy: POST the DPS `AllocationRequest` to the enrollment's webhook
//! and check its `AllocationResponse` (reference §8.4).

use std::time::Duration;

use dps_types::{EnrollmentGroup, HubName, IndividualEnrollment, WebhookPolicy};
use serde::{Deserialize, Serialize};

/// The largest webhook response read; an allocation answer is a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why the webhook did not give a usable hub. Each message is a short fixed reason: it is
/// what the device and the failed-attempt diagnostics are told, so it never carries the URL
/// (whose query holds the function key), the response body or a library's error text. Causes
/// are kept as sources, with the URL stripped from HTTP client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is refused by the configured [`dps_types::WebhookPolicy`] (checked before every
    /// call, so enrollments stored before the policy changed are covered too).
    #[error("the allocation webhook URL is not allowed by the webhook policy")]
    NotAllowed(#[source] dps_types::TypeError),
    /// Connection, TLS or protocol failure.
    #[error("the allocation webhook could not be reached")]
    Unreachable(#[source] reqwest::Error),
    /// No complete answer within the configured timeout.
    #[error("the allocation webhook did not answer in time")]
    Timeout(#[source] reqwest::Error),
    /// A 3xx answer: redirects are never followed, so a webhook cannot send the request on to
    /// an address the policy would refuse.
    #[error("the allocation webhook answered with a redirect, which is not followed")]
    Redirected,
    /// Another non-2xx status.
    #[error("the allocation webhook answered HTTP {0}")]
    Status(u16),
    /// Larger than the bound.
    #[error("the allocation webhook response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// Not an `AllocationResponse`.
    #[error("the allocation webhook answered with an invalid allocation")]
    Invalid(#[source] serde_json::Error),
    /// The hub it named is not one of the candidates it was offered.
    #[error(
        "the allocation webhook chose an IoT hub that is not one of the linked hubs it was offered"
    )]
    HubNotOffered,
}

impl WebhookError {
    /// Every [`WebhookError::label`], for pre-registering metric series.
    pub const LABELS: [&'static str; 8] = [
        "not_allowed",
        "unreachable",
        "timeout",
        "redirected",
        "status",
        "too_large",
        "invalid",
        "hub_not_offered",
    ];

    /// Stable metric label of the kind of failure (never the URL, status or text).
    pub fn label(&self) -> &'static str {
        match self {
            WebhookError::NotAllowed(_) => "not_allowed",
            WebhookError::Unreachable(_) => "unreachable",
            WebhookError::Timeout(_) => "timeout",
            WebhookError::Redirected => "redirected",
            WebhookError::Status(_) => "status",
            WebhookError::TooLarge => "too_large",
            WebhookError::Invalid(_) => "invalid",
            WebhookError::HubNotOffered => "hub_not_offered",
        }
    }

    /// Classifies an HTTP client error, dropping the URL it carries.
    fn from_client(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            WebhookError::Timeout(e.without_url())
        } else {
            WebhookError::Unreachable(e.without_url())
        }
    }
}

/// The enrollment in the request: keys are never sent.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRequest<'a> {
    /// Present when the device matched a group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_group: Option<EnrollmentGroup>,
    /// Present when the device matched an individual enrollment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub individual_enrollment: Option<IndividualEnrollment>,
    /// The device side.
    pub device_runtime_context: DeviceRuntimeContext<'a>,
    /// The hubs the webhook may choose from.
    pub linked_hubs: Vec<&'a str>,
}

/// `deviceRuntimeContext`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRuntimeContext<'a> {
    /// The registration id.
    pub registration_id: &'a str,
    /// Only on re-registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_iot_hub_host_name: Option<&'a str>,
    /// Only on re-registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_device_id: Option<&'a str>,
    /// `{}` for symmetric-key devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<serde_json::Value>,
    /// `{}` for X.509 devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509: Option<serde_json::Value>,
    /// The device's payload, only when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'a serde_json::Value>,
}

/// `AllocationResponse`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationResponse {
    /// The chosen hub (required).
    pub iot_hub_host_name: String,
    /// Returned to the device as `registrationState.payload`.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// The twin the hub should give the device (in place of the enrollment's).
    #[serde(default)]
    pub initial_twin: Option<serde_json::Value>,
}

/// What the webhook decided.
#[derive(Debug)]
pub struct Allocation {
    /// The hub, checked against the offered ones.
    pub hub: HubName,
    /// The webhook's payload for the device.
    pub payload: Option<serde_json::Value>,
    /// The webhook's initial twin, for the hub (through the assignment feed).
    pub initial_twin: Option<serde_json::Value>,
}

/// The HTTP client for webhooks: redirects are not followed (a 3xx is a failure).
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Checks `url` against `policy`, then calls it with `request` and validates the answer
/// against `offered`.
pub async fn call(
    client: &reqwest::Client,
    policy: &WebhookPolicy,
    url: &str,
    timeout: Duration,
    request: &AllocationRequest<'_>,
    offered: &[HubName],
) -> Result<Allocation, WebhookError> {
    let url = policy.check(url).map_err(WebhookError::NotAllowed)?;
    let mut response = client
        .post(url)
        .timeout(timeout)
        .json(request)
        .send()
        .await
        .map_err(WebhookError::from_client)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(WebhookError::Redirected);
    }
    if !status.is_success() {
        return Err(WebhookError::Status(status.as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(WebhookError::from_client)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(WebhookError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let answer: AllocationResponse =
        serde_json::from_slice(&body).map_err(WebhookError::Invalid)?;
    let hub = HubName::parse(&answer.iot_hub_host_name)
        .ok()
        .filter(|h| offered.contains(h))
        .ok_or(WebhookError::HubNotOffered)?;
    Ok(Allocation {
        hub,
        payload: answer.payload,
        initial_twin: answer.initial_twin,
    })
}
