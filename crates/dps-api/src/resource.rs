//! The operations individual enrollments and enrollment groups share (get, create or replace,
//! delete, attestation mechanism, query), written once over [`Resource`].

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dps_attest::{AttestError, EnrollmentRules, Prepared};
use dps_store::{Page, Precondition, Store, StoreError};
use dps_types::{
    Attestation, BulkEnrollmentGroupOperationError, BulkEnrollmentGroupOperationResult,
    BulkEnrollmentOperationError, BulkEnrollmentOperationResult, DeviceRegistrationState,
    EnrollmentGroup, EnrollmentGroupId, EnrollmentSettings, IndividualEnrollment,
    QuerySpecification, RegistrationId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::auth::{Authorized, EnrollmentRead, EnrollmentWrite};
use crate::extract::{decode, json, page, IdPath, IfMatch, JsonBody, Paging, PathId};
use crate::{ApiError, ApiState};

/// An individual enrollment or an enrollment group, as the service API handles it.
/// The etag and attestation come from [`EnrollmentSettings`].
pub(crate) trait Resource:
    EnrollmentSettings + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Its id type.
    type Id: PathId + Clone + PartialEq + std::fmt::Display + Send + Sync;
    /// One failed item of a bulk operation.
    type BulkError: Serialize;
    /// The result of a bulk operation.
    type BulkResult: Serialize;

    /// The JSON member that holds the id.
    const ID_MEMBER: &'static str;
    /// The JSON member of a bulk operation that holds the items.
    const LIST_MEMBER: &'static str;
    /// `x-ms-item-type` of query pages.
    const ITEM_TYPE: &'static str;
    /// What the body of a create-or-replace must be, for error messages.
    const EXPECTED: &'static str;
    /// The record, for "does not match the current ..." messages.
    const WHAT: &'static str;

    /// The id.
    fn id(&self) -> &Self::Id;
    /// The same, to complete a request from the stored record.
    fn attestation_mut(&mut self) -> &mut Attestation;
    /// Drops what clients may not set, checks and completes the attestation (certificates
    /// parsed, their `info` filled in) and checks the settings against `rules`.
    fn prepare(self, rules: &EnrollmentRules) -> Result<Prepared<Self>, AttestError>;
    /// The record as responses show it: no keys, no certificate text.
    fn redacted(&self) -> Self;
    /// The record as a create or replace answers: keys included, no certificate text.
    fn write_response(&self) -> Self;
    /// The record as a read shows it: redacted, plus what reads add.
    fn view(&self, _store: &Store) -> Self {
        self.redacted()
    }
    /// The 404 for this id.
    fn not_found(id: &Self::Id) -> ApiError;
    /// The 409 of a bulk `create` of an existing record.
    fn exists() -> ApiError;

    /// Reads from the store's cache.
    fn load(store: &Store, id: &Self::Id) -> Option<Arc<Self>>;
    /// Writes durably.
    fn put(
        store: &Store,
        item: Prepared<Self>,
        pre: &Precondition,
    ) -> impl Future<Output = Result<Arc<Self>, StoreError>> + Send;
    /// Deletes durably, through the registrar, so the assignment feed learns of the devices
    /// the record covered.
    fn delete(
        state: &ApiState,
        id: &Self::Id,
        pre: &Precondition,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// One page of all records.
    fn query(
        store: &Store,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<Arc<Self>>, StoreError>;

    /// A failed bulk item.
    fn bulk_error(id: String, error: &ApiError) -> Self::BulkError;
    /// The bulk response.
    fn bulk_result(errors: Vec<Self::BulkError>) -> Self::BulkResult;

    /// Maps a store failure on the record `id`.
    fn store_error(e: StoreError, id: &Self::Id) -> ApiError {
        match e {
            StoreError::AlreadyExists => Self::exists(),
            e => ApiError::from_store(e, || Self::not_found(id), Self::WHAT),
        }
    }

    /// Maps a store failure of a write: a conditional write to a record that does not exist
    /// is a failed precondition, not a 404.
    fn put_error(e: StoreError, id: &Self::Id) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::PreconditionFailed(Self::WHAT),
            e => Self::store_error(e, id),
        }
    }
}

impl Resource for IndividualEnrollment {
    type Id = RegistrationId;
    type BulkError = BulkEnrollmentOperationError;
    type BulkResult = BulkEnrollmentOperationResult;
    const ID_MEMBER: &'static str = "registrationId";
    const LIST_MEMBER: &'static str = "enrollments";
    const ITEM_TYPE: &'static str = "Enrollment";
    const EXPECTED: &'static str = "an IndividualEnrollment JSON object";
    const WHAT: &'static str = "enrollment";

    fn id(&self) -> &RegistrationId {
        &self.registration_id
    }
    fn attestation_mut(&mut self) -> &mut Attestation {
        &mut self.attestation
    }
    fn prepare(mut self, rules: &EnrollmentRules) -> Result<Prepared<Self>, AttestError> {
        self.registration_state = None;
        dps_attest::prepare_individual(self, rules)
    }
    fn redacted(&self) -> Self {
        IndividualEnrollment::redacted(self)
    }
    fn write_response(&self) -> Self {
        IndividualEnrollment::write_response(self)
    }
    fn view(&self, store: &Store) -> Self {
        let mut view = self.redacted();
        // DPS shows an `unassigned` state for an enrollment no device has registered with.
        let state = match store.registration(&self.registration_id) {
            Some(record) => record.state.clone(),
            None => DeviceRegistrationState::unassigned(self.registration_id.clone()),
        };
        view.registration_state = Some(Box::new(state));
        view
    }
    fn not_found(id: &RegistrationId) -> ApiError {
        ApiError::EnrollmentNotFound(id.to_string())
    }
    fn exists() -> ApiError {
        ApiError::EnrollmentExists
    }
    fn load(store: &Store, id: &RegistrationId) -> Option<Arc<Self>> {
        store.enrollment(id)
    }
    fn put(
        store: &Store,
        item: Prepared<Self>,
        pre: &Precondition,
    ) -> impl Future<Output = Result<Arc<Self>, StoreError>> + Send {
        store.put_enrollment(item, pre)
    }
    fn delete(
        state: &ApiState,
        id: &RegistrationId,
        pre: &Precondition,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        state.registrar().delete_enrollment(id, pre)
    }
    fn query(
        store: &Store,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<Arc<Self>>, StoreError> {
        store.query_enrollments(page_size, continuation)
    }
    fn bulk_error(registration_id: String, error: &ApiError) -> BulkEnrollmentOperationError {
        BulkEnrollmentOperationError {
            registration_id,
            error_code: error.error_code(),
            error_status: error.to_string(),
        }
    }
    fn bulk_result(errors: Vec<BulkEnrollmentOperationError>) -> BulkEnrollmentOperationResult {
        BulkEnrollmentOperationResult {
            is_successful: errors.is_empty(),
            errors,
        }
    }
}

impl Resource for EnrollmentGroup {
    type Id = EnrollmentGroupId;
    type BulkError = BulkEnrollmentGroupOperationError;
    type BulkResult = BulkEnrollmentGroupOperationResult;
    const ID_MEMBER: &'static str = "enrollmentGroupId";
    const LIST_MEMBER: &'static str = "enrollmentGroups";
    const ITEM_TYPE: &'static str = "EnrollmentGroup";
    const EXPECTED: &'static str = "an EnrollmentGroup JSON object";
    const WHAT: &'static str = "enrollment group";

    fn id(&self) -> &EnrollmentGroupId {
        &self.enrollment_group_id
    }
    fn attestation_mut(&mut self) -> &mut Attestation {
        &mut self.attestation
    }
    fn prepare(self, rules: &EnrollmentRules) -> Result<Prepared<Self>, AttestError> {
        dps_attest::prepare_group(self, rules)
    }
    fn redacted(&self) -> Self {
        EnrollmentGroup::redacted(self)
    }
    fn write_response(&self) -> Self {
        EnrollmentGroup::write_response(self)
    }
    fn not_found(id: &EnrollmentGroupId) -> ApiError {
        ApiError::GroupNotFound(id.to_string())
    }
    fn exists() -> ApiError {
        ApiError::GroupExists
    }
    fn load(store: &Store, id: &EnrollmentGroupId) -> Option<Arc<Self>> {
        store.group(id)
    }
    fn put(
        store: &Store,
        item: Prepared<Self>,
        pre: &Precondition,
    ) -> impl Future<Output = Result<Arc<Self>, StoreError>> + Send {
        store.put_group(item, pre)
    }
    fn delete(
        state: &ApiState,
        id: &EnrollmentGroupId,
        pre: &Precondition,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        state.registrar().delete_group(id, pre)
    }
    fn query(
        store: &Store,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<Arc<Self>>, StoreError> {
        store.query_groups(page_size, continuation)
    }
    fn bulk_error(
        enrollment_group_id: String,
        error: &ApiError,
    ) -> BulkEnrollmentGroupOperationError {
        BulkEnrollmentGroupOperationError {
            enrollment_group_id,
            error_code: error.error_code(),
            error_status: error.to_string(),
        }
    }
    fn bulk_result(
        errors: Vec<BulkEnrollmentGroupOperationError>,
    ) -> BulkEnrollmentGroupOperationResult {
        BulkEnrollmentGroupOperationResult {
            is_successful: errors.is_empty(),
            errors,
        }
    }
}

/// Parses a create-or-replace body for the record `path_id`: a body without the id member
/// (or with `null`) gets the path's id; a different id is refused.
pub(crate) fn item_from_body<R: Resource>(
    path_id: &R::Id,
    body: Option<Value>,
) -> Result<R, ApiError> {
    let mut value = body.ok_or(ApiError::EmptyBody(R::EXPECTED))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::InvalidBody(format!(
            "the request body must be {}",
            R::EXPECTED
        )));
    };
    if object.get(R::ID_MEMBER).is_none_or(Value::is_null) {
        object.insert(R::ID_MEMBER.to_owned(), Value::String(path_id.to_string()));
    }
    let item: R = decode(value)?;
    if item.id() != path_id {
        return Err(ApiError::IdMismatch {
            member: R::ID_MEMBER,
            body: item.id().to_string(),
            path: path_id.to_string(),
        });
    }
    Ok(item)
}

/// `GET /{resource}/{id}`.
pub(crate) async fn get<R: Resource>(
    _: Authorized<EnrollmentRead>,
    State(state): State<ApiState>,
    IdPath(id): IdPath<R::Id>,
) -> Result<Response, ApiError> {
    let item = R::load(state.store(), &id).ok_or_else(|| R::not_found(&id))?;
    json(&item.view(state.store()))
}

/// `PUT /{resource}/{id}`: create or replace; with `If-Match`, replace only that version.
pub(crate) async fn put<R: Resource>(
    _: Authorized<EnrollmentWrite>,
    State(state): State<ApiState>,
    IdPath(id): IdPath<R::Id>,
    IfMatch(pre): IfMatch,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let item: R = item_from_body(&id, body)?;
    let item = complete_and_prepare(&state, item)?;
    let stored = R::put(state.store(), item, &pre)
        .await
        .map_err(|e| R::put_error(e, &id))?;
    json(&stored.write_response())
}

/// Fills certificate text a get-modify-put left out from the stored record, then validates
/// against the service's rules: the one way a request becomes something the store accepts.
pub(crate) fn complete_and_prepare<R: Resource>(
    state: &ApiState,
    mut item: R,
) -> Result<Prepared<R>, ApiError> {
    if let Some(stored) = R::load(state.store(), item.id()) {
        item.attestation_mut()
            .restore_certificates_from(stored.attestation());
    }
    item.prepare(state.rules())
        .map_err(ApiError::from_preparation)
}

/// `DELETE /{resource}/{id}`: 204, with `If-Match` only when the etag matches.
pub(crate) async fn delete<R: Resource>(
    _: Authorized<EnrollmentWrite>,
    State(state): State<ApiState>,
    IdPath(id): IdPath<R::Id>,
    IfMatch(pre): IfMatch,
) -> Result<Response, ApiError> {
    R::delete(&state, &id, &pre)
        .await
        .map_err(|e| R::store_error(e, &id))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /{resource}/{id}/attestationmechanism`: the one operation that returns keys and
/// certificate text.
pub(crate) async fn attestation_mechanism<R: Resource>(
    _: Authorized<EnrollmentRead>,
    State(state): State<ApiState>,
    IdPath(id): IdPath<R::Id>,
) -> Result<Response, ApiError> {
    let item = R::load(state.store(), &id).ok_or_else(|| R::not_found(&id))?;
    json(item.attestation())
}

/// `POST /{resource}/query`: any query text selects every record (`SELECT *`, with or
/// without `FROM ...`, is all DPS clients send), paged by `x-ms-max-item-count` and
/// `x-ms-continuation`.
pub(crate) async fn query<R: Resource>(
    _: Authorized<EnrollmentRead>,
    State(state): State<ApiState>,
    paging: Paging,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let spec: QuerySpecification =
        decode(body.ok_or(ApiError::EmptyBody("a QuerySpecification JSON object"))?)?;
    if spec.query.trim().is_empty() {
        return Err(ApiError::EmptyQuery);
    }
    let store = state.store();
    let found = R::query(store, paging.page_size, paging.continuation.as_deref())
        .map_err(ApiError::from_query)?;
    let items: Vec<R> = found.items.iter().map(|item| item.view(store)).collect();
    page(
        &items,
        R::ITEM_TYPE,
        paging.page_size,
        found.continuation.as_deref(),
    )
}
