//! Harness of the end-to-end tests: each test gets its own namespace on the cluster that
//! `e2e/run-tests` started, with the example Tasks and a SecurePipeline applied, and deletes it at the end.

use std::{
    collections::BTreeMap,
    ops::ControlFlow,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Service},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};
pub mod real_node;

use sluice::{
    api::{LABEL_RELEASE, ModelRelease, Phase, SecurePipeline},
    tekton::TaskRun,
};

/// Directory of the running e2e cluster's state.
pub fn state_dir() -> PathBuf {
    std::env::var_os("SLUICE_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.e2e"))
}

/// Path of one of the e2e cluster's built tools (kubectl, crane, cosign, …).
pub fn tool(name: &str) -> Result<PathBuf> {
    let bin = std::fs::read_to_string(state_dir().join("bin"))
        .context("reading .e2e/bin; is the e2e cluster up?")?;
    Ok(PathBuf::from(bin.trim()).join(name))
}

/// Path of `sluice-checks` (kstatus, Lua health, OLM validation), built once and cached by
/// e2e/checks/build.sh.
pub fn checks_bin() -> Result<PathBuf> {
    let out = Command::new(repo_dir().join("e2e/checks/build.sh")).output()?;
    if !out.status.success() {
        bail!(
            "e2e/checks/build.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs `program` from the repository root with the e2e kubeconfig, feeding `stdin`; its
/// standard output, or an error carrying everything it printed.
pub fn run_program(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::{io::Write, process::Stdio};
    let mut child = Command::new(program)
        .current_dir(repo_dir())
        .env("KUBECONFIG", state_dir().join("kubeconfig"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let input = stdin.unwrap_or_default().to_owned();
    let mut pipe = child.stdin.take().context("stdin")?;
    // A writer thread: a child that prints before reading all its input cannot deadlock us.
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Path of the repository root.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A client for the e2e cluster, authenticated as its admin.
pub async fn client() -> Result<Client> {
    sluice::install_crypto_provider();
    let path = state_dir().join("kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {}; is the e2e cluster up?", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A digest that looks real; the gates only check its form and the repository.
pub const FAKE_DIGEST: &str =
    "sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

/// Repository of the test pipeline.
pub const REPOSITORY: &str = "127.0.0.1:35000/evip/predictor";

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
        let client = client().await?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("e2e-{prefix}-{}-{n}", std::process::id());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { name, client })
    }

    /// Creates `e2e-<prefix>-<n>` and applies the example Tasks and the scripted suite's pipeline.
    pub async fn new(prefix: &str) -> Result<Self> {
        let this = Self::empty(prefix).await?;
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
        Ok(this)
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

    /// Pushes a small image with unique content to the pipeline's repository; returns its digest.
    pub fn push_image(&self, content: &str) -> Result<String> {
        self.push_image_to(
            &format!("{REPOSITORY}:{}-{content}", self.name),
            content,
            None,
        )
    }

    /// Pushes a small image with unique content as `tag`, logging crane in first with `login`
    /// (user, password) through a private DOCKER_CONFIG; returns its digest.
    pub fn push_image_to(
        &self,
        tag: &str,
        content: &str,
        login: Option<(&str, &str)>,
    ) -> Result<String> {
        let dir = std::env::temp_dir().join(format!("{}-image-{content}", self.name));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("VERSION"), format!("{} {content}", self.name))?;
        let status = Command::new("tar")
            .current_dir(&dir)
            .args(["cf", "layer.tar", "VERSION"])
            .status()?;
        if !status.success() {
            bail!("tar failed");
        }
        let crane_bin = tool("crane")?;
        let crane = |args: &[&str]| -> Result<String> {
            let out = Command::new(&crane_bin)
                .current_dir(&dir)
                .env("DOCKER_CONFIG", &dir)
                .args(args)
                .output()?;
            if !out.status.success() {
                bail!("crane {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        if let Some((user, password)) = login {
            let host = tag.split('/').next().unwrap_or_default();
            crane(&["auth", "login", host, "-u", user, "-p", password])?;
        }
        crane(&["append", "-f", "layer.tar", "-t", tag])?;
        crane(&["digest", tag])
    }

    /// Creates the release target: Deployment `predictor` (container `server` running `image`,
    /// 2 replicas, the given progress deadline) and Service `predictor` on port 8080, and waits
    /// until the Deployment is available.
    pub async fn target(&self, image: &str, progress_deadline_seconds: i32) -> Result<Deployment> {
        let dep: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "predictor", "labels": {"app": "predictor"}},
            "spec": {
                "replicas": 2,
                "progressDeadlineSeconds": progress_deadline_seconds,
                "selector": {"matchLabels": {"app": "predictor"}},
                "template": {
                    "metadata": {"labels": {"app": "predictor"}},
                    "spec": {
                        "nodeSelector": {"type": "kwok"},
                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                        "containers": [
                            {"name": "server", "image": image, "ports": [{"containerPort": 8080}]},
                            {"name": "metrics-sidecar", "image": "127.0.0.1:35000/evip/sidecar:1.0"}
                        ]
                    }
                }
            }
        }))?;
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "predictor"},
            "spec": {"selector": {"app": "predictor"}, "ports": [{"port": 8080, "targetPort": 8080}]}
        }))?;
        // Created like a user would, so the image field has another owner than Sluice.
        let pp = PostParams {
            field_manager: Some("kubectl-create".into()),
            ..PostParams::default()
        };
        self.api::<Service>().create(&pp, &svc).await?;
        self.api::<Deployment>().create(&pp, &dep).await?;
        self.wait_available(Duration::from_secs(60)).await
    }

    /// Waits until the target Deployment's rollout is complete.
    pub async fn wait_available(&self, timeout: Duration) -> Result<Deployment> {
        let api = self.api::<Deployment>();
        eventually(
            "Deployment predictor available",
            timeout,
            POLL,
            async || {
                let d = api.get("predictor").await?;
                let done = matches!(
                    sluice::rollout::progress(&d, None, jiff::Timestamp::now()),
                    sluice::rollout::Progress::Complete
                );
                Ok(if done {
                    ControlFlow::Break(d)
                } else {
                    ControlFlow::Continue(format!("{:?}", d.status))
                })
            },
        )
        .await
    }

    /// The image of the target's `server` container.
    pub async fn target_image(&self) -> Result<String> {
        let d = self.api::<Deployment>().get("predictor").await?;
        sluice::rollout::container_image(&d, "server").context("no server container")
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

    /// Creates a ModelRelease of `revision` with the given sim annotations (stage -> termination message / exit code).
    pub async fn release(&self, name: &str, sims: &[(&str, Sim)]) -> Result<ModelRelease> {
        self.release_with(name, sims, json!({})).await
    }

    /// Like `release`, with `spec` merged over the default spec.
    pub async fn release_with(
        &self,
        name: &str,
        sims: &[(&str, Sim)],
        spec: Value,
    ) -> Result<ModelRelease> {
        self.release_annotated(name, sims, spec, BTreeMap::new())
            .await
    }

    /// Like `release`, whose TaskRun of `stage` keeps running until it is cancelled.
    pub async fn release_holding(
        &self,
        name: &str,
        sims: &[(&str, Sim)],
        stage: &str,
    ) -> Result<ModelRelease> {
        let hold = BTreeMap::from([("sim.sluice.dev/hold".to_string(), stage.to_string())]);
        self.release_annotated(name, sims, json!({}), hold).await
    }

    async fn release_annotated(
        &self,
        name: &str,
        sims: &[(&str, Sim)],
        spec: Value,
        mut annotations: BTreeMap<String, String>,
    ) -> Result<ModelRelease> {
        for (stage, sim) in sims {
            annotations.insert(
                format!("sim.sluice.dev/{stage}.message"),
                sim.message.clone(),
            );
            if sim.exit_code != 0 {
                annotations.insert(
                    format!("sim.sluice.dev/{stage}.exit-code"),
                    sim.exit_code.to_string(),
                );
            }
        }
        let mut release = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "ModelRelease",
            "metadata": {"name": name, "annotations": annotations, "labels": {"e2e": "true"}},
            "spec": {"pipelineRef": {"name": "predictor"}, "revision": "3f2a9c1",
                     "target": {"deployment": "predictor", "container": "server"}}
        });
        if let (Some(base), Some(extra)) = (release["spec"].as_object_mut(), spec.as_object()) {
            base.extend(extra.clone());
        }
        let release: ModelRelease = serde_json::from_value(release)?;
        Ok(self
            .api::<ModelRelease>()
            .create(&PostParams::default(), &release)
            .await?)
    }

    /// Waits until the ModelRelease `name` has the condition `type_` with `status`; returns it.
    pub async fn release_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
    ) -> Result<Condition> {
        self.condition::<ModelRelease>(name, type_, status, |r| r.status.map(|s| s.conditions))
            .await
    }

    /// Waits until the SecurePipeline `name` has the condition `type_` with `status`; returns it.
    pub async fn pipeline_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
    ) -> Result<Condition> {
        self.condition::<SecurePipeline>(name, type_, status, |p| p.status.map(|s| s.conditions))
            .await
    }

    async fn condition<K>(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        conditions: impl Fn(K) -> Option<Vec<Condition>>,
    ) -> Result<Condition>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        let what = format!("{} {name}: {type_}={status}", K::kind(&()));
        wait_condition(&what, type_, status, async || {
            Ok(conditions(api.get(name).await?).unwrap_or_default())
        })
        .await
    }

    /// Waits until the release reaches one of `phases`.
    pub async fn wait_phase(
        &self,
        name: &str,
        phases: &[Phase],
        timeout: Duration,
    ) -> Result<ModelRelease> {
        let api = self.api::<ModelRelease>();
        let what = format!("release {name} in one of {phases:?}");
        eventually(&what, timeout, POLL, async || {
            let r = api.get(name).await?;
            let phase = r.status.as_ref().map(|s| s.phase).unwrap_or_default();
            Ok(if phases.contains(&phase) {
                ControlFlow::Break(r)
            } else {
                ControlFlow::Continue(format!("{:?}", r.status))
            })
        })
        .await
    }

    /// The TaskRuns of a release.
    pub async fn task_runs(&self, release: &str) -> Result<Vec<TaskRun>> {
        let lp = ListParams::default().labels(&format!("{LABEL_RELEASE}={release}"));
        Ok(self.api::<TaskRun>().list(&lp).await?.items)
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

/// How long a condition may take to appear.
const CONDITION_TIMEOUT: Duration = Duration::from_secs(120);

async fn wait_condition(
    what: &str,
    type_: &str,
    status: &str,
    mut read: impl AsyncFnMut() -> Result<Vec<Condition>>,
) -> Result<Condition> {
    eventually(what, CONDITION_TIMEOUT, POLL, async || {
        let conds = read().await?;
        Ok(
            match sluice::api::conditions::get(&conds, type_).filter(|c| c.status == status) {
                Some(c) => ControlFlow::Break(c.clone()),
                None => ControlFlow::Continue(format!("{conds:?}")),
            },
        )
    })
    .await
}

/// How often `eventually` looks again by default.
pub const POLL: Duration = Duration::from_millis(250);

/// Runs `probe` every `every` until it breaks with a value; after `timeout`, fails naming `what`
/// and the last observation the probe continued with.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<ControlFlow<T, String>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await? {
            ControlFlow::Break(value) => return Ok(value),
            ControlFlow::Continue(last) if Instant::now() > deadline => {
                bail!("{what}: not reached after {timeout:?}; last seen: {last}")
            }
            ControlFlow::Continue(_) => tokio::time::sleep(every).await,
        }
    }
}

/// A scripted stage outcome.
#[derive(Clone, Debug)]
pub struct Sim {
    /// Termination message (Tekton results JSON).
    pub message: String,
    /// Exit code of the steps.
    pub exit_code: i32,
}

impl Sim {
    /// Steps that exit 0 and report these results.
    pub fn results(results: &[(&str, &str)]) -> Self {
        let entries: Vec<Value> = results
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v, "type": 1}))
            .collect();
        Self {
            message: Value::Array(entries).to_string(),
            exit_code: 0,
        }
    }

    /// Steps that exit with `code` and report nothing.
    pub fn exit(code: i32) -> Self {
        Self {
            message: "[]".into(),
            exit_code: code,
        }
    }

    /// Findings with these counts and no IDs.
    pub fn findings(critical: u32, high: u32, medium: u32, low: u32) -> Self {
        let f =
            json!({"critical": critical, "high": high, "medium": medium, "low": low, "unknown": 0})
                .to_string();
        Self::results(&[("FINDINGS", &f)])
    }

    /// A passing test report.
    pub fn tests_passed() -> Self {
        Self::results(&[(
            "TEST_OUTPUT",
            r#"{"result":"SUCCESS","successes":14,"failures":0,"warnings":0}"#,
        )])
    }

    /// A build that pushed the given digest to the pipeline's repository.
    pub fn built(digest: &str) -> Self {
        Self::built_in(REPOSITORY, digest)
    }

    /// A build that pushed the given digest to `repository`.
    pub fn built_in(repository: &str, digest: &str) -> Self {
        Self::results(&[
            ("IMAGE_URL", &format!("{repository}:3f2a9c1")),
            ("IMAGE_DIGEST", digest),
        ])
    }
}

/// The sims of a release whose every pre-deploy gate passes.
pub fn clean_sims() -> Vec<(&'static str, Sim)> {
    vec![
        ("unit-tests", Sim::tests_passed()),
        ("dependency-audit", Sim::findings(0, 0, 1, 3)),
        ("sast", Sim::findings(0, 0, 2, 5)),
        ("build", Sim::built(FAKE_DIGEST)),
        ("dast", Sim::findings(0, 0, 0, 1)),
    ]
}

/// The image of `container` in a ReplicaSet's pod template.
pub fn replica_set_image(
    rs: &k8s_openapi::api::apps::v1::ReplicaSet,
    container: &str,
) -> Option<String> {
    rs.spec
        .as_ref()?
        .template
        .as_ref()?
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .image
        .clone()
}

/// Runs an `e2e/operator` action (start, stop, kill).
pub fn operator(action: &str) -> Result<()> {
    let status = Command::new(repo_dir().join("e2e/operator"))
        .arg(action)
        .status()?;
    if !status.success() {
        bail!("e2e/operator {action} failed");
    }
    Ok(())
}

/// Deletes a release in the foreground.
pub async fn delete_release(ns: &TestNamespace, name: &str) -> Result<()> {
    ns.api::<ModelRelease>()
        .delete(name, &DeleteParams::foreground())
        .await?;
    Ok(())
}
