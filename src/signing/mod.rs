//! Signing seams, kept apart as in Tekton Chains: a `Signer` (key material), the payload format
//! (cosign simple signing), and storage in the registry (`crate::registry`).

pub mod attestation;
pub mod bundle;
pub mod keys;
pub mod kms;
pub mod payload;
pub mod pkcs11;
pub mod storage;
pub mod x509;

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use futures::future::BoxFuture;
use oci_client::client::ImageLayer;
use x509_cert::der::Decode;

use crate::registry::{Registry, RegistryError};
use storage::Attached;

/// Media type of a cosign simple-signing layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Media type of a cosign attestation layer (a DSSE envelope).
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// Errors of signing and verification. Messages never contain key material or passwords.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The private key could not be read or decrypted.
    #[error("cannot load the signing key: {0}")]
    Key(String),
    /// The signer failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Verification found no acceptable signature.
    #[error("{0}")]
    Verification(String),
    /// The signing certificate or its chain is unusable (expired, not yet valid, not chained).
    #[error("signing certificate: {0}")]
    Certificate(String),
    /// The KMS could not sign: unreachable, token refused, or an error it reported.
    #[error("{message}")]
    Kms {
        /// KmsUnavailable, KmsUnauthorized or KmsError.
        category: &'static str,
        /// What happened; never the token.
        message: String,
    },
}

impl SigningError {
    /// Bounded category for metrics and conditions.
    pub fn category(&self) -> &'static str {
        match self {
            SigningError::Key(_) => "KeyInvalid",
            SigningError::Sign(_) => "SignFailed",
            SigningError::Registry(e) => e.category(),
            SigningError::Verification(_) => "VerificationFailed",
            SigningError::Certificate(_) => "CertificateInvalid",
            SigningError::Kms { category, .. } => category,
        }
    }
}

/// Something that signs payloads with one key: a key pair today, a KMS or keyless signer later.
pub trait Signer: Send + Sync {
    /// `sha256:<hex>` of the public key (DER), as status reports it.
    fn key_id(&self) -> &str;
    /// The public key, PEM.
    fn public_key_pem(&self) -> &str;
    /// Signs the payload (ASN.1 DER ECDSA, as cosign writes it). Asynchronous: a KMS signs over
    /// the network.
    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SigningError>>;
    /// The certificate (PEM) and its chain (PEM, intermediates then root) that vouch for the
    /// key, attached to every signature; `None` for a bare key.
    fn certificate_chain(&self) -> Option<(&str, &str)> {
        None
    }
    /// Fails when the signer must not sign at `now` (an expired certificate).
    fn usable_at(&self, _now: jiff::Timestamp) -> Result<(), SigningError> {
        Ok(())
    }
    /// The root certificates a verification of this signer's signatures trusts; `None` for a
    /// bare key (its public key is the trust).
    fn trust_roots(&self) -> Option<Vec<x509_cert::Certificate>> {
        None
    }
}

/// A signer shared between reconciles.
pub type SharedSigner = std::sync::Arc<dyn Signer>;

/// What a verification trusts: a public key, or root certificates that the certificate attached
/// to the signature must chain to.
pub enum Trust {
    /// A public key, PEM.
    Key(String),
    /// The signer's certificate chain: its self-signed certificates are the roots the
    /// signature's certificate must lead to, the others may serve as intermediates.
    Roots(Vec<x509_cert::Certificate>),
}

/// Where a signature was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedImage {
    /// `<repo>:sha256-<hex>.sig`.
    pub reference: String,
    /// Whether an identical signature by this key was already there (nothing was pushed).
    pub already_signed: bool,
    /// `sha256:<hex>` of the `.sig` manifest holding the signature, when the registry said it.
    pub manifest_digest: Option<String>,
}

/// Signs `repo@digest` and stores the signature where cosign does, keeping other signatures.
/// Re-running with the same key and annotations pushes nothing new.
pub async fn sign_image(
    registry: &Registry,
    signer: &dyn Signer,
    repo: &str,
    digest: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<SignedImage, SigningError> {
    // The build stage's results are not trusted: the digest must exist in the repository.
    registry.require_manifest(repo, digest).await?;
    let payload = payload::simple_signing(repo, digest, annotations);
    let reference = payload::signature_tag(repo, digest);
    let key = keys::verification_key(signer.public_key_pem())?;
    let make = || async {
        let signature = BASE64.encode(signer.sign(&payload).await?);
        let mut annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), signature)]);
        annotations.extend(certificate_annotations(signer));
        Ok(ImageLayer::new(
            payload.clone(),
            SIMPLE_SIGNING_MEDIA_TYPE.into(),
            Some(annotations),
        ))
    };
    // The same payload signed by this key counts as done, whatever the signature bytes.
    let same = |l: &ImageLayer| l.data.as_ref() == payload.as_slice() && layer_verifies(l, &key);
    let appended = storage::append(registry, Attached::Signature, repo, digest, make, same).await?;
    Ok(SignedImage {
        reference,
        already_signed: appended.already,
        manifest_digest: appended.manifest_digest,
    })
}

/// The certificate and chain annotations cosign puts on a layer signed by an x509 signer.
pub fn certificate_annotations(signer: &dyn Signer) -> BTreeMap<String, String> {
    signer
        .certificate_chain()
        .map(|(cert, chain)| {
            BTreeMap::from([
                (x509::CERTIFICATE_ANNOTATION.to_string(), cert.to_string()),
                (x509::CHAIN_ANNOTATION.to_string(), chain.to_string()),
            ])
        })
        .unwrap_or_default()
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The annotations (`optional`) of the verified payload.
    pub annotations: BTreeMap<String, String>,
}

/// Whether the `.sig` of `repo@digest` is still exactly the manifest `pushed` (one HEAD request):
/// a signature verified when it was pushed needs no second full fetch while the tag has not moved.
pub async fn signature_unchanged(
    registry: &Registry,
    repo: &str,
    digest: &str,
    pushed: &str,
) -> Result<bool, SigningError> {
    let now = registry
        .resolve_digest(&payload::signature_tag(repo, digest))
        .await?;
    Ok(now == pushed)
}

/// Fetches the `.sig` of `repo@digest` from the registry and checks that one of its layers is a
/// payload for exactly this digest, signed by `public_key_pem`.
pub async fn verify_image(
    registry: &Registry,
    trust: &Trust,
    repo: &str,
    digest: &str,
) -> Result<Verified, SigningError> {
    let key = match trust {
        Trust::Key(pem) => Some(keys::verification_key(pem)?),
        Trust::Roots(_) => None,
    };
    let now = jiff::Timestamp::now();
    let layers = storage::read(registry, Attached::Signature, repo, digest)
        .await?
        .layers;
    if layers.is_empty() {
        return Err(SigningError::Verification(format!(
            "no signature found at {}",
            payload::signature_tag(repo, digest)
        )));
    }
    let mut problems = Vec::new();
    for layer in &layers {
        let checked = match (&key, trust) {
            (Some(key), _) => check_layer(layer, key, digest),
            (None, Trust::Roots(roots)) => {
                certificate_key(layer, roots, now).and_then(|key| check_layer(layer, &key, digest))
            }
            (None, Trust::Key(_)) => Err("no key".into()),
        };
        match checked {
            Ok(annotations) => return Ok(Verified { annotations }),
            Err(problem) => problems.push(problem),
        }
    }
    problems.dedup();
    Err(SigningError::Verification(format!(
        "no valid signature for {repo}@{digest} by this key: {}",
        problems.join("; ")
    )))
}

/// The key of the certificate attached to `layer`, once its chain leads to one of `roots` and
/// every certificate on the way is valid `now` (no transparency log vouches for an earlier time).
fn certificate_key(
    layer: &ImageLayer,
    roots: &[x509_cert::Certificate],
    now: jiff::Timestamp,
) -> Result<sigstore::crypto::CosignVerificationKey, String> {
    let annotations = layer.annotations.as_ref();
    let cert = annotations
        .and_then(|a| a.get(x509::CERTIFICATE_ANNOTATION))
        .ok_or("the signature carries no certificate")?;
    let leaf = x509::parse_pem_certificates(cert)?
        .into_iter()
        .next()
        .ok_or("the certificate annotation holds no certificate")?;
    let mut chain = match annotations.and_then(|a| a.get(x509::CHAIN_ANNOTATION)) {
        Some(text) => x509::parse_pem_certificates(text)?,
        None => Vec::new(),
    };
    chain.extend(roots.iter().cloned());
    x509::verify_chain(&leaf, &chain, &x509::roots(roots), Some(now))?;
    x509::leaf_key(&leaf)
}

/// The key that verifies a bundle under `trust`: the public key, or the bundle's certificate once
/// it leads to the chain's roots.
pub fn bundle_key(
    bundle: &serde_json::Value,
    trust: &Trust,
) -> Result<sigstore::crypto::CosignVerificationKey, String> {
    match trust {
        Trust::Key(pem) => keys::verification_key(pem).map_err(|e| e.to_string()),
        Trust::Roots(chain) => {
            let der = bundle::certificate(bundle).ok_or("the bundle carries no certificate")?;
            let leaf = x509_cert::Certificate::from_der(&der)
                .map_err(|e| format!("the bundle's certificate is not x509: {e}"))?;
            x509::verify_chain(
                &leaf,
                chain,
                &x509::roots(chain),
                Some(jiff::Timestamp::now()),
            )?;
            x509::leaf_key(&leaf)
        }
    }
}

/// Verifies `repo@digest` from its signature bundles (OCI referrers) under `trust`.
pub async fn verify_bundles(
    registry: &Registry,
    trust: &Trust,
    repo: &str,
    digest: &str,
) -> Result<(), SigningError> {
    let found = bundle::find(registry, repo, digest, bundle::COSIGN_SIGN_PREDICATE).await?;
    if found.is_empty() {
        return Err(SigningError::Verification(format!(
            "no signature bundle refers to {repo}@{digest}"
        )));
    }
    let mut problems = Vec::new();
    for (_, b) in &found {
        match bundle_key(b, trust)
            .and_then(|key| bundle::open(b, &key, digest, bundle::COSIGN_SIGN_PREDICATE))
        {
            Ok(_) => return Ok(()),
            Err(p) => problems.push(p),
        }
    }
    problems.dedup();
    Err(SigningError::Verification(format!(
        "no valid signature bundle for {repo}@{digest} by this key: {}",
        problems.join("; ")
    )))
}

/// The bundle of `statement` by `signer` referring to `subject` (the manifest of `repo@digest`,
/// from `bundle::subject`): one already there (verified with the signer's key, same statement) or
/// a new one. Returns its referrer reference.
pub async fn ensure_bundle(
    registry: &Registry,
    signer: &dyn Signer,
    repo: &str,
    subject: &crate::registry::RawManifest,
    statement: &attestation::Statement,
) -> Result<String, SigningError> {
    let digest = subject.digest.as_str();
    let key = keys::verification_key(signer.public_key_pem())?;
    let predicate = statement.predicate_type.as_str();
    for (reference, b) in bundle::find(registry, repo, digest, predicate).await? {
        if bundle::open(&b, &key, digest, predicate).is_ok_and(|s| &s == statement) {
            return Ok(reference);
        }
    }
    let made = bundle::make(signer, statement).await?;
    Ok(bundle::attach(registry, repo, subject, made, predicate).await?)
}

fn layer_verifies(layer: &ImageLayer, key: &sigstore::crypto::CosignVerificationKey) -> bool {
    let Some(sig) = layer
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIGNATURE_ANNOTATION))
    else {
        return false;
    };
    key.verify_signature(
        sigstore::crypto::Signature::Base64Encoded(sig.as_bytes()),
        &layer.data,
    )
    .is_ok()
}

fn check_layer(
    layer: &ImageLayer,
    key: &sigstore::crypto::CosignVerificationKey,
    digest: &str,
) -> Result<BTreeMap<String, String>, String> {
    if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
        return Err(format!(
            "layer of type {} is not a simple-signing payload",
            layer.media_type
        ));
    }
    if !layer_verifies(layer, key) {
        return Err(
            "signature does not verify with this key (another key, or a modified payload)".into(),
        );
    }
    let parsed = payload::parse(&layer.data)
        .map_err(|e| format!("payload is not a cosign simple-signing payload: {e}"))?;
    if parsed.digest != digest {
        return Err(format!(
            "the signed payload is for {}, not {digest}",
            parsed.digest
        ));
    }
    Ok(parsed.annotations)
}
