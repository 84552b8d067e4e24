//! The add form and the details/update form of an enrollment group or individual enrollment,
//! with the summary of a stored record (attestation, certificate details, registration).

use dps_types::{Attestation, X509CertificateInfo};
use maud::{html, Markup};

use super::{attestation_label, Kind};
use crate::form::{
    EnrollmentForm, FieldErrors, DEFAULT_API_VERSION, MAX_WEBHOOK_URL, REPROVISION_CHOICES,
};
use crate::html::{csrf, field_error, page, when, Nav, Page};
use crate::session::Auth;
use crate::{PortalState, BASE};

/// What the details page shows about a stored record besides its form.
pub(super) struct Summary {
    pub(super) attestation: Attestation,
    pub(super) created: Option<dps_types::Timestamp>,
    pub(super) updated: Option<dps_types::Timestamp>,
    pub(super) registration: Option<Markup>,
}

fn cert_info(label: &str, info: &X509CertificateInfo) -> Markup {
    html! {
        div.cert {
            h3 { (label) }
            dl {
                dt { "Subject" } dd { (info.subject_name) }
                dt { "Issuer" } dd { (info.issuer_name) }
                dt { "SHA-1 thumbprint" } dd.mono { (info.sha1_thumbprint) }
                dt { "SHA-256 thumbprint" } dd.mono { (info.sha256_thumbprint) }
                dt { "Valid from" } dd { (when(Some(&info.not_before_utc))) }
                dt { "Valid until" } dd { (when(Some(&info.not_after_utc))) }
                dt { "Serial number" } dd.mono { (info.serial_number) }
            }
        }
    }
}

fn attestation_summary(a: &Attestation) -> Markup {
    html! {
        p { "Attestation: " strong { (attestation_label(a)) } }
        @match a {
            Attestation::X509(x) => {
                @for set in [&x.client_certificates, &x.signing_certificates].into_iter().flatten() {
                    @if let Some(info) = set.primary.as_ref().and_then(|c| c.info.as_ref()) { (cert_info("Primary certificate", info)) }
                    @if let Some(info) = set.secondary.as_ref().and_then(|c| c.info.as_ref()) { (cert_info("Secondary certificate", info)) }
                }
                @if let Some(r) = &x.ca_references {
                    p { "CA references: " (r.primary.as_deref().unwrap_or("—")) @if let Some(s) = &r.secondary { ", " (s) } }
                }
            }
            Attestation::Tpm(_) => p.hint { "The endorsement key is stored; it is not shown here." },
            Attestation::SymmetricKey(_) => p.hint { "The keys are not shown here; read them with the service API's attestation-mechanism operation." },
            Attestation::None => {},
        }
    }
}

fn radio(name: &str, value: &str, current: &str, label: &str) -> Markup {
    let id = format!("{name}-{value}");
    html! {
        div.choice {
            input type="radio" id=(id) name=(name) value=(value) checked[current == value];
            label for=(id) { (label) }
        }
    }
}

fn described(errors: &FieldErrors, name: &str) -> Option<String> {
    errors.contains_key(name).then(|| format!("{name}-error"))
}

/// The add form (`summary` absent) or the details form of a stored record.
pub(super) fn form_page(
    state: &PortalState,
    auth: &Auth,
    kind: Kind,
    summary: Option<&Summary>,
    f: &EnrollmentForm,
    errors: &FieldErrors,
    banner: Option<Markup>,
) -> Page {
    let adding = summary.is_none();
    let can_write = auth.can_write();
    let title = match (kind, adding) {
        (Kind::Groups, true) => "Add enrollment group".to_owned(),
        (Kind::Individual, true) => "Add individual enrollment".to_owned(),
        (_, false) => f.id.clone(),
    };
    let action = if adding {
        format!("{BASE}/{}/new", kind.segment())
    } else {
        format!("{BASE}/{}/{}", kind.segment(), f.id)
    };
    let mut hub_names: Vec<String> = state
        .linked_hubs()
        .iter()
        .map(|h| h.host_name.as_str().to_owned())
        .collect();
    for h in f.iot_hubs.iter().chain(std::iter::once(&f.static_hub)) {
        if !h.is_empty() && !hub_names.contains(h) {
            hub_names.push(h.clone());
        }
    }
    let e = |name: &str| field_error(errors.get(name), name);
    let body = html! {
        p.crumbs { a href={(BASE) "/enrollments?tab=" (kind.segment())} { "← Manage enrollments" } }
        h1 { (title) }
        @if let Some(banner) = banner { (banner) }
        @if let Some(saved) = errors.get("saved") { p.notice role="status" { (saved) } }
        @if let Some(message) = errors.get("form") { p.error.banner role="alert" { (message) } }
        @if let Some(s) = summary {
            section.card {
                h2 { "Summary" }
                (attestation_summary(&s.attestation))
                p { "Created " (when(s.created.as_ref())) ", last updated " (when(s.updated.as_ref())) }
                @if let Some(r) = &s.registration { (r) }
            }
        }
        form.enrollment method="post" action=(action) enctype="multipart/form-data" novalidate {
            (csrf(auth))
            input type="hidden" name="etag" value=(f.etag);
            fieldset.plain disabled[!can_write] {
            @if adding {
                section.card {
                    h2 { "Registration and attestation" }
                    @if kind == Kind::Groups {
                        label for="id" { "Group name" span.req { " (required)" } }
                        input #id name="id" value=(f.id) required aria-describedby=[described(errors, "id")];
                        (e("id"))
                    }
                    fieldset {
                        legend { "Attestation mechanism" }
                        @if kind == Kind::Groups {
                            (radio("mechanism", "x509", &f.mechanism, "Certificate (CA or intermediate)"))
                        } @else {
                            (radio("mechanism", "x509", &f.mechanism, "X.509 client certificate"))
                            (radio("mechanism", "tpm", &f.mechanism, "TPM"))
                        }
                        (radio("mechanism", "symmetricKey", &f.mechanism, "Symmetric key"))
                        (e("mechanism"))
                    }
                    @if kind == Kind::Individual {
                        div data-for="tpm symmetricKey" {
                            label for="id" { "Registration ID" }
                            input #id name="id" value=(f.id) aria-describedby=[described(errors, "id")];
                            p.hint { "For X.509 the registration ID is the certificate's common name (CN)." }
                            (e("id"))
                        }
                    }
                    fieldset data-for="x509" {
                        legend { @if kind == Kind::Groups { "Certificates (CA or intermediate)" } @else { "Device certificates" } }
                        label for="primary_cert" { "Primary certificate (.pem, .cer, .crt or .der)" }
                        input #primary_cert type="file" name="primary_cert" accept=".pem,.cer,.crt,.der" aria-describedby=[described(errors, "primary_cert")];
                        @if !f.primary_cert.is_empty() && !errors.contains_key("primary_cert") {
                            input type="hidden" name="primary_cert_text" value=(f.primary_cert);
                            p.hint { "A certificate was uploaded and is kept; choose a file to replace it." }
                        }
                        (e("primary_cert"))
                        label for="secondary_cert" { "Secondary certificate (optional)" }
                        input #secondary_cert type="file" name="secondary_cert" accept=".pem,.cer,.crt,.der";
                        @if !f.secondary_cert.is_empty() && !errors.contains_key("secondary_cert") {
                            input type="hidden" name="secondary_cert_text" value=(f.secondary_cert);
                            p.hint { "A secondary certificate was uploaded and is kept." }
                        }
                        (e("secondary_cert"))
                    }
                    @if kind == Kind::Individual {
                        fieldset data-for="tpm" {
                            legend { "TPM" }
                            label for="endorsement_key" { "Endorsement key (base64)" }
                            textarea #endorsement_key name="endorsement_key" rows="3" aria-describedby=[described(errors, "endorsement_key")] { (f.endorsement_key) }
                            (e("endorsement_key"))
                        }
                    }
                    fieldset data-for="symmetricKey" {
                        legend { "Symmetric keys" }
                        div.choice {
                            input #generate_keys type="checkbox" name="generate_keys" checked[f.generate_keys];
                            label for="generate_keys" { "Auto-generate keys" }
                        }
                        label for="primary_key" { "Primary key (base64, when not auto-generated)" }
                        input #primary_key name="primary_key" autocomplete="off" value=(f.primary_key) aria-describedby=[described(errors, "primary_key")];
                        (e("primary_key"))
                        label for="secondary_key" { "Secondary key" }
                        input #secondary_key name="secondary_key" autocomplete="off" value=(f.secondary_key) aria-describedby=[described(errors, "secondary_key")];
                        (e("secondary_key"))
                    }
                }
            }
            @if kind == Kind::Individual {
                section.card {
                    h2 { "Device" }
                    label for="device_id" { "IoT Hub device ID (optional; the registration ID when empty)" }
                    input #device_id name="device_id" value=(f.device_id) aria-describedby=[described(errors, "device_id")];
                    (e("device_id"))
                }
            }
            section.card {
                h2 { "IoT hubs" }
                label for="allocation_policy" { "How do you want to assign devices to hubs?" }
                select #allocation_policy name="allocation_policy" aria-describedby=[described(errors, "allocation_policy")] {
                    @for (value, label) in [("hashed", "Evenly weighted distribution"), ("geoLatency", "Lowest latency"), ("static", "Static configuration"), ("custom", "Custom (use Azure Function)")] {
                        option value=(value) selected[f.allocation_policy == value] { (label) }
                    }
                }
                (e("allocation_policy"))
                div data-policy="custom" {
                    label for="webhook_url" { "Webhook URL (custom allocation)" span.req { " (required)" } }
                    input #webhook_url type="url" name="webhook_url" value=(f.webhook_url) maxlength=(MAX_WEBHOOK_URL) autocomplete="off" spellcheck="false" aria-describedby=[described(errors, "webhook_url")];
                    p.hint { "An absolute https:// (or http://) URL, e.g. an Azure Function; the service POSTs each allocation request to it and assigns the hub it answers, which must be one of the hubs ticked below." }
                    (e("webhook_url"))
                    label for="api_version" { "API version (custom allocation)" span.req { " (required)" } }
                    input #api_version name="api_version" value=(f.api_version) maxlength="32" autocomplete="off" spellcheck="false" aria-describedby=[described(errors, "api_version")];
                    p.hint { "The api-version of the enrollment JSON the webhook receives, e.g. " (DEFAULT_API_VERSION) "." }
                    (e("api_version"))
                }
                fieldset data-policy="hashed geoLatency custom" {
                    legend { "IoT hubs this can be assigned to (none ticked: every linked hub)" }
                    @if hub_names.is_empty() { p.hint { "No IoT hubs are linked to this service." } }
                    @for (i, hub) in hub_names.iter().enumerate() {
                        div.choice {
                            input type="checkbox" id={"hub-" (i)} name="iot_hubs" value=(hub) checked[f.iot_hubs.contains(hub)];
                            label for={"hub-" (i)} { (hub) }
                        }
                    }
                    (e("iot_hubs"))
                }
                div data-policy="static" {
                    label for="static_hub" { "IoT hub (static configuration)" }
                    select #static_hub name="static_hub" aria-describedby=[described(errors, "static_hub")] {
                        option value="" selected[f.static_hub.is_empty()] { "—" }
                        @for hub in &hub_names {
                            option value=(hub) selected[&f.static_hub == hub] { (hub) }
                        }
                    }
                    (e("static_hub"))
                }
            }
            section.card {
                h2 { "Device settings" }
                fieldset {
                    legend { "Provisioning status" }
                    (radio("status", "enabled", &f.status, "Enable this enrollment"))
                    (radio("status", "disabled", &f.status, "Disable this enrollment"))
                    (e("status"))
                }
                fieldset {
                    legend { "Reprovision policy" }
                    @for (value, label) in REPROVISION_CHOICES { (radio("reprovision", value, &f.reprovision, label)) }
                    (e("reprovision"))
                }
                div.choice {
                    input #iot_edge type="checkbox" name="iot_edge" checked[f.iot_edge];
                    label for="iot_edge" { "IoT Edge device" }
                }
                label for="initial_twin" { "Initial device twin state (JSON: tags and properties.desired)" }
                textarea #initial_twin.mono name="initial_twin" rows="8" spellcheck="false" aria-describedby=[described(errors, "initial_twin")] { (f.initial_twin) }
                (e("initial_twin"))
            }
            }
            div.actions {
                @if can_write {
                    button.primary type="submit" { "Save" }
                }
                a.button href={(BASE) "/enrollments?tab=" (kind.segment())} { @if can_write { "Cancel" } @else { "Back" } }
                @if can_write && !adding {
                    a.button.danger href={(BASE) "/" (kind.segment()) "/" (f.id) "/delete"} { "Delete" }
                }
            }
        }
    };
    Page(page(&title, Some((auth, Nav::Enrollments)), body))
}
