//! `spec.signing.signer: chains`: the real Tekton Chains controller (built from its Go module, run
//! by the e2e cluster with a KMS key of its own, watching only its `chains-e2e-*` namespaces)
//! signs the image the build TaskRun reports; Sluice signs nothing, waits for Chains' signature,
//! verifies it with the public key the pipeline names and attaches its gates attestation beside it.
//! A signature by another key blocks the rollout; no signature at all blocks after the bound.
//! Stage outcomes are scripted (`sim.sluice.dev/*`): Chains signs the image the scripted build
//! reports, which the test pushed for real. This proves the signing, not the stages.

use std::{process::Command, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use sluice::{
    api::{ModelRelease, Phase, conditions},
    signing::{Signer, keys::KeyPairSigner},
    tekton::TaskRun,
};
use sluice_e2e::{ENDED, REPOSITORY, Sim, TestNamespace, clean_sims, state_dir};

const TIMEOUT: Duration = Duration::from_secs(180);
const STABLE: &str = "127.0.0.1:35000/evip/predictor:stable";

/// The public key Tekton Chains signs with (its KMS key), as the e2e cluster wrote it.
fn chains_public_key() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(state_dir().join("chains.pub"))?)
}

/// A Secret `name` holding `pem` as cosign.pub.
fn public_key_secret(ns: &TestNamespace, name: &str, pem: &str) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("{}-{name}.pub", ns.name));
    std::fs::write(&file, pem)?;
    let created = ns.kubectl(&[
        "create",
        "secret",
        "generic",
        name,
        &format!("--from-file=cosign.pub={}", file.display()),
    ]);
    let _ = std::fs::remove_file(&file);
    created.map(|_| ())
}

/// The pipeline: Chains signs, its key in Secret `chains-pub`; Sluice's own key pair
/// (`cosign-key`) signs the gates attestation.
fn beside_chains(ns: &TestNamespace, chains_pub: &str, timeout: u32) -> anyhow::Result<()> {
    ns.with_signing_key("chains-pw")?;
    public_key_secret(ns, "chains-pub", chains_pub)?;
    ns.patch_pipeline(
        &serde_json::json!({"spec": {"signing": {"signer": "chains", "chains": {
            "publicKeyRef": {"name": "chains-pub"}, "timeoutSeconds": timeout}}}})
        .to_string(),
    )
}

fn cosign(ns: &TestNamespace, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let dir = std::env::temp_dir().join(format!("{}-chains", ns.name));
    std::fs::create_dir_all(&dir)?;
    Ok(Command::new(sluice_e2e::tool("cosign")?)
        .current_dir(&dir)
        .env("KUBECONFIG", state_dir().join("kubeconfig"))
        .args(args)
        .output()?)
}

fn layers(tag: &str) -> anyhow::Result<usize> {
    let out = Command::new(sluice_e2e::tool("crane")?)
        .args(["manifest", tag])
        .output()?;
    if !out.status.success() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["layers"].as_array().map_or(0, Vec::len))
}

fn attached(digest: &str, suffix: &str) -> String {
    format!("{REPOSITORY}:{}.{suffix}", digest.replace(':', "-"))
}

/// Releases a freshly pushed image through the scripted gates and returns the ended release.
async fn release(ns: &TestNamespace, name: &str) -> anyhow::Result<(String, ModelRelease)> {
    ns.target(STABLE, 60).await?;
    let digest = ns.push_image(&format!("{}-{name}", ns.name))?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release(name, &sims).await?;
    let r = ns.wait_phase(name, &ENDED, TIMEOUT).await?;
    Ok((digest, r))
}

fn signed_condition(r: &ModelRelease) -> (String, String) {
    r.status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, conditions::SIGNED))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn chains_signs_the_image_sluice_verifies_it_and_attaches_only_its_attestation()
-> anyhow::Result<()> {
    let ns = TestNamespace::named("chains-e2e-signs").await?;
    let chains_pub = chains_public_key()?;
    beside_chains(&ns, &chains_pub, 120)?;
    let (digest, r) = release(&ns, "predictor-81").await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    let signature = status.signature.expect("signature");
    assert_eq!(
        Some(signature.key_id.as_str()),
        sluice::signing::keys::key_id_of_pem(&chains_pub).as_deref(),
        "the recorded key is Chains' key"
    );
    // Chains says it signed the build TaskRun.
    let build = status
        .stages
        .iter()
        .find(|s| s.name == "build")
        .and_then(|s| s.task_run.clone())
        .expect("build TaskRun");
    let tr = ns.api::<TaskRun>().get(&build).await?;
    assert_eq!(
        tr.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("chains.tekton.dev/signed"))
            .map(String::as_str),
        Some("true")
    );
    // Only Chains' signature is on the image: one layer, which Chains' key verifies and
    // Sluice's own key does not.
    assert_eq!(
        layers(&attached(&digest, "sig"))?,
        1,
        "one signature, by Chains"
    );
    let image = format!("{REPOSITORY}@{digest}");
    let pub_file = std::env::temp_dir().join(format!("{}-chains.pub", ns.name));
    std::fs::write(&pub_file, &chains_pub)?;
    let offline = ["--insecure-ignore-tlog=true", "--allow-http-registry"];
    let chains_key = pub_file.display().to_string();
    let out = cosign(
        &ns,
        &[&["verify", "--key", &chains_key][..], &offline, &[&image]].concat(),
    )?;
    let _ = std::fs::remove_file(&pub_file);
    assert!(
        out.status.success(),
        "cosign verify (Chains' key): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sluice_key = format!("k8s://{}/cosign-key", ns.name);
    let out = cosign(
        &ns,
        &[&["verify", "--key", &sluice_key][..], &offline, &[&image]].concat(),
    )?;
    assert!(!out.status.success(), "Sluice's key signed nothing");
    // Sluice's gates attestation sits beside it, signed by Sluice's key.
    assert_eq!(
        layers(&attached(&digest, "att"))?,
        1,
        "one attestation, by Sluice"
    );
    let gates = sluice::signing::attestation::GATES_PREDICATE_TYPE;
    let out = cosign(
        &ns,
        &[
            &["verify-attestation", "--type", gates, "--key", &sluice_key][..],
            &offline,
            &[&image],
        ]
        .concat(),
    )?;
    assert!(
        out.status.success(),
        "cosign verify-attestation: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deployment = ns.api::<Deployment>().get("predictor").await?;
    let running = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].image.clone());
    assert_eq!(running.flatten(), Some(format!("{REPOSITORY}@{digest}")));
    Ok(())
}

#[tokio::test]
async fn a_chains_signature_by_another_key_blocks_the_rollout() -> anyhow::Result<()> {
    let ns = TestNamespace::named("chains-e2e-untrusted").await?;
    // The pipeline trusts a key Chains does not sign with.
    let (stranger, _) = KeyPairSigner::generate()?;
    beside_chains(&ns, stranger.public_key_pem(), 120)?;
    let (digest, r) = release(&ns, "predictor-82").await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Blocked, "{:?}", status.conditions);
    let (reason, message) = signed_condition(&r);
    assert_eq!(reason, conditions::reason::SIGNATURE_INVALID, "{message}");
    assert!(message.contains("Tekton Chains signed"), "{message}");
    // Chains did sign (with its own key); nothing of Sluice's was attached and nothing rolled out.
    assert_eq!(layers(&attached(&digest, "sig"))?, 1);
    assert_eq!(layers(&attached(&digest, "att"))?, 0);
    assert_eq!(ns.target_image().await?, STABLE);
    Ok(())
}

#[tokio::test]
async fn without_a_chains_signature_the_release_waits_with_a_reason_then_blocks_at_the_bound()
-> anyhow::Result<()> {
    // Chains does not watch this namespace: no signature will come.
    let ns = TestNamespace::new("nochains").await?;
    beside_chains(&ns, &chains_public_key()?, 15)?;
    ns.target(STABLE, 60).await?;
    let digest = ns.push_image("no-chains")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-83", &sims).await?;
    let api = ns.api::<ModelRelease>();
    let waiting = sluice_e2e::eventually(
        "Signed=WaitingForChains",
        TIMEOUT,
        sluice_e2e::POLL,
        async || {
            let (reason, message) = signed_condition(&api.get("predictor-83").await?);
            Ok(if reason == conditions::reason::WAITING_FOR_CHAINS {
                std::ops::ControlFlow::Break(message)
            } else {
                std::ops::ControlFlow::Continue(reason)
            })
        },
    )
    .await?;
    assert!(
        waiting.contains("waiting for Tekton Chains to sign"),
        "{waiting}"
    );
    let r = ns.wait_phase("predictor-83", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Blocked, "{:?}", status.conditions);
    let (reason, message) = signed_condition(&r);
    assert_eq!(
        reason,
        conditions::reason::CHAINS_SIGNATURE_MISSING,
        "{message}"
    );
    assert!(message.contains("within 15s"), "{message}");
    assert_eq!(
        layers(&attached(&digest, "sig"))?,
        0,
        "Sluice signed nothing"
    );
    assert_eq!(ns.target_image().await?, STABLE);
    Ok(())
}

#[tokio::test]
async fn chains_settings_without_signer_chains_and_an_unknown_signer_are_refused_at_admission()
-> anyhow::Result<()> {
    let ns = TestNamespace::new("chainsadm").await?;
    let err = ns
        .patch_pipeline(
            r#"{"spec":{"signing":{"secretRef":{"name":"k"},"chains":{"timeoutSeconds":60}}}}"#,
        )
        .expect_err("chains without signer: chains");
    assert!(
        err.to_string()
            .contains("spec.signing.chains applies only with signer: chains"),
        "{err}"
    );
    let err = ns
        .patch_pipeline(r#"{"spec":{"signing":{"secretRef":{"name":"k"},"signer":"notary"}}}"#)
        .expect_err("unknown signer");
    assert!(err.to_string().contains("signer"), "{err}");
    let err = ns
        .patch_pipeline(
            r#"{"spec":{"signing":{"secretRef":{"name":"k"},"signer":"chains","chains":{"timeoutSeconds":1}}}}"#,
        )
        .expect_err("too short a bound");
    assert!(err.to_string().contains("timeoutSeconds"), "{err}");
    ns.patch_pipeline(
        r#"{"spec":{"signing":{"secretRef":{"name":"k"},"signer":"chains","chains":{"timeoutSeconds":60}}}}"#,
    )?;
    Ok(())
}
