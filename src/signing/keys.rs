//! cosign key pairs: the encrypted `cosign.key` PEM (or an unencrypted PKCS#8 EC key) and `cosign.pub`.

use futures::future::BoxFuture;
use sigstore::crypto::{
    CosignVerificationKey, SigStoreSigner, SigningScheme, signing_key::SigStoreKeyPair,
};
use zeroize::Zeroizing;

use super::{Signer, SigningError};

/// A signer holding a cosign-compatible ECDSA P-256 key pair in memory.
pub struct KeyPairSigner {
    signer: SigStoreSigner,
    public_key_pem: String,
    key_id: String,
}

impl std::fmt::Debug for KeyPairSigner {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KeyPairSigner {
    /// Loads `cosign.key`: encrypted (`ENCRYPTED SIGSTORE/COSIGN PRIVATE KEY`) with `password`, or
    /// an unencrypted PKCS#8 `PRIVATE KEY`.
    pub fn from_pem(key_pem: &[u8], password: &[u8]) -> Result<Self, SigningError> {
        let text = String::from_utf8_lossy(key_pem);
        let pair = if text.contains("ENCRYPTED") {
            SigStoreKeyPair::from_encrypted_pem(key_pem, password).map_err(|_| {
                SigningError::Key(
                    "cannot decrypt the private key: wrong password or not a cosign key".into(),
                )
            })?
        } else {
            SigStoreKeyPair::from_pem(key_pem)
                .map_err(|_| SigningError::Key("not a PKCS#8 EC private key".into()))?
        };
        Self::from_pair(&pair)
    }

    /// Generates a new ECDSA P-256 key pair.
    pub fn generate() -> Result<(Self, SigStoreKeyPair), SigningError> {
        let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
            .create_signer()
            .map_err(|e| SigningError::Key(e.to_string()))?;
        let pair = signer
            .to_sigstore_keypair()
            .map_err(|e| SigningError::Key(e.to_string()))?;
        Ok((Self::from_pair(&pair)?, pair))
    }

    fn from_pair(pair: &SigStoreKeyPair) -> Result<Self, SigningError> {
        let signer = pair
            .to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1)
            .map_err(|_| {
                SigningError::Key("unsupported key: cosign keys are ECDSA P-256".into())
            })?;
        let public_key_pem = pair
            .public_key_to_pem()
            .map_err(|e| SigningError::Key(e.to_string()))?;
        let der = pair
            .public_key_to_der()
            .map_err(|e| SigningError::Key(e.to_string()))?;
        Ok(Self {
            signer,
            public_key_pem,
            key_id: key_id(&der),
        })
    }
}

impl KeyPairSigner {
    /// Signs in memory, at once.
    pub fn sign_now(&self, payload: &[u8]) -> Result<Vec<u8>, SigningError> {
        self.signer
            .sign(payload)
            .map_err(|e| SigningError::Sign(e.to_string()))
    }
}

impl Signer for KeyPairSigner {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SigningError>> {
        Box::pin(std::future::ready(self.sign_now(payload)))
    }
}

/// `sha256:<hex>` of a public key's DER encoding.
pub fn key_id(public_key_der: &[u8]) -> String {
    crate::registry::sha256_digest(public_key_der)
}

/// The key id (`key_id`) of a PEM public key, `None` when it is not one.
pub fn key_id_of_pem(public_key_pem: &str) -> Option<String> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let mut lines = public_key_pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    if lines.next()? != "-----BEGIN PUBLIC KEY-----" {
        return None;
    }
    let body: String = lines.take_while(|l| !l.starts_with("-----END")).collect();
    STANDARD.decode(body).ok().map(|der| key_id(&der))
}

/// A verification key from `cosign.pub`.
pub fn verification_key(public_key_pem: &str) -> Result<CosignVerificationKey, SigningError> {
    CosignVerificationKey::from_pem(
        public_key_pem.as_bytes(),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .map_err(|_| {
        SigningError::Key(
            "cannot read the public key: expected a cosign.pub ECDSA P-256 PEM".into(),
        )
    })
}

/// Encrypts a private key the way `cosign generate-key-pair` does.
pub fn encrypted_private_key_pem(
    pair: &SigStoreKeyPair,
    password: &[u8],
) -> Result<Zeroizing<String>, SigningError> {
    pair.private_key_to_encrypted_pem(password)
        .map_err(|e| SigningError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_the_encrypted_pem() {
        let (signer, pair) = KeyPairSigner::generate().expect("generate");
        let pem = encrypted_private_key_pem(&pair, b"pw").expect("encrypt");
        assert!(pem.contains("ENCRYPTED SIGSTORE PRIVATE KEY"));
        let loaded = KeyPairSigner::from_pem(pem.as_bytes(), b"pw").expect("decrypt");
        assert_eq!(loaded.key_id(), signer.key_id());
        let sig = loaded.sign_now(b"payload").expect("sign");
        let key = verification_key(signer.public_key_pem()).expect("pub");
        assert!(
            key.verify_signature(sigstore::crypto::Signature::Raw(&sig), b"payload")
                .is_ok()
        );
        assert!(
            key.verify_signature(sigstore::crypto::Signature::Raw(&sig), b"other")
                .is_err()
        );
    }

    #[test]
    fn the_key_id_of_a_public_pem_is_the_signers() {
        let (signer, _) = KeyPairSigner::generate().expect("generate");
        assert_eq!(
            key_id_of_pem(signer.public_key_pem()).as_deref(),
            Some(signer.key_id())
        );
        assert_eq!(key_id_of_pem("not a key"), None);
    }

    #[test]
    fn a_wrong_password_is_a_clear_error_without_secrets() {
        let (_, pair) = KeyPairSigner::generate().expect("generate");
        let pem = encrypted_private_key_pem(&pair, b"right").expect("encrypt");
        let err = KeyPairSigner::from_pem(pem.as_bytes(), b"wrong").expect_err("wrong password");
        assert_eq!(err.category(), "KeyInvalid");
        assert!(err.to_string().contains("wrong password"));
        assert!(!err.to_string().contains("right"));
    }
}
