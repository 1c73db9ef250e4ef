//! What signing keeps between releases: each signing key decrypted once per Secret version (off
//! the async runtime: scrypt takes ~0.1 s of CPU), one registry client per set of credentials
//! (its connections and tokens reused), and a bound on signatures in flight, taken in arrival
//! order (tokio's semaphore is fair), so a burst signs steadily instead of stalling all at once.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{
    api::pipeline::SignerKind,
    metrics::SharedMetrics,
    registry::Registry,
    signing::{SharedSigner, SigningError},
};

/// Signatures (sign and attest, with their registry round trips) in flight at once.
pub const SIGNING_SLOTS: usize = 8;
/// Entries kept per cache; past it the cache starts over (keys are few in practice).
const MAX_ENTRIES: usize = 256;

/// A Secret as of one version: a rotated key is another entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SecretVersion {
    kind: SignerKind,
    // What else the signer was made from (a KMS address and key): an edit is another signer.
    config: String,
    namespace: String,
    name: String,
    uid: String,
    resource_version: String,
}

impl SecretVersion {
    fn of(kind: SignerKind, config: &str, secret: &Secret) -> Self {
        Self {
            kind,
            config: config.to_string(),
            namespace: secret.namespace().unwrap_or_default(),
            name: secret.name_any(),
            uid: secret.uid().unwrap_or_default(),
            resource_version: secret.resource_version().unwrap_or_default(),
        }
    }
}

/// Decrypted signers, registry clients and signing slots, shared by every reconcile.
pub struct SigningPool {
    signers: Mutex<HashMap<SecretVersion, SharedSigner>>,
    // Keyed by a hash of the credentials, never the credentials themselves.
    registries: Mutex<HashMap<[u8; 32], Registry>>,
    slots: Semaphore,
    metrics: SharedMetrics,
    // One signing at a time per image in this process: two releases of the same digest append
    // to the same tags (the append re-reads and retries anyway; this only spares the retries).
    images: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl SigningPool {
    /// An empty pool whose registry clients and slots report to `metrics`.
    pub fn new(metrics: SharedMetrics) -> Self {
        Self {
            signers: Mutex::default(),
            registries: Mutex::default(),
            slots: Semaphore::new(SIGNING_SLOTS),
            metrics,
            images: Mutex::default(),
        }
    }

    /// The `kind` signer made from `secret` (and `config`), loaded by `load` the first time this
    /// version of the Secret is seen; a load that fails is tried again next time.
    pub async fn signer<F>(
        &self,
        secret: &Secret,
        kind: SignerKind,
        config: &str,
        load: F,
    ) -> Result<SharedSigner, SigningError>
    where
        F: std::future::Future<Output = Result<SharedSigner, SigningError>>,
    {
        let version = SecretVersion::of(kind, config, secret);
        if let Some(s) = self.lock_signers().get(&version) {
            return Ok(s.clone());
        }
        let signer = load.await?;
        let mut signers = self.lock_signers();
        // Older versions of the same Secret are never used again.
        signers.retain(|k, _| (&k.namespace, &k.name) != (&version.namespace, &version.name));
        if signers.len() >= MAX_ENTRIES {
            signers.clear();
        }
        signers.insert(version, signer.clone());
        Ok(signer)
    }

    /// A registry client for these plain-HTTP hosts and credentials, shared with every other
    /// signature that uses the same.
    pub fn registry(&self, insecure_hosts: &[String], auth: RegistryAuth) -> Registry {
        let key = credentials_key(insecure_hosts, &auth);
        let mut registries = self
            .registries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if registries.len() >= MAX_ENTRIES && !registries.contains_key(&key) {
            registries.clear();
        }
        registries
            .entry(key)
            .or_insert_with(|| {
                Registry::new(insecure_hosts.to_vec(), auth)
                    .timed(self.metrics.registry_duration.clone())
            })
            .clone()
    }

    /// Waits for a signing slot; signatures beyond `SIGNING_SLOTS` queue in arrival order.
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        let started = std::time::Instant::now();
        self.metrics.signing_queue.inc();
        let permit = self.slots.acquire().await.ok();
        self.metrics.signing_queue.dec();
        self.metrics
            .signing_wait
            .observe(started.elapsed().as_secs_f64());
        permit
    }

    /// Holds the signing of `image` (`repo@digest`) in this process until the guard drops.
    pub async fn image_lock(&self, image: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut images = self.images.lock().unwrap_or_else(PoisonError::into_inner);
            // Locks nobody holds or waits for are dropped as the map grows.
            if images.len() >= MAX_ENTRIES {
                images.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
            }
            images.entry(image.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn lock_signers(&self) -> std::sync::MutexGuard<'_, HashMap<SecretVersion, SharedSigner>> {
        self.signers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn credentials_key(insecure_hosts: &[String], auth: &RegistryAuth) -> [u8; 32] {
    let mut h = Sha256::new();
    for host in insecure_hosts {
        h.update(host.as_bytes());
        h.update([0]);
    }
    match auth {
        RegistryAuth::Anonymous => h.update(b"anonymous"),
        RegistryAuth::Basic(user, password) => {
            h.update(b"basic\0");
            h.update(user.as_bytes());
            h.update([0]);
            h.update(password.as_bytes());
        }
        RegistryAuth::Bearer(token) => {
            h.update(b"bearer\0");
            h.update(token.as_bytes());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_shared_per_credentials_and_hosts() {
        let a = credentials_key(&[], &RegistryAuth::Basic("u".into(), "p".into()));
        let b = credentials_key(&[], &RegistryAuth::Basic("u".into(), "q".into()));
        let c = credentials_key(
            &["r:5000".into()],
            &RegistryAuth::Basic("u".into(), "p".into()),
        );
        let d = credentials_key(&[], &RegistryAuth::Basic("up".into(), String::new()));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(
            a,
            credentials_key(&[], &RegistryAuth::Basic("u".into(), "p".into()))
        );
    }
}
