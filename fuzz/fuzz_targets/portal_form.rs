//! The portal's form parser (`dps_portal::validate_enrollment_form`): a request body read as
//! the add-enrollment handlers read it, URL-encoded or multipart with file uploads, then
//! validated as a new group and a new individual enrollment.
//!
//! Input: the first byte picks the content type (even: URL-encoded, odd: multipart with the
//! boundary `XyZ`, which the seeds use); the rest is the body.
//!
//! Checked: no panic; whatever validates serializes to JSON that reads back unchanged.

#![no_main]

use std::sync::OnceLock;

use dps_types::{EnrollmentGroup, IndividualEnrollment};
use libfuzzer_sys::fuzz_target;

const URLENCODED: &str = "application/x-www-form-urlencoded";
const MULTIPART: &str = "multipart/form-data; boundary=XyZ";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let content_type = if kind % 2 == 0 { URLENCODED } else { MULTIPART };
    let Ok(checked) = runtime().block_on(dps_portal::validate_enrollment_form(
        content_type,
        body.to_vec(),
        &dps_attest::EnrollmentRules::default(),
    )) else {
        return;
    };
    if let Some(group) = checked.group {
        let json = serde_json::to_vec(&group).expect("a group serializes");
        let back: EnrollmentGroup = serde_json::from_slice(&json).expect("the group reads back");
        assert_eq!(back, group);
    }
    if let Some(individual) = checked.individual {
        let json = serde_json::to_vec(&individual).expect("an enrollment serializes");
        let back: IndividualEnrollment =
            serde_json::from_slice(&json).expect("the enrollment reads back");
        assert_eq!(back, individual);
    }
});
