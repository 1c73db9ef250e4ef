//! A `kubernetes.io/dockerconfigjson` Secret's content.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice::reconcile::release_signing::docker_config_auth(data, "127.0.0.1:5000");
});
