//! Signing with a KMS key (`spec.signing.kms`, `hashivault://`): the transit engine of the e2e
//! cluster's Vault-API server signs, the key never leaves it; the real cosign CLI verifies
//! Sluice's signature through the KMS, and Sluice verifies cosign's KMS signature. A KMS that is
//! down, or a revoked token, makes the release wait with a reason and sign once, when it is back.
//! Stage outcomes are scripted (`sim.sluice.dev/*`): these tests prove signing, not the stages.

use std::{ops::ControlFlow, process::Command, time::Duration};

use serde_json::json;
use sluice::api::{ModelRelease, Phase, conditions};
use sluice_e2e::{
    ENDED, POLL, REPOSITORY, Sim, TestNamespace, clean_sims, eventually,
    kms::{Kms, Relay},
    repo_dir,
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn token_secret(ns: &TestNamespace, token: &str) -> anyhow::Result<()> {
    let _ = ns.kubectl(&["delete", "secret", "kms-token", "--ignore-not-found"]);
    ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "kms-token",
        &format!("--from-literal=token={token}"),
    ])?;
    Ok(())
}

fn use_kms(ns: &TestNamespace, key: &str, address: &str) -> anyhow::Result<()> {
    let patch = json!({"spec": {"signing": {"kms": {
        "uri": format!("hashivault://{key}"), "address": address,
        "tokenSecretRef": {"name": "kms-token"}}}}});
    ns.patch_pipeline(&patch.to_string())
}

fn cosign(args: &[&str], kms: &Kms, token: &str) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(sluice_e2e::tool("cosign")?)
        .env("VAULT_ADDR", &kms.address)
        .env("VAULT_TOKEN", token)
        .args(args)
        .output()?)
}

fn sig_layers(digest: &str) -> anyhow::Result<usize> {
    let crane = sluice_e2e::tool("crane")?;
    let tag = format!("{REPOSITORY}:{}.sig", digest.replace(':', "-"));
    let out = Command::new(crane).args(["manifest", &tag]).output()?;
    if !out.status.success() {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["layers"].as_array().map_or(0, Vec::len))
}

async fn wait_signed_reason(
    ns: &TestNamespace,
    name: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let api = ns.api::<ModelRelease>();
    eventually(
        &format!("Signed reason {reason}"),
        TIMEOUT,
        POLL,
        async || {
            let r = api.get(name).await?;
            let c = r
                .status
                .as_ref()
                .and_then(|s| conditions::get(&s.conditions, conditions::SIGNED))
                .map(|c| (c.reason.clone(), c.message.clone()))
                .unwrap_or_default();
            Ok(if c.0 == reason {
                ControlFlow::Break(c.1)
            } else {
                ControlFlow::Continue(format!("{c:?}"))
            })
        },
    )
    .await
}

#[tokio::test]
async fn a_kms_key_signs_the_release_and_cosign_and_sluice_verify_each_other() -> anyhow::Result<()>
{
    let ns = TestNamespace::new("kms").await?;
    let kms = Kms::get()?;
    let key = ns.name.clone();
    let public = kms.create_key(&key)?;
    let token = kms.token_for(&key)?;
    token_secret(&ns, &token)?;
    use_kms(&ns, &key, &kms.address)?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 60)
        .await?;
    let digest = ns.push_image("kms")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-65", &sims).await?;
    let r = ns.wait_phase("predictor-65", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    let signature = status.signature.expect("signature");
    assert_eq!(
        Some(signature.key_id.as_str()),
        sluice::signing::keys::key_id_of_pem(&public).as_deref(),
        "signed by the KMS key"
    );
    let image = format!("{REPOSITORY}@{digest}");
    let uri = format!("hashivault://{key}");
    // cosign verifies Sluice's signature, reading the key from the KMS.
    let out = cosign(
        &[
            "verify",
            "--key",
            &uri,
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            &image,
        ],
        &kms,
        &token,
    )?;
    assert!(
        out.status.success(),
        "cosign verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // cosign signs another image with the same KMS key; Sluice verifies it with the KMS's key.
    let other = ns.push_image("kms-cosign")?;
    let other_image = format!("{REPOSITORY}@{other}");
    let out = cosign(
        &[
            "sign",
            "--key",
            &uri,
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &other_image,
        ],
        &kms,
        &token,
    )?;
    assert!(
        out.status.success(),
        "cosign sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::env::temp_dir().join(format!("{key}.pub"));
    std::fs::write(&pem, &public)?;
    let out = Command::new(repo_dir().join("target/debug/sluice"))
        .args(["verify", "--key", &pem.display().to_string(), &other_image])
        .output()?;
    let _ = std::fs::remove_file(&pem);
    assert!(
        out.status.success(),
        "sluice verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token is nowhere in the release.
    let text = serde_json::to_string(&api_get(&ns, "predictor-65").await?)?;
    assert!(!text.contains(&token));
    Ok(())
}

async fn api_get(ns: &TestNamespace, name: &str) -> anyhow::Result<ModelRelease> {
    Ok(ns.api::<ModelRelease>().get(name).await?)
}

#[tokio::test]
async fn a_kms_that_is_down_or_a_revoked_token_waits_then_signs_once() -> anyhow::Result<()> {
    let ns = TestNamespace::new("kmsdown").await?;
    let kms = Kms::get()?;
    let key = ns.name.clone();
    kms.create_key(&key)?;
    let token = kms.token_for(&key)?;
    token_secret(&ns, &token)?;
    // The pipeline reaches the KMS through a relay this test stops and starts.
    let target = kms.address.trim_start_matches("http://").to_string();
    let mut relay = Relay::new(&target).await?;
    use_kms(&ns, &key, &relay.address)?;

    // 1. Down: the release waits, saying so.
    let digest = ns.push_image("kms-down")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-66", &sims).await?;
    let why = wait_signed_reason(&ns, "predictor-66", "KmsUnavailable").await?;
    assert!(why.contains("cannot be reached"), "{why}");
    assert_eq!(
        sig_layers(&digest)?,
        0,
        "nothing signed while the KMS is down"
    );
    relay.start().await?;
    wait_signed_reason(&ns, "predictor-66", "Signed").await?;
    assert_eq!(sig_layers(&digest)?, 1, "signed once");

    // 2. Revoked token: the next release waits; a new token in the Secret signs it.
    kms.revoke(&token)?;
    let digest = ns.push_image("kms-revoked")?;
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-67", &sims).await?;
    let why = wait_signed_reason(&ns, "predictor-67", "KmsUnauthorized").await?;
    assert!(why.contains("refused the token"), "{why}");
    assert!(!why.contains(&token), "the token is never said");
    token_secret(&ns, &kms.token_for(&key)?)?;
    wait_signed_reason(&ns, "predictor-67", "Signed").await?;
    assert_eq!(sig_layers(&digest)?, 1, "signed once");
    relay.stop();
    Ok(())
}
