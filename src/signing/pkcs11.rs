//! An HSM signer through PKCS#11: an ECDSA P-256 key found by token label and key label, used
//! with the user PIN. The key never leaves the HSM; the PIN stays in memory. The PKCS#11 module
//! (the `.so`) is the operator's choice (`--pkcs11-module`), never a pipeline's: loading a library
//! is running its code.

use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::{
    context::Pkcs11,
    mechanism::Mechanism,
    object::{Attribute, AttributeType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};
use futures::future::BoxFuture;
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

use super::{Signer, SigningError, keys};

/// Loads and initializes the PKCS#11 module at `path`, once per process.
pub fn load_module(path: &std::path::Path) -> anyhow::Result<Arc<Pkcs11>> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags};
    let module = Pkcs11::new(path)
        .map_err(|e| anyhow::anyhow!("cannot load PKCS#11 module {}: {e}", path.display()))?;
    module
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| anyhow::anyhow!("cannot initialize PKCS#11 module {}: {e}", path.display()))?;
    Ok(Arc::new(module))
}

/// Where the key is and how to open it.
#[derive(Clone)]
pub struct HsmKey {
    /// The token's label.
    pub token_label: String,
    /// The key's label (CKA_LABEL of the private and public key objects).
    pub key_label: String,
    /// The user PIN.
    pub pin: Arc<AuthPin>,
}

/// Signs with a key held by a PKCS#11 token.
pub struct Pkcs11Signer {
    inner: Arc<Inner>,
    public_key_pem: String,
    key_id: String,
}

struct Inner {
    module: Arc<Pkcs11>,
    slot: Slot,
    key: HsmKey,
    // One logged-in session, reused; dropped and opened again after an error.
    session: Mutex<Option<(Session, ObjectHandle)>>,
}

impl std::fmt::Debug for Pkcs11Signer {
    // Never print the PIN.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("token", &self.inner.key.token_label)
            .field("key", &self.inner.key.key_label)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn hsm_error(key: &HsmKey, detail: impl std::fmt::Display) -> SigningError {
    SigningError::Kms {
        category: "HsmError",
        message: format!(
            "HSM token {:?} key {:?}: {detail}",
            key.token_label, key.key_label
        ),
    }
}

impl Pkcs11Signer {
    /// Finds the token and the key, logs in and reads the public key (blocking: call it off the
    /// async runtime).
    pub fn open(module: Arc<Pkcs11>, key: HsmKey) -> Result<Self, SigningError> {
        let slot = find_slot(&module, &key)?;
        let session = login(&module, slot, &key)?;
        let public = find(&session, &key, ObjectClass::PUBLIC_KEY)?;
        let public_key_pem = public_key_pem(&session, public, &key)?;
        let private = find(&session, &key, ObjectClass::PRIVATE_KEY)?;
        let key_id = keys::key_id_of_pem(&public_key_pem)
            .ok_or_else(|| hsm_error(&key, "the public key cannot be encoded"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                module,
                slot,
                key,
                session: Mutex::new(Some((session, private))),
            }),
            public_key_pem,
            key_id,
        })
    }
}

impl Inner {
    fn sign_blocking(&self, payload: &[u8]) -> Result<Vec<u8>, SigningError> {
        let digest = Sha256::digest(payload);
        let mut guard = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            let session = login(&self.module, self.slot, &self.key)?;
            let private = find(&session, &self.key, ObjectClass::PRIVATE_KEY)?;
            *guard = Some((session, private));
        }
        let result = guard
            .as_ref()
            .map(|(session, private)| session.sign(&Mechanism::Ecdsa, *private, &digest));
        match result {
            Some(Ok(raw)) => {
                // PKCS#11 returns r‖s; cosign's signatures are ASN.1 DER.
                let sig = p256::ecdsa::Signature::from_slice(&raw)
                    .map_err(|_| hsm_error(&self.key, "the HSM returned a malformed signature"))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            Some(Err(e)) => {
                *guard = None;
                Err(hsm_error(&self.key, format!("signing failed: {e}")))
            }
            None => Err(hsm_error(&self.key, "no session")),
        }
    }
}

impl Signer for Pkcs11Signer {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SigningError>> {
        let inner = self.inner.clone();
        let payload = payload.to_vec();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.sign_blocking(&payload))
                .await
                .map_err(|e| SigningError::Sign(format!("HSM signing task failed: {e}")))?
        })
    }
}

fn find_slot(module: &Pkcs11, key: &HsmKey) -> Result<Slot, SigningError> {
    let slots = module
        .get_slots_with_token()
        .map_err(|e| hsm_error(key, format!("cannot list tokens: {e}")))?;
    for slot in slots {
        if module
            .get_token_info(slot)
            .is_ok_and(|info| info.label().trim_end() == key.token_label)
        {
            return Ok(slot);
        }
    }
    Err(hsm_error(key, "no token with this label"))
}

fn login(module: &Pkcs11, slot: Slot, key: &HsmKey) -> Result<Session, SigningError> {
    let session = module
        .open_ro_session(slot)
        .map_err(|e| hsm_error(key, format!("cannot open a session: {e}")))?;
    session
        .login(UserType::User, Some(&key.pin))
        .map_err(|e| hsm_error(key, format!("login refused ({e}): check the PIN Secret")))?;
    Ok(session)
}

fn find(session: &Session, key: &HsmKey, class: ObjectClass) -> Result<ObjectHandle, SigningError> {
    let template = [
        Attribute::Class(class),
        Attribute::Label(key.key_label.as_bytes().to_vec()),
    ];
    let found = session
        .find_objects(&template)
        .map_err(|e| hsm_error(key, format!("cannot search keys: {e}")))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(hsm_error(key, format!("no {class} with this label"))),
        _ => Err(hsm_error(
            key,
            format!("several {class} objects with this label"),
        )),
    }
}

/// The public key as PEM (SPKI), from CKA_EC_POINT; P-256 only.
fn public_key_pem(
    session: &Session,
    public: ObjectHandle,
    key: &HsmKey,
) -> Result<String, SigningError> {
    let attributes = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|e| hsm_error(key, format!("cannot read the public key: {e}")))?;
    let point = attributes
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| hsm_error(key, "the public key has no EC point (not an EC key?)"))?;
    let public = p256::PublicKey::from_sec1_bytes(unwrap_octet_string(&point))
        .map_err(|_| hsm_error(key, "the key is not an ECDSA P-256 key"))?;
    public
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| hsm_error(key, format!("cannot encode the public key: {e}")))
}

/// CKA_EC_POINT is a DER OCTET STRING around the SEC1 point (some modules give the bare point).
/// A P-256 uncompressed point is 65 bytes, so the wrapped form is exactly 67: 04 41 04 X Y.
fn unwrap_octet_string(point: &[u8]) -> &[u8] {
    match point {
        [0x04, 0x41, rest @ ..] if rest.len() == 0x41 => rest,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ec_point_is_read_wrapped_or_bare() {
        // A bare point whose first coordinate byte looks like a length is not unwrapped.
        let mut bare = vec![0x04, 63];
        bare.extend([7u8; 63]);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(&bare);
        assert_eq!(unwrap_octet_string(&wrapped), bare.as_slice());
        assert_eq!(unwrap_octet_string(&bare), bare.as_slice());
    }
}
