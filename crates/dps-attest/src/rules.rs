//! What an enrollment may name besides its attestation, and [`Prepared`], the proof that an
//! enrollment passed every check before it is stored.
//!
//! The rules come from the service's configuration: the IoT hubs it is linked to and where
//! custom-allocation webhooks may point. An enrollment that names another hub, a custom
//! policy without its webhook, or a webhook URL the policy refuses is never stored, so the
//! registration path does not meet one it cannot honour.

use std::ops::Deref;

use dps_types::{AllocationPolicy, EnrollmentSettings, HubName, WebhookPolicy};

use crate::AttestError;

/// The service's rules for the settings of an enrollment, filled by whoever holds the
/// configuration (the registrar's [`linked hubs`](EnrollmentRules::linked_hubs) and
/// [`webhook policy`](EnrollmentRules::webhook)). `Default`: no linked hub (an enrollment
/// that names a hub is refused) and the default webhook policy (`https` only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollmentRules {
    /// The IoT hubs devices may be assigned to; `iotHubs` and `iotHubHostName` may only name
    /// these.
    pub linked_hubs: Vec<HubName>,
    /// Where `customAllocationDefinition.webhookUrl` may point.
    pub webhook: WebhookPolicy,
}

impl EnrollmentRules {
    /// Checks the settings every enrollment kind shares: each hub it names is linked, a
    /// `custom` policy has its definition, and a webhook URL passes the policy.
    pub(crate) fn check(&self, settings: &dyn EnrollmentSettings) -> Result<(), AttestError> {
        for hub in settings.iot_hubs() {
            self.check_hub("iotHubs", hub)?;
        }
        if let Some(hub) = settings.iot_hub_host_name() {
            self.check_hub("iotHubHostName", hub)?;
        }
        let definition = settings.custom_allocation_definition();
        if settings.allocation_policy() == Some(AllocationPolicy::Custom) && definition.is_none() {
            return Err(AttestError::CustomWithoutDefinition);
        }
        if let Some(definition) = definition {
            self.webhook
                .check(&definition.webhook_url)
                .map_err(AttestError::WebhookUrlRefused)?;
        }
        Ok(())
    }

    fn check_hub(&self, member: &'static str, hub: &HubName) -> Result<(), AttestError> {
        if self.linked_hubs.contains(hub) {
            Ok(())
        } else {
            Err(AttestError::UnlinkedHub {
                member,
                hub: hub.as_str().to_owned(),
            })
        }
    }
}

/// An individual enrollment or an enrollment group that passed
/// [`prepare_individual`](crate::prepare_individual) or [`prepare_group`](crate::prepare_group):
/// attestation checked, certificate `info` computed, hubs linked, webhook allowed.
///
/// Only this crate builds one (no public constructor, `Default` or `Deserialize`), and it
/// gives read access only, so a store that takes a `Prepared` cannot be handed a record nobody
/// checked, nor one changed after the check.
#[derive(Debug, Clone)]
pub struct Prepared<T>(T);

impl<T> Prepared<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(value)
    }

    /// The checked record, to store it.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Prepared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use dps_types::{EnrollmentGroup, IndividualEnrollment};
    use serde_json::{json, Value};

    use super::*;
    use crate::{prepare_group, prepare_individual};

    fn rules(allow_http: bool) -> EnrollmentRules {
        EnrollmentRules {
            linked_hubs: vec![HubName::parse("hub-a.example.net").unwrap()],
            webhook: WebhookPolicy {
                allow_http,
                allowed_hosts: Vec::new(),
            },
        }
    }

    fn individual(settings: Value) -> IndividualEnrollment {
        let mut body = json!({"registrationId": "dev-1", "attestation": {"type": "symmetricKey"}});
        body.as_object_mut()
            .unwrap()
            .extend(settings.as_object().unwrap().clone());
        serde_json::from_value(body).unwrap()
    }

    fn individual_err(settings: Value, rules: &EnrollmentRules) -> String {
        prepare_individual(individual(settings), rules)
            .unwrap_err()
            .to_string()
    }

    fn custom(url: &str) -> Value {
        json!({"allocationPolicy": "custom",
            "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}})
    }

    #[test]
    fn linked_hubs_pass_and_others_are_named() {
        let ok = individual(json!({"iotHubs": ["HUB-A.example.net"],
            "iotHubHostName": "hub-a.example.net", "allocationPolicy": "static"}));
        assert!(prepare_individual(ok, &rules(false)).is_ok());
        let err = individual_err(
            json!({"iotHubs": ["hub-a.example.net", "rogue.example.net"]}),
            &rules(false),
        );
        assert_eq!(
            err,
            "iotHubs names 'rogue.example.net', which is not a linked IoT hub of this service"
        );
        let err = individual_err(
            json!({"allocationPolicy": "static", "iotHubHostName": "rogue.example.net"}),
            &rules(false),
        );
        assert!(
            err.starts_with("iotHubHostName names 'rogue.example.net'"),
            "{err}"
        );
        let err = individual_err(
            json!({"iotHubs": ["hub-a.example.net"]}),
            &EnrollmentRules::default(),
        );
        assert!(err.contains("not a linked IoT hub"), "{err}");
    }

    #[test]
    fn custom_needs_its_definition_and_an_allowed_webhook() {
        let err = individual_err(json!({"allocationPolicy": "custom"}), &rules(false));
        assert!(err.contains("needs a customAllocationDefinition"), "{err}");
        assert!(prepare_individual(
            individual(custom("https://alloc.example.net/api/f?code=k")),
            &rules(false)
        )
        .is_ok());
        for url in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "gopher://127.0.0.1:70/",
            "http://127.0.0.1:8080/alloc",
        ] {
            let err = individual_err(custom(url), &rules(false));
            assert!(
                err.starts_with("customAllocationDefinition.webhookUrl: the webhook URL"),
                "{url}: {err}"
            );
        }
        assert!(prepare_individual(
            individual(custom("http://127.0.0.1:8080/alloc")),
            &rules(true)
        )
        .is_ok());
    }

    #[test]
    fn a_definition_is_checked_whatever_the_policy() {
        let mut settings = custom("file:///etc/passwd");
        settings["allocationPolicy"] = json!("hashed");
        assert!(individual_err(settings, &rules(true)).contains("webhookUrl"));
    }

    #[test]
    fn groups_follow_the_same_rules() {
        let group = |settings: Value| -> EnrollmentGroup {
            let mut body =
                json!({"enrollmentGroupId": "g1", "attestation": {"type": "symmetricKey"}});
            body.as_object_mut()
                .unwrap()
                .extend(settings.as_object().unwrap().clone());
            serde_json::from_value(body).unwrap()
        };
        let err = prepare_group(
            group(json!({"iotHubs": ["rogue.example.net"]})),
            &rules(false),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            AttestError::UnlinkedHub {
                member: "iotHubs",
                ..
            }
        ));
        let err =
            prepare_group(group(json!({"allocationPolicy": "custom"})), &rules(false)).unwrap_err();
        assert!(matches!(err, AttestError::CustomWithoutDefinition));
        let prepared = prepare_group(
            group(json!({"iotHubs": ["hub-a.example.net"]})),
            &rules(false),
        )
        .unwrap();
        assert_eq!(prepared.iot_hubs.as_deref().map(<[_]>::len), Some(1));
        assert_eq!(prepared.into_inner().enrollment_group_id.as_str(), "g1");
    }
}
