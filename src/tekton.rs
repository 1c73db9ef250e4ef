//! The part of Tekton's `TaskRun` (tekton.dev/v1) Sluice writes and reads, and the mapping from a
//! release's stage to a TaskRun.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{CustomResource, Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::{
    api::{
        LABEL_PIPELINE, LABEL_RELEASE, LABEL_STAGE, ModelRelease, SecurePipeline, Stage,
        pipeline::{Param, WorkspaceBinding},
        release::ImageRef,
    },
    gates::{RunOutcome, StageResults},
    names,
};

/// The TaskRun fields Sluice sets; Tekton fills in the rest.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    kind = "TaskRun",
    namespaced,
    status = "TaskRunStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSpec {
    /// The Task to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_ref: Option<TektonTaskRef>,
    /// Parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Workspace bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceBinding>,
    /// ServiceAccount the pod runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Timeout, a Go duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Where the pod runs (the stage's placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<crate::api::pipeline::StagePodTemplate>,
    /// `TaskRunCancelled` once cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

/// The `spec.status` that asks Tekton to cancel a TaskRun.
pub const CANCELLED: &str = "TaskRunCancelled";

/// Tekton's taskRef: a name and kind, or a resolver with params.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TektonTaskRef {
    /// Task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Task kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Remote resolver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Resolver parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

/// A Tekton Task; only its metadata is ever read, to check that a stage's Task exists.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tekton.dev",
    version = "v1",
    kind = "Task",
    namespaced,
    schema = "disabled"
)]
pub struct TaskSpec {
    /// The Task's steps and the rest, kept opaque.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// The TaskRun status fields Sluice reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunStatus {
    /// Knative-style conditions; Succeeded tells the outcome.
    #[serde(default)]
    pub conditions: Vec<TektonCondition>,
    /// Results written by the steps.
    #[serde(default)]
    pub results: Vec<TaskRunResult>,
    /// When the TaskRun finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// The pod that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// A Knative condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TektonCondition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// Reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Message.
    #[serde(default)]
    pub message: Option<String>,
}

/// One result. Its value is a string, array or object; Sluice only uses strings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TaskRunResult {
    /// Result name.
    pub name: String,
    /// Result value.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// The outcome of a TaskRun, or None while it runs.
pub fn outcome(tr: &TaskRun) -> Option<RunOutcome> {
    let status = tr.status.as_ref()?;
    let cond = status.conditions.iter().find(|c| c.type_ == "Succeeded")?;
    let reason = cond.reason.clone().unwrap_or_default();
    match cond.status.as_str() {
        "True" => Some(RunOutcome::Succeeded),
        "False" => Some(match reason.as_str() {
            "TaskRunTimeout" => RunOutcome::TimedOut,
            "TaskRunCancelled" => RunOutcome::Cancelled,
            _ => RunOutcome::Failed {
                reason,
                message: cond.message.clone().unwrap_or_default(),
            },
        }),
        _ => None,
    }
}

/// Tekton's reasons for a TaskRun that failed before any step of it ran: the Task could not be
/// resolved or read, or its pod could not be created or started. An API server's or a
/// registry's bad minute causes these; a step's own failure is reported as `Failed`.
const TRANSIENT_FAILURES: &[&str] = &[
    "TaskRunResolutionFailed",
    "CouldntGetTask",
    "PodCreationFailed",
    "PodAdmissionFailed",
    "TaskRunImagePullFailed",
    "CreateContainerConfigError",
    "ExceededNodeResources",
];

/// Whether a TaskRun's failure reason is an infrastructure failure worth retrying.
pub fn is_transient_failure(reason: &str) -> bool {
    TRANSIENT_FAILURES.contains(&reason)
}

/// The results of a TaskRun for the gates.
pub fn results(tr: &TaskRun) -> StageResults {
    StageResults::new(
        tr.status
            .iter()
            .flat_map(|s| s.results.iter())
            .map(|r| (r.name.clone(), r.value.clone()))
            .collect(),
    )
}

/// Whether a label or annotation key is kubectl's own and must not propagate.
fn propagates(key: &str) -> bool {
    !key.starts_with("kubectl.kubernetes.io/")
}

/// Builds the TaskRun of one stage of a release.
pub fn build(
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    stage: &Stage,
    image: Option<&ImageRef>,
    target_url: Option<&str>,
) -> TaskRun {
    let release_name = release.name_any();
    let mut labels: BTreeMap<String, String> = release
        .labels()
        .iter()
        .filter(|(k, _)| propagates(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_RELEASE.into(), release_name.clone());
    labels.insert(LABEL_STAGE.into(), stage.name.clone());
    labels.insert(LABEL_PIPELINE.into(), pipeline.name_any());
    labels.insert("app.kubernetes.io/managed-by".into(), "sluice".into());
    let annotations: BTreeMap<String, String> = release
        .annotations()
        .iter()
        .filter(|(k, _)| propagates(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let metadata = ObjectMeta {
        name: Some(names::task_run_name(&release_name, &stage.name)),
        namespace: release.namespace(),
        labels: Some(labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        owner_references: owner_reference(release).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    let spec = TaskRunSpec {
        task_ref: Some(TektonTaskRef {
            name: stage.task_ref.name.clone(),
            kind: stage.task_ref.kind.clone(),
            resolver: stage.task_ref.resolver.clone(),
            params: stage.task_ref.params.clone(),
        }),
        params: params(release, pipeline, stage, image, target_url),
        workspaces: stage.workspaces.clone(),
        service_account_name: pipeline.spec.service_account_name.clone(),
        timeout: stage.timeout.clone(),
        pod_template: stage.pod_template.clone(),
        ..TaskRunSpec::default()
    };
    TaskRun {
        metadata,
        spec,
        status: None,
    }
}

/// Why `tr` is not the TaskRun Sluice creates for `stage` of `release`, if it is not: its results
/// are only trusted from a TaskRun this release controls that runs the stage's Task with the
/// stage's parameters. `image` and `target_url` are what the release knows now; a TaskRun made
/// before they were known lacks those parameters, which is fine.
pub fn provenance_problem(
    tr: &TaskRun,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    stage: &Stage,
    image: Option<&ImageRef>,
    target_url: Option<&str>,
) -> Option<String> {
    let name = tr.name_any();
    if !controlled_by(tr, release) {
        let by = controller(tr).map_or_else(
            || "nothing".to_string(),
            |o| format!("{} {}", o.kind, o.name),
        );
        return Some(format!(
            "TaskRun {name} was not created by this release (it is controlled by {by}); its results are not trusted"
        ));
    }
    let expected = build(release, pipeline, stage, image, target_url).spec;
    if !same_task(tr.spec.task_ref.as_ref(), expected.task_ref.as_ref()) {
        return Some(format!(
            "TaskRun {name} does not run the Task stage {} names (was the pipeline changed during the release?); its results are not trusted",
            stage.name
        ));
    }
    let required = params(release, pipeline, stage, None, None);
    let missing = required.iter().find(|p| !tr.spec.params.contains(p));
    let unexpected = tr.spec.params.iter().find(|p| !expected.params.contains(p));
    if let Some(p) = missing.or(unexpected) {
        return Some(format!(
            "TaskRun {name} does not pass stage {}'s parameter {} as Sluice would (was the pipeline changed during the release?); its results are not trusted",
            stage.name, p.name
        ));
    }
    None
}

/// Whether `release` is the controller owner of `tr` (the owner reference `build` sets).
pub fn controlled_by(tr: &TaskRun, release: &ModelRelease) -> bool {
    release
        .uid()
        .is_some_and(|uid| controller(tr).is_some_and(|o| o.uid == uid))
}

fn controller(tr: &TaskRun) -> Option<&OwnerReference> {
    tr.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
}

/// Tekton's defaulting fills in `kind: Task`; anything else must be exactly what the stage says.
fn same_task(actual: Option<&TektonTaskRef>, expected: Option<&TektonTaskRef>) -> bool {
    let normal = |r: Option<&TektonTaskRef>| {
        r.cloned().map(|mut r| {
            if r.kind.as_deref() == Some("Task") {
                r.kind = None;
            }
            r
        })
    };
    normal(actual) == normal(expected)
}

fn owner_reference(release: &ModelRelease) -> Option<OwnerReference> {
    let mut owner = release.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

fn params(
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    stage: &Stage,
    image: Option<&ImageRef>,
    target_url: Option<&str>,
) -> Vec<Param> {
    let p = |name: &str, value: String| Param {
        name: name.to_string(),
        value,
    };
    let mut out = vec![
        p("SOURCE_URL", pipeline.spec.source.url.clone()),
        p("SOURCE_REVISION", release.spec.revision.clone()),
        p(
            "IMAGE",
            format!(
                "{}:{}",
                pipeline.spec.image.repository,
                image_tag(&release.spec.revision)
            ),
        ),
    ];
    if let Some(image) = image {
        out.push(p("IMAGE_DIGEST", image.digest.clone()));
    }
    if let Some(url) = target_url {
        out.push(p("TARGET_URL", url.to_string()));
    }
    // A stage's own params may not override the ones Sluice guarantees.
    out.extend(
        stage
            .params
            .iter()
            .filter(|sp| !out.iter().any(|o| o.name == sp.name))
            .cloned()
            .collect::<Vec<_>>(),
    );
    out
}

/// A revision made into a valid image tag (letters, digits, `_.-`, at most 128 characters).
pub fn image_tag(revision: &str) -> String {
    let mut tag: String = revision
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    crate::text::truncate(&mut tag, 128);
    if tag.starts_with(['.', '-']) {
        tag.insert(0, 'r');
        crate::text::truncate(&mut tag, 128);
    }
    tag
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn outcome_follows_the_succeeded_condition() {
        let tr = |status: &str, reason: &str| -> TaskRun {
            serde_json::from_value(json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun", "metadata": {"name": "x"}, "spec": {},
                "status": {"conditions": [{"type": "Succeeded", "status": status, "reason": reason, "message": "m"}]}
            }))
            .expect("valid TaskRun")
        };
        assert_eq!(outcome(&tr("Unknown", "Running")), None);
        assert_eq!(
            outcome(&tr("True", "Succeeded")),
            Some(RunOutcome::Succeeded)
        );
        assert_eq!(
            outcome(&tr("False", "TaskRunTimeout")),
            Some(RunOutcome::TimedOut)
        );
        assert_eq!(
            outcome(&tr("False", "TaskRunCancelled")),
            Some(RunOutcome::Cancelled)
        );
        assert_eq!(
            outcome(&tr("False", "Failed")),
            Some(RunOutcome::Failed {
                reason: "Failed".into(),
                message: "m".into()
            })
        );
    }

    #[test]
    fn a_stage_s_placement_becomes_the_task_run_s_pod_template() {
        let mut pipeline = crate::fixtures::pipeline();
        pipeline.spec.stages[0].pod_template = serde_json::from_value(json!({
            "nodeSelector": {"kubernetes.io/hostname": "sluice-node-0"},
            "tolerations": [{"key": "sluice.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]
        }))
        .expect("pod template");
        let release = crate::fixtures::release();
        let placed = build(&release, &pipeline, &pipeline.spec.stages[0], None, None);
        let wire = serde_json::to_value(&placed).expect("json");
        assert_eq!(
            wire["spec"]["podTemplate"]["nodeSelector"]["kubernetes.io/hostname"],
            "sluice-node-0"
        );
        assert_eq!(
            wire["spec"]["podTemplate"]["tolerations"][0]["key"],
            "sluice.dev/real-node"
        );
        assert!(wire["spec"]["podTemplate"].get("hostNetwork").is_none());
        pipeline.spec.stages[0]
            .pod_template
            .as_mut()
            .expect("placed")
            .host_network = true;
        let on_host = build(&release, &pipeline, &pipeline.spec.stages[0], None, None);
        assert_eq!(
            serde_json::to_value(&on_host).expect("json")["spec"]["podTemplate"]["hostNetwork"],
            true
        );
        let unplaced = build(&release, &pipeline, &pipeline.spec.stages[1], None, None);
        assert!(
            serde_json::to_value(&unplaced).expect("json")["spec"]
                .get("podTemplate")
                .is_none()
        );
    }

    #[test]
    fn image_tags_are_valid() {
        assert_eq!(image_tag("3f2a9c1"), "3f2a9c1");
        assert_eq!(image_tag("feature/x"), "feature-x");
        assert_eq!(image_tag("-x"), "r-x");
        assert_eq!(image_tag(&"a".repeat(300)).len(), 128);
    }
}
