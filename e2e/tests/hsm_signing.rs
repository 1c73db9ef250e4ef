//! Signing with an HSM key through PKCS#11 (`spec.signing.pkcs11`): SoftHSM2, set up by
//! `e2e/cluster up` and given to the operator as its module, holds a P-256 key made inside the
//! token; the operator signs the release with it and the real cosign CLI verifies the signature
//! with the public key read back from the token. Stage outcomes are scripted
//! (`sim.sluice.dev/*`): this proves signing, not the stages.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::json;
use sluice::api::Phase;
use sluice_e2e::{ENDED, REPOSITORY, Sim, TestNamespace, clean_sims, state_dir};

const TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN: &str = "sluice-e2e";

struct Hsm {
    module: String,
    conf: PathBuf,
    pin: String,
}

impl Hsm {
    fn get() -> anyhow::Result<Self> {
        Ok(Self {
            module: std::fs::read_to_string(state_dir().join("hsm-module"))?
                .trim()
                .into(),
            conf: state_dir().join("softhsm2.conf"),
            pin: std::fs::read_to_string(state_dir().join("hsm-pin"))?
                .trim()
                .into(),
        })
    }

    fn tool(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--module",
                &self.module,
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                &self.pin,
            ])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    }

    /// Makes a P-256 key pair inside the token and returns its public key as PEM.
    fn generate(&self, label: &str, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
        self.tool(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            label,
        ])?;
        let der = dir.join(format!("{label}.der"));
        let der_path = der.display().to_string();
        self.tool(&[
            "--read-object",
            "--type",
            "pubkey",
            "--label",
            label,
            "-o",
            &der_path,
        ])?;
        let pem = dir.join(format!("{label}.pub"));
        let status = Command::new("openssl")
            .args(["pkey", "-pubin", "-inform", "DER", "-in", &der_path, "-out"])
            .arg(&pem)
            .status()?;
        anyhow::ensure!(status.success(), "openssl pkey failed");
        Ok(pem)
    }
}

#[tokio::test]
async fn an_hsm_key_signs_the_release_and_cosign_verifies_it() -> anyhow::Result<()> {
    let ns = TestNamespace::new("hsm").await?;
    let hsm = Hsm::get()?;
    let dir = std::env::temp_dir().join(format!("{}-hsm", ns.name));
    std::fs::create_dir_all(&dir)?;
    let label = ns.name.clone();
    let public = hsm.generate(&label, &dir)?;
    ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "hsm-pin",
        &format!("--from-literal=pin={}", hsm.pin),
    ])?;
    let patch = json!({"spec": {"signing": {"pkcs11": {
        "tokenLabel": TOKEN, "keyLabel": label, "pinSecretRef": {"name": "hsm-pin"}}}}});
    ns.patch_pipeline(&patch.to_string())?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 60)
        .await?;
    let digest = ns.push_image("hsm")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-68", &sims).await?;
    let r = ns.wait_phase("predictor-68", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    let pem = std::fs::read_to_string(&public)?;
    assert_eq!(
        status.signature.map(|s| s.key_id),
        sluice::signing::keys::key_id_of_pem(&pem),
        "signed by the HSM key"
    );
    for command in [
        vec!["verify"],
        vec![
            "verify-attestation",
            "--type",
            sluice::signing::attestation::GATES_PREDICATE_TYPE,
        ],
    ] {
        let out = Command::new(sluice_e2e::tool("cosign")?)
            .args(&command)
            .args([
                "--key",
                &public.display().to_string(),
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
            ])
            .arg(format!("{REPOSITORY}@{digest}"))
            .output()?;
        assert!(
            out.status.success(),
            "cosign {command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A wrong PIN is a clear reason, never the PIN itself.
    ns.kubectl(&["delete", "secret", "hsm-pin"])?;
    ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "hsm-pin",
        "--from-literal=pin=000000",
    ])?;
    let digest = ns.push_image("hsm-wrong-pin")?;
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-69", &sims).await?;
    let api = ns.api::<sluice::api::ModelRelease>();
    let message =
        sluice_e2e::eventually("HSM login refused", TIMEOUT, sluice_e2e::POLL, async || {
            let r = api.get("predictor-69").await?;
            let c = r
                .status
                .as_ref()
                .and_then(|s| {
                    sluice::api::conditions::get(&s.conditions, sluice::api::conditions::SIGNED)
                })
                .map(|c| (c.reason.clone(), c.message.clone()))
                .unwrap_or_default();
            Ok(if c.0 == "HsmError" {
                std::ops::ControlFlow::Break(c.1)
            } else {
                std::ops::ControlFlow::Continue(format!("{c:?}"))
            })
        })
        .await?;
    assert!(message.contains("login refused"), "{message}");
    assert!(!message.contains(&hsm.pin));
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
