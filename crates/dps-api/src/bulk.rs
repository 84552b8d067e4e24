//! Bulk operations: `POST /enrollments` and `POST /enrollmentGroups` with up to ten items and
//! a mode. The answer is always 200 with one error per failed item (DPS behaviour); only a
//! request that is not a bulk operation at all (bad JSON, bad mode, too many items) is a 400.

use axum::extract::State;
use axum::response::Response;
use dps_store::Precondition;
use dps_types::BulkMode;
use serde_json::{Map, Value};

use crate::auth::{Authorized, EnrollmentWrite};
use crate::error::ErrorChain;
use crate::extract::{decode, json, JsonBody, PathId};
use crate::resource::Resource;
use crate::{ApiError, ApiState};

/// "maximum of 10 enrollments" / "maximum of 10 groups" (service.json).
const MAX_BULK_ITEMS: usize = 10;

/// `POST /enrollments` or `POST /enrollmentGroups`.
pub(crate) async fn run<R: Resource>(
    _: Authorized<EnrollmentWrite>,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let body = body.ok_or(ApiError::EmptyBody("a bulk operation JSON object"))?;
    let Value::Object(mut operation) = body else {
        return Err(ApiError::InvalidBody(
            "the request body must be a bulk operation JSON object".into(),
        ));
    };
    let mode = mode(&operation)?;
    let items = match operation.remove(R::LIST_MEMBER) {
        Some(Value::Array(items)) => items,
        _ => {
            return Err(ApiError::InvalidBody(format!(
                "the bulk operation needs a '{}' array",
                R::LIST_MEMBER
            )))
        }
    };
    if items.len() > MAX_BULK_ITEMS {
        return Err(ApiError::TooManyBulkItems {
            count: items.len(),
            max: MAX_BULK_ITEMS,
        });
    }
    let mut errors = Vec::new();
    for item in items {
        let sent_id = sent_id::<R>(&item);
        if let Err(error) = apply::<R>(&state, mode, item).await {
            if matches!(error, ApiError::Store(_)) {
                tracing::error!(error = %ErrorChain(&error), id = %sent_id, "bulk item failed in the store");
            }
            errors.push(R::bulk_error(sent_id, &error));
        }
    }
    json(&R::bulk_result(errors))
}

fn mode(operation: &Map<String, Value>) -> Result<BulkMode, ApiError> {
    let text = operation
        .get("mode")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::InvalidBody(
                "the bulk operation needs a 'mode': create, update, updateIfMatchETag or delete"
                    .into(),
            )
        })?;
    BulkMode::parse(text)
        .map_err(|e| ApiError::InvalidBody(format!("invalid value of 'mode': {e}")))
}

/// The item's id as the client wrote it, for the error list (even when it is not valid).
fn sent_id<R: Resource>(item: &Value) -> String {
    item.get(R::ID_MEMBER)
        .and_then(Value::as_str)
        .map(crate::error::truncated)
        .unwrap_or_default()
}

/// One item: `create` fails on an existing record, `update` creates or replaces,
/// `updateIfMatchETag` replaces only the version named by the item's `etag`, `delete` deletes
/// (only that version when the item has an `etag`; nothing but the id and etag is read).
async fn apply<R: Resource>(state: &ApiState, mode: BulkMode, item: Value) -> Result<(), ApiError> {
    let store = state.store();
    if mode == BulkMode::Delete {
        let id = item
            .get(R::ID_MEMBER)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::InvalidBody(format!("the item has no '{}'", R::ID_MEMBER)))?;
        let id = R::Id::parse_path(id).map_err(ApiError::InvalidId)?;
        let pre = match item.get("etag").and_then(Value::as_str) {
            Some(etag) => Precondition::IfMatch(etag.to_owned()),
            None => Precondition::Any,
        };
        return R::delete(state, &id, &pre)
            .await
            .map_err(|e| R::store_error(e, &id));
    }
    let item: R = decode(item)?;
    let pre = match (mode, item.etag()) {
        (BulkMode::Create, _) => Precondition::MustNotExist,
        (BulkMode::UpdateIfMatchEtag, Some(etag)) => {
            Precondition::IfMatch(etag.as_str().to_owned())
        }
        (BulkMode::UpdateIfMatchEtag, None) => {
            return Err(ApiError::InvalidBody(
                "mode updateIfMatchETag needs the item's etag".into(),
            ))
        }
        (BulkMode::Update | BulkMode::Delete, _) => Precondition::Any,
    };
    let item = crate::resource::complete_and_prepare(state, item)?;
    let id = item.id().clone();
    R::put(store, item, &pre)
        .await
        .map(drop)
        .map_err(|e| R::put_error(e, &id))
}
