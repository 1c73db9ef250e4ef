//! Releases and their target: ModelReleases with scripted stage outcomes (kwok), the Deployment
//! they roll out to, and waiting for phases and conditions.

use std::{
    collections::BTreeMap,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

use sluice::{
    api::{LABEL_RELEASE, ModelRelease, Phase, SecurePipeline},
    tekton::TaskRun,
};

use crate::{FAKE_DIGEST, REPOSITORY, TestNamespace};

impl TestNamespace {
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

    /// Sets the target's `server` image (and the model reference it is handed) as a GitOps tool
    /// would: server-side apply under its own field manager, "flux".
    pub async fn git_sets_image(&self, image: &str, model: Option<&str>) -> Result<()> {
        let mut container = json!({"name": "server", "image": image});
        if let Some(m) = model {
            container["env"] = json!([{"name": "SLUICE_MODEL_REF", "value": m}]);
        }
        let body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "predictor"},
            "spec": {"template": {"spec": {"containers": [container]}}}
        });
        self.api::<Deployment>()
            .patch(
                "predictor",
                &kube::api::PatchParams::apply("flux").force(),
                &kube::api::Patch::Apply(&body),
            )
            .await?;
        Ok(())
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

/// The phases a release ends in when no newer release supersedes it.
pub const ENDED: [Phase; 4] = [
    Phase::Released,
    Phase::Blocked,
    Phase::Failed,
    Phase::RolledBack,
];

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

/// Deletes a release in the foreground.
pub async fn delete_release(ns: &TestNamespace, name: &str) -> Result<()> {
    ns.api::<ModelRelease>()
        .delete(name, &DeleteParams::foreground())
        .await?;
    Ok(())
}
