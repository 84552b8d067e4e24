//! The portal's form handling without a server: what the add-enrollment handlers do with a
//! request body, callable on bytes alone so that the fuzz targets (`fuzz/`) run exactly the
//! handlers' code.

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{header, Method, Request};
use dps_attest::{EnrollmentRules, Prepared};
use dps_types::{EnrollmentGroup, IndividualEnrollment};

use crate::form::{self, EnrollmentForm, FormData};

/// What one submitted enrollment form would create.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedForm {
    /// The group the add-group page would store, when the form is a valid group.
    pub group: Option<EnrollmentGroup>,
    /// The enrollment the add-enrollment page would store, when the form is a valid one.
    pub individual: Option<IndividualEnrollment>,
}

/// Reads `body` as the add-enrollment handlers read a POST (`content_type` chooses URL-encoded
/// or `multipart/form-data` with certificate uploads), then validates and prepares it under
/// `rules` both as a new enrollment group and as a new individual enrollment. Nothing is
/// stored.
///
/// Errors with the message a handler answers when the body cannot be read as a form at all.
pub async fn validate_enrollment_form(
    content_type: &str,
    body: Vec<u8>,
    rules: &EnrollmentRules,
) -> Result<ValidatedForm, String> {
    let request = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .map_err(|e| e.to_string())?;
    let data = FormData::from_request(request, &())
        .await
        .map_err(|e| e.to_string())?;
    let form = EnrollmentForm::from_data(&data);
    Ok(ValidatedForm {
        group: form::new_group(&form, rules).ok().map(Prepared::into_inner),
        individual: form::new_individual(&form, rules)
            .ok()
            .map(Prepared::into_inner),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URLENCODED: &str = "application/x-www-form-urlencoded";

    #[tokio::test]
    async fn a_valid_form_makes_a_group_and_an_enrollment() {
        let body = "id=dev-1&mechanism=symmetricKey&generate_keys=on&allocation_policy=hashed\
                    &status=enabled&reprovision=migrate";
        let checked =
            validate_enrollment_form(URLENCODED, body.into(), &EnrollmentRules::default())
                .await
                .unwrap();
        assert_eq!(
            checked.group.map(|g| g.enrollment_group_id.to_string()),
            Some("dev-1".into())
        );
        assert_eq!(
            checked.individual.map(|e| e.registration_id.to_string()),
            Some("dev-1".into())
        );
    }

    #[tokio::test]
    async fn invalid_fields_make_nothing_and_an_unreadable_body_is_an_error() {
        let checked = validate_enrollment_form(
            URLENCODED,
            b"id=&mechanism=tpm".to_vec(),
            &EnrollmentRules::default(),
        )
        .await
        .unwrap();
        assert_eq!((checked.group, checked.individual), (None, None));
        let unreadable = validate_enrollment_form(
            "multipart/form-data; boundary=x",
            b"--y\r\n".to_vec(),
            &EnrollmentRules::default(),
        )
        .await;
        assert!(unreadable.is_err());
    }
}
