//! A DSSE envelope read back from the registry, opened with a real key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sigstore::crypto::CosignVerificationKey as Key;
use sluice::signing::{Signer, attestation::open, keys::KeyPairSigner};

fn key() -> &'static Option<Key> {
    static KEY: OnceLock<Option<Key>> = OnceLock::new();
    KEY.get_or_init(|| {
        let (signer, _) = KeyPairSigner::generate().ok()?;
        sluice::signing::keys::verification_key(signer.public_key_pem()).ok()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some(key) = key() {
        let _ = open(data, key);
    }
});
