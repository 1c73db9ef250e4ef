//! The signing Secret's `cosign.key` (with a password) and `cosign.pub`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::signing::keys::{KeyPairSigner, verification_key};

fuzz_target!(|data: &[u8]| {
    let (key, password) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let _ = KeyPairSigner::from_pem(key, password);
    let _ = verification_key(&String::from_utf8_lossy(key));
});
