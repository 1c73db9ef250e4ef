//! A simple-signing payload read back from the registry.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice::signing::payload::parse(data);
});
