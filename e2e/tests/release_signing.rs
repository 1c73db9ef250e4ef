//! A release whose gates passed is signed by the operator with a key made by `cosign
//! generate-key-pair k8s://…`, and the real cosign CLI verifies the signature in the registry.

use std::{ops::ControlFlow, time::Duration};

use sluice::api::{ModelRelease, Phase, conditions};
use sluice_e2e::{POLL, REPOSITORY, Sim, TestNamespace, clean_sims, eventually, state_dir};

const TIMEOUT: Duration = Duration::from_secs(90);

fn cosign_verify(ns: &TestNamespace, image: &str) -> anyhow::Result<std::process::Output> {
    ns.cosign(&["verify"], image)
}

#[tokio::test]
async fn a_passing_release_is_signed_and_cosign_verifies_it() -> anyhow::Result<()> {
    let ns = TestNamespace::new("sign").await?;
    ns.with_signing_key("release-pw")?;
    let digest = ns.push_image("ok")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-70", &sims).await?;
    let api = ns.api::<ModelRelease>();
    let release = eventually("release signed or blocked", TIMEOUT, POLL, async || {
        let r = api.get("predictor-70").await?;
        let status = r.status.clone().unwrap_or_default();
        let done = conditions::is_true(&status.conditions, conditions::SIGNED)
            || status.phase == Phase::Blocked;
        Ok(if done {
            ControlFlow::Break(r)
        } else {
            ControlFlow::Continue(format!("{status:?}"))
        })
    })
    .await?;
    let status = release.status.expect("status");
    assert_eq!(status.phase, Phase::Signing, "{status:?}");
    let signature = status.signature.expect("signature in status");
    assert_eq!(
        signature.reference,
        format!("{REPOSITORY}:{}.sig", digest.replace(':', "-"))
    );
    assert!(signature.key_id.starts_with("sha256:"));
    let out = cosign_verify(&ns, &format!("{REPOSITORY}@{digest}"))?;
    assert!(
        out.status.success(),
        "cosign verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payload = String::from_utf8_lossy(&out.stdout);
    assert!(
        payload.contains(r#""sluice.dev/release":"predictor-70""#),
        "{payload}"
    );
    assert!(
        payload.contains(r#""sluice.dev/revision":"3f2a9c1""#),
        "{payload}"
    );
    assert_gates_attested(&ns, &digest, signature.attestation.as_deref())?;
    Ok(())
}

/// `cosign verify-attestation --type <gates>` accepts the .att, and its predicate lists every stage.
fn assert_gates_attested(
    ns: &TestNamespace,
    digest: &str,
    reference: Option<&str>,
) -> anyhow::Result<()> {
    assert_eq!(
        reference,
        Some(format!("{REPOSITORY}:{}.att", digest.replace(':', "-")).as_str())
    );
    let image = format!("{REPOSITORY}@{digest}");
    let gates = "https://sluice.dev/attestations/gates/v1";
    let out = ns.cosign(&["verify-attestation", "--type", gates], &image)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cosign verify-attestation: {stderr}");
    let line = String::from_utf8_lossy(&out.stdout);
    let envelope: serde_json::Value =
        serde_json::from_str(line.lines().next().unwrap_or_default())?;
    let payload = envelope["payload"].as_str().unwrap_or_default();
    let statement: serde_json::Value = serde_json::from_slice(&base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        payload,
    )?)?;
    assert_eq!(statement["predicateType"], gates);
    assert_eq!(statement["subject"][0]["digest"]["sha256"], digest[7..]);
    let predicate = &statement["predicate"];
    assert_eq!(predicate["verdict"], "Passed");
    assert_eq!(predicate["release"]["name"], "predictor-70");
    let stages: Vec<&str> = predicate["stages"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        stages,
        ["unit-tests", "dependency-audit", "sast", "build"],
        "{predicate}"
    );
    assert!(predicate["stages"][1]["taskRun"].is_string(), "{predicate}");
    assert_eq!(predicate["stages"][1]["verdict"], "Passed");
    let wrong = ns.cosign(
        &[
            "verify-attestation",
            "--type",
            "https://slsa.dev/provenance/v1",
        ],
        &image,
    )?;
    assert!(
        !wrong.status.success(),
        "another predicate type must not match"
    );
    Ok(())
}

#[tokio::test]
async fn a_digest_missing_from_the_registry_blocks_and_nothing_is_signed() -> anyhow::Result<()> {
    let ns = TestNamespace::new("nodigest").await?;
    ns.with_signing_key("pw")?;
    let absent = format!("sha256:{}", "e".repeat(64));
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&absent));
    ns.release("predictor-71", &sims).await?;
    let r = ns
        .wait_phase("predictor-71", &[Phase::Blocked], TIMEOUT)
        .await?;
    let status = r.status.expect("status");
    let signed = conditions::get(&status.conditions, conditions::SIGNED).expect("Signed condition");
    assert_eq!(
        (signed.status.as_str(), signed.reason.as_str()),
        ("False", "DigestNotFound")
    );
    assert!(
        signed.message.contains("not in the registry"),
        "{}",
        signed.message
    );
    assert!(status.signature.is_none());
    assert!(
        !cosign_verify(&ns, &format!("{REPOSITORY}@{absent}"))?
            .status
            .success()
    );
    Ok(())
}

#[tokio::test]
async fn a_blocked_release_pushes_no_signature() -> anyhow::Result<()> {
    let ns = TestNamespace::new("blocksig").await?;
    ns.with_signing_key("pw")?;
    let digest = ns.push_image("blocked")?;
    let mut sims = clean_sims();
    sims[1] = ("dependency-audit", Sim::findings(1, 0, 0, 0));
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-72", &sims).await?;
    ns.wait_phase("predictor-72", &[Phase::Blocked], TIMEOUT)
        .await?;
    let out = cosign_verify(&ns, &format!("{REPOSITORY}@{digest}"))?;
    assert!(
        !out.status.success(),
        "a blocked release must not be signed"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no signatures found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn signing_in_a_registry_that_needs_credentials_uses_the_secret_and_stalls_without_it()
-> anyhow::Result<()> {
    let ns = TestNamespace::new("authsign").await?;
    ns.with_signing_key("pw")?;
    let host = std::fs::read_to_string(state_dir().join("auth-registry"))?
        .trim()
        .to_string();
    let repo = format!("{host}/evip/predictor");
    let digest = ns.push_image_to(
        &format!("{repo}:3f2a9c1"),
        "auth",
        Some(("sluice", "e2e-only-password")),
    )?;
    let patch = serde_json::json!({"spec": {"image": {"repository": repo}}}).to_string();
    ns.patch_pipeline(&patch)?;
    let built = Sim::results(&[
        ("IMAGE_URL", &format!("{repo}:3f2a9c1")),
        ("IMAGE_DIGEST", &digest),
    ]);
    let mut sims = clean_sims();
    sims[3] = ("build", built);

    // Without credentials: stalled with a reason that names the cause, nothing signed.
    ns.release("predictor-73", &sims).await?;
    let stalled = ns
        .release_condition("predictor-73", conditions::SIGNED, "False")
        .await?;
    assert_eq!(
        stalled.reason, "RegistryUnauthorized",
        "{}",
        stalled.message
    );
    assert!(
        stalled.message.contains("check the credentials Secret"),
        "{}",
        stalled.message
    );

    // With a dockerconfigjson Secret named in the pipeline: signed.
    ns.kubectl(&[
        "create",
        "secret",
        "docker-registry",
        "registry-creds",
        "--docker-server",
        &host,
        "--docker-username",
        "sluice",
        "--docker-password",
        "e2e-only-password",
    ])?;
    ns.patch_pipeline(r#"{"spec":{"image":{"credentialsSecretRef":{"name":"registry-creds"}}}}"#)?;
    let api = ns.api::<ModelRelease>();
    let signature = eventually("signed with credentials", TIMEOUT, POLL, async || {
        let r = api.get("predictor-73").await?;
        Ok(match r.status.as_ref().and_then(|s| s.signature.clone()) {
            Some(sig) => ControlFlow::Break(sig),
            None => ControlFlow::Continue(format!("{:?}", r.status)),
        })
    })
    .await?;
    assert_eq!(
        signature.reference,
        format!("{repo}:{}.sig", digest.replace(':', "-"))
    );
    Ok(())
}
