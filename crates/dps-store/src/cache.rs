//! The in-memory copy of every enrollment, group and registration record that the
//! registration path reads. Reads take no global lock (dashmap shards) and never touch disk.
//!
//! Only [`crate::Store`] writes here, under its per-key write lock and in the same call that
//! writes the backend, so after a write returns cache and backend agree.

use std::borrow::Cow;
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

    /// Every symmetric-key group (the candidates for a group-derived device key).
    pub fn symmetric_key_groups(&self) -> Vec<Arc<EnrollmentGroup>> {
        self.groups
            .iter()
            .filter(|g| matches!(g.attestation, Attestation::SymmetricKey(_)))
            .map(|g| Arc::clone(g.value()))
            .collect()
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
        self.remove_group(key);
        for info in signing_infos(&g) {
            add(
                &self.groups_by_thumbprint,
                info.sha256_thumbprint.to_ascii_uppercase(),
                key,
            );
            add(&self.groups_by_subject, info.subject_name.clone(), key);
        }
        self.groups.insert(key.into(), g);
    }

    pub(crate) fn remove_group(&self, key: &str) {
        if let Some((_, old)) = self.groups.remove(key) {
            for info in signing_infos(&old) {
                drop_key(
                    &self.groups_by_thumbprint,
                    &info.sha256_thumbprint.to_ascii_uppercase(),
                    key,
                );
                drop_key(&self.groups_by_subject, &info.subject_name, key);
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

fn signing_infos(g: &EnrollmentGroup) -> impl Iterator<Item = &dps_types::X509CertificateInfo> {
    let certs = match &g.attestation {
        Attestation::X509(x) => x.signing_certificates.as_ref(),
        _ => None,
    };
    certs
        .into_iter()
        .flat_map(|c| c.iter())
        .filter_map(|c| c.info.as_ref())
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
    fn symmetric_key_groups(&self) -> Vec<Arc<EnrollmentGroup>> {
        Cache::symmetric_key_groups(self)
    }
}
