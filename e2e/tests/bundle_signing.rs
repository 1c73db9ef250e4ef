//! `spec.signing.format: bundle`: the operator writes sigstore bundles (v0.3, key-signed, no
//! transparency log) as OCI 1.1 referrers of the image — here through the referrers tag schema, as
//! the e2e registry (distribution v3) has no referrers API — verifies them before the rollout, and
//! the real cosign CLI verifies them with `--new-bundle-format`; Sluice verifies a bundle cosign
//! wrote. Stage outcomes are scripted (`sim.sluice.dev/*`): this proves signing, not the stages.

use std::{process::Command, time::Duration};

use oci_client::secrets::RegistryAuth;
use sluice::{
    api::Phase,
    registry::Registry,
    signing::{self, Trust},
};
use sluice_e2e::{ENDED, REPOSITORY, Sim, TestNamespace, clean_sims, state_dir};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A trusted root with nothing in it: cosign wants one for bundles even when a key is given and
/// no log is used.
const EMPTY_TRUSTED_ROOT: &str = r#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[],"certificateAuthorities":[],"ctlogs":[],"timestampAuthorities":[]}"#;

fn cosign(ns: &TestNamespace, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let dir = std::env::temp_dir().join(format!("{}-bundle", ns.name));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("trusted-root.json"), EMPTY_TRUSTED_ROOT)?;
    Ok(Command::new(sluice_e2e::tool("cosign")?)
        .current_dir(&dir)
        .env("KUBECONFIG", state_dir().join("kubeconfig"))
        .env("COSIGN_PASSWORD", "bundle-pw")
        .args(args)
        .output()?)
}

#[tokio::test]
async fn a_release_in_bundle_format_is_verified_from_its_referrers_by_sluice_and_cosign()
-> anyhow::Result<()> {
    let ns = TestNamespace::new("bundle").await?;
    ns.with_signing_key("bundle-pw")?;
    ns.patch_pipeline(r#"{"spec":{"signing":{"format":"bundle"}}}"#)?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 60)
        .await?;
    let digest = ns.push_image("bundle")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-71", &sims).await?;
    let r = ns.wait_phase("predictor-71", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    // Released: the check before the rollout verified the bundle from the referrers.
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    let signature = status.signature.expect("signature");
    assert_eq!(signature.bundles.len(), 2, "{signature:?}");
    assert!(
        signature
            .reference
            .starts_with(&format!("{REPOSITORY}@sha256:"))
    );
    // Only referrers: no .sig tag.
    let crane = sluice_e2e::tool("crane")?;
    let sig_tag = format!("{REPOSITORY}:{}.sig", digest.replace(':', "-"));
    let legacy = Command::new(&crane).args(["digest", &sig_tag]).output()?;
    assert!(!legacy.status.success(), "bundle format writes no .sig");
    let image = format!("{REPOSITORY}@{digest}");
    let key = format!("k8s://{}/cosign-key", ns.name);
    let common = [
        "--key",
        &key,
        "--new-bundle-format",
        "--trusted-root",
        "trusted-root.json",
        "--insecure-ignore-tlog=true",
        "--allow-http-registry",
    ];
    let out = cosign(&ns, &[&["verify"][..], &common, &[&image]].concat())?;
    assert!(
        out.status.success(),
        "cosign verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gates = sluice::signing::attestation::GATES_PREDICATE_TYPE;
    let out = cosign(
        &ns,
        &[
            &["verify-attestation", "--type", gates][..],
            &common,
            &[&image],
        ]
        .concat(),
    )?;
    assert!(
        out.status.success(),
        "cosign verify-attestation: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The other way: cosign writes a bundle for another image; Sluice verifies it.
    let other = ns.push_image("bundle-cosign")?;
    let other_image = format!("{REPOSITORY}@{other}");
    let out = cosign(
        &ns,
        &[
            "sign",
            "--key",
            &key,
            "--new-bundle-format",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &other_image,
        ],
    )?;
    assert!(
        out.status.success(),
        "cosign sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sluice::install_crypto_provider();
    let registry = Registry::for_repository(REPOSITORY, false, RegistryAuth::Anonymous);
    let public = ns.kubectl(&[
        "get",
        "secret",
        "cosign-key",
        "-o",
        "jsonpath={.data.cosign\\.pub}",
    ])?;
    use base64::Engine;
    let public =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(public.trim())?)?;
    signing::verify_bundles(&registry, &Trust::Key(public.clone()), REPOSITORY, &other).await?;
    // A bundle by another key does not verify.
    let (stranger, _) = sluice::signing::keys::KeyPairSigner::generate()?;
    let stranger = Trust::Key(sluice::signing::Signer::public_key_pem(&stranger).to_string());
    assert!(
        signing::verify_bundles(&registry, &stranger, REPOSITORY, &other)
            .await
            .is_err()
    );
    Ok(())
}
