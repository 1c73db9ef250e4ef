//! In-toto statements signed as DSSE envelopes and stored where `cosign attest` stores them
//! (`<repo>:sha256-<hex>.att`), so `cosign verify-attestation --type <predicate type>` accepts them.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use oci_client::client::ImageLayer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::storage::{self, Attached};
use super::{DSSE_MEDIA_TYPE, SIGNATURE_ANNOTATION, Signer, SigningError, keys};
use crate::registry::Registry;

/// Predicate type of Sluice's gate verdicts.
pub const GATES_PREDICATE_TYPE: &str = "https://sluice.dev/attestations/gates/v1";
/// The in-toto statement version written.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// DSSE payload type of in-toto statements; cosign refuses any other.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Layer annotation naming the predicate type, as `cosign attest` writes it.
const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";

/// An in-toto statement about one image digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Statement version.
    #[serde(rename = "_type")]
    pub type_: String,
    /// What the statement is about.
    pub subject: Vec<Subject>,
    /// What kind of predicate follows.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The claim itself (none in cosign's signature statement).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub predicate: Value,
}

/// One artifact named by a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The repository (cosign's signature statement leaves it out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Algorithm to hex digest.
    pub digest: BTreeMap<String, String>,
}

impl Statement {
    /// A statement whose subject is `repo@sha256:<hex>`.
    pub fn new(repo: &str, digest: &str, predicate_type: &str, predicate: Value) -> Self {
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        Self {
            type_: STATEMENT_TYPE.into(),
            subject: vec![Subject {
                name: repo.into(),
                digest: BTreeMap::from([(algorithm.into(), hex.into())]),
            }],
            predicate_type: predicate_type.into(),
            predicate,
        }
    }

    /// The statement with `repo@digest` as one more subject (a model bound to its image).
    pub fn and_subject(mut self, repo: &str, digest: &str) -> Self {
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.subject.push(Subject {
            name: repo.into(),
            digest: BTreeMap::from([(algorithm.into(), hex.into())]),
        });
        self
    }

    /// Whether a subject of the statement is exactly `digest`.
    pub fn names_digest(&self, digest: &str) -> bool {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return false;
        };
        self.subject
            .iter()
            .any(|s| s.digest.get(algorithm).map(String::as_str) == Some(hex))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EnvelopeSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

/// DSSE pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Signs `statement` into a DSSE envelope (JSON).
pub async fn envelope(signer: &dyn Signer, statement: &[u8]) -> Result<Vec<u8>, SigningError> {
    let signature = signer.sign(&pae(INTOTO_PAYLOAD_TYPE, statement)).await?;
    let envelope = Envelope {
        payload_type: INTOTO_PAYLOAD_TYPE.into(),
        payload: BASE64.encode(statement),
        signatures: vec![EnvelopeSignature {
            keyid: String::new(),
            sig: BASE64.encode(signature),
        }],
    };
    serde_json::to_vec(&envelope).map_err(|e| SigningError::Sign(e.to_string()))
}

/// The statement inside `data` when it is a DSSE envelope signed by `key`.
pub fn open(
    data: &[u8],
    key: &sigstore::crypto::CosignVerificationKey,
) -> Result<Statement, String> {
    let envelope: Envelope =
        serde_json::from_slice(data).map_err(|e| format!("not a DSSE envelope: {e}"))?;
    if envelope.payload_type != INTOTO_PAYLOAD_TYPE {
        return Err(format!(
            "payload type {} is not in-toto",
            envelope.payload_type
        ));
    }
    let payload = BASE64
        .decode(&envelope.payload)
        .map_err(|_| "payload is not base64".to_string())?;
    let signed = pae(&envelope.payload_type, &payload);
    let verifies = envelope.signatures.iter().any(|s| {
        key.verify_signature(
            sigstore::crypto::Signature::Base64Encoded(s.sig.as_bytes()),
            &signed,
        )
        .is_ok()
    });
    if !verifies {
        return Err("envelope signature does not verify with this key".into());
    }
    serde_json::from_slice(&payload)
        .map_err(|e| format!("payload is not an in-toto statement: {e}"))
}

/// Where an attestation was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// `<repo>:sha256-<hex>.att`.
    pub reference: String,
    /// Whether this key had already attested exactly this statement (nothing was pushed).
    pub already_attested: bool,
}

/// Attests `statement` about `repo@digest`, appending to attestations already there. Re-running with
/// the same statement and key pushes nothing.
pub async fn attest_image(
    registry: &Registry,
    signer: &dyn Signer,
    repo: &str,
    digest: &str,
    statement: &Statement,
) -> Result<Attested, SigningError> {
    let reference = Attached::Attestation.tag(repo, digest);
    let key = keys::verification_key(signer.public_key_pem())?;
    let payload = serde_json::to_vec(statement).map_err(|e| SigningError::Sign(e.to_string()))?;
    let mut annotations = BTreeMap::from([
        // cosign writes an empty signature annotation on attestation layers: the signature is in
        // the envelope.
        (SIGNATURE_ANNOTATION.to_string(), String::new()),
        (
            PREDICATE_TYPE_ANNOTATION.to_string(),
            statement.predicate_type.clone(),
        ),
    ]);
    annotations.extend(super::certificate_annotations(signer));
    let make = || async {
        Ok(ImageLayer::new(
            envelope(signer, &payload).await?,
            DSSE_MEDIA_TYPE.into(),
            Some(annotations),
        ))
    };
    let same = |l: &ImageLayer| open(&l.data, &key).is_ok_and(|s| &s == statement);
    let appended =
        storage::append(registry, Attached::Attestation, repo, digest, make, same).await?;
    Ok(Attested {
        reference,
        already_attested: appended.already,
    })
}

/// Finds an attestation of `predicate_type` about exactly `repo@digest`, signed by `public_key_pem`,
/// and returns its statement.
pub async fn verify_attestation(
    registry: &Registry,
    public_key_pem: &str,
    repo: &str,
    digest: &str,
    predicate_type: &str,
) -> Result<Statement, SigningError> {
    let key = keys::verification_key(public_key_pem)?;
    let layers = storage::read(registry, Attached::Attestation, repo, digest)
        .await?
        .layers;
    let reference = Attached::Attestation.tag(repo, digest);
    if layers.is_empty() {
        return Err(SigningError::Verification(format!(
            "no attestation found at {reference}"
        )));
    }
    let mut problems = Vec::new();
    for layer in &layers {
        match open(&layer.data, &key) {
            Ok(s) if s.predicate_type != predicate_type => problems.push(format!(
                "predicate type {} is not {predicate_type}",
                s.predicate_type
            )),
            Ok(s) if !s.names_digest(digest) => {
                problems.push(format!("the statement is not about {digest}"))
            }
            Ok(s) => return Ok(s),
            Err(p) => problems.push(p),
        }
    }
    problems.dedup();
    Err(SigningError::Verification(format!(
        "no valid {predicate_type} attestation at {reference} by this key: {}",
        problems.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keys::KeyPairSigner;

    const DIGEST: &str = "sha256:d4c6d6c265558ca3f525f52ce08e2796ffad338e963440a5057c6a09de464792";

    #[test]
    fn pae_is_the_dsse_v1_encoding() {
        assert_eq!(
            pae("application/vnd.in-toto+json", b"{}"),
            b"DSSEv1 28 application/vnd.in-toto+json 2 {}".to_vec()
        );
    }

    #[tokio::test]
    async fn envelopes_open_only_with_the_signing_key_and_untouched() {
        let (signer, _) = KeyPairSigner::generate().expect("generate");
        let (other, _) = KeyPairSigner::generate().expect("generate");
        let statement = Statement::new("r/x", DIGEST, GATES_PREDICATE_TYPE, serde_json::json!({}));
        let payload = serde_json::to_vec(&statement).expect("json");
        let env = envelope(&signer, &payload).await.expect("sign");
        let key = keys::verification_key(signer.public_key_pem()).expect("key");
        assert_eq!(open(&env, &key).expect("opens"), statement);
        assert!(statement.names_digest(DIGEST));
        assert!(!statement.names_digest("sha256:00"));

        let other_key = keys::verification_key(other.public_key_pem()).expect("key");
        assert!(open(&env, &other_key).is_err());

        let mut tampered: Envelope = serde_json::from_slice(&env).expect("json");
        let mut changed = statement.clone();
        changed.predicate = serde_json::json!({"verdict": "Passed"});
        tampered.payload = BASE64.encode(serde_json::to_vec(&changed).expect("json"));
        let tampered = serde_json::to_vec(&tampered).expect("json");
        assert!(open(&tampered, &key).is_err());
    }
}
