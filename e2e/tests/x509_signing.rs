//! Signing with an x509 key and its certificate chain (`spec.signing.x509`): the operator attaches
//! the certificate and chain to the signature and the attestation, the real cosign CLI verifies
//! both offline against the chain, and an expired certificate signs nothing, with a reason.
//! Stage outcomes are scripted (`sim.sluice.dev/*`): these tests prove signing, not the stages.

use std::{ops::ControlFlow, path::Path, process::Command, time::Duration};

use sluice::api::{ModelRelease, Phase, conditions};
use sluice_e2e::{ENDED, POLL, REPOSITORY, Sim, TestNamespace, clean_sims, eventually, repo_dir};

const TIMEOUT: Duration = Duration::from_secs(120);
const IDENTITY: &str = "release-signer@sluice.dev";

/// A fresh test PKI (root → intermediate → leaf) from `e2e/x509/make-chain.sh`.
fn pki(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-pki"));
    let status = Command::new("bash")
        .arg(repo_dir().join("e2e/x509/make-chain.sh"))
        .arg(&dir)
        .status()?;
    anyhow::ensure!(status.success(), "make-chain.sh failed");
    Ok(dir)
}

fn x509_secret(ns: &TestNamespace, dir: &Path, cert: &str) -> anyhow::Result<()> {
    let file = |f: &str| format!("{}", dir.join(f).display());
    let _ = ns.kubectl(&["delete", "secret", "x509-signer", "--ignore-not-found"]);
    ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "x509-signer",
        &format!("--from-file=x509.pem={}", file("leaf.key")),
        &format!("--from-file=cert.pem={}", file(cert)),
        &format!("--from-file=chain.pem={}", file("chain.pem")),
    ])?;
    Ok(())
}

fn cosign_verify(dir: &Path, command: &str, image: &str) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new(sluice_e2e::tool("cosign")?);
    cmd.arg(command);
    if command == "verify-attestation" {
        cmd.args(["--type", sluice::signing::attestation::GATES_PREDICATE_TYPE]);
    }
    Ok(cmd
        .args([
            "--certificate-chain",
            &dir.join("chain.pem").display().to_string(),
            "--certificate-identity",
            IDENTITY,
            "--certificate-oidc-issuer-regexp",
            ".*",
            "--insecure-ignore-tlog=true",
            "--insecure-ignore-sct=true",
            "--allow-http-registry",
            image,
        ])
        .output()?)
}

fn signed_condition(r: &ModelRelease) -> (String, String) {
    r.status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, conditions::SIGNED))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn an_x509_chain_signs_the_release_and_cosign_verifies_it_offline() -> anyhow::Result<()> {
    let ns = TestNamespace::new("x509").await?;
    let dir = pki(&ns.name)?;
    x509_secret(&ns, &dir, "leaf.pem")?;
    ns.patch_pipeline(r#"{"spec":{"signing":{"x509":{"secretRef":{"name":"x509-signer"}}}}}"#)?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 60)
        .await?;
    let digest = ns.push_image("x509")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-63", &sims).await?;
    let r = ns.wait_phase("predictor-63", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    // Released: the check before the rollout verified the signature against the chain's root.
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    let image = format!("{REPOSITORY}@{digest}");
    for command in ["verify", "verify-attestation"] {
        let out = cosign_verify(&dir, command, &image)?;
        assert!(
            out.status.success(),
            "cosign {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Another PKI's chain does not vouch for it.
    let other = pki(&format!("{}-other", ns.name))?;
    let out = cosign_verify(&other, "verify", &image)?;
    assert!(!out.status.success(), "a foreign chain must not verify");
    let _ = std::fs::remove_dir_all(other);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn an_expired_certificate_signs_nothing_and_says_why_until_it_is_renewed()
-> anyhow::Result<()> {
    let ns = TestNamespace::new("x509exp").await?;
    let dir = pki(&ns.name)?;
    x509_secret(&ns, &dir, "expired.pem")?;
    ns.patch_pipeline(r#"{"spec":{"signing":{"x509":{"secretRef":{"name":"x509-signer"}}}}}"#)?;
    let digest = ns.push_image("x509-expired")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-64", &sims).await?;
    let api = ns.api::<ModelRelease>();
    let waiting = eventually("signing refused", TIMEOUT, POLL, async || {
        let r = api.get("predictor-64").await?;
        let (reason, message) = signed_condition(&r);
        Ok(if reason == "CertificateInvalid" {
            ControlFlow::Break(message)
        } else {
            ControlFlow::Continue(format!("{reason}: {message}"))
        })
    })
    .await?;
    assert!(waiting.contains("expired at"), "{waiting}");
    let r = api.get("predictor-64").await?;
    assert_eq!(
        r.status.map(|s| s.phase),
        Some(Phase::Signing),
        "it waits, not blocked"
    );
    let crane = sluice_e2e::tool("crane")?;
    let sig = format!("{REPOSITORY}:{}.sig", digest.replace(':', "-"));
    let absent = Command::new(&crane).args(["digest", &sig]).output()?;
    assert!(
        !absent.status.success(),
        "nothing signed with the expired certificate"
    );
    // Renewed: the same release signs.
    x509_secret(&ns, &dir, "leaf.pem")?;
    eventually("signed after renewal", TIMEOUT, POLL, async || {
        let r = api.get("predictor-64").await?;
        let signed = r
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, conditions::SIGNED));
        Ok(if signed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("{:?}", signed_condition(&r)))
        })
    })
    .await?;
    let out = cosign_verify(&dir, "verify", &format!("{REPOSITORY}@{digest}"))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test]
async fn a_pipeline_naming_two_signers_is_refused_at_admission() -> anyhow::Result<()> {
    let ns = TestNamespace::new("x509adm").await?;
    let err = ns
        .patch_pipeline(
            r#"{"spec":{"signing":{"secretRef":{"name":"k"},"x509":{"secretRef":{"name":"x"}}}}}"#,
        )
        .expect_err("two signers");
    assert!(err.to_string().contains("exactly one signer"), "{err}");
    Ok(())
}
