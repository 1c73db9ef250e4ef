//! The signing step of a release: key from the pipeline's Secret, registry credentials from its
//! dockerconfigjson Secret, then sign and push. Key material and passwords stay in memory only.

use std::{collections::BTreeMap, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use oci_client::secrets::RegistryAuth;
use zeroize::Zeroizing;

use super::Ctx;
use crate::{
    api::{
        ModelRelease, SecurePipeline,
        conditions::reason,
        pipeline::{
            DEFAULT_CHAINS_TIMEOUT_SECONDS, KmsSigning, Pkcs11Signing, SignatureFormat, SignerKind,
        },
        release::{ImageRef, ModelArtifact, SignatureRef, StageStatus},
    },
    registry::Registry,
    signing::{
        self, SharedSigner, SigningError, Trust,
        attestation::{self, GATES_PREDICATE_TYPE, Statement},
        keys::KeyPairSigner,
        kms::{self, TransitKey, TransitSigner},
        pkcs11::{HsmKey, Pkcs11Signer},
        x509::X509Signer,
    },
};

/// Why signing did not happen.
#[derive(Debug)]
pub struct SigningFailure {
    /// Bounded category, used as condition reason and metric label.
    pub category: &'static str,
    /// Message for the condition and the event.
    pub message: String,
    /// Whether the release is blocked for good (the digest is not in the registry).
    pub block: bool,
}

fn failure(category: &'static str, message: String) -> SigningFailure {
    SigningFailure {
        category,
        message,
        block: false,
    }
}

/// Where Tekton Chains is with the TaskRun that built the image, from the annotations it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainsProgress {
    /// Not done yet (or the TaskRun is not there).
    Pending,
    /// `chains.tekton.dev/signed: "true"`: Chains stored what it signs.
    Signed,
    /// `chains.tekton.dev/signed: "failed"`: Chains gave up after its retries.
    Failed,
}

/// The annotation Tekton Chains sets on a TaskRun once it has signed (or failed to sign) it.
pub const CHAINS_SIGNED_ANNOTATION: &str = "chains.tekton.dev/signed";

/// What Chains says of the TaskRun `stages` names for the stage producing the image.
pub fn chains_progress(
    pipeline: &SecurePipeline,
    stages: &[StageStatus],
    task_runs: &[crate::tekton::TaskRun],
) -> ChainsProgress {
    let Some(build) = pipeline.spec.stages.iter().find(|s| s.produces.is_some()) else {
        return ChainsProgress::Pending;
    };
    let name = stages
        .iter()
        .find(|s| s.name == build.name)
        .and_then(|s| s.task_run.as_deref());
    let signed = task_runs
        .iter()
        .find(|tr| Some(tr.name_any().as_str()) == name)
        .and_then(|tr| tr.annotations().get(CHAINS_SIGNED_ANNOTATION).cloned());
    match signed.as_deref() {
        Some("true") => ChainsProgress::Signed,
        Some("failed") => ChainsProgress::Failed,
        _ => ChainsProgress::Pending,
    }
}

/// Signs the release's image (or, with `signer: chains`, verifies Chains' signature of it),
/// attests its gate verdicts (`stages`), and returns where both are.
pub async fn sign(
    ctx: &Ctx,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    image: &ImageRef,
    stages: &[StageStatus],
    chains: ChainsProgress,
) -> Result<SignatureRef, SigningFailure> {
    let ns = release.namespace().unwrap_or_default();
    let signer = pipeline_signer(ctx, pipeline, &ns).await?;
    // An expired (or not yet valid) certificate signs nothing: verifiers would refuse it.
    signer
        .usable_at((ctx.now)())
        .map_err(|e| failure(e.category(), e.to_string()))?;
    let auth = registry_auth(ctx, pipeline, &ns, &image.repository).await?;
    let registry = ctx.signing.registry(&ctx.insecure_registries, auth);
    let chains_key = if chains_signs(pipeline) {
        let (pem, trust) = chains_trust(ctx, pipeline, &ns).await?;
        chains_signature(
            &registry,
            &trust,
            image,
            chains,
            waited(ctx, release, pipeline),
        )
        .await?;
        Some(pem)
    } else {
        None
    };
    let annotations = annotations(release, pipeline);
    let model = model_artifact(release);
    let model_registry = match &model {
        Some(a) => {
            let auth = registry_auth(ctx, pipeline, &ns, &a.repository).await?;
            let registry = ctx.signing.registry(&ctx.insecure_registries, auth);
            require_model(&registry, a).await?;
            Some(registry)
        }
        None => None,
    };
    let mut statement = Statement::new(
        &image.repository,
        &image.digest,
        GATES_PREDICATE_TYPE,
        gates_predicate(release, pipeline, stages),
    );
    if let Some(a) = &model {
        statement = statement.and_subject(&a.repository, &a.digest);
    }
    let slot = ctx.signing.slot().await;
    let started = std::time::Instant::now();
    let held = ctx
        .signing
        .image_lock(&format!("{}@{}", image.repository, image.digest))
        .await;
    let format = signature_format(pipeline);
    // The model first: once the attestation naming it exists, so does its signature.
    let signed_model = match (&model, &model_registry) {
        (Some(a), Some(r)) => {
            let _model_held = ctx.signing.image_lock(&a.reference()).await;
            Some(sign_model(r, &signer, a, &annotations, format).await)
        }
        _ => None,
    };
    // Beside Chains, Sluice signs only its attestation: the image's signature is Chains'.
    let signature = chains_key.is_none().then_some(&annotations);
    let result = match signed_model.transpose() {
        Ok(model_ref) => sign_and_attest(&registry, &signer, image, signature, &statement, format)
            .await
            .map(|stored| SignatureRef {
                model: model_ref,
                ..stored
            }),
        Err(e) => Err(e),
    };
    drop(held);
    drop(slot);
    ctx.metrics
        .signing_duration
        .observe(started.elapsed().as_secs_f64());
    let stored = result.map_err(|e| SigningFailure {
        category: e.category(),
        block: e.category() == "DigestNotFound",
        message: match &e {
            SigningError::Registry(crate::registry::RegistryError::NotFound(_)) => format!(
                "the build stage reported {}@{}, which is not in the registry; the build results cannot be trusted",
                image.repository, image.digest
            ),
            other => other.to_string(),
        },
    })?;
    let key_id = match &chains_key {
        Some(pem) => signing::keys::key_id_of_pem(pem).unwrap_or_default(),
        None => signer.key_id().to_string(),
    };
    Ok(SignatureRef {
        key_id,
        signed_at: (ctx.now)().to_string(),
        ..stored
    })
}

/// Whether the pipeline has Tekton Chains sign the image.
fn chains_signs(pipeline: &SecurePipeline) -> bool {
    pipeline
        .spec
        .signing
        .as_ref()
        .is_some_and(|s| s.chains_signs())
}

/// How long the release has waited for a signature (in the Signing phase), against the bound.
fn waited(ctx: &Ctx, release: &ModelRelease, pipeline: &SecurePipeline) -> (i64, i64) {
    let since = release
        .status
        .as_ref()
        .and_then(|s| s.phase_since.as_deref())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let waited = since.map_or(0, |t| ((ctx.now)().as_second() - t.as_second()).max(0));
    let limit = pipeline
        .spec
        .signing
        .as_ref()
        .and_then(|s| s.chains.as_ref())
        .and_then(|c| c.timeout_seconds)
        .unwrap_or(DEFAULT_CHAINS_TIMEOUT_SECONDS);
    (waited, i64::from(limit))
}

/// Checks that Chains signed `image` with the key `trust` holds. Waits (a non-blocking failure,
/// retried) while Chains has not said it is done and the bound is not reached; blocks when Chains
/// failed, when it is done and no signature verifies (another key signed), or when time is up.
async fn chains_signature(
    registry: &Registry,
    trust: &Trust,
    image: &ImageRef,
    chains: ChainsProgress,
    (waited, limit): (i64, i64),
) -> Result<(), SigningFailure> {
    let (repo, digest) = (&image.repository, &image.digest);
    let problem = match signing::verify_image(registry, trust, repo, digest).await {
        Ok(_) => return Ok(()),
        Err(SigningError::Verification(legacy)) => {
            match signing::verify_bundles(registry, trust, repo, digest).await {
                Ok(()) => return Ok(()),
                Err(SigningError::Verification(_)) => legacy,
                Err(other) => return Err(failure(other.category(), other.to_string())),
            }
        }
        Err(other) => return Err(failure(other.category(), other.to_string())),
    };
    let blocked = |category: &'static str, message: String| SigningFailure {
        category,
        message,
        block: true,
    };
    match chains {
        ChainsProgress::Failed => Err(blocked(
            reason::CHAINS_SIGNING_FAILED,
            format!(
                "Tekton Chains failed to sign {repo}@{digest} (its TaskRun says {CHAINS_SIGNED_ANNOTATION}=failed); see the Chains controller's log"
            ),
        )),
        ChainsProgress::Signed => Err(blocked(
            reason::SIGNATURE_INVALID,
            format!(
                "Tekton Chains signed the build, but {problem}: the image was not signed with the public key this pipeline trusts for Chains"
            ),
        )),
        ChainsProgress::Pending if waited >= limit => Err(blocked(
            reason::CHAINS_SIGNATURE_MISSING,
            format!(
                "Tekton Chains did not sign {repo}@{digest} within {limit}s ({problem}); is Chains running with artifacts.oci.storage: oci for this namespace?"
            ),
        )),
        ChainsProgress::Pending => Err(failure(
            reason::WAITING_FOR_CHAINS,
            format!(
                "waiting for Tekton Chains to sign {repo}@{digest} ({waited}s of {limit}s): {problem}"
            ),
        )),
    }
}

/// The public key Chains' signature must verify with: `spec.signing.chains.publicKeyRef`'s
/// `cosign.pub`, or the public key of the pipeline's own signer.
async fn chains_trust(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    ns: &str,
) -> Result<(String, Trust), SigningFailure> {
    let named = pipeline
        .spec
        .signing
        .as_ref()
        .and_then(|s| s.chains.as_ref())
        .and_then(|c| c.public_key_ref.as_ref());
    let Some(secret_ref) = named else {
        return trust_of(ctx, pipeline, ns).await;
    };
    let name = &secret_ref.name;
    let secret = read_secret(ctx, ns, name, "Chains public key", || {
        failure(
            reason::SIGNING_SECRET_NOT_FOUND,
            format!("Chains public key Secret {name} not found in {ns}; create it with cosign.pub, the public key of Chains' signing key"),
        )
    })
    .await?;
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get("cosign.pub"))
        .map(|p| String::from_utf8_lossy(&p.0).into_owned())
        .ok_or_else(|| {
            failure(
                "SigningKeyInvalid",
                format!("Secret {name} has no cosign.pub"),
            )
        })?;
    Ok((pem.clone(), Trust::Key(pem)))
}

/// The pipeline's `spec.signing.format` (legacy when unset).
fn signature_format(pipeline: &SecurePipeline) -> SignatureFormat {
    pipeline
        .spec
        .signing
        .as_ref()
        .and_then(|s| s.format)
        .unwrap_or_default()
}

/// Signs the image (when `signature` holds its annotations; `None` when Chains signed it) and
/// attests it, in the pipeline's format(s); the returned reference's key and time are the
/// caller's to fill.
async fn sign_and_attest(
    registry: &Registry,
    signer: &SharedSigner,
    image: &ImageRef,
    signature: Option<&BTreeMap<String, String>>,
    statement: &Statement,
    format: SignatureFormat,
) -> Result<SignatureRef, SigningError> {
    let (repo, digest) = (&image.repository, &image.digest);
    let mut stored = SignatureRef {
        // Chains' signature is at cosign's .sig tag whatever Sluice's format.
        reference: match signature {
            Some(_) => String::new(),
            None => signing::payload::signature_tag(repo, digest),
        },
        attestation: None,
        key_id: String::new(),
        signed_at: String::new(),
        // Only Sluice's own push is recorded: Chains' signature is verified in full before rollout.
        manifest_digest: None,
        bundles: Vec::new(),
        model: None,
    };
    if format.legacy() {
        if let Some(annotations) = signature {
            let signed =
                signing::sign_image(registry, signer.as_ref(), repo, digest, annotations).await?;
            stored.reference = signed.reference;
            stored.manifest_digest = signed.manifest_digest;
        }
        let attested =
            attestation::attest_image(registry, signer.as_ref(), repo, digest, statement).await?;
        stored.attestation = Some(attested.reference);
    }
    if format.bundle() {
        // Read once for both bundles; a digest not in the registry is `NotFound` here.
        let subject = signing::bundle::subject(registry, repo, digest).await?;
        let mut bundles = Vec::new();
        if signature.is_some() {
            let sig = signing::bundle::signature_statement(digest);
            bundles.push(
                signing::ensure_bundle(registry, signer.as_ref(), repo, &subject, &sig).await?,
            );
        }
        let attested =
            signing::ensure_bundle(registry, signer.as_ref(), repo, &subject, statement).await?;
        if !format.legacy() {
            if let Some(signed) = bundles.first() {
                stored.reference = signed.clone();
            }
            stored.attestation = Some(attested.clone());
        }
        bundles.push(attested);
        stored.bundles = bundles;
    }
    Ok(stored)
}

/// The release's model artifact, when it binds one.
fn model_artifact(release: &ModelRelease) -> Option<ModelArtifact> {
    release.spec.model.as_ref().and_then(|m| m.artifact.clone())
}

/// Blocks unless the model artifact is in its repository (the release names it by digest).
async fn require_model(registry: &Registry, a: &ModelArtifact) -> Result<(), SigningFailure> {
    match registry.require_manifest(&a.repository, &a.digest).await {
        Ok(()) => Ok(()),
        Err(crate::registry::RegistryError::NotFound(_)) => Err(SigningFailure {
            category: reason::MODEL_ARTIFACT_MISSING,
            block: true,
            message: format!(
                "model artifact {} is not in the registry; nothing was signed",
                a.reference()
            ),
        }),
        Err(e) => Err(failure(e.category(), e.to_string())),
    }
}

/// Signs the model artifact in the pipeline's format(s) with the release's annotations;
/// returns the signature's reference (the `.sig` tag, else the bundle).
async fn sign_model(
    registry: &Registry,
    signer: &SharedSigner,
    a: &ModelArtifact,
    annotations: &BTreeMap<String, String>,
    format: SignatureFormat,
) -> Result<String, SigningError> {
    let (repo, digest) = (&a.repository, &a.digest);
    let mut reference = String::new();
    if format.legacy() {
        let signed =
            signing::sign_image(registry, signer.as_ref(), repo, digest, annotations).await?;
        reference = signed.reference;
    }
    if format.bundle() {
        let subject = signing::bundle::subject(registry, repo, digest).await?;
        let sig = signing::bundle::signature_statement(digest);
        let bundle =
            signing::ensure_bundle(registry, signer.as_ref(), repo, &subject, &sig).await?;
        if !format.legacy() {
            reference = bundle;
        }
    }
    Ok(reference)
}

/// The gates predicate: the release, then every judged (pre-deploy) stage with its TaskRun,
/// verdict, findings and the exceptions applied. Built only from recorded verdicts, so it is the
/// same after a restart; post-deploy stages have not run when the image is signed.
pub fn gates_predicate(
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    stages: &[StageStatus],
) -> serde_json::Value {
    let post_deploy = |name: &str| {
        pipeline
            .spec
            .stages
            .iter()
            .any(|st| st.name == name && st.is_post_deploy())
    };
    let stages: Vec<_> = stages
        .iter()
        .filter(|s| s.gate.is_some() && !post_deploy(&s.name))
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "taskRun": s.task_run,
                "state": s.state,
                "verdict": s.gate,
                "findings": s.findings,
                "tests": s.tests,
                "quality": s.quality,
                "exceptionsApplied": s.exceptions_applied,
                "fixes": s.fixes,
                "reason": s.reason,
            })
        })
        .collect();
    serde_json::json!({
        "release": {
            "name": release.name_any(),
            "namespace": release.namespace(),
            "uid": release.uid(),
            "pipeline": pipeline.name_any(),
            "revision": release.spec.revision,
            "model": release.spec.model,
        },
        "verdict": "Passed",
        "stages": stages,
    })
}

/// The pipeline's signer: its Secret read (fresh: a rotated key takes effect at once), its
/// material loaded once per Secret version.
async fn pipeline_signer(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    ns: &str,
) -> Result<SharedSigner, SigningFailure> {
    let (kind, secret_name, secret) = signing_secret(ctx, pipeline, ns).await?;
    loaded_signer(ctx, pipeline, kind, &secret_name, &secret).await
}

/// The signer made from `secret` as the pipeline's `spec.signing` says, from the pool.
async fn loaded_signer(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    kind: SignerKind,
    secret_name: &str,
    secret: &Secret,
) -> Result<SharedSigner, SigningFailure> {
    let signing = pipeline.spec.signing.clone();
    let kms = signing.as_ref().and_then(|s| s.kms.clone());
    let hsm = signing.as_ref().and_then(|s| s.pkcs11.clone());
    let config = match (&kms, &hsm) {
        (Some(k), _) => format!("{} {} {}", k.address, transit_mount(k), k.uri),
        (None, Some(h)) => format!("{} {}", h.token_label, h.key_label),
        (None, None) => String::new(),
    };
    let owned = secret.clone();
    let module = ctx.pkcs11.clone();
    let load = async move {
        match (kind, kms, hsm) {
            (SignerKind::Kms, Some(k), _) => kms_signer(&k, &owned).await,
            (SignerKind::Pkcs11, _, Some(h)) => hsm_signer(module, h, owned).await,
            _ => tokio::task::spawn_blocking(move || signer_from_secret(kind, &owned))
                .await
                .map_err(|e| SigningError::Key(format!("loading the key failed: {e}")))?,
        }
    };
    ctx.signing
        .signer(secret, kind, &config, load)
        .await
        .map_err(|e| match e {
            // Its message names the KMS and the key, not the token Secret.
            SigningError::Kms { .. } => failure(e.category(), e.to_string()),
            other => failure(
                other.category(),
                format!("signing Secret {secret_name}: {other}"),
            ),
        })
}

/// An HSM signer for `h`, with the PIN from `secret` (key `pin`), opened on a blocking thread.
async fn hsm_signer(
    module: Option<Arc<cryptoki::context::Pkcs11>>,
    h: Pkcs11Signing,
    secret: Secret,
) -> Result<SharedSigner, SigningError> {
    let module = module.ok_or_else(|| SigningError::Kms {
        category: "HsmNotConfigured",
        message: "the operator was started without a PKCS#11 module (--pkcs11-module): it cannot use HSM keys".into(),
    })?;
    let pin = secret
        .data
        .as_ref()
        .and_then(|d| d.get("pin"))
        .map(|p| String::from_utf8_lossy(&p.0).trim().to_string())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| SigningError::Key("has no pin".into()))?;
    let key = HsmKey {
        token_label: h.token_label,
        key_label: h.key_label,
        pin: Arc::new(pin.into()),
    };
    tokio::task::spawn_blocking(move || Pkcs11Signer::open(module, key))
        .await
        .map_err(|e| SigningError::Key(format!("opening the HSM key failed: {e}")))?
        .map(|s| Arc::new(s) as SharedSigner)
}

fn transit_mount(k: &KmsSigning) -> String {
    k.transit_path.clone().unwrap_or_else(|| "transit".into())
}

/// A transit signer for `k`, with the token from `secret` (key `token`).
async fn kms_signer(k: &KmsSigning, secret: &Secret) -> Result<SharedSigner, SigningError> {
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|t| Zeroizing::new(String::from_utf8_lossy(&t.0).trim().to_string()))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| SigningError::Key("has no token".into()))?;
    let key = TransitKey {
        address: k.address.clone(),
        mount: transit_mount(k),
        name: kms::hashivault_key(&k.uri)?.to_string(),
        token: Arc::new(token),
    };
    Ok(Arc::new(TransitSigner::connect(key).await?))
}

/// The pipeline's signing Secret, read when signing or verifying.
async fn signing_secret(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    ns: &str,
) -> Result<(SignerKind, String, Secret), SigningFailure> {
    let Some(signing) = &pipeline.spec.signing else {
        return Err(failure(
            reason::SIGNING_NOT_CONFIGURED,
            format!(
                "SecurePipeline {} has no spec.signing: name a cosign key Secret (secretRef) or an x509 Secret to sign releases",
                pipeline.name_any()
            ),
        ));
    };
    let (kind, secret_name) = signing.signer();
    let secret = read_secret(ctx, ns, secret_name, "signing", || {
        failure(
            reason::SIGNING_SECRET_NOT_FOUND,
            format!(
                "signing Secret {secret_name} not found in {ns}; {}",
                super::pipeline::secret_hint(kind, secret_name)
            ),
        )
    })
    .await?;
    Ok((kind, secret_name.to_string(), secret))
}

/// The Secret `name` of `ns`, read fresh (Secrets are never cached, by RBAC design); `what` names
/// it in the error when it cannot be read, `missing` is the failure when it does not exist.
async fn read_secret(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    what: &str,
    missing: impl FnOnce() -> SigningFailure,
) -> Result<Secret, SigningFailure> {
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| {
            failure(
                "SecretUnreadable",
                format!("cannot read {what} Secret {name}: {e}"),
            )
        })?
        .ok_or_else(missing)
}

/// Re-verifies the release's signature from the registry, against the Secret's `cosign.pub`
/// (or the public half of `cosign.key` when the Secret has no `cosign.pub`). A signature that
/// does not verify blocks the release; a registry that cannot be reached only stalls it.
pub async fn verify(
    ctx: &Ctx,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    image: &ImageRef,
) -> Result<(), SigningFailure> {
    verify_image(ctx, release, pipeline, image).await?;
    match model_artifact(release) {
        Some(a) => verify_model(ctx, release, pipeline, &a).await,
        None => Ok(()),
    }
}

/// The model artifact's signature, by Sluice's own signer (Chains signs only the image), in
/// whichever of the pipeline's formats is there; a missing artifact or signature blocks.
async fn verify_model(
    ctx: &Ctx,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    a: &ModelArtifact,
) -> Result<(), SigningFailure> {
    let ns = release.namespace().unwrap_or_default();
    let (_, trust) = trust_of(ctx, pipeline, &ns).await?;
    let auth = registry_auth(ctx, pipeline, &ns, &a.repository).await?;
    let registry = ctx.signing.registry(&ctx.insecure_registries, auth);
    require_model(&registry, a).await?;
    let format = signature_format(pipeline);
    let verified = verify_in_format(&registry, &trust, &a.repository, &a.digest, format).await;
    verified.map_err(|e| match e {
        SigningError::Verification(m) => SigningFailure {
            category: reason::MODEL_SIGNATURE_INVALID,
            message: format!(
                "model artifact {}: signature verification before the rollout failed: {m}",
                a.reference()
            ),
            block: true,
        },
        other => failure(other.category(), other.to_string()),
    })
}

/// The image's signature (Chains' or Sluice's), read back just before the rollout.
async fn verify_image(
    ctx: &Ctx,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    image: &ImageRef,
) -> Result<(), SigningFailure> {
    let ns = release.namespace().unwrap_or_default();
    let chains = chains_signs(pipeline);
    let (public, trust) = if chains {
        chains_trust(ctx, pipeline, &ns).await?
    } else {
        trust_of(ctx, pipeline, &ns).await?
    };
    let auth = registry_auth(ctx, pipeline, &ns, &image.repository).await?;
    let registry = ctx.signing.registry(&ctx.insecure_registries, auth);
    // Chains writes the legacy .sig whatever Sluice's format; bundles are read when it has none.
    let format = if chains {
        SignatureFormat::Both
    } else {
        signature_format(pipeline)
    };
    if format.legacy() && signed_as_recorded(&registry, release, &public, image).await {
        return Ok(());
    }
    let verified =
        verify_in_format(&registry, &trust, &image.repository, &image.digest, format).await;
    verified.map_err(|e| match e {
        SigningError::Verification(m) => SigningFailure {
            category: reason::SIGNATURE_INVALID,
            message: format!("signature verification before the rollout failed: {m}"),
            block: true,
        },
        other => failure(other.category(), other.to_string()),
    })
}

/// Verifies the signature of `repo@digest` in whichever of `format`'s forms is there: a bundle
/// verifies when the `.sig` does not (or is not written).
async fn verify_in_format(
    registry: &Registry,
    trust: &Trust,
    repo: &str,
    digest: &str,
    format: SignatureFormat,
) -> Result<(), SigningError> {
    let legacy = if format.legacy() {
        signing::verify_image(registry, trust, repo, digest)
            .await
            .map(|_| ())
    } else {
        Err(SigningError::Verification(
            "no legacy signature expected".into(),
        ))
    };
    match legacy {
        Ok(()) => Ok(()),
        Err(e) if !format.bundle() => Err(e),
        Err(_) => signing::verify_bundles(registry, trust, repo, digest).await,
    }
}

/// What verification trusts, with the public key of the pipeline's signer: a cosign Secret's
/// `cosign.pub` (or the public half of `cosign.key` without it); an x509 Secret's root
/// certificates (and its key, which signed what this operator pushed).
async fn trust_of(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    ns: &str,
) -> Result<(String, Trust), SigningFailure> {
    let (kind, secret_name, secret) = signing_secret(ctx, pipeline, ns).await?;
    let public = secret.data.as_ref().and_then(|d| d.get("cosign.pub"));
    if let (SignerKind::CosignKey, Some(p)) = (kind, public) {
        let pem = String::from_utf8_lossy(&p.0).into_owned();
        return Ok((pem.clone(), Trust::Key(pem)));
    }
    let signer = loaded_signer(ctx, pipeline, kind, &secret_name, &secret).await?;
    let public = signer.public_key_pem().to_string();
    let trust = match signer.trust_roots() {
        Some(roots) => Trust::Roots(roots),
        None => Trust::Key(public.clone()),
    };
    Ok((public, trust))
}

/// Whether the release's own signature, verified when it was pushed, is still there untouched:
/// the same key and a signature tag naming the very manifest pushed (content-addressed, so
/// nothing was added, removed or replaced). Then the full fetch is not needed; any doubt (an
/// older status without the digest, another key, a moved tag, a registry error) falls back to it.
async fn signed_as_recorded(
    registry: &Registry,
    release: &ModelRelease,
    public_key_pem: &str,
    image: &ImageRef,
) -> bool {
    let Some(recorded) = release.status.as_ref().and_then(|s| s.signature.as_ref()) else {
        return false;
    };
    let Some(pushed) = &recorded.manifest_digest else {
        return false;
    };
    let same_key =
        signing::keys::key_id_of_pem(public_key_pem).is_some_and(|k| k == recorded.key_id);
    same_key
        && recorded.reference == signing::payload::signature_tag(&image.repository, &image.digest)
        && signing::signature_unchanged(registry, &image.repository, &image.digest, pushed)
            .await
            .unwrap_or(false)
}

/// The annotations that tie a signature to its release.
pub fn annotations(release: &ModelRelease, pipeline: &SecurePipeline) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        ("sluice.dev/release".to_string(), release.name_any()),
        ("sluice.dev/pipeline".to_string(), pipeline.name_any()),
        (
            "sluice.dev/revision".to_string(),
            release.spec.revision.clone(),
        ),
    ]);
    if let Some(model) = &release.spec.model {
        a.insert("sluice.dev/model".into(), model.name.clone());
        a.insert("sluice.dev/model-version".into(), model.version.clone());
    }
    a
}

/// Loads the `kind` signer from its Secret. Key material stays in memory, zeroized on drop.
fn signer_from_secret(kind: SignerKind, secret: &Secret) -> Result<SharedSigner, SigningError> {
    let data = secret.data.clone().unwrap_or_default();
    let bytes = |k: &str| data.get(k).map(|b| Zeroizing::new(b.0.clone()));
    match kind {
        SignerKind::CosignKey => {
            let key =
                bytes("cosign.key").ok_or_else(|| SigningError::Key("has no cosign.key".into()))?;
            let password = bytes("cosign.password").unwrap_or_default();
            Ok(Arc::new(KeyPairSigner::from_pem(&key, &password)?))
        }
        SignerKind::Kms | SignerKind::Pkcs11 => Err(SigningError::Key(
            "KMS and HSM signers are made by kms_signer and hsm_signer".into(),
        )),
        SignerKind::X509 => {
            let key =
                bytes("x509.pem").ok_or_else(|| SigningError::Key("has no x509.pem".into()))?;
            let (cert, chain) = (bytes("cert.pem"), bytes("chain.pem"));
            Ok(Arc::new(X509Signer::from_pems(
                &key,
                cert.as_ref().map(|c| c.as_slice()),
                chain.as_ref().map(|c| c.as_slice()),
            )?))
        }
    }
}

/// `image` pinned to the digest its tag names now (`repo:tag@sha256:…`), so that a rollback
/// restores exactly what ran before even if the tag moves; why not, when it cannot be resolved.
/// Uses the pipeline's registry credentials when they cover the image's host, none otherwise.
pub async fn pin(
    ctx: &Ctx,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    image: &str,
) -> Result<String, String> {
    if image.is_empty() || image.contains('@') {
        return Ok(image.to_string());
    }
    let ns = release.namespace().unwrap_or_default();
    let auth = registry_auth(ctx, pipeline, &ns, image)
        .await
        .unwrap_or(RegistryAuth::Anonymous);
    let registry = ctx.signing.registry(&ctx.insecure_registries, auth);
    // Bounded: an unreachable registry must not hold the rollout; the tag is recorded instead.
    let resolved = tokio::time::timeout(PIN_TIMEOUT, registry.resolve_digest(image)).await;
    match resolved {
        Ok(Ok(digest)) if digest.starts_with("sha256:") => Ok(format!("{image}@{digest}")),
        Ok(Ok(other)) => Err(format!("the registry answered digest {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the registry did not answer within {PIN_TIMEOUT:?}"
        )),
    }
}

/// How long resolving the previous image's tag may take before the rollout goes on without it.
const PIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn registry_auth(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    ns: &str,
    repository: &str,
) -> Result<RegistryAuth, SigningFailure> {
    let Some(secret_ref) = &pipeline.spec.image.credentials_secret_ref else {
        return Ok(RegistryAuth::Anonymous);
    };
    let secret = read_secret(ctx, ns, &secret_ref.name, "registry", || {
        failure(
            "RegistrySecretNotFound",
            format!(
                "registry credentials Secret {} not found in {ns}",
                secret_ref.name
            ),
        )
    })
    .await?;
    let config = secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .ok_or_else(|| {
            failure(
                "RegistrySecretInvalid",
                format!("Secret {} has no .dockerconfigjson", secret_ref.name),
            )
        })?;
    let host = repository.split('/').next().unwrap_or_default();
    docker_config_auth(&config.0, host).ok_or_else(|| {
        failure(
            "RegistrySecretInvalid",
            format!("Secret {} has no credentials for {host}", secret_ref.name),
        )
    })
}

/// The basic-auth credentials for `host` in a `.dockerconfigjson` document.
pub fn docker_config_auth(config: &[u8], host: &str) -> Option<RegistryAuth> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let entry = v
        .get("auths")?
        .as_object()?
        .iter()
        .find(|(k, _)| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            k.split('/').next() == Some(host)
        })?
        .1;
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        return Some(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    let decoded = BASE64.decode(entry.get("auth")?.as_str()?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_gates_predicate_holds_only_pre_deploy_verdicts_so_it_is_the_same_whenever_it_is_built() {
        let judged = |name: &str| -> StageStatus {
            serde_json::from_value(serde_json::json!({
                "name": name, "taskRun": format!("predictor-42-{name}"),
                "state": "Succeeded", "gate": "Passed"
            }))
            .expect("stage status")
        };
        let (release, pipeline) = (fixtures::release(), fixtures::pipeline());
        let before = gates_predicate(&release, &pipeline, &[judged("unit-tests")]);
        // A post-deploy verdict recorded later (a signing retried from a lagging cache) changes nothing.
        let after = gates_predicate(&release, &pipeline, &[judged("unit-tests"), judged("dast")]);
        assert_eq!(before, after);
        assert_eq!(before["stages"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn chains_progress_is_read_from_the_build_taskrun_annotation_only() {
        let pipeline = fixtures::pipeline();
        let stages: Vec<StageStatus> = serde_json::from_value(serde_json::json!([
            {"name": "unit-tests", "taskRun": "r-unit-tests", "state": "Succeeded"},
            {"name": "build", "taskRun": "r-build", "state": "Succeeded"},
        ]))
        .expect("stages");
        let task_run = |name: &str, signed: Option<&str>| -> crate::tekton::TaskRun {
            let mut tr: crate::tekton::TaskRun = serde_json::from_value(serde_json::json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": name, "namespace": "ml"}, "spec": {}
            }))
            .expect("taskrun");
            if let Some(v) = signed {
                tr.metadata.annotations =
                    Some([(CHAINS_SIGNED_ANNOTATION.to_string(), v.to_string())].into());
            }
            tr
        };
        let progress = |runs: &[crate::tekton::TaskRun]| chains_progress(&pipeline, &stages, runs);
        assert_eq!(progress(&[]), ChainsProgress::Pending);
        assert_eq!(
            progress(&[task_run("r-build", None)]),
            ChainsProgress::Pending
        );
        // Another stage's TaskRun signed by Chains says nothing of the image.
        assert_eq!(
            progress(&[
                task_run("r-unit-tests", Some("true")),
                task_run("r-build", None)
            ]),
            ChainsProgress::Pending
        );
        assert_eq!(
            progress(&[task_run("r-build", Some("true"))]),
            ChainsProgress::Signed
        );
        assert_eq!(
            progress(&[task_run("r-build", Some("failed"))]),
            ChainsProgress::Failed
        );
        assert_eq!(
            progress(&[task_run("r-build", Some("garbage"))]),
            ChainsProgress::Pending
        );
    }

    #[test]
    fn reads_docker_config_credentials_both_ways() {
        let both = br#"{"auths":{"127.0.0.1:35001":{"username":"u","password":"p"},"https://other.example":{"auth":"eDp5"}}}"#;
        assert!(
            matches!(docker_config_auth(both, "127.0.0.1:35001"), Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p")
        );
        assert!(
            matches!(docker_config_auth(both, "other.example"), Some(RegistryAuth::Basic(u, p)) if u == "x" && p == "y")
        );
        assert!(docker_config_auth(both, "missing.example").is_none());
        assert!(docker_config_auth(b"not json", "x").is_none());
    }
}
