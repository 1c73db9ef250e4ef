//! Signing latency per signer, median of 20 (and p90), against the e2e cluster's registry, KMS
//! and HSM: the signer alone (one signature over a payload) and a whole `.sig` append (registry
//! check, signature, read, conditional push, second look). Prints figures; fails only if a
//! signature does not verify.
//!
//! Usage (cluster up): SOFTHSM2_CONF=.e2e/softhsm2.conf cargo run -p sluice-e2e --bin sign_bench

use std::{collections::BTreeMap, process::Command, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use oci_client::secrets::RegistryAuth;
use sluice::{
    registry::Registry,
    signing::{
        self, SharedSigner, Trust,
        keys::KeyPairSigner,
        kms::{TransitKey, TransitSigner},
        pkcs11::{HsmKey, Pkcs11Signer, load_module},
        x509::X509Signer,
    },
};
use sluice_e2e::{REPOSITORY, TestNamespace, kms::Kms, repo_dir, state_dir};
use zeroize::Zeroizing;

const RUNS: usize = 20;

#[tokio::main]
async fn main() -> Result<()> {
    sluice::install_crypto_provider();
    let ns = TestNamespace::empty("signbench").await?;
    let tag = format!("{}", std::process::id());
    let mut signers: Vec<(&str, SharedSigner)> = Vec::new();
    signers.push(("cosign key", Arc::new(KeyPairSigner::generate()?.0)));
    signers.push(("x509 chain", x509_signer(&tag)?));
    signers.push(("KMS (transit)", kms_signer(&tag).await?));
    match hsm_signer(&tag) {
        Ok(s) => signers.push(("HSM (SoftHSM2)", s)),
        Err(e) => println!("HSM skipped: {e:#} (set SOFTHSM2_CONF=.e2e/softhsm2.conf)"),
    }
    let registry = Registry::for_repository(REPOSITORY, false, RegistryAuth::Anonymous);
    println!(
        "{:<16} {:>14} {:>14} {:>16} {:>16}",
        "signer", "sign p50 ms", "sign p90 ms", ".sig append p50", ".sig append p90"
    );
    for (name, signer) in &signers {
        let mut alone = Vec::new();
        for i in 0..RUNS {
            let t = Instant::now();
            signer.sign(format!("payload {i}").as_bytes()).await?;
            alone.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mut append = Vec::new();
        for i in 0..RUNS {
            let digest = ns.push_image(&format!("{}-{i}", name.replace([' ', '(', ')'], "")))?;
            let t = Instant::now();
            signing::sign_image(
                &registry,
                signer.as_ref(),
                REPOSITORY,
                &digest,
                &BTreeMap::new(),
            )
            .await?;
            append.push(t.elapsed().as_secs_f64() * 1000.0);
            let trust = match signer.trust_roots() {
                Some(chain) => Trust::Roots(chain),
                None => Trust::Key(signer.public_key_pem().to_string()),
            };
            signing::verify_image(&registry, &trust, REPOSITORY, &digest).await?;
        }
        println!(
            "{name:<16} {:>14.2} {:>14.2} {:>16.1} {:>16.1}",
            pct(&mut alone, 50),
            pct(&mut alone, 90),
            pct(&mut append, 50),
            pct(&mut append, 90)
        );
    }
    Ok(())
}

fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn x509_signer(tag: &str) -> Result<SharedSigner> {
    let dir = std::env::temp_dir().join(format!("signbench-{tag}-pki"));
    let status = Command::new("bash")
        .arg(repo_dir().join("e2e/x509/make-chain.sh"))
        .arg(&dir)
        .status()?;
    anyhow::ensure!(status.success());
    let read = |f: &str| std::fs::read(dir.join(f));
    Ok(Arc::new(X509Signer::from_pems(
        &read("leaf.key")?,
        Some(&read("leaf.pem")?),
        Some(&read("chain.pem")?),
    )?))
}

async fn kms_signer(tag: &str) -> Result<SharedSigner> {
    let kms = Kms::get()?;
    let name = format!("signbench-{tag}");
    kms.create_key(&name)?;
    let token = kms.token_for(&name)?;
    let key = TransitKey {
        address: kms.address.clone(),
        mount: "transit".into(),
        name,
        token: Arc::new(Zeroizing::new(token)),
    };
    Ok(Arc::new(TransitSigner::connect(key).await?))
}

fn hsm_signer(tag: &str) -> Result<SharedSigner> {
    std::env::var("SOFTHSM2_CONF").context("SOFTHSM2_CONF unset")?;
    let module = std::fs::read_to_string(state_dir().join("hsm-module"))?
        .trim()
        .to_string();
    let pin = std::fs::read_to_string(state_dir().join("hsm-pin"))?
        .trim()
        .to_string();
    let label = format!("signbench-{tag}");
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            &module,
            "--token-label",
            "sluice-e2e",
            "--login",
            "--pin",
            &pin,
        ])
        .args([
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            &label,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pkcs11-tool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = HsmKey {
        token_label: "sluice-e2e".into(),
        key_label: label,
        pin: Arc::new(pin.into()),
    };
    Ok(Arc::new(Pkcs11Signer::open(
        load_module(std::path::Path::new(&module))?,
        key,
    )?))
}
