//! `spec.rescan.schedule`: any string is a schedule or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::reconcile::rescan::{due, parse_schedule};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if parse_schedule(&text).is_ok() {
        let last: jiff::Timestamp = "2026-11-23T00:00:00Z".parse().expect("time");
        let now: jiff::Timestamp = "2026-11-24T12:00:00Z".parse().expect("time");
        let _ = due(&text, last, now);
    }
});
