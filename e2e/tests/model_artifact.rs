//! A release that binds its model weights (`spec.model.artifact`): the artifact is pushed by
//! `sluice push-model`, Sluice signs it beside the image, names both in the gates attestation,
//! verifies both before the rollout and hands the server the model by digest. The real cosign CLI
//! checks the artifact's signature and the attestation's two subjects. Stage outcomes are
//! scripted on the kwok node: these tests prove the binding, not the stages.

use std::{process::Command, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use sluice::api::{ModelRelease, Phase, conditions};
use sluice_e2e::{ENDED, MODELS, REPOSITORY, Sim, TestNamespace, clean_sims, repo_dir, state_dir};

const TIMEOUT: Duration = Duration::from_secs(120);
const STABLE: &str = "127.0.0.1:35000/evip/predictor:stable";

fn ready(r: &ModelRelease) -> (String, String) {
    r.status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, conditions::READY))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn spec_with_model(digest: &str, approval: &str) -> serde_json::Value {
    json!({
        "approval": approval,
        "model": {"name": "ev-load-15min", "version": "7",
                  "artifact": {"repository": MODELS, "digest": digest}},
    })
}

async fn setup(prefix: &str) -> anyhow::Result<(TestNamespace, String)> {
    let ns = TestNamespace::new(prefix).await?;
    ns.with_signing_key("model-pw")?;
    ns.target(STABLE, 30).await?;
    let image = ns.push_image("server")?;
    Ok((ns, image))
}

fn sims(image: &str) -> Vec<(&'static str, Sim)> {
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(image));
    sims
}

#[tokio::test]
async fn a_bound_model_is_signed_attested_verified_and_handed_to_the_server_by_digest()
-> anyhow::Result<()> {
    let (ns, image) = setup("model").await?;
    let model = ns.push_model("fitted")?;
    ns.release_with(
        "predictor-90",
        &sims(&image),
        spec_with_model(&model, "auto"),
    )
    .await?;
    let r = ns.wait_phase("predictor-90", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Released, "{:?}", ready(&r));
    // The model's own signature, recorded and accepted by cosign with the pipeline's key.
    let signature = status.signature.clone().expect("signature");
    let model_ref = format!("{MODELS}@{model}");
    assert_eq!(
        signature.model.as_deref(),
        Some(format!("{MODELS}:{}.sig", model.replace(':', "-")).as_str())
    );
    let out = ns.cosign(&["verify"], &model_ref)?;
    assert!(
        out.status.success(),
        "cosign verify model: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""sluice.dev/release":"predictor-90""#)
    );
    // One attestation, on the image, whose statement names the image and the model.
    let gates = "https://sluice.dev/attestations/gates/v1";
    let image_ref = format!("{REPOSITORY}@{image}");
    let out = ns.cosign(&["verify-attestation", "--type", gates], &image_ref)?;
    assert!(
        out.status.success(),
        "verify-attestation: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envelope: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("{}"),
    )?;
    let statement: serde_json::Value = serde_json::from_slice(&base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        envelope["payload"].as_str().unwrap_or_default(),
    )?)?;
    let subjects: Vec<(String, String)> = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["digest"]["sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        vec![
            (REPOSITORY.to_string(), image[7..].to_string()),
            (MODELS.to_string(), model[7..].to_string()),
        ]
    );
    assert_eq!(
        statement["predicate"]["release"]["model"]["artifact"]["digest"],
        model
    );
    // The server gets the model by digest, in the same write as the image, under Sluice's manager.
    let dep = ns.api::<Deployment>().get("predictor").await?;
    let container = &dep
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    assert_eq!(container.image.as_deref(), Some(image_ref.as_str()));
    let env: Vec<(String, Option<String>)> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert!(
        env.contains(&("SLUICE_MODEL_REF".into(), Some(model_ref.clone()))),
        "{env:?}"
    );
    let sluice_fields = dep
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some("sluice") && m.operation.as_deref() == Some("Apply")
        })
        .map(|m| serde_json::to_string(&m.fields_v1).unwrap_or_default())
        .collect::<String>();
    assert!(
        sluice_fields.contains(r#"k:{\"name\":\"SLUICE_MODEL_REF\"}"#),
        "{sluice_fields}"
    );
    Ok(())
}

#[tokio::test]
async fn a_model_missing_from_the_registry_blocks_before_anything_is_signed() -> anyhow::Result<()>
{
    let (ns, image) = setup("model-missing").await?;
    let absent = format!("sha256:{}", "0".repeat(64));
    ns.release_with(
        "predictor-91",
        &sims(&image),
        spec_with_model(&absent, "auto"),
    )
    .await?;
    let r = ns.wait_phase("predictor-91", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Blocked, "{:?}", ready(&r));
    let (reason, message) = ready(&r);
    assert_eq!(reason, "ModelArtifactMissing");
    assert!(message.contains(&absent), "{message}");
    assert!(status.signature.is_none());
    let out = ns.cosign(&["verify"], &format!("{REPOSITORY}@{image}"))?;
    assert!(!out.status.success(), "the image must not have been signed");
    assert_eq!(ns.target_image().await?, STABLE);
    Ok(())
}

#[tokio::test]
async fn a_model_signature_replaced_after_signing_stops_the_rollout() -> anyhow::Result<()> {
    let (ns, image) = setup("model-tamper").await?;
    let model = ns.push_model("fitted")?;
    ns.release_with(
        "predictor-92",
        &sims(&image),
        spec_with_model(&model, "manual"),
    )
    .await?;
    ns.wait_phase("predictor-92", &[Phase::AwaitingApproval], TIMEOUT)
        .await?;
    let before = ns.api::<Deployment>().get("predictor").await?;
    // The model's .sig is replaced by the image's: signed by the right key, for another digest.
    let sig = |repo: &str, d: &str| format!("{repo}:{}.sig", d.replace(':', "-"));
    let out = Command::new(sluice_e2e::tool("crane")?)
        .args(["copy", &sig(REPOSITORY, &image), &sig(MODELS, &model)])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A different model pushed under the same tag changes nothing: the release names a digest.
    ns.push_model("fitted-again")?;
    let out = Command::new(repo_dir().join("target/debug/sluice"))
        .env("KUBECONFIG", state_dir().join("kubeconfig"))
        .args(["approve", "predictor-92", "-n", &ns.name])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = ns
        .wait_phase(
            "predictor-92",
            &[Phase::Blocked, Phase::RollingOut, Phase::Released],
            TIMEOUT,
        )
        .await?;
    let (reason, message) = ready(&r);
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Blocked),
        "{reason}: {message}"
    );
    assert_eq!(reason, "ModelSignatureInvalid");
    assert!(message.contains(&model), "{message}");
    let after = ns.api::<Deployment>().get("predictor").await?;
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(ns.target_image().await?, STABLE);
    Ok(())
}
