//! What attestation needs to read about enrollments. `dps-store`'s cache implements it;
//! `dps-attest` consumes it, so neither depends on the other and attestation stays free of I/O.

use std::ops::ControlFlow;
use std::sync::Arc;

use crate::{EnrollmentGroup, IndividualEnrollment};

/// Read access to the enrollments a device could match.
pub trait EnrollmentLookup {
    /// The individual enrollment with this registration id (any letter case).
    fn enrollment(&self, registration_id: &str) -> Option<Arc<IndividualEnrollment>>;
    /// Groups whose primary or secondary signing certificate has this SHA-256 thumbprint
    /// (hex, any case).
    fn groups_by_thumbprint(&self, sha256_hex: &str) -> Vec<Arc<EnrollmentGroup>>;
    /// Groups whose primary or secondary signing certificate has this subject name (as
    /// `X509CertificateInfo::subject_name` spells it).
    fn groups_by_subject(&self, subject: &str) -> Vec<Arc<EnrollmentGroup>>;
    /// Calls `visit` with each symmetric-key group, in the lookup's order, until it breaks.
    /// A visitor rather than a list: attestation walks the groups on every SAS CONNECT, and
    /// must not allocate or clone per group to do it.
    fn visit_symmetric_key_groups(
        &self,
        visit: &mut dyn FnMut(&Arc<EnrollmentGroup>) -> ControlFlow<()>,
    );
}
