//! Sigstore bundles (v0.3, signed with a key or a certificate, no transparency log) stored as OCI
//! 1.1 referrers of the image, as cosign writes them with `--new-bundle-format`: an artifact
//! manifest whose `subject` is the image, holding one bundle with a DSSE envelope. Registries
//! with the referrers API index it; for the others the referrers tag schema (`<repo>:sha256-<hex>`,
//! an index of referrers) is kept too. Each write is a new manifest by digest: two writers never
//! overwrite each other's bundle; only the tag schema's index is read-modify-write, guarded as the
//! `.sig` appends are.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    Signer, SigningError,
    attestation::{self, Statement},
    storage,
};
use crate::registry::{Pushed, RawManifest, Registry, RegistryError, sha256_digest};

/// Media type (and artifact type) of a sigstore bundle v0.3.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Predicate type of cosign's signature statement.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const PREDICATE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Largest bundle or manifest read back; a bundle is a few KiB.
const MAX_BUNDLE: usize = 1024 * 1024;
/// Referrers examined per image at most.
const MAX_REFERRERS: usize = 64;
const INDEX_ATTEMPTS: u32 = 8;

/// cosign's signature statement for `digest`: the subject by digest only, no predicate.
pub fn signature_statement(digest: &str) -> Statement {
    let mut s = Statement::new("", digest, COSIGN_SIGN_PREDICATE, Value::Null);
    s.subject.iter_mut().for_each(|x| x.name.clear());
    s
}

/// A bundle holding `statement` signed by `signer` in a DSSE envelope.
pub async fn make(signer: &dyn Signer, statement: &Statement) -> Result<Vec<u8>, SigningError> {
    let payload = serde_json::to_vec(statement).map_err(|e| SigningError::Sign(e.to_string()))?;
    let envelope: Value = serde_json::from_slice(&attestation::envelope(signer, &payload).await?)
        .map_err(|e| SigningError::Sign(e.to_string()))?;
    let material = match signer.certificate_chain() {
        Some((cert, _)) => {
            let der = pem::parse(cert)
                .map_err(|_| SigningError::Certificate("certificate is not PEM".into()))?;
            json!({"certificate": {"rawBytes": BASE64.encode(der.contents())}})
        }
        None => {
            let der = pem::parse(signer.public_key_pem())
                .map_err(|_| SigningError::Key("public key is not PEM".into()))?;
            json!({"publicKey": {"hint": BASE64.encode(Sha256::digest(der.contents()))}})
        }
    };
    let bundle = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": envelope,
    });
    serde_json::to_vec(&bundle).map_err(|e| SigningError::Sign(e.to_string()))
}

/// The image manifest bundles refer to; `NotFound` when `repo@digest` is not in the registry
/// (the build's results are not trusted: nothing refers to a digest that does not exist).
pub async fn subject(
    registry: &Registry,
    repo: &str,
    digest: &str,
) -> Result<RawManifest, RegistryError> {
    let name = format!("{repo}@{digest}");
    let found = registry
        .manifest(&name, MAX_BUNDLE)
        .await?
        .ok_or_else(|| RegistryError::NotFound(name.clone()))?;
    if found.digest != digest {
        return Err(RegistryError::Other {
            reference: name,
            detail: format!("registry answered digest {}", found.digest),
        });
    }
    Ok(found)
}

/// Stores `bundle` (of `predicate_type`) as a referrer of `subject`, the manifest of
/// `repo@digest`; returns the referrer manifest's reference `repo@sha256:<hex>`.
pub async fn attach(
    registry: &Registry,
    repo: &str,
    subject: &RawManifest,
    bundle: Vec<u8>,
    predicate_type: &str,
) -> Result<String, RegistryError> {
    let digest = subject.digest.as_str();
    let empty = registry.push_blob(repo, b"{}".to_vec()).await?;
    let size = bundle.len();
    let layer = registry.push_blob(repo, bundle).await?;
    let annotations = BTreeMap::from([
        (
            "dev.sigstore.bundle.content".to_string(),
            "dsse-envelope".to_string(),
        ),
        (PREDICATE_ANNOTATION.to_string(), predicate_type.to_string()),
    ]);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty, "size": 2},
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "digest": layer, "size": size}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.bytes.len()},
        "annotations": annotations,
    });
    let body = serde_json::to_vec(&manifest).map_err(|e| RegistryError::Other {
        reference: repo.to_string(),
        detail: e.to_string(),
    })?;
    let size = body.len();
    let referrer = sha256_digest(&body);
    registry
        .push_manifest(&format!("{repo}@{referrer}"), body, OCI_MANIFEST)
        .await?;
    let listed = registry.referrers(repo, digest, None).await?;
    if !listed.iter().any(|e| e.digest == referrer) {
        let entry = json!({"mediaType": OCI_MANIFEST, "digest": referrer, "size": size,
            "artifactType": BUNDLE_MEDIA_TYPE, "annotations": annotations});
        add_to_tag_index(registry, repo, digest, entry).await?;
    }
    Ok(format!("{repo}@{referrer}"))
}

/// Adds `entry` to the referrers tag schema's index of `repo@digest`, keeping every entry another
/// writer adds meanwhile (pushed only while the tag names what was read, looked at again after).
async fn add_to_tag_index(
    registry: &Registry,
    repo: &str,
    digest: &str,
    entry: Value,
) -> Result<(), RegistryError> {
    let tag = format!("{repo}:{}", digest.replace(':', "-"));
    for attempt in 0..INDEX_ATTEMPTS {
        let current = registry.manifest(&tag, MAX_BUNDLE).await?;
        let mut index: Value = current
            .as_ref()
            .and_then(|m| serde_json::from_slice(&m.bytes).ok())
            .filter(|v: &Value| v["manifests"].is_array())
            .unwrap_or_else(
                || json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
            );
        let listed = |v: &Value| {
            v["manifests"]
                .as_array()
                .is_some_and(|m| m.iter().any(|e| e["digest"] == entry["digest"]))
        };
        if listed(&index) {
            return Ok(());
        }
        if let Some(m) = index["manifests"].as_array_mut() {
            m.push(entry.clone());
        }
        let body = serde_json::to_vec(&index).map_err(|e| RegistryError::Other {
            reference: tag.clone(),
            detail: e.to_string(),
        })?;
        let expected = current.map(|m| m.digest);
        let started = std::time::Instant::now();
        if let Pushed::Pushed(_) = registry
            .push_manifest_if(&tag, body, OCI_INDEX, expected.as_deref())
            .await?
        {
            storage::settle(started).await;
            let now = registry.manifest(&tag, MAX_BUNDLE).await?;
            let now: Option<Value> = now.and_then(|m| serde_json::from_slice(&m.bytes).ok());
            if now.as_ref().is_some_and(listed) {
                return Ok(());
            }
        }
        storage::backoff(attempt).await;
    }
    Err(RegistryError::Other {
        reference: tag,
        detail: "the referrers index kept changing under other writers; retrying later".into(),
    })
}

/// The bundles of `predicate_type` referring to `repo@digest`, with the reference of the manifest
/// holding each (bounded, each parsed strictly).
pub async fn find(
    registry: &Registry,
    repo: &str,
    digest: &str,
    predicate_type: &str,
) -> Result<Vec<(String, Value)>, RegistryError> {
    // Not filtered by artifact type: cosign's tag-schema entries carry its config's media type
    // there; the manifest's layers say what it holds.
    let entries = registry.referrers(repo, digest, None).await?;
    let mut bundles = Vec::new();
    for entry in entries.iter().take(MAX_REFERRERS) {
        let declared = entry
            .annotations
            .as_ref()
            .and_then(|a| a.get(PREDICATE_ANNOTATION));
        if declared.is_some_and(|p| p != predicate_type) {
            continue;
        }
        let Some(manifest) = registry
            .manifest(&format!("{repo}@{}", entry.digest), MAX_BUNDLE)
            .await?
        else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<Value>(&manifest.bytes) else {
            continue;
        };
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        for layer in layers
            .iter()
            .filter(|l| l["mediaType"] == BUNDLE_MEDIA_TYPE)
        {
            let Some(d) = layer["digest"].as_str() else {
                continue;
            };
            let bytes = registry.blob(repo, d, MAX_BUNDLE).await?;
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                bundles.push((format!("{repo}@{}", entry.digest), v));
            }
        }
    }
    Ok(bundles)
}

/// The statement of `bundle` when its envelope verifies with `key` and it is a `predicate_type`
/// statement about exactly `digest`.
pub fn open(
    bundle: &Value,
    key: &sigstore::crypto::CosignVerificationKey,
    digest: &str,
    predicate_type: &str,
) -> Result<Statement, String> {
    if bundle["mediaType"].as_str() != Some(BUNDLE_MEDIA_TYPE) {
        return Err("not a sigstore bundle v0.3".into());
    }
    let envelope = serde_json::to_vec(&bundle["dsseEnvelope"]).map_err(|e| e.to_string())?;
    let statement = attestation::open(&envelope, key)?;
    if statement.predicate_type != predicate_type {
        return Err(format!(
            "predicate type {} is not {predicate_type}",
            statement.predicate_type
        ));
    }
    if !statement.names_digest(digest) {
        return Err(format!("the bundle is not about {digest}"));
    }
    Ok(statement)
}

/// The certificate (DER) a bundle's verification material holds, if any.
pub fn certificate(bundle: &Value) -> Option<Vec<u8>> {
    bundle["verificationMaterial"]["certificate"]["rawBytes"]
        .as_str()
        .and_then(|b| BASE64.decode(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keys::{self, KeyPairSigner};

    const DIGEST: &str = "sha256:94d68f4211f5e80952730d6ae25a9609707e121dffbd36bc7a2ee77337146e3e";

    #[test]
    fn the_signature_statement_is_cosigns() {
        let s = serde_json::to_value(signature_statement(DIGEST)).expect("json");
        assert_eq!(
            s,
            json!({"_type": "https://in-toto.io/Statement/v1",
                "subject": [{"digest": {"sha256": &DIGEST[7..]}}],
                "predicateType": COSIGN_SIGN_PREDICATE})
        );
    }

    #[tokio::test]
    async fn a_bundle_opens_only_with_its_key_for_its_digest_and_predicate() {
        let (signer, _) = KeyPairSigner::generate().expect("key");
        let (other, _) = KeyPairSigner::generate().expect("key");
        let bundle: Value = serde_json::from_slice(
            &make(&signer, &signature_statement(DIGEST))
                .await
                .expect("bundle"),
        )
        .expect("json");
        assert!(bundle["verificationMaterial"]["publicKey"]["hint"].is_string());
        let key = keys::verification_key(signer.public_key_pem()).expect("key");
        open(&bundle, &key, DIGEST, COSIGN_SIGN_PREDICATE).expect("opens");
        let other_key = keys::verification_key(other.public_key_pem()).expect("key");
        assert!(open(&bundle, &other_key, DIGEST, COSIGN_SIGN_PREDICATE).is_err());
        assert!(open(&bundle, &key, "sha256:00", COSIGN_SIGN_PREDICATE).is_err());
        assert!(open(&bundle, &key, DIGEST, "https://other/v1").is_err());
        assert!(
            open(
                &json!({"mediaType": "x"}),
                &key,
                DIGEST,
                COSIGN_SIGN_PREDICATE
            )
            .is_err()
        );
    }
}
