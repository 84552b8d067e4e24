//! What the store needs to know about each kind of record, so one generic write path serves
//! all three.

use std::sync::Arc;

use dps_types::{
    DeviceRegistrationState, EnrollmentGroup, EnrollmentGroupId, Etag, IndividualEnrollment,
    Timestamp,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{Cache, Table};

/// A device's registration record and the group it registered through, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRecord {
    /// The record as the registration-state API shows it.
    pub state: DeviceRegistrationState,
    /// The group whose credentials the device used (absent for individual enrollments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<EnrollmentGroupId>,
}

pub(crate) trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    const TABLE: Table;
    /// The lower-case storage key.
    fn key(&self) -> String;
    fn etag(&self) -> Option<&Etag>;
    /// Server-side fields of a write (etag, times, defaults).
    fn stamp(&mut self, previous: Option<&Self>, now: Timestamp);
    fn cached(cache: &Cache, key: &str) -> Option<Arc<Self>>;
    fn cache_put(cache: &Cache, key: &str, record: Arc<Self>);
    fn cache_remove(cache: &Cache, key: &str);
}

impl Record for IndividualEnrollment {
    const TABLE: Table = Table::Enrollments;
    fn key(&self) -> String {
        self.registration_id.key()
    }
    fn etag(&self) -> Option<&Etag> {
        self.etag.as_ref()
    }
    fn stamp(&mut self, previous: Option<&Self>, now: Timestamp) {
        // The registration state is read-only and lives in its own table.
        self.registration_state = None;
        IndividualEnrollment::stamp(self, previous, now);
    }
    fn cached(cache: &Cache, key: &str) -> Option<Arc<Self>> {
        cache.enrollment(key)
    }
    fn cache_put(cache: &Cache, key: &str, record: Arc<Self>) {
        cache.put_enrollment(key, record);
    }
    fn cache_remove(cache: &Cache, key: &str) {
        cache.remove_enrollment(key);
    }
}

impl Record for EnrollmentGroup {
    const TABLE: Table = Table::Groups;
    fn key(&self) -> String {
        self.enrollment_group_id.key()
    }
    fn etag(&self) -> Option<&Etag> {
        self.etag.as_ref()
    }
    fn stamp(&mut self, previous: Option<&Self>, now: Timestamp) {
        EnrollmentGroup::stamp(self, previous, now);
    }
    fn cached(cache: &Cache, key: &str) -> Option<Arc<Self>> {
        cache.group(key)
    }
    fn cache_put(cache: &Cache, key: &str, record: Arc<Self>) {
        cache.put_group(key, record);
    }
    fn cache_remove(cache: &Cache, key: &str) {
        cache.remove_group(key);
    }
}

impl Record for RegistrationRecord {
    const TABLE: Table = Table::Registrations;
    fn key(&self) -> String {
        self.state.registration_id.key()
    }
    fn etag(&self) -> Option<&Etag> {
        self.state.etag.as_ref()
    }
    fn stamp(&mut self, previous: Option<&Self>, now: Timestamp) {
        let state = &mut self.state;
        state.etag = Some(Etag::generate());
        state.created_date_time_utc = previous
            .and_then(|p| p.state.created_date_time_utc)
            .or(state.created_date_time_utc)
            .or(Some(now));
        state.last_updated_date_time_utc.get_or_insert(now);
    }
    fn cached(cache: &Cache, key: &str) -> Option<Arc<Self>> {
        cache.registration(key)
    }
    fn cache_put(cache: &Cache, key: &str, record: Arc<Self>) {
        cache.put_registration(key, record);
    }
    fn cache_remove(cache: &Cache, key: &str) {
        cache.remove_registration(key);
    }
}
