//! One test's namespace: created with the example Tasks and a pipeline, deleted when dropped.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};

use sluice::api::SecurePipeline;

use crate::{client, repo_dir, state_dir, tool};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's namespace with the example Tasks and pipeline; deleted when dropped.
pub struct TestNamespace {
    /// The namespace.
    pub name: String,
    /// Admin client.
    pub client: Client,
}

impl TestNamespace {
    /// Creates an empty namespace `e2e-<prefix>-<pid>-<n>`.
    pub async fn empty(prefix: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Self::create(format!("e2e-{prefix}-{}-{n}", std::process::id())).await
    }

    async fn create(name: String) -> Result<Self> {
        let client = client().await?;
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { name, client })
    }

    /// Creates the namespace `name` (one a controller outside the operator is scoped to, such as
    /// Tekton Chains' `-namespace`) once an earlier run's copy has finished terminating.
    pub async fn named(name: &str) -> Result<Self> {
        let namespaces = Api::<Namespace>::all(client().await?);
        crate::eventually(
            &format!("namespace {name} from an earlier run gone"),
            std::time::Duration::from_secs(120),
            crate::POLL,
            async || {
                Ok(match namespaces.get_opt(name).await? {
                    None => std::ops::ControlFlow::Break(()),
                    Some(_) => std::ops::ControlFlow::Continue("still there".to_string()),
                })
            },
        )
        .await?;
        let this = Self::create(name.to_string()).await?;
        this.with_examples()?;
        Ok(this)
    }

    /// Creates `e2e-<prefix>-<n>` and applies the example Tasks and the scripted suite's pipeline.
    pub async fn new(prefix: &str) -> Result<Self> {
        let this = Self::empty(prefix).await?;
        this.with_examples()?;
        Ok(this)
    }

    /// Applies the example Tasks and the scripted suite's pipeline, without signing.
    fn with_examples(&self) -> Result<()> {
        let this = self;
        this.kubectl(&[
            "apply",
            "-f",
            "examples/evip/tasks.yaml",
            "-f",
            "e2e/fixtures/pipeline.yaml",
        ])?;
        // Gate tests stop before signing; signing tests add a key with `with_signing_key`.
        this.kubectl(&[
            "patch",
            "securepipeline",
            "predictor",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/spec/signing"}]"#,
        ])?;
        Ok(())
    }

    /// Makes a cosign key pair Secret `cosign-key` with the real cosign CLI and names it in the pipeline.
    pub fn with_signing_key(&self, password: &str) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("{}-keys", self.name));
        std::fs::create_dir_all(&dir)?;
        let out = Command::new(tool("cosign")?)
            .current_dir(&dir)
            .env("KUBECONFIG", state_dir().join("kubeconfig"))
            .env("COSIGN_PASSWORD", password)
            .args([
                "generate-key-pair",
                &format!("k8s://{}/cosign-key", self.name),
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "cosign generate-key-pair: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.patch_pipeline(r#"{"spec":{"signing":{"secretRef":{"name":"cosign-key"}}}}"#)?;
        Ok(())
    }

    /// Runs the real cosign CLI's `args` on `reference` with this namespace's key Secret
    /// (`k8s://<ns>/cosign-key`, made by `with_signing_key`), offline, plain HTTP allowed.
    pub fn cosign(&self, args: &[&str], reference: &str) -> Result<std::process::Output> {
        let key = format!("k8s://{}/cosign-key", self.name);
        Ok(Command::new(tool("cosign")?)
            .env("KUBECONFIG", state_dir().join("kubeconfig"))
            .args(args)
            .args([
                "--key",
                &key,
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                reference,
            ])
            .output()?)
    }

    /// Merge-patches the SecurePipeline `predictor` of this namespace.
    pub fn patch_pipeline(&self, patch: &str) -> Result<()> {
        let args = [
            "patch",
            "securepipeline",
            "predictor",
            "--type",
            "merge",
            "-p",
            patch,
        ];
        self.kubectl(&args)?;
        Ok(())
    }

    /// Runs kubectl in this namespace from the repository root.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(tool("kubectl")?)
            .current_dir(repo_dir())
            .arg("--kubeconfig")
            .arg(state_dir().join("kubeconfig"))
            .args(["-n", &self.name])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Typed API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The pipeline of this namespace.
    pub async fn pipeline(&self) -> Result<SecurePipeline> {
        Ok(self.api::<SecurePipeline>().get("predictor").await?)
    }

    /// Merge-patches an object's spec or metadata through the dynamic API.
    pub async fn patch_dynamic(
        &self,
        gvk: GroupVersionKind,
        plural: &str,
        name: &str,
        patch: &Value,
    ) -> Result<()> {
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.name, &ar);
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Synchronous so that it also runs when a test panics.
        let _ = self.kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}
