//! `sluice generate-key-pair`, `sluice sign` and `sluice verify`: cosign-compatible, offline.

use std::{collections::BTreeMap, fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{Context, bail};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::PostParams};
use oci_client::secrets::RegistryAuth;
use zeroize::Zeroizing;

use crate::{
    gates::results::{is_sha256_digest, strip_tag_and_digest},
    registry::Registry,
    signing::{
        self, Signer,
        attestation::{self, GATES_PREDICATE_TYPE},
        keys,
    },
};

/// The key password, from COSIGN_PASSWORD as cosign reads it (empty when unset).
fn password() -> Zeroizing<String> {
    Zeroizing::new(std::env::var("COSIGN_PASSWORD").unwrap_or_default())
}

/// Splits REPOSITORY@sha256:HEX.
fn split_image(image: &str) -> anyhow::Result<(&str, &str)> {
    let Some((repo, digest)) = image.split_once('@') else {
        bail!(
            "{image}: sign and verify take an image by digest, REPOSITORY@sha256:HEX (never a tag)"
        );
    };
    if !is_sha256_digest(digest) {
        bail!("{image}: the digest must be sha256:<64 lowercase hex>");
    }
    Ok((strip_tag_and_digest(repo), digest))
}

fn refuse_existing(paths: &[&str]) -> anyhow::Result<()> {
    for p in paths {
        if Path::new(p).exists() {
            bail!("{p} exists; remove it first");
        }
    }
    Ok(())
}

/// Writes cosign.key (mode 0600) and cosign.pub.
pub fn generate_key_pair(prefix: &str) -> anyhow::Result<()> {
    let key_path = format!("{prefix}.key");
    let pub_path = format!("{prefix}.pub");
    refuse_existing(&[&key_path, &pub_path])?;
    let (signer, pair) = keys::KeyPairSigner::generate()?;
    let pem = keys::encrypted_private_key_pem(&pair, password().as_bytes())?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)?;
    file.write_all(pem.as_bytes())?;
    fs::write(&pub_path, signer.public_key_pem())?;
    eprintln!("Private key written to {key_path}\nPublic key written to {pub_path}");
    Ok(())
}

/// Creates the Secret `namespace/name` in cosign's layout and writes `<prefix>.pub`.
pub async fn generate_key_pair_secret(prefix: &str, secret: &str) -> anyhow::Result<()> {
    let target = secret.trim_start_matches("k8s://");
    let Some((namespace, name)) = target.split_once('/') else {
        bail!("--k8s takes NAMESPACE/NAME, got {secret:?}");
    };
    let pub_path = format!("{prefix}.pub");
    refuse_existing(&[&pub_path])?;
    let (signer, pair) = keys::KeyPairSigner::generate()?;
    let password = password();
    let pem = keys::encrypted_private_key_pem(&pair, password.as_bytes())?;
    let data = BTreeMap::from([
        (
            "cosign.key".to_string(),
            ByteString(pem.as_bytes().to_vec()),
        ),
        (
            "cosign.password".to_string(),
            ByteString(password.as_bytes().to_vec()),
        ),
        (
            "cosign.pub".to_string(),
            ByteString(signer.public_key_pem().as_bytes().to_vec()),
        ),
    ]);
    let object = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        immutable: Some(true),
        ..Secret::default()
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster)")?;
    Api::<Secret>::namespaced(client, namespace)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating Secret {namespace}/{name}"))?;
    fs::write(&pub_path, signer.public_key_pem())?;
    eprintln!(
        "Successfully created secret {name} in namespace {namespace}\nPublic key written to {pub_path}"
    );
    Ok(())
}

/// Signs IMAGE@DIGEST and pushes the signature.
pub async fn sign(
    key: &Path,
    annotations: &[String],
    allow_http: bool,
    image: &str,
) -> anyhow::Result<()> {
    let (repo, digest) = split_image(image)?;
    let pem = Zeroizing::new(fs::read(key).with_context(|| format!("reading {}", key.display()))?);
    let signer = keys::KeyPairSigner::from_pem(&pem, password().as_bytes())?;
    let mut map = BTreeMap::new();
    for a in annotations {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("annotation {a:?} is not key=value"))?;
        map.insert(k.to_string(), v.to_string());
    }
    let registry = Registry::for_repository(repo, allow_http, RegistryAuth::Anonymous);
    let signed = signing::sign_image(&registry, &signer, repo, digest, &map).await?;
    let what = if signed.already_signed {
        "already signed; nothing pushed"
    } else {
        "pushed"
    };
    eprintln!("{what}: {} (key {})", signed.reference, signer.key_id());
    Ok(())
}

/// Verifies the signature of IMAGE@DIGEST and, with `attestation`, its gates attestation.
pub async fn verify(
    key: &Path,
    attestation: bool,
    allow_http: bool,
    image: &str,
) -> anyhow::Result<()> {
    let (repo, digest) = split_image(image)?;
    let public = fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let registry = Registry::for_repository(repo, allow_http, RegistryAuth::Anonymous);
    let verified = signing::verify_image(
        &registry,
        &signing::Trust::Key(public.clone()),
        repo,
        digest,
    )
    .await?;
    eprintln!("Verified {repo}@{digest}: signed by the given key");
    println!("{}", serde_json::to_string(&verified.annotations)?);
    if attestation {
        let statement =
            attestation::verify_attestation(&registry, &public, repo, digest, GATES_PREDICATE_TYPE)
                .await?;
        eprintln!("Verified the {GATES_PREDICATE_TYPE} attestation of {repo}@{digest}");
        println!("{}", serde_json::to_string(&statement.predicate)?);
    }
    Ok(())
}
