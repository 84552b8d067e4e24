//! The in-memory copy of every enrollment, group and registration record that the
//! registration path reads. Reads take no global lock (dashmap shards) and never touch disk.
//!
//! Only [`crate::Store`] writes here, under its per-key write lock and once the backend write
//! is durable, so after a write returns cache and backend agree, and a write whose flush failed
//! never shows here.
//!
//! Replacing a group is atomic for readers: the new index entries are added before the group
//! itself is swapped (one map insert), and the old version's entries that the new one lacks
//! are dropped after, so a lookup finds the old or the new version, never nothing.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::sync::Arc;

use dashmap::DashMap;
use dps_types::{Attestation, EnrollmentGroup, IndividualEnrollment};

use crate::RegistrationRecord;

/// Lower-cases an id without allocating when it already is lower case (the common case).
pub(crate) fn lower(id: &str) -> Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(id.to_ascii_lowercase())
    } else {
        Cow::Borrowed(id)
    }
}

/// aHash: several times faster than SipHash on short ids and still keyed per process, so peers
/// cannot pick registration ids that collide (the ids come from the network).
type Map<K, V> = DashMap<K, V, ahash::RandomState>;

/// A map from an index value (thumbprint, subject) to the keys of the groups that have it.
type MultiIndex = Map<Box<str>, Vec<Box<str>>>;

/// Lock-free (sharded) lookup tables over all records.
#[derive(Default)]
pub struct Cache {
    enrollments: Map<Box<str>, Arc<IndividualEnrollment>>,
    groups: Map<Box<str>, Arc<EnrollmentGroup>>,
    groups_by_thumbprint: MultiIndex,
    groups_by_subject: MultiIndex,
    /// The symmetric-key subset of `groups`, which SAS attestation walks on every CONNECT.
    symmetric_groups: Map<Box<str>, Arc<EnrollmentGroup>>,
    registrations: Map<Box<str>, Arc<RegistrationRecord>>,
}

impl Cache {
    /// The individual enrollment with this registration id (any letter case).
    pub fn enrollment(&self, registration_id: &str) -> Option<Arc<IndividualEnrollment>> {
        self.enrollments
            .get(lower(registration_id).as_ref())
            .map(|e| Arc::clone(e.value()))
    }

    /// The enrollment group with this id (any letter case).
    pub fn group(&self, group_id: &str) -> Option<Arc<EnrollmentGroup>> {
        self.groups
            .get(lower(group_id).as_ref())
            .map(|e| Arc::clone(e.value()))
    }

    /// Groups whose primary or secondary signing certificate has this SHA-256 thumbprint
    /// (upper- or lower-case hex).
    pub fn groups_by_thumbprint(&self, sha256_hex: &str) -> Vec<Arc<EnrollmentGroup>> {
        self.lookup_index(&self.groups_by_thumbprint, &sha256_hex.to_ascii_uppercase())
    }

    /// Groups whose primary or secondary signing certificate has this subject name.
    pub fn groups_by_subject(&self, subject: &str) -> Vec<Arc<EnrollmentGroup>> {
        self.lookup_index(&self.groups_by_subject, subject)
    }

    /// Calls `visit` with each symmetric-key group (the candidates for a group-derived device
    /// key) until it breaks, in place: nothing is collected or cloned. A shard is read-locked
    /// while its groups are visited, which only delays a writer to that shard.
    pub fn visit_symmetric_key_groups(
        &self,
        visit: &mut dyn FnMut(&Arc<EnrollmentGroup>) -> ControlFlow<()>,
    ) {
        for group in self.symmetric_groups.iter() {
            if visit(group.value()).is_break() {
                return;
            }
        }
    }

    /// The registration record of this registration id.
    pub fn registration(&self, registration_id: &str) -> Option<Arc<RegistrationRecord>> {
        self.registrations
            .get(lower(registration_id).as_ref())
            .map(|e| Arc::clone(e.value()))
    }

    /// Number of individual enrollments.
    pub fn enrollment_count(&self) -> usize {
        self.enrollments.len()
    }

    /// Number of enrollment groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Number of registration records.
    pub fn registration_count(&self) -> usize {
        self.registrations.len()
    }

    fn lookup_index(&self, index: &MultiIndex, value: &str) -> Vec<Arc<EnrollmentGroup>> {
        let Some(keys) = index.get(value) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| self.groups.get(k).map(|g| Arc::clone(g.value())))
            .collect()
    }

    pub(crate) fn put_enrollment(&self, key: &str, e: Arc<IndividualEnrollment>) {
        self.enrollments.insert(key.into(), e);
    }

    pub(crate) fn remove_enrollment(&self, key: &str) {
        self.enrollments.remove(key);
    }

    pub(crate) fn put_group(&self, key: &str, g: Arc<EnrollmentGroup>) {
        // New index entries first: until the swap below they lead to the old version.
        for (thumbprint, subject) in index_values(&g) {
            add(&self.groups_by_thumbprint, thumbprint, key);
            add(&self.groups_by_subject, subject.to_owned(), key);
        }
        if matches!(g.attestation, Attestation::SymmetricKey(_)) {
            self.symmetric_groups.insert(key.into(), Arc::clone(&g));
        } else {
            self.symmetric_groups.remove(key);
        }
        let new_values: Vec<(String, &str)> = index_values(&g).collect();
        if let Some(old) = self.groups.insert(key.into(), Arc::clone(&g)) {
            for (thumbprint, subject) in index_values(&old) {
                if !new_values.iter().any(|(t, _)| *t == thumbprint) {
                    drop_key(&self.groups_by_thumbprint, &thumbprint, key);
                }
                if !new_values.iter().any(|(_, s)| *s == subject) {
                    drop_key(&self.groups_by_subject, subject, key);
                }
            }
        }
    }

    pub(crate) fn remove_group(&self, key: &str) {
        self.symmetric_groups.remove(key);
        if let Some((_, old)) = self.groups.remove(key) {
            for (thumbprint, subject) in index_values(&old) {
                drop_key(&self.groups_by_thumbprint, &thumbprint, key);
                drop_key(&self.groups_by_subject, subject, key);
            }
        }
    }

    pub(crate) fn put_registration(&self, key: &str, r: Arc<RegistrationRecord>) {
        self.registrations.insert(key.into(), r);
    }

    pub(crate) fn remove_registration(&self, key: &str) {
        self.registrations.remove(key);
    }
}

/// The index values of a group: (upper-case thumbprint, subject) of each signing certificate.
fn index_values(g: &EnrollmentGroup) -> impl Iterator<Item = (String, &str)> {
    let certs = match &g.attestation {
        Attestation::X509(x) => x.signing_certificates.as_ref(),
        _ => None,
    };
    certs
        .into_iter()
        .flat_map(|c| c.iter())
        .filter_map(|c| c.info.as_ref())
        .map(|info| {
            (
                info.sha256_thumbprint.to_ascii_uppercase(),
                info.subject_name.as_str(),
            )
        })
}

fn add(index: &MultiIndex, value: String, key: &str) {
    let mut keys = index.entry(value.into()).or_default();
    if !keys.iter().any(|k| &**k == key) {
        keys.push(key.into());
    }
}

fn drop_key(index: &MultiIndex, value: &str, key: &str) {
    let now_empty = match index.get_mut(value) {
        Some(mut keys) => {
            keys.retain(|k| &**k != key);
            keys.is_empty()
        }
        None => false,
    };
    if now_empty {
        index.remove_if(value, |_, keys| keys.is_empty());
    }
}

impl dps_types::EnrollmentLookup for Cache {
    fn enrollment(&self, registration_id: &str) -> Option<Arc<IndividualEnrollment>> {
        Cache::enrollment(self, registration_id)
    }
    fn groups_by_thumbprint(&self, sha256_hex: &str) -> Vec<Arc<EnrollmentGroup>> {
        Cache::groups_by_thumbprint(self, sha256_hex)
    }
    fn groups_by_subject(&self, subject: &str) -> Vec<Arc<EnrollmentGroup>> {
        Cache::groups_by_subject(self, subject)
    }
    fn visit_symmetric_key_groups(
        &self,
        visit: &mut dyn FnMut(&Arc<EnrollmentGroup>) -> ControlFlow<()>,
    ) {
        Cache::visit_symmetric_key_groups(self, visit);
    }
}

#[cfg(test)]
mod tests;
