//! Image references and digests as a Task or a Deployment reports them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::gates::results::{is_sha256_digest, strip_tag_and_digest};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let repo = strip_tag_and_digest(&text);
    assert!(text.starts_with(repo));
    let _ = is_sha256_digest(&text);
    let tag = sluice::tekton::image_tag(&text);
    assert!(tag.len() <= 128);
    let name = sluice::names::task_run_name(&text, "stage");
    assert!(name.len() <= sluice::names::MAX_NAME_LEN, "{name}");
});
