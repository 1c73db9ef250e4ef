//! Signing interoperates with the real cosign CLI in both directions, against the real registry,
//! and `sluice verify` rejects what it must.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use oci_client::secrets::RegistryAuth;
use sluice::{
    registry::Registry,
    signing::{
        self, Signer,
        keys::KeyPairSigner,
        payload::signature_tag,
        storage::{self, Attached},
    },
};
use sluice_e2e::{repo_dir, state_dir};

struct Workdir {
    dir: PathBuf,
    registry: String,
    bin: PathBuf,
}

impl Workdir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sluice-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let registry = std::fs::read_to_string(state_dir().join("registry"))?
            .trim()
            .to_string();
        let bin = PathBuf::from(std::fs::read_to_string(state_dir().join("bin"))?.trim());
        Ok(Self { dir, registry, bin })
    }

    fn run(&self, program: &Path, args: &[&str], password: &str) -> anyhow::Result<Output> {
        Ok(Command::new(program)
            .current_dir(&self.dir)
            .env("COSIGN_PASSWORD", password)
            .args(args)
            .output()?)
    }

    fn ok(&self, program: &Path, args: &[&str], password: &str) -> anyhow::Result<String> {
        let out = self.run(program, args, password)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(
            out.status.success(),
            "{} {args:?} failed: {text}",
            program.display()
        );
        Ok(text)
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn sluice(&self) -> PathBuf {
        repo_dir().join("target/debug/sluice")
    }

    /// Pushes a small distinct image and returns (repository, digest).
    fn push_image(&self, name: &str, content: &str) -> anyhow::Result<(String, String)> {
        let layer_dir = self.dir.join(format!("layer-{content}"));
        std::fs::create_dir_all(&layer_dir)?;
        std::fs::write(layer_dir.join("VERSION"), content)?;
        let tar = self.dir.join(format!("{content}.tar"));
        let status = Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&layer_dir)
            .arg("VERSION")
            .status()?;
        anyhow::ensure!(status.success());
        let repo = format!("{}/interop/{name}-{}", self.registry, std::process::id());
        let tag = format!("{repo}:{content}");
        self.ok(
            &self.tool("crane"),
            &["append", "-f", tar.to_str().unwrap_or_default(), "-t", &tag],
            "",
        )?;
        let digest = self
            .ok(&self.tool("crane"), &["digest", &tag], "")?
            .trim()
            .to_string();
        Ok((repo, digest))
    }

    fn cosign_verify(&self, key: &str, image: &str) -> anyhow::Result<Output> {
        self.run(
            &self.tool("cosign"),
            &[
                "verify",
                "--key",
                key,
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                image,
            ],
            "",
        )
    }

    /// `cosign sign` with the key pair `cosign.key` of this directory, no log, plain HTTP.
    fn cosign_sign(&self, image: &str, password: &str) -> anyhow::Result<String> {
        self.ok(
            &self.tool("cosign"),
            &[
                "sign",
                "--key",
                "cosign.key",
                "--tlog-upload=false",
                "--yes",
                "--allow-http-registry",
                image,
            ],
            password,
        )
    }

    fn signature_layer_count(&self, repo: &str, digest: &str) -> anyhow::Result<usize> {
        let manifest = self.ok(
            &self.tool("crane"),
            &["manifest", &signature_tag(repo, digest)],
            "",
        )?;
        let v: serde_json::Value = serde_json::from_str(&manifest)?;
        Ok(v["layers"].as_array().map_or(0, Vec::len))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_cosign_key_signs_through_sluice_and_cosign_verifies_it() -> anyhow::Result<()> {
    let w = Workdir::new("cosign-key")?;
    let (repo, digest) = w.push_image("app", "v1")?;
    let image = format!("{repo}@{digest}");
    w.ok(&w.tool("cosign"), &["generate-key-pair"], "pw-cosign")?;
    w.ok(
        &w.sluice(),
        &[
            "sign",
            "--key",
            "cosign.key",
            "-a",
            "sluice.dev/release=predictor-42",
            &image,
        ],
        "pw-cosign",
    )?;
    let out = w.cosign_verify("cosign.pub", &image)?;
    assert!(
        out.status.success(),
        "cosign verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""sluice.dev/release":"predictor-42""#)
    );
    // Signing again after a restart adds no second identical signature.
    let again = w.ok(
        &w.sluice(),
        &[
            "sign",
            "--key",
            "cosign.key",
            "-a",
            "sluice.dev/release=predictor-42",
            &image,
        ],
        "pw-cosign",
    )?;
    assert!(again.contains("already signed"), "{again}");
    assert_eq!(w.signature_layer_count(&repo, &digest)?, 1);
    // A wrong password is a clear error.
    let bad = w.run(
        &w.sluice(),
        &["sign", "--key", "cosign.key", &image],
        "wrong",
    )?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong password"));
    Ok(())
}

#[test]
fn a_sluice_key_signs_through_cosign_and_sluice_verifies_it() -> anyhow::Result<()> {
    let w = Workdir::new("sluice-key")?;
    let (repo, digest) = w.push_image("app", "v2")?;
    let image = format!("{repo}@{digest}");
    w.ok(&w.sluice(), &["generate-key-pair"], "pw-sluice")?;
    w.cosign_sign(&image, "pw-sluice")?;
    let verified = w.ok(&w.sluice(), &["verify", "--key", "cosign.pub", &image], "")?;
    assert!(verified.contains("Verified"), "{verified}");
    // Another signer's signature is kept: Sluice appends its own.
    w.ok(
        &w.sluice(),
        &["sign", "--key", "cosign.key", "-a", "by=sluice", &image],
        "pw-sluice",
    )?;
    assert_eq!(w.signature_layer_count(&repo, &digest)?, 2);
    assert!(w.cosign_verify("cosign.pub", &image)?.status.success());
    Ok(())
}

#[tokio::test]
async fn sluice_verify_rejects_a_moved_signature_another_key_and_a_modified_payload()
-> anyhow::Result<()> {
    let w = Workdir::new("reject")?;
    let (repo, signed) = w.push_image("app", "v3")?;
    let (_, other) = w.push_image("app", "v4")?;
    w.ok(&w.sluice(), &["generate-key-pair"], "pw")?;
    w.ok(
        &w.sluice(),
        &["sign", "--key", "cosign.key", &format!("{repo}@{signed}")],
        "pw",
    )?;
    w.ok(
        &w.sluice(),
        &["verify", "--key", "cosign.pub", &format!("{repo}@{signed}")],
        "",
    )?;

    // 1. The .sig copied onto another digest's tag.
    w.ok(
        &w.tool("crane"),
        &[
            "copy",
            &signature_tag(&repo, &signed),
            &signature_tag(&repo, &other),
        ],
        "",
    )?;
    let moved = w.run(
        &w.sluice(),
        &["verify", "--key", "cosign.pub", &format!("{repo}@{other}")],
        "",
    )?;
    assert!(!moved.status.success());
    assert!(
        String::from_utf8_lossy(&moved.stderr)
            .contains(&format!("the signed payload is for {signed}, not {other}")),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );

    // 2. A different key.
    std::fs::create_dir_all(w.dir.join("k2"))?;
    w.ok(
        &w.sluice(),
        &["generate-key-pair", "--output-key-prefix", "k2/cosign"],
        "pw",
    )?;
    let other_key = w.run(
        &w.sluice(),
        &[
            "verify",
            "--key",
            "k2/cosign.pub",
            &format!("{repo}@{signed}"),
        ],
        "",
    )?;
    assert!(!other_key.status.success());
    assert!(String::from_utf8_lossy(&other_key.stderr).contains("does not verify with this key"));

    // 3. A modified payload under the original signature.
    sluice::install_crypto_provider();
    let registry = Registry::for_repository(&repo, false, RegistryAuth::Anonymous);
    let mut layers = storage::read(&registry, Attached::Signature, &repo, &signed)
        .await?
        .layers;
    let text = String::from_utf8(layers[0].data.to_vec())?
        .replace(r#""optional":null"#, r#""optional":{"approved":"yes"}"#);
    layers[0].data = text.into_bytes().into();
    storage::overwrite(&registry, Attached::Signature, &repo, &signed, layers).await?;
    let tampered = w.run(
        &w.sluice(),
        &["verify", "--key", "cosign.pub", &format!("{repo}@{signed}")],
        "",
    )?;
    assert!(!tampered.status.success());
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("does not verify with this key"));
    assert!(
        !w.cosign_verify("cosign.pub", &format!("{repo}@{signed}"))?
            .status
            .success(),
        "cosign agrees it is tampered"
    );
    Ok(())
}

#[test]
fn sign_refuses_a_digest_that_is_not_in_the_registry() -> anyhow::Result<()> {
    let w = Workdir::new("absent")?;
    let (repo, _) = w.push_image("app", "v5")?;
    w.ok(&w.sluice(), &["generate-key-pair"], "pw")?;
    let absent = format!("{repo}@sha256:{}", "0".repeat(64));
    let out = w.run(&w.sluice(), &["sign", "--key", "cosign.key", &absent], "pw")?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist in the registry"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn a_sluice_key_secret_attests_through_cosign_and_sluice_verifies_the_attestation()
-> anyhow::Result<()> {
    let ns = sluice_e2e::TestNamespace::new("keysecret").await?;
    let w = Workdir::new("key-secret")?;
    let kubeconfig = state_dir().join("kubeconfig");
    let (repo, digest) = w.push_image("attested", "v1")?;
    let image = format!("{repo}@{digest}");
    let secret = format!("{}/sluice-made", ns.name);
    let out = Command::new(w.sluice())
        .current_dir(&w.dir)
        .env("KUBECONFIG", &kubeconfig)
        .env("COSIGN_PASSWORD", "pw-secret")
        .args(["generate-key-pair", "--k8s", &secret])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = ns.kubectl(&["get", "secret", "sluice-made", "-o", "jsonpath={.data}"])?;
    for k in ["cosign.key", "cosign.password", "cosign.pub"] {
        assert!(keys.contains(k), "Secret lacks {k}: {keys}");
    }
    // cosign reads the Secret sluice made, and attests with it.
    std::fs::write(
        w.dir.join("gates.json"),
        r#"{"verdict":"Passed","stages":[]}"#,
    )?;
    let attest = Command::new(w.tool("cosign"))
        .current_dir(&w.dir)
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "attest",
            "--key",
            &format!("k8s://{secret}"),
            "--type",
            "https://sluice.dev/attestations/gates/v1",
            "--predicate",
            "gates.json",
            "--tlog-upload=false",
            "--allow-http-registry",
            "--yes",
            &image,
        ])
        .output()?;
    assert!(
        attest.status.success(),
        "{}",
        String::from_utf8_lossy(&attest.stderr)
    );
    let key = ns.kubectl(&[
        "get",
        "secret",
        "sluice-made",
        "-o",
        "jsonpath={.data.cosign\\.key}",
    ])?;
    std::fs::write(
        w.dir.join("cosign.key"),
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.trim())?,
    )?;
    w.ok(
        &w.sluice(),
        &["sign", "--key", "cosign.key", &image],
        "pw-secret",
    )?;
    let verified = w.ok(
        &w.sluice(),
        &["verify", "--key", "cosign.pub", "--attestation", &image],
        "",
    )?;
    assert!(
        verified.contains(r#"{"stages":[],"verdict":"Passed"}"#),
        "{verified}"
    );

    // Another key's attestation is not accepted.
    w.ok(
        &w.sluice(),
        &["generate-key-pair", "--output-key-prefix", "other"],
        "",
    )?;
    let rejected = w.run(
        &w.sluice(),
        &["verify", "--key", "other.pub", "--attestation", &image],
        "",
    )?;
    assert!(!rejected.status.success());
    Ok(())
}

#[tokio::test]
async fn the_signature_manifest_pushed_is_recorded_and_a_later_change_is_seen() -> anyhow::Result<()>
{
    let w = Workdir::new("manifest")?;
    let (repo, digest) = w.push_image("app", "v7")?;
    sluice::install_crypto_provider();
    let registry = Registry::for_repository(&repo, false, RegistryAuth::Anonymous);
    let (signer, _) = KeyPairSigner::generate()?;
    let annotations = BTreeMap::from([("sluice.dev/release".to_string(), "p-7".to_string())]);
    let signed = signing::sign_image(&registry, &signer, &repo, &digest, &annotations).await?;
    let held = w.ok(&w.tool("crane"), &["digest", &signed.reference], "")?;
    assert_eq!(signed.manifest_digest.as_deref(), Some(held.trim()));
    let pushed = signed.manifest_digest.clone().unwrap_or_default();
    assert!(signing::signature_unchanged(&registry, &repo, &digest, &pushed).await?);
    // Signing again pushes nothing and reports the same manifest.
    let again = signing::sign_image(&registry, &signer, &repo, &digest, &annotations).await?;
    assert!(again.already_signed);
    assert_eq!(again.manifest_digest, signed.manifest_digest);
    // cosign appends its own signature: the tag moved, so the next check must fetch again.
    w.ok(&w.tool("cosign"), &["generate-key-pair"], "pw")?;
    w.cosign_sign(&format!("{repo}@{digest}"), "pw")?;
    assert_eq!(w.signature_layer_count(&repo, &digest)?, 2);
    assert!(!signing::signature_unchanged(&registry, &repo, &digest, &pushed).await?);
    // Both signatures still verify in full.
    let trust = signing::Trust::Key(signer.public_key_pem().to_string());
    signing::verify_image(&registry, &trust, &repo, &digest).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_signers_of_one_digest_keep_every_signature() -> anyhow::Result<()> {
    const WRITERS: usize = 8;
    let w = Workdir::new("concurrent")?;
    let (repo, digest) = w.push_image("app", "v9")?;
    let image = format!("{repo}@{digest}");
    // A signature already there (cosign's) must survive the burst.
    w.ok(&w.tool("cosign"), &["generate-key-pair"], "pw")?;
    w.cosign_sign(&image, "pw")?;
    sluice::install_crypto_provider();
    let mut writers = Vec::new();
    let mut keys = Vec::new();
    for i in 0..WRITERS {
        let (signer, _) = KeyPairSigner::generate()?;
        keys.push(signer.public_key_pem().to_string());
        // Each writer has its own client, as separate processes would.
        let registry = Registry::for_repository(&repo, false, RegistryAuth::Anonymous);
        let (repo, digest) = (repo.clone(), digest.clone());
        writers.push(tokio::spawn(async move {
            let annotations = BTreeMap::from([("writer".to_string(), i.to_string())]);
            signing::sign_image(&registry, &signer, &repo, &digest, &annotations).await
        }));
    }
    for writer in writers {
        writer.await??;
    }
    assert_eq!(
        w.signature_layer_count(&repo, &digest)?,
        WRITERS + 1,
        "every writer's layer and cosign's"
    );
    let registry = Registry::for_repository(&repo, false, RegistryAuth::Anonymous);
    for key in keys {
        signing::verify_image(&registry, &signing::Trust::Key(key), &repo, &digest).await?;
    }
    let out = w.cosign_verify("cosign.pub", &image)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
