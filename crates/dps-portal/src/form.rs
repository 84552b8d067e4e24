//! Form bodies (URL-encoded or multipart with certificate uploads) and the enrollment form:
//! parsing, validation into the service model, and the per-field errors shown next to each
//! input. Nothing typed is lost: a form that fails validation is rendered again from the
//! same [`EnrollmentForm`].

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use axum::Form;
use base64::Engine;
use dps_attest::{AttestError, EnrollmentRules, ParsedCertificate, Prepared};
use dps_types::{
    AllocationPolicy, Attestation, CustomAllocationDefinition, DeviceCapabilities, DeviceId,
    EndorsementKey, EnrollmentGroup, EnrollmentGroupId, EnrollmentSettings, HubName,
    IndividualEnrollment, InitialTwin, ProvisioningStatus, RegistrationId, ReprovisionPolicy,
    SymmetricKey, SymmetricKeyAttestation, TpmAttestation, X509Attestation,
    X509CertificateWithInfo, X509Certificates,
};

use crate::html::PortalError;

mod custom;

pub(crate) use custom::{DEFAULT_API_VERSION, MAX_WEBHOOK_URL};

/// Fields a form may have; more is not a form of ours.
const MAX_FIELDS: usize = 256;
/// Largest uploaded certificate file. Certificates are a few KiB; the attestation crate
/// bounds what it parses further.
const MAX_FILE_BYTES: usize = 64 * 1024;

/// A submitted form: text fields in order (a name may repeat, e.g. checkboxes) and uploaded
/// files (empty file inputs are dropped).
#[derive(Debug, Default, Clone)]
pub(crate) struct FormData {
    fields: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
}

impl FormData {
    /// The first value of a field.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    }

    fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self {
            fields: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            files: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_file(mut self, name: &str, bytes: &[u8]) -> Self {
        self.files.push((name.to_owned(), bytes.to_vec()));
        self
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = PortalError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        if !multipart {
            let Form(fields) = Form::<Vec<(String, String)>>::from_request(req, state)
                .await
                .map_err(|e| PortalError::BadRequest(e.body_text()))?;
            if fields.len() > MAX_FIELDS {
                return Err(PortalError::BadRequest("too many form fields".into()));
            }
            return Ok(FormData {
                fields,
                files: Vec::new(),
            });
        }
        let mut parts = Multipart::from_request(req, state)
            .await
            .map_err(|e| PortalError::BadRequest(e.body_text()))?;
        let mut data = FormData::default();
        let bad = |e: axum::extract::multipart::MultipartError| {
            PortalError::BadRequest(format!("the form could not be read: {}", e.body_text()))
        };
        while let Some(field) = parts.next_field().await.map_err(bad)? {
            if data.fields.len() + data.files.len() >= MAX_FIELDS {
                return Err(PortalError::BadRequest("too many form fields".into()));
            }
            let name = field.name().unwrap_or_default().to_owned();
            let is_file = field.file_name().is_some();
            let bytes = field.bytes().await.map_err(bad)?;
            if is_file {
                if bytes.len() > MAX_FILE_BYTES {
                    return Err(PortalError::BadRequest(format!(
                        "the file in {name} is larger than {} KiB",
                        MAX_FILE_BYTES / 1024
                    )));
                }
                if !bytes.is_empty() {
                    data.files.push((name, bytes.to_vec()));
                }
            } else {
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    PortalError::BadRequest(format!("the field {name} is not UTF-8"))
                })?;
                data.fields.push((name, text));
            }
        }
        Ok(data)
    }
}

/// Per-field error messages, keyed by the input's name.
pub(crate) type FieldErrors = BTreeMap<&'static str, String>;

/// What the add and details forms hold, as typed. Certificates are kept as text (PEM, or
/// base64 of an uploaded DER file) so a form shown again with errors still has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnrollmentForm {
    /// Group name or registration id (ignored for X.509 individual enrollments: the CN).
    pub id: String,
    /// `x509`, `tpm` or `symmetricKey`.
    pub mechanism: String,
    pub primary_cert: String,
    pub secondary_cert: String,
    pub endorsement_key: String,
    /// Generate symmetric keys (else the two below are used).
    pub generate_keys: bool,
    pub primary_key: String,
    pub secondary_key: String,
    pub device_id: String,
    /// `hashed`, `geoLatency`, `static` or `custom`.
    pub allocation_policy: String,
    /// Candidate hubs (none: every linked hub); for `custom`, the hubs the webhook may pick.
    pub iot_hubs: Vec<String>,
    /// The hub of the static policy.
    pub static_hub: String,
    /// The webhook of the custom policy.
    pub webhook_url: String,
    /// The api-version of the enrollment JSON the webhook receives (custom policy).
    pub api_version: String,
    pub initial_twin: String,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `migrate`, `reset` or `never`.
    pub reprovision: String,
    pub iot_edge: bool,
    /// The etag the details form was opened with.
    pub etag: String,
}

impl Default for EnrollmentForm {
    fn default() -> Self {
        Self {
            id: String::new(),
            mechanism: String::new(),
            primary_cert: String::new(),
            secondary_cert: String::new(),
            endorsement_key: String::new(),
            generate_keys: true,
            primary_key: String::new(),
            secondary_key: String::new(),
            device_id: String::new(),
            allocation_policy: "hashed".into(),
            iot_hubs: Vec::new(),
            static_hub: String::new(),
            webhook_url: String::new(),
            api_version: DEFAULT_API_VERSION.into(),
            initial_twin: String::new(),
            status: "enabled".into(),
            reprovision: "migrate".into(),
            iot_edge: false,
            etag: String::new(),
        }
    }
}

/// The three reprovision choices of the Azure portal.
pub(crate) const REPROVISION_CHOICES: [(&str, &str); 3] = [
    ("migrate", "Re-provision and migrate data"),
    ("reset", "Re-provision and reset to initial config"),
    ("never", "Never re-provision"),
];

fn reprovision_choice(p: Option<&ReprovisionPolicy>) -> &'static str {
    match p.copied().unwrap_or_default() {
        ReprovisionPolicy {
            update_hub_assignment: false,
            ..
        } => "never",
        ReprovisionPolicy {
            migrate_device_data: false,
            ..
        } => "reset",
        _ => "migrate",
    }
}

/// An uploaded certificate file as text `ParsedCertificate::parse` accepts: PEM or base64 as
/// is, binary DER as base64.
fn certificate_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => base64::engine::general_purpose::STANDARD.encode(bytes),
    }
}

impl EnrollmentForm {
    /// Reads the form. An uploaded file replaces the certificate text kept from an earlier
    /// attempt (hidden `*_text` fields).
    pub(crate) fn from_data(data: &FormData) -> Self {
        let cert = |name: &str| {
            data.file(name)
                .map(certificate_text)
                .unwrap_or_else(|| data.text(&format!("{name}_text")))
        };
        Self {
            id: data.text("id"),
            mechanism: data.text("mechanism"),
            primary_cert: cert("primary_cert"),
            secondary_cert: cert("secondary_cert"),
            endorsement_key: data.text("endorsement_key"),
            generate_keys: data.get("generate_keys").is_some(),
            primary_key: data.text("primary_key"),
            secondary_key: data.text("secondary_key"),
            device_id: data.text("device_id"),
            allocation_policy: data.text("allocation_policy"),
            iot_hubs: data.all("iot_hubs"),
            static_hub: data.text("static_hub"),
            webhook_url: data.text("webhook_url"),
            api_version: data.text("api_version"),
            initial_twin: data.get("initial_twin").unwrap_or_default().to_owned(),
            status: data.text("status"),
            reprovision: data.text("reprovision"),
            iot_edge: data.get("iot_edge").is_some(),
            etag: data.text("etag"),
        }
    }

    /// The details form of a stored group.
    pub(crate) fn from_group(g: &EnrollmentGroup) -> Self {
        let mut form = Self::common(g);
        form.id = g.enrollment_group_id.to_string();
        form
    }

    /// The details form of a stored individual enrollment.
    pub(crate) fn from_individual(e: &IndividualEnrollment) -> Self {
        let mut form = Self::common(e);
        form.id = e.registration_id.to_string();
        form.device_id = e
            .device_id
            .as_ref()
            .map(|d| d.as_str().to_owned())
            .unwrap_or_default();
        form
    }

    /// The fields both record types share.
    fn common(e: &dyn EnrollmentSettings) -> Self {
        let policy = e.allocation_policy().unwrap_or(AllocationPolicy::Hashed);
        let hubs: Vec<String> = e.iot_hubs().iter().map(|h| h.as_str().to_owned()).collect();
        let static_hub = match (policy, hubs.first(), e.iot_hub_host_name()) {
            (AllocationPolicy::Static, Some(h), _) => h.clone(),
            (AllocationPolicy::Static, None, Some(h)) => h.as_str().to_owned(),
            _ => String::new(),
        };
        let custom = e.custom_allocation_definition();
        Self {
            mechanism: e.attestation().kind().as_str().to_owned(),
            allocation_policy: policy.as_str().to_owned(),
            iot_hubs: if policy == AllocationPolicy::Static {
                Vec::new()
            } else {
                hubs
            },
            static_hub,
            webhook_url: custom.map(|c| c.webhook_url.clone()).unwrap_or_default(),
            api_version: custom
                .map_or_else(|| DEFAULT_API_VERSION.to_owned(), |c| c.api_version.clone()),
            initial_twin: e
                .initial_twin()
                .and_then(|t| serde_json::to_string_pretty(t).ok())
                .unwrap_or_default(),
            status: e
                .provisioning_status()
                .unwrap_or(ProvisioningStatus::Enabled)
                .as_str()
                .to_owned(),
            reprovision: reprovision_choice(e.reprovision_policy()).to_owned(),
            iot_edge: e.capabilities().is_some_and(|c| c.iot_edge),
            etag: e.etag().map(|t| t.to_string()).unwrap_or_default(),
            ..Self::default()
        }
    }
}

/// The fields both record types share and every update may change.
struct Common {
    allocation_policy: AllocationPolicy,
    iot_hubs: Option<Vec<HubName>>,
    custom: Option<CustomAllocationDefinition>,
    initial_twin: Option<InitialTwin>,
    status: ProvisioningStatus,
    reprovision: ReprovisionPolicy,
    capabilities: DeviceCapabilities,
}

fn common(form: &EnrollmentForm, errors: &mut FieldErrors) -> Option<Common> {
    let allocation_policy = match AllocationPolicy::parse(&form.allocation_policy) {
        Ok(p) => Some(p),
        Err(_) => {
            errors.insert("allocation_policy", "choose an allocation policy".into());
            None
        }
    };
    let iot_hubs = if allocation_policy == Some(AllocationPolicy::Static) {
        match HubName::parse(&form.static_hub) {
            Ok(h) => Some(vec![h]),
            Err(_) if form.static_hub.is_empty() => {
                errors.insert(
                    "static_hub",
                    "the static policy needs the IoT hub to assign".into(),
                );
                None
            }
            Err(e) => {
                errors.insert("static_hub", e.to_string());
                None
            }
        }
    } else {
        let parsed: Result<Vec<_>, _> = form.iot_hubs.iter().map(|h| HubName::parse(h)).collect();
        match parsed {
            Ok(v) if v.is_empty() => None,
            Ok(v) => Some(v),
            Err(e) => {
                errors.insert("iot_hubs", e.to_string());
                None
            }
        }
    };
    // Only the custom policy keeps a definition; choosing another one drops it.
    let custom = if allocation_policy == Some(AllocationPolicy::Custom) {
        custom::definition(form, errors)
    } else {
        None
    };
    let initial_twin = match parse_initial_twin(&form.initial_twin) {
        Ok(t) => t,
        Err(e) => {
            errors.insert("initial_twin", e);
            None
        }
    };
    let status = ProvisioningStatus::parse(&form.status)
        .map_err(|_| errors.insert("status", "choose enabled or disabled".into()))
        .ok();
    let reprovision = match form.reprovision.as_str() {
        "migrate" => Some(ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: true,
        }),
        "reset" => Some(ReprovisionPolicy {
            update_hub_assignment: true,
            migrate_device_data: false,
        }),
        "never" => Some(ReprovisionPolicy {
            update_hub_assignment: false,
            migrate_device_data: false,
        }),
        _ => {
            errors.insert("reprovision", "choose a reprovision policy".into());
            None
        }
    };
    if !errors.is_empty() {
        return None;
    }
    Some(Common {
        allocation_policy: allocation_policy?,
        iot_hubs,
        custom,
        initial_twin,
        status: status?,
        reprovision: reprovision?,
        capabilities: DeviceCapabilities {
            iot_edge: form.iot_edge,
        },
    })
}

/// The initial twin textarea: empty, or a JSON object with only `tags` (an object) and
/// `properties` (an object with only `desired`, an object).
pub(crate) fn parse_initial_twin(text: &str) -> Result<Option<InitialTwin>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("the initial twin must be a JSON object")?;
    for (key, member) in object {
        match key.as_str() {
            "tags" if member.is_object() => {}
            "tags" => return Err("\"tags\" must be an object".into()),
            "properties" => {
                let props = member
                    .as_object()
                    .ok_or("\"properties\" must be an object")?;
                for (k, v) in props {
                    match k.as_str() {
                        "desired" if v.is_object() => {}
                        "desired" => return Err("\"properties.desired\" must be an object".into()),
                        other => {
                            return Err(format!(
                                "\"properties.{other}\" is not allowed; only \"desired\" properties can be set"
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                "\"{other}\" is not allowed; use \"tags\" and \"properties\": {{\"desired\": ...}}"
            ))
            }
        }
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn keys(form: &EnrollmentForm, errors: &mut FieldErrors) -> SymmetricKeyAttestation {
    let mut keys = SymmetricKeyAttestation::default();
    if form.generate_keys {
        return keys;
    }
    for (field, text, slot) in [
        ("primary_key", &form.primary_key, &mut keys.primary_key),
        (
            "secondary_key",
            &form.secondary_key,
            &mut keys.secondary_key,
        ),
    ] {
        if text.is_empty() {
            errors.insert(
                field,
                "enter a base64 key, or tick \"Auto-generate keys\"".into(),
            );
            continue;
        }
        match SymmetricKey::parse(text) {
            Ok(k) => *slot = Some(k),
            Err(e) => {
                errors.insert(field, e.to_string());
            }
        }
    }
    keys
}

fn certificates(
    form: &EnrollmentForm,
    errors: &mut FieldErrors,
) -> Option<(X509Certificates, Option<ParsedCertificate>)> {
    let mut parsed_primary = None;
    if form.primary_cert.is_empty() {
        errors.insert("primary_cert", "upload the primary certificate".into());
    } else {
        match ParsedCertificate::parse(&form.primary_cert) {
            Ok(c) => parsed_primary = Some(c),
            Err(e) => {
                errors.insert("primary_cert", e.to_string());
            }
        }
    }
    if !form.secondary_cert.is_empty() {
        if let Err(e) = ParsedCertificate::parse(&form.secondary_cert) {
            errors.insert("secondary_cert", e.to_string());
        }
    }
    let with_text = |text: &str| {
        (!text.is_empty()).then(|| X509CertificateWithInfo {
            certificate: Some(text.to_owned()),
            info: None,
        })
    };
    let certificates = X509Certificates {
        primary: with_text(&form.primary_cert),
        secondary: with_text(&form.secondary_cert),
    };
    Some((certificates, parsed_primary))
}

/// A new enrollment group from the add form, prepared for the store under `rules`.
pub(crate) fn new_group(
    form: &EnrollmentForm,
    rules: &EnrollmentRules,
) -> Result<Prepared<EnrollmentGroup>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let id = match EnrollmentGroupId::parse(&form.id) {
        Ok(id) => Some(id),
        Err(_) if form.id.is_empty() => {
            errors.insert("id", "a group name is required".into());
            None
        }
        Err(e) => {
            errors.insert("id", e.to_string());
            None
        }
    };
    let attestation = match form.mechanism.as_str() {
        "x509" => certificates(form, &mut errors).map(|(certs, _)| {
            Attestation::X509(Box::new(X509Attestation {
                signing_certificates: Some(certs),
                ..X509Attestation::default()
            }))
        }),
        "symmetricKey" => Some(Attestation::SymmetricKey(keys(form, &mut errors))),
        _ => {
            errors.insert(
                "mechanism",
                "choose Certificate or Symmetric key attestation".into(),
            );
            None
        }
    };
    let common = common(form, &mut errors);
    let (Some(id), Some(attestation), Some(c), true) = (id, attestation, common, errors.is_empty())
    else {
        return Err(errors);
    };
    let group = EnrollmentGroup {
        enrollment_group_id: id,
        attestation,
        capabilities: Some(c.capabilities),
        iot_hub_host_name: None,
        initial_twin: c.initial_twin,
        etag: None,
        provisioning_status: Some(c.status),
        reprovision_policy: Some(c.reprovision),
        created_date_time_utc: None,
        last_updated_date_time_utc: None,
        allocation_policy: Some(c.allocation_policy),
        iot_hubs: c.iot_hubs,
        custom_allocation_definition: c.custom,
    };
    dps_attest::prepare_group(group, rules).map_err(|e| preparation_error(form, e))
}

/// A new individual enrollment from the add form, prepared for the store under `rules`.
pub(crate) fn new_individual(
    form: &EnrollmentForm,
    rules: &EnrollmentRules,
) -> Result<Prepared<IndividualEnrollment>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let parse_id = |errors: &mut FieldErrors| match RegistrationId::parse(&form.id) {
        Ok(id) => Some(id),
        Err(_) if form.id.is_empty() => {
            errors.insert("id", "a registration id is required".into());
            None
        }
        Err(e) => {
            errors.insert("id", e.to_string());
            None
        }
    };
    let (id, attestation) = match form.mechanism.as_str() {
        "x509" => {
            match certificates(form, &mut errors) {
                Some((certs, Some(leaf))) => {
                    let id = match leaf.common_name().map(|cn| RegistrationId::parse(&cn)) {
                        Some(Ok(id)) => Some(id),
                        Some(Err(e)) => {
                            errors.insert(
                            "primary_cert",
                            format!("the certificate's common name is not a valid registration id: {e}"),
                        );
                            None
                        }
                        None => {
                            errors.insert(
                                "primary_cert",
                                "the certificate has no common name (CN) to use as registration id"
                                    .into(),
                            );
                            None
                        }
                    };
                    let x509 = X509Attestation {
                        client_certificates: Some(certs),
                        ..X509Attestation::default()
                    };
                    (id, Some(Attestation::X509(Box::new(x509))))
                }
                _ => (None, None),
            }
        }
        "tpm" => {
            let id = parse_id(&mut errors);
            let ek = if form.endorsement_key.is_empty() {
                errors.insert("endorsement_key", "the endorsement key is required".into());
                None
            } else {
                EndorsementKey::parse(&form.endorsement_key)
                    .map_err(|e| errors.insert("endorsement_key", e.to_string()))
                    .ok()
            };
            let attestation = ek.map(|endorsement_key| {
                Attestation::Tpm(TpmAttestation {
                    endorsement_key,
                    storage_root_key: None,
                })
            });
            (id, attestation)
        }
        "symmetricKey" => {
            let id = parse_id(&mut errors);
            (id, Some(Attestation::SymmetricKey(keys(form, &mut errors))))
        }
        _ => {
            errors.insert("mechanism", "choose X.509, TPM or Symmetric key".into());
            (None, None)
        }
    };
    let device_id = parse_device_id(form, &mut errors);
    let common = common(form, &mut errors);
    let (Some(id), Some(attestation), Some(c), true) = (id, attestation, common, errors.is_empty())
    else {
        return Err(errors);
    };
    let enrollment = IndividualEnrollment {
        registration_id: id,
        device_id,
        registration_state: None,
        optional_device_information: None,
        attestation,
        capabilities: Some(c.capabilities),
        iot_hub_host_name: None,
        initial_twin: c.initial_twin,
        etag: None,
        provisioning_status: Some(c.status),
        reprovision_policy: Some(c.reprovision),
        created_date_time_utc: None,
        last_updated_date_time_utc: None,
        allocation_policy: Some(c.allocation_policy),
        iot_hubs: c.iot_hubs,
        custom_allocation_definition: c.custom,
    };
    dps_attest::prepare_individual(enrollment, rules).map_err(|e| preparation_error(form, e))
}

fn parse_device_id(form: &EnrollmentForm, errors: &mut FieldErrors) -> Option<DeviceId> {
    if form.device_id.is_empty() {
        return None;
    }
    DeviceId::parse(&form.device_id)
        .map_err(|e| errors.insert("device_id", e.to_string()))
        .ok()
}

/// Puts a refused preparation next to the field it is about: the hubs, the webhook, or the
/// attestation.
fn preparation_error(form: &EnrollmentForm, e: AttestError) -> FieldErrors {
    let field = match (&e, form.allocation_policy.as_str(), form.mechanism.as_str()) {
        (AttestError::UnlinkedHub { .. }, "static", _) => "static_hub",
        (AttestError::UnlinkedHub { .. }, _, _) => "iot_hubs",
        (AttestError::CustomWithoutDefinition | AttestError::WebhookUrlRefused(_), _, _) => {
            "webhook_url"
        }
        (_, _, "x509") => "primary_cert",
        (_, _, "tpm") => "endorsement_key",
        _ => "mechanism",
    };
    FieldErrors::from([(field, e.to_string())])
}

/// The stored group with the form's changeable fields (attestation and credentials kept),
/// prepared for the store under `rules`.
pub(crate) fn update_group(
    stored: &EnrollmentGroup,
    form: &EnrollmentForm,
    rules: &EnrollmentRules,
) -> Result<Prepared<EnrollmentGroup>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let c = common(form, &mut errors).ok_or(errors)?;
    let mut group = stored.clone();
    group.allocation_policy = Some(c.allocation_policy);
    group.iot_hubs = c.iot_hubs;
    group.custom_allocation_definition = c.custom;
    group.iot_hub_host_name = None;
    group.initial_twin = c.initial_twin;
    group.provisioning_status = Some(c.status);
    group.reprovision_policy = Some(c.reprovision);
    group.capabilities = Some(c.capabilities);
    dps_attest::prepare_group(group, rules).map_err(|e| preparation_error(form, e))
}

/// The stored enrollment with the form's changeable fields (attestation and credentials
/// kept), prepared for the store under `rules`.
pub(crate) fn update_individual(
    stored: &IndividualEnrollment,
    form: &EnrollmentForm,
    rules: &EnrollmentRules,
) -> Result<Prepared<IndividualEnrollment>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let device_id = parse_device_id(form, &mut errors);
    let c = common(form, &mut errors).ok_or(errors)?;
    let mut e = stored.clone();
    e.device_id = device_id;
    e.allocation_policy = Some(c.allocation_policy);
    e.iot_hubs = c.iot_hubs;
    e.custom_allocation_definition = c.custom;
    e.iot_hub_host_name = None;
    e.initial_twin = c.initial_twin;
    e.provisioning_status = Some(c.status);
    e.reprovision_policy = Some(c.reprovision);
    e.capabilities = Some(c.capabilities);
    dps_attest::prepare_individual(e, rules).map_err(|e| preparation_error(form, e))
}

#[cfg(test)]
mod tests;
