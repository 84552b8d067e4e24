//! What the Azure portal lacks: registration records (and deleting one so a device can
//! provision afresh), each registration id's failed attempts with their precise reasons,
//! linked hubs with their share of assignments, and the dashboard.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use dps_store::{Precondition, RegistrationRecord, StoreError};
use dps_types::{RegistrationId, RegistrationStatus, Timestamp};
use maud::{html, Markup};
use serde::Deserialize;

use crate::charts::{labelled_bars, minute_columns, minute_slot};
use crate::form::FormData;
use crate::html::{csrf, page, svg, when, Nav, Page, PortalError};
use crate::session::{Auth, Need};
use crate::{PortalState, BASE};

/// Registration records read per request at most (lists, hub shares, the dashboard): the
/// store keeps them all in memory, but one page view must stay cheap. Pages that hit the
/// bound say so.
const MAX_RECORDS: usize = 50_000;
/// Rows on the registration records page.
const LIST_ROWS: usize = 200;
/// Store page size while collecting.
const BATCH: usize = 500;

/// A link to an enrollment's page for a policy that may open it, its plain id otherwise.
fn enrollment_link(auth: &Auth, segment: &str, id: &str) -> Markup {
    html! {
        @if auth.may(Need::ENROLLMENT_READ) {
            a href={(BASE) "/" (segment) "/" (id)} { (id) }
        } @else {
            (id)
        }
    }
}

/// Every registration record, up to [`MAX_RECORDS`]; `true` when the bound cut the list
/// short.
fn all_records(state: &PortalState) -> Result<(Vec<Arc<RegistrationRecord>>, bool), StoreError> {
    let store = state.store();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = store.query_all_registrations(BATCH, token.as_deref())?;
        out.extend(page.items);
        if out.len() >= MAX_RECORDS {
            return Ok((out, true));
        }
        match page.continuation {
            Some(t) => token = Some(t),
            None => return Ok((out, false)),
        }
    }
}

/// Query of the registration records page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RecordQuery {
    q: Option<String>,
    deleted: Option<String>,
}

/// `GET /registrations`.
pub(crate) async fn registrations(
    State(state): State<PortalState>,
    auth: Auth,
    Query(query): Query<RecordQuery>,
) -> Result<Page, PortalError> {
    auth.require(Need::REGISTRATION_READ)?;
    let q = query.q.as_deref().unwrap_or_default().trim().to_owned();
    let needle = q.to_ascii_lowercase();
    let (mut records, truncated) = all_records(&state)?;
    records.retain(|r| r.state.registration_id.key().contains(&needle));
    records.sort_by_key(|r| r.state.registration_id.key());
    let total = records.len();
    records.truncate(LIST_ROWS);
    let body = html! {
        h1 { "Registration records" }
        @if let Some(id) = &query.deleted { p.notice role="status" { "Deleted the registration record of " (id) "; the device will be provisioned afresh on its next registration." } }
        p.hint { "The last registration of each device. Delete a record to let the device provision again from scratch. Failed attempts are listed on each device's page, also for ids that never registered successfully." }
        div.toolbar {
            form.search method="get" action={(BASE) "/registrations"} role="search" {
                label for="q" { "Search by registration id" }
                input #q type="search" name="q" value=(q);
                button type="submit" { "Search" }
            }
            form.search method="get" action={(BASE) "/registrations/lookup"} {
                label for="lookup" { "Failed attempts of" }
                input #lookup name="id" placeholder="registration id";
                button type="submit" { "Show" }
            }
        }
        @if records.is_empty() {
            p.empty { "No registration records" @if !q.is_empty() { " match “" (q) "”" } "." }
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th scope="col" { "Registration ID" } th scope="col" { "Enrollment" }
                    th scope="col" { "Assigned hub" } th scope="col" { "Device ID" }
                    th scope="col" { "Status" } th scope="col" { "Substatus" }
                    th scope="col" { "Created" } th scope="col" { "Last updated" }
                } }
                tbody {
                    @for r in &records {
                        @let s = &r.state;
                        tr {
                            td { a href={(BASE) "/registrations/" (s.registration_id.as_str())} { (s.registration_id.as_str()) } }
                            td { @match &r.enrollment_group_id {
                                Some(g) => { "group " (enrollment_link(&auth, "groups", g.as_str())) },
                                None => "individual",
                            } }
                            td { (s.assigned_hub.as_ref().map(|h| h.as_str()).unwrap_or("—")) }
                            td { (s.device_id.as_ref().map(|d| d.as_str()).unwrap_or("—")) }
                            td { (s.status.map(|x| x.as_str()).unwrap_or("—")) }
                            td { (s.substatus.map(|x| x.as_str()).unwrap_or("—")) }
                            td { (when(s.created_date_time_utc.as_ref())) }
                            td { (when(s.last_updated_date_time_utc.as_ref())) }
                        }
                    }
                }
            } }
            @if total > LIST_ROWS { p.hint { "Showing the first " (LIST_ROWS) " of " (total) "; search to narrow down." } }
        }
        @if truncated { p.hint { "Only the first " (MAX_RECORDS) " records were read." } }
    };
    Ok(Page(page(
        "Registration records",
        Some((&auth, Nav::Registrations)),
        body,
    )))
}

/// `GET /registrations/{id}`: the record and the failed attempts of one registration id.
pub(crate) async fn registration(
    State(state): State<PortalState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(lookup): Query<BTreeMap<String, String>>,
) -> Result<Response, PortalError> {
    auth.require(Need::REGISTRATION_READ)?;
    if id == "lookup" {
        let target = lookup.get("id").map(|s| s.trim()).unwrap_or_default();
        return Ok(Redirect::to(&format!("{BASE}/registrations/{target}")).into_response());
    }
    let rid = RegistrationId::parse(&id).map_err(|e| PortalError::BadRequest(e.to_string()))?;
    let record = state.store().registration(&rid);
    let attempts = state.registrar().diagnostics().attempts(rid.as_str());
    let can_delete = auth.may(Need::REGISTRATION_WRITE);
    let body = html! {
        p.crumbs { a href={(BASE) "/registrations"} { "← Registration records" } }
        h1 { (rid.as_str()) }
        section.card {
            h2 { "Registration record" }
            @match record.as_deref() {
                Some(r) => {
                    @let s = &r.state;
                    dl.grid {
                        dt { "Enrollment" } dd { @match &r.enrollment_group_id {
                            Some(g) => { "group " (enrollment_link(&auth, "groups", g.as_str())) },
                            None => { "individual " (enrollment_link(&auth, "individual", rid.as_str())) },
                        } }
                        dt { "Assigned hub" } dd { (s.assigned_hub.as_ref().map(|h| h.as_str()).unwrap_or("—")) }
                        dt { "Device ID" } dd { (s.device_id.as_ref().map(|d| d.as_str()).unwrap_or("—")) }
                        dt { "Status" } dd { (s.status.map(|x| x.as_str()).unwrap_or("—")) }
                        dt { "Substatus" } dd { (s.substatus.map(|x| x.as_str()).unwrap_or("—")) }
                        @if let Some(code) = s.error_code { dt { "Error" } dd { (code) " " (s.error_message.as_deref().unwrap_or("")) } }
                        dt { "Created" } dd { (when(s.created_date_time_utc.as_ref())) }
                        dt { "Last updated" } dd { (when(s.last_updated_date_time_utc.as_ref())) }
                    }
                    @if can_delete {
                        div.actions { a.button.danger href={(BASE) "/registrations/" (rid.as_str()) "/delete"} { "Delete registration record" } }
                    }
                }
                None => p { "No registration record: this device has not registered successfully (or its record was deleted)." },
            }
        }
        section.card {
            h2 { "Recent failed attempts" }
            @if attempts.is_empty() { p.empty { "No failed attempts recorded since the service started." } } @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Transport" } th scope="col" { "Reason" } th scope="col" { "Detail" } } }
                    tbody { @for a in attempts.iter().rev() {
                        tr {
                            td { (when(Some(&a.time_utc))) }
                            td { (serde_json::to_value(a.transport).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) }
                            td.mono { (a.reason) }
                            td { (a.detail) }
                        }
                    } }
                } }
            }
        }
    };
    Ok(Page(page(rid.as_str(), Some((&auth, Nav::Registrations)), body)).into_response())
}

/// `GET /registrations/{id}/delete`.
pub(crate) async fn confirm_delete_registration(
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Page, PortalError> {
    auth.require(Need::REGISTRATION_WRITE)?;
    let rid = RegistrationId::parse(&id).map_err(|e| PortalError::BadRequest(e.to_string()))?;
    let body = html! {
        section.card.narrow {
            h1 { "Delete registration record?" }
            p { "Delete the registration record of " strong { (rid.as_str()) } "? The device keeps working on its hub; its next registration is treated as a first one." }
            div.actions {
                form.inline method="post" action={(BASE) "/registrations/" (rid.as_str()) "/delete"} {
                    (csrf(&auth))
                    button.danger type="submit" { "Yes, delete" }
                }
                a.button href={(BASE) "/registrations/" (rid.as_str())} { "No, keep it" }
            }
        }
    };
    Ok(Page(page(
        "Delete",
        Some((&auth, Nav::Registrations)),
        body,
    )))
}

/// `POST /registrations/{id}/delete`.
pub(crate) async fn delete_registration(
    State(state): State<PortalState>,
    auth: Auth,
    Path(id): Path<String>,
    data: FormData,
) -> Result<Response, PortalError> {
    auth.check_csrf(&data)?;
    auth.require(Need::REGISTRATION_WRITE)?;
    let rid = RegistrationId::parse(&id).map_err(|e| PortalError::BadRequest(e.to_string()))?;
    match state
        .registrar()
        .delete_registration(&rid, &Precondition::Any)
        .await
    {
        Ok(()) | Err(StoreError::NotFound) => Ok(Redirect::to(&format!(
            "{BASE}/registrations?deleted={}",
            rid.as_str()
        ))
        .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// The assignment feed's link and per-hub event counts, when the feed is on.
fn feed_section(state: &PortalState) -> Markup {
    let Some(stats) = state.registrar().feed().map(|f| f.stats()) else {
        return html! {
            section.card {
                h2 { "Assignment feed" }
                p.empty { "Off: hubs are not told of assignments. Enable " code { "[feed]" } " in the dpsd configuration." }
            }
        };
    };
    let link = match (stats.link_up, stats.blocked) {
        (true, false) => "up".to_owned(),
        (_, true) => "blocked by the broker (resource alarm)".to_owned(),
        (false, false) => format!("down ({})", stats.last_error.unwrap_or("connecting")),
    };
    html! {
        section.card {
            h2 { "Assignment feed" }
            p { "Broker link: " strong.feed-link { (link) } " · reconnections: " (stats.reconnects)
                " · events in flight: " (stats.in_flight) }
            div.table-wrap { table.feed {
                thead { tr {
                    th scope="col" { "Hub" } th scope="col" { "Events published" }
                    th scope="col" { "Confirmed" } th scope="col" { "Waiting" }
                } }
                tbody {
                    @for h in &stats.hubs {
                        tr {
                            td { (h.hub.as_str()) } td { (h.counters.published) }
                            td { (h.counters.confirmed) } td { (h.counters.waiting) }
                        }
                    }
                    @if stats.other_hubs != dps_feed::HubCounters::default() {
                        tr {
                            td { "other hubs" } td { (stats.other_hubs.published) }
                            td { (stats.other_hubs.confirmed) } td { (stats.other_hubs.waiting) }
                        }
                    }
                }
            } }
        }
    }
}

/// `GET /hubs`.
pub(crate) async fn hubs(
    State(state): State<PortalState>,
    auth: Auth,
) -> Result<Page, PortalError> {
    auth.require(Need::REGISTRATION_READ)?;
    let (records, truncated) = all_records(&state)?;
    let mut per_hub: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        if let Some(h) = &r.state.assigned_hub {
            *per_hub.entry(h.as_str().to_ascii_lowercase()).or_default() += 1;
        }
    }
    let assigned: u64 = per_hub.values().sum();
    let total_weight: u64 = state
        .linked_hubs()
        .iter()
        .filter(|h| h.apply_allocation_policy)
        .map(|h| u64::from(h.allocation_weight))
        .sum();
    let share = |n: u64, of: u64| {
        if of == 0 {
            "—".to_owned()
        } else {
            format!("{:.1} %", 100.0 * n as f64 / of as f64)
        }
    };
    let chart: Vec<(String, u64)> = per_hub.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let body = html! {
        h1 { "Linked IoT hubs" }
        @if state.linked_hubs().is_empty() {
            p.empty { "No IoT hubs are linked. Add " code { "[[linked_hubs]]" } " to the dpsd configuration." }
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th scope="col" { "Host name" } th scope="col" { "Allocation weight" }
                    th scope="col" { "Apply allocation policy" } th scope="col" { "Expected share" }
                    th scope="col" { "Devices assigned" } th scope="col" { "Share of assignments" }
                } }
                tbody { @for h in state.linked_hubs() {
                    @let n = per_hub.get(&h.host_name.as_str().to_ascii_lowercase()).copied().unwrap_or(0);
                    tr {
                        td { (h.host_name.as_str()) }
                        td { (h.allocation_weight) }
                        td { @if h.apply_allocation_policy { "yes" } @else { "no" } }
                        td { @if h.apply_allocation_policy { (share(u64::from(h.allocation_weight), total_weight)) } @else { "—" } }
                        td { (n) }
                        td { (share(n, assigned)) }
                    }
                } }
            } }
        }
        (feed_section(&state))
        section.card {
            h2 { "Devices per hub (registration records)" }
            (svg(labelled_bars("Devices per hub", &chart, "#2f6fb3")))
            @if truncated { p.hint { "Counted over the first " (MAX_RECORDS) " records." } }
        }
    };
    Ok(Page(page(
        "Linked IoT hubs",
        Some((&auth, Nav::Hubs)),
        body,
    )))
}

/// `GET /dashboard`.
pub(crate) async fn dashboard(
    State(state): State<PortalState>,
    auth: Auth,
) -> Result<Page, PortalError> {
    auth.require(Need::REGISTRATION_READ)?;
    let now = Timestamp::now().unix();
    let (records, truncated) = all_records(&state)?;
    let mut per_minute = vec![0u64; 60];
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in &records {
        let Some(at) = r.state.last_updated_date_time_utc else {
            continue;
        };
        if let Some(slot) = minute_slot(now, at.unix()) {
            per_minute[slot] += 1;
            let status = r.state.status.unwrap_or(RegistrationStatus::Unassigned);
            *outcomes.entry(status.as_str()).or_default() += 1;
        }
    }
    let last_minute = per_minute[59];
    let last_hour: u64 = per_minute.iter().sum();
    let failures = state.samples().per_minute(now);
    let failures_hour: u64 = failures.iter().sum();
    let by_reason: Vec<(String, u64)> = state
        .registrar()
        .diagnostics()
        .counts()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let outcomes: Vec<(String, u64)> = outcomes
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let body = html! {
        h1 { "Dashboard" }
        div.tiles {
            div.tile { span.big { (format!("{:.2}", last_minute as f64 / 60.0)) } span { "registrations / s (last minute)" } }
            div.tile { span.big { (format!("{:.3}", last_hour as f64 / 3600.0)) } span { "registrations / s (last hour)" } }
            div.tile { span.big { (failures_hour) } span { "failed attempts (last hour)" } }
            @if auth.may(Need::ENROLLMENT_READ) { div.tile { span.big { (state.store().cache().enrollment_count()) " / " (state.store().cache().group_count()) } span { "individual enrollments / groups" } } }
        }
        section.card {
            h2 { "Registrations per minute, last hour" }
            (svg(minute_columns("Registrations per minute", &per_minute, "#2f6fb3")))
            p.hint { "From registration records: each device is counted once, at its latest registration." @if truncated { " Over the first " (MAX_RECORDS) " records." } }
        }
        section.card {
            h2 { "Outcomes, last hour" }
            (svg(labelled_bars("Registration outcomes", &outcomes, "#3a8f5c")))
        }
        section.card {
            h2 { "Failed attempts per minute, last hour" }
            (svg(minute_columns("Failed attempts per minute", &failures, "#b3462f")))
            p.hint { "Sampled from the registrar's counters every 10 s since the portal started." }
        }
        section.card {
            h2 { "Attestation and registration failures by reason" }
            (svg(labelled_bars("Failures by reason", &by_reason, "#b3462f")))
            p.hint { "Counted since the service started." }
        }
    };
    Ok(Page(page("Dashboard", Some((&auth, Nav::Dashboard)), body)))
}
