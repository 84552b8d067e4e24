//! "Manage enrollments": the two tabs (enrollment groups, individual enrollments) with search
//! and paging, the add forms, the details/update form (saved with the etag it was opened
//! with) and delete with a confirmation page.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use dps_store::{Page as StorePage, Precondition, StoreError};
use dps_types::{
    Attestation, EnrollmentGroup, EnrollmentGroupId, EnrollmentSettings, IndividualEnrollment,
    RegistrationId,
};
use maud::{html, Markup};
use serde::Deserialize;

use crate::form::{self, EnrollmentForm, FieldErrors, FormData};
use crate::html::{csrf, page, when, Nav, Page, PortalError};
use crate::session::{Auth, Need};
use crate::{PortalState, BASE};

mod views;

use views::{form_page, Summary};

/// Rows per list page.
const PAGE_ROWS: usize = 25;
/// Records read from the store per query while filtering.
const SCAN_BATCH: usize = 200;
/// Records examined per list request at most; past that the page offers "continue" so one
/// request stays cheap however many records there are.
const MAX_SCAN: usize = 20_000;

/// Which tab, and the path segment of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Groups,
    Individual,
}

impl Kind {
    fn parse(segment: &str) -> Result<Kind, PortalError> {
        match segment {
            "groups" => Ok(Kind::Groups),
            "individual" => Ok(Kind::Individual),
            _ => Err(PortalError::NotFound),
        }
    }

    fn segment(self) -> &'static str {
        match self {
            Kind::Groups => "groups",
            Kind::Individual => "individual",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Groups => "enrollment group",
            Kind::Individual => "individual enrollment",
        }
    }
}

/// Query of the list page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    tab: Option<String>,
    q: Option<String>,
    after: Option<String>,
    saved: Option<String>,
    deleted: Option<String>,
}

/// One page of records whose id contains `needle` (lower case), starting after `after`.
fn filtered<T>(
    query: impl Fn(usize, Option<&str>) -> Result<StorePage<Arc<T>>, StoreError>,
    key: impl Fn(&T) -> String,
    needle: &str,
    after: Option<&str>,
) -> Result<(Vec<Arc<T>>, Option<String>), StoreError> {
    let mut rows = Vec::new();
    let mut token = after.map(str::to_owned);
    let mut scanned = 0;
    loop {
        let page = query(SCAN_BATCH, token.as_deref())?;
        for item in page.items {
            scanned += 1;
            let k = key(&item);
            if k.contains(needle) {
                rows.push(item);
                if rows.len() == PAGE_ROWS {
                    return Ok((rows, Some(k)));
                }
            }
            token = Some(k);
        }
        if page.continuation.is_none() {
            return Ok((rows, None));
        }
        if scanned >= MAX_SCAN {
            return Ok((rows, token));
        }
    }
}

fn attestation_label(a: &Attestation) -> &'static str {
    match a {
        Attestation::None => "None",
        Attestation::Tpm(_) => "TPM",
        Attestation::X509(x) if x.ca_references.is_some() => "X.509 (CA reference)",
        Attestation::X509(x) if x.signing_certificates.is_some() => "X.509 (CA certificate)",
        Attestation::X509(_) => "X.509",
        Attestation::SymmetricKey(_) => "Symmetric key",
    }
}

fn hubs_label(
    policy: Option<dps_types::AllocationPolicy>,
    hubs: Option<&[dps_types::HubName]>,
) -> String {
    let policy = policy.map(|p| p.as_str()).unwrap_or("service default");
    match hubs {
        Some(h) if !h.is_empty() => {
            let names: Vec<_> = h.iter().map(|h| h.as_str()).collect();
            format!("{policy}: {}", names.join(", "))
        }
        _ => format!("{policy}: all linked hubs"),
    }
}

/// One row of an enrollment list.
fn row(auth: &Auth, kind: Kind, id: &str, e: &dyn EnrollmentSettings) -> Markup {
    html! {
        tr {
            td { a href={(BASE) "/" (kind.segment()) "/" (id)} { (id) } }
            td { (attestation_label(e.attestation())) }
            td { (hubs_label(e.allocation_policy(), Some(e.iot_hubs()))) }
            td { (status_badge(e.is_enabled())) }
            td { (when(e.last_updated())) }
            td.row-actions { (row_actions(auth, kind, id)) }
        }
    }
}

/// `GET /enrollments`.
pub(crate) async fn list(
    State(state): State<PortalState>,
    auth: Auth,
    Query(query): Query<ListQuery>,
) -> Result<Page, PortalError> {
    auth.require(Need::ENROLLMENT_READ)?;
    let kind = match query.tab.as_deref() {
        Some("individual") => Kind::Individual,
        _ => Kind::Groups,
    };
    let q = query.q.as_deref().unwrap_or_default().trim();
    let needle = q.to_ascii_lowercase();
    let after = query.after.as_deref().filter(|a| !a.is_empty());
    let store = state.store();
    let (rows, next) = match kind {
        Kind::Groups => {
            let (items, next) = filtered(
                |n, c| store.query_groups(n, c),
                |g: &EnrollmentGroup| g.enrollment_group_id.key(),
                &needle,
                after,
            )?;
            let rows = html! {
                @for g in &items { (row(&auth, Kind::Groups, g.enrollment_group_id.as_str(), &**g)) }
            };
            (if items.is_empty() { None } else { Some(rows) }, next)
        }
        Kind::Individual => {
            let (items, next) = filtered(
                |n, c| store.query_enrollments(n, c),
                |e: &IndividualEnrollment| e.registration_id.key(),
                &needle,
                after,
            )?;
            let rows = html! {
                @for e in &items { (row(&auth, Kind::Individual, e.registration_id.as_str(), &**e)) }
            };
            (if items.is_empty() { None } else { Some(rows) }, next)
        }
    };
    let tab = kind.segment();
    let body = html! {
        h1 { "Manage enrollments" }
        @if let Some(id) = &query.saved { p.notice role="status" { "Saved " (id) "." } }
        @if let Some(id) = &query.deleted { p.notice role="status" { "Deleted " (id) "." } }
        nav.tabs aria-label="Enrollment kind" {
            a href={(BASE) "/enrollments?tab=groups"} aria-current=[(kind == Kind::Groups).then_some("page")] { "Enrollment groups" }
            a href={(BASE) "/enrollments?tab=individual"} aria-current=[(kind == Kind::Individual).then_some("page")] { "Individual enrollments" }
        }
        div.toolbar {
            form.search method="get" action={(BASE) "/enrollments"} role="search" {
                input type="hidden" name="tab" value=(tab);
                label for="q" { "Search by id" }
                input #q type="search" name="q" value=(q) placeholder="part of the id";
                button type="submit" { "Search" }
            }
            @if auth.can_write() {
                @match kind {
                    Kind::Groups => a.button.primary href={(BASE) "/groups/new"} { "+ Add enrollment group" },
                    Kind::Individual => a.button.primary href={(BASE) "/individual/new"} { "+ Add individual enrollment" },
                }
            }
        }
        @if let Some(rows) = rows {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { @if kind == Kind::Groups { "Group name" } @else { "Registration ID" } }
                        th scope="col" { "Attestation" }
                        th scope="col" { "Hub assignment" }
                        th scope="col" { "Status" }
                        th scope="col" { "Last updated" }
                        th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody { (rows) }
                }
            }
        } @else {
            p.empty { "No " (kind.noun()) "s" @if !q.is_empty() { " match “" (q) "”" } "." }
        }
        @if let Some(next) = next {
            p.pager { a href={(BASE) "/enrollments?tab=" (tab) "&q=" (query_escape(q)) "&after=" (query_escape(&next))} { "Next page →" } }
        }
    };
    Ok(Page(page(
        "Manage enrollments",
        Some((&auth, Nav::Enrollments)),
        body,
    )))
}

/// Percent-encodes everything but unreserved characters, for a query-string value.
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn status_badge(enabled: bool) -> Markup {
    html! {
        @if enabled { span.status.on { "Enabled" } } @else { span.status.off { "Disabled" } }
    }
}

fn row_actions(auth: &Auth, kind: Kind, id: &str) -> Markup {
    html! {
        @if auth.can_write() {
            a href={(BASE) "/" (kind.segment()) "/" (id) "/delete"} aria-label={"Delete " (id)} { "Delete" }
        }
    }
}

/// `GET /groups/new`.
pub(crate) async fn new_group(state: State<PortalState>, auth: Auth) -> Result<Page, PortalError> {
    empty_form(state, auth, Kind::Groups)
}

/// `GET /individual/new`.
pub(crate) async fn new_individual(
    state: State<PortalState>,
    auth: Auth,
) -> Result<Page, PortalError> {
    empty_form(state, auth, Kind::Individual)
}

/// The add form of either kind, X.509 preselected as in the Azure portal.
fn empty_form(
    State(state): State<PortalState>,
    auth: Auth,
    kind: Kind,
) -> Result<Page, PortalError> {
    auth.require(Need::ENROLLMENT_WRITE)?;
    let form = EnrollmentForm {
        mechanism: "x509".into(),
        ..EnrollmentForm::default()
    };
    Ok(form_page(
        &state,
        &auth,
        kind,
        None,
        &form,
        &FieldErrors::new(),
        None,
    ))
}

fn writable(auth: &Auth, data: &FormData) -> Result<(), PortalError> {
    auth.check_csrf(data)?;
    auth.require(Need::ENROLLMENT_WRITE)
}

fn saved(kind: Kind, id: &str) -> Response {
    Redirect::to(&format!(
        "{BASE}/enrollments?tab={}&saved={id}",
        kind.segment()
    ))
    .into_response()
}

/// `POST /groups/new`.
pub(crate) async fn create_group(
    State(state): State<PortalState>,
    auth: Auth,
    data: FormData,
) -> Result<Response, PortalError> {
    writable(&auth, &data)?;
    let form = EnrollmentForm::from_data(&data);
    let mut errors = match form::new_group(&form, state.rules()) {
        Ok(group) => {
            let id = group.enrollment_group_id.to_string();
            match state
                .store()
                .put_group(group, &Precondition::MustNotExist)
                .await
            {
                Ok(_) => return Ok(saved(Kind::Groups, &id)),
                Err(StoreError::AlreadyExists) => FieldErrors::from([(
                    "id",
                    format!("an enrollment group named {id} already exists"),
                )]),
                Err(e) => return Err(e.into()),
            }
        }
        Err(errors) => errors,
    };
    errors
        .entry("form")
        .or_insert_with(|| "Please correct the marked fields.".into());
    Ok(form_page(&state, &auth, Kind::Groups, None, &form, &errors, None).into_response())
}

/// `POST /individual/new`.
pub(crate) async fn create_individual(
    State(state): State<PortalState>,
    auth: Auth,
    data: FormData,
) -> Result<Response, PortalError> {
    writable(&auth, &data)?;
    let form = EnrollmentForm::from_data(&data);
    let mut errors = match form::new_individual(&form, state.rules()) {
        Ok(enrollment) => {
            let id = enrollment.registration_id.to_string();
            let field = if form.mechanism == "x509" {
                "primary_cert"
            } else {
                "id"
            };
            match state
                .store()
                .put_enrollment(enrollment, &Precondition::MustNotExist)
                .await
            {
                Ok(_) => return Ok(saved(Kind::Individual, &id)),
                Err(StoreError::AlreadyExists) => FieldErrors::from([(
                    field,
                    format!("an individual enrollment with registration id {id} already exists"),
                )]),
                Err(e) => return Err(e.into()),
            }
        }
        Err(errors) => errors,
    };
    errors
        .entry("form")
        .or_insert_with(|| "Please correct the marked fields.".into());
    Ok(form_page(&state, &auth, Kind::Individual, None, &form, &errors, None).into_response())
}

fn group_summary(g: &EnrollmentGroup) -> Summary {
    Summary {
        attestation: g.attestation.redacted(),
        created: g.created_date_time_utc,
        updated: g.last_updated_date_time_utc,
        registration: None,
    }
}

/// The summary of an individual enrollment; its registration only for a policy that may read
/// registrations.
fn individual_summary(state: &PortalState, auth: &Auth, e: &IndividualEnrollment) -> Summary {
    let record = state.store().registration(&e.registration_id);
    let id = e.registration_id.as_str();
    Summary {
        attestation: e.attestation.redacted(),
        created: e.created_date_time_utc,
        updated: e.last_updated_date_time_utc,
        registration: auth.may(Need::REGISTRATION_READ).then(|| html! {
            @match record.as_deref() {
                Some(r) => p {
                    "Registration: " (r.state.status.map(|s| s.as_str()).unwrap_or("—"))
                    @if let Some(hub) = &r.state.assigned_hub { " to " (hub.as_str()) }
                    " — " a href={(BASE) "/registrations/" (id)} { "registration record and failed attempts" }
                },
                None => p { "No device has registered yet. "
                    a href={(BASE) "/registrations/" (id)} { "Failed attempts" } },
            }
        }),
    }
}

fn load(
    state: &PortalState,
    auth: &Auth,
    kind: Kind,
    id: &str,
) -> Result<(EnrollmentForm, Summary), PortalError> {
    match kind {
        Kind::Groups => {
            let id = EnrollmentGroupId::parse(id).map_err(|_| PortalError::NotFound)?;
            let g = state.store().group(&id).ok_or(PortalError::NotFound)?;
            Ok((EnrollmentForm::from_group(&g), group_summary(&g)))
        }
        Kind::Individual => {
            let id = RegistrationId::parse(id).map_err(|_| PortalError::NotFound)?;
            let e = state.store().enrollment(&id).ok_or(PortalError::NotFound)?;
            Ok((
                EnrollmentForm::from_individual(&e),
                individual_summary(state, auth, &e),
            ))
        }
    }
}

/// `GET /{groups|individual}/{id}`.
pub(crate) async fn details(
    State(state): State<PortalState>,
    auth: Auth,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<ListQuery>,
) -> Result<Page, PortalError> {
    auth.require(Need::ENROLLMENT_READ)?;
    let kind = Kind::parse(&kind)?;
    let (form, summary) = load(&state, &auth, kind, &id)?;
    let mut errors = FieldErrors::new();
    if query.saved.is_some() {
        errors.insert("saved", "Saved.".into());
    }
    Ok(form_page(
        &state,
        &auth,
        kind,
        Some(&summary),
        &form,
        &errors,
        None,
    ))
}

/// `POST /{groups|individual}/{id}`: update with the etag the form was opened with.
pub(crate) async fn update(
    State(state): State<PortalState>,
    auth: Auth,
    Path((kind, id)): Path<(String, String)>,
    data: FormData,
) -> Result<Response, PortalError> {
    let kind = Kind::parse(&kind)?;
    writable(&auth, &data)?;
    let mut form = EnrollmentForm::from_data(&data);
    let (stored_form, summary) = load(&state, &auth, kind, &id)?;
    form.id = stored_form.id;
    form.mechanism = stored_form.mechanism;
    let pre = Precondition::IfMatch(form.etag.clone());
    let result = match kind {
        Kind::Groups => {
            let gid = EnrollmentGroupId::parse(&id).map_err(|_| PortalError::NotFound)?;
            let stored = state.store().group(&gid).ok_or(PortalError::NotFound)?;
            match form::update_group(&stored, &form, state.rules()) {
                Ok(g) => state.store().put_group(g, &pre).await.map(drop),
                Err(errors) => return Ok(invalid(&state, &auth, kind, &summary, &form, errors)),
            }
        }
        Kind::Individual => {
            let rid = RegistrationId::parse(&id).map_err(|_| PortalError::NotFound)?;
            let stored = state
                .store()
                .enrollment(&rid)
                .ok_or(PortalError::NotFound)?;
            match form::update_individual(&stored, &form, state.rules()) {
                Ok(e) => state.store().put_enrollment(e, &pre).await.map(drop),
                Err(errors) => return Ok(invalid(&state, &auth, kind, &summary, &form, errors)),
            }
        }
    };
    match result {
        Ok(()) => Ok(
            Redirect::to(&format!("{BASE}/{}/{}?saved=1", kind.segment(), form.id)).into_response(),
        ),
        Err(StoreError::PreconditionFailed) => {
            let conflict = html! {
                div.error.banner role="alert" {
                    strong { "Not saved: this " (kind.noun()) " was changed by someone else since you opened it." }
                    " Your changes are still in the form below. "
                    a href={(BASE) "/" (kind.segment()) "/" (form.id)} { "Reload the current version" }
                    " and make your changes again."
                }
            };
            Ok(form_page(
                &state,
                &auth,
                kind,
                Some(&summary),
                &form,
                &FieldErrors::new(),
                Some(conflict),
            )
            .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

fn invalid(
    state: &PortalState,
    auth: &Auth,
    kind: Kind,
    summary: &Summary,
    form: &EnrollmentForm,
    mut errors: FieldErrors,
) -> Response {
    errors.insert(
        "form",
        "Not saved: please correct the marked fields.".into(),
    );
    form_page(state, auth, kind, Some(summary), form, &errors, None).into_response()
}

/// `GET /{kind}/{id}/delete`: the confirmation page.
pub(crate) async fn confirm_delete(
    State(state): State<PortalState>,
    auth: Auth,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Page, PortalError> {
    let kind = Kind::parse(&kind)?;
    auth.require(Need::ENROLLMENT_WRITE)?;
    let (form, _) = load(&state, &auth, kind, &id)?;
    let body = html! {
        section.card.narrow {
            h1 { "Delete " (kind.noun()) "?" }
            p { "Do you want to delete the " (kind.noun()) " " strong { (form.id) } "? Devices will no longer be able to register through it. Registration records are kept." }
            div.actions {
                form.inline method="post" action={(BASE) "/" (kind.segment()) "/" (form.id) "/delete"} {
                    (csrf(&auth))
                    button.danger type="submit" { "Yes, delete" }
                }
                a.button href={(BASE) "/" (kind.segment()) "/" (form.id)} { "No, keep it" }
            }
        }
    };
    Ok(Page(page("Delete", Some((&auth, Nav::Enrollments)), body)))
}

/// `POST /{kind}/{id}/delete`.
pub(crate) async fn delete(
    State(state): State<PortalState>,
    auth: Auth,
    Path((kind, id)): Path<(String, String)>,
    data: FormData,
) -> Result<Response, PortalError> {
    let kind = Kind::parse(&kind)?;
    writable(&auth, &data)?;
    let result = match kind {
        Kind::Groups => {
            let id = EnrollmentGroupId::parse(&id).map_err(|_| PortalError::NotFound)?;
            state
                .registrar()
                .delete_group(&id, &Precondition::Any)
                .await
        }
        Kind::Individual => {
            let id = RegistrationId::parse(&id).map_err(|_| PortalError::NotFound)?;
            state
                .registrar()
                .delete_enrollment(&id, &Precondition::Any)
                .await
        }
    };
    match result {
        Ok(()) | Err(StoreError::NotFound) => Ok(Redirect::to(&format!(
            "{BASE}/enrollments?tab={}&deleted={id}",
            kind.segment()
        ))
        .into_response()),
        Err(e) => Err(e.into()),
    }
}
