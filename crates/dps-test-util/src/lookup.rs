//! [`MemoryLookup`]: the `EnrollmentLookup` that attestation tests and benchmarks use instead
//! of the store's cache, with the same matching rules.

use std::ops::ControlFlow;
use std::sync::Arc;

use dps_types::{Attestation, EnrollmentGroup, EnrollmentLookup, IndividualEnrollment};

/// Enrollments and groups in vectors, searched linearly; groups are returned in insertion
/// order. Group signing certificates are matched through their `info`, so fill it first
/// (`dps_attest::prepare_group`), as the service API does before storing.
#[derive(Debug, Default, Clone)]
pub struct MemoryLookup {
    /// Individual enrollments.
    pub enrollments: Vec<Arc<IndividualEnrollment>>,
    /// Enrollment groups.
    pub groups: Vec<Arc<EnrollmentGroup>>,
}

impl MemoryLookup {
    /// An empty lookup.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an individual enrollment.
    pub fn with_enrollment(mut self, enrollment: IndividualEnrollment) -> Self {
        self.enrollments.push(Arc::new(enrollment));
        self
    }

    /// Adds an enrollment group.
    pub fn with_group(mut self, group: EnrollmentGroup) -> Self {
        self.groups.push(Arc::new(group));
        self
    }

    fn groups_where(
        &self,
        matches: impl Fn(&dps_types::X509CertificateInfo) -> bool,
    ) -> Vec<Arc<EnrollmentGroup>> {
        self.groups
            .iter()
            .filter(|g| match &g.attestation {
                Attestation::X509(x) => x
                    .signing_certificates
                    .iter()
                    .flat_map(|c| c.iter())
                    .filter_map(|c| c.info.as_ref())
                    .any(&matches),
                _ => false,
            })
            .cloned()
            .collect()
    }
}

impl EnrollmentLookup for MemoryLookup {
    fn enrollment(&self, registration_id: &str) -> Option<Arc<IndividualEnrollment>> {
        self.enrollments
            .iter()
            .find(|e| {
                e.registration_id
                    .as_str()
                    .eq_ignore_ascii_case(registration_id)
            })
            .cloned()
    }

    fn groups_by_thumbprint(&self, sha256_hex: &str) -> Vec<Arc<EnrollmentGroup>> {
        self.groups_where(|info| info.sha256_thumbprint.eq_ignore_ascii_case(sha256_hex))
    }

    fn groups_by_subject(&self, subject: &str) -> Vec<Arc<EnrollmentGroup>> {
        self.groups_where(|info| info.subject_name == subject)
    }

    fn visit_symmetric_key_groups(
        &self,
        visit: &mut dyn FnMut(&Arc<EnrollmentGroup>) -> ControlFlow<()>,
    ) {
        let _ = self
            .groups
            .iter()
            .filter(|g| matches!(g.attestation, Attestation::SymmetricKey(_)))
            .try_for_each(visit);
    }
}
