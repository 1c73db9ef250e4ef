//! `ModelRelease`: one request to release one source revision to one Deployment.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pipeline::LocalObjectRef;

/// A request to build, scan, sign and roll out one revision of an application.
// Each printcolumn(...) repeats type_; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ModelRelease",
    doc = "A request to release one source revision of an application to one Deployment, through the gates of its SecurePipeline.",
    namespaced,
    status = "ModelReleaseStatus",
    shortname = "mr",
    category = "sluice",
    selectable = ".spec.target.deployment",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Pipeline",
        type_ = "string",
        json_path = ".spec.pipelineRef.name"
    ),
    printcolumn(name = "Revision", type_ = "string", json_path = ".spec.revision"),
    printcolumn(name = "Gates", type_ = "string", json_path = ".status.gatesSummary"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.image.digest"),
    printcolumn(
        name = "Mode",
        type_ = "string",
        priority = 1,
        json_path = ".spec.target.mode"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.pipelineRef == oldSelf.pipelineRef && self.revision == oldSelf.revision && self.target == oldSelf.target").message("pipelineRef, revision and target are immutable: create a new ModelRelease to release something else"),
    validation = Rule::new("self.approval == oldSelf.approval").message("approval is immutable: an approval mode changed mid-release would skip or strand the approval step; create a new ModelRelease"),
    validation = Rule::new("has(self.model) == has(oldSelf.model) && (!has(self.model) || self.model == oldSelf.model)").message("model is immutable: it is recorded in the signature; create a new ModelRelease for another model")
)]
pub struct ModelReleaseSpec {
    /// The SecurePipeline, in the same namespace, whose stages this release must pass.
    pub pipeline_ref: LocalObjectRef,
    /// Source commit to build and scan (passed to every stage as SOURCE_REVISION).
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9._/-]+$"))]
    pub revision: String,
    /// The model this release serves; recorded in the signature's annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// The Deployment and container that receive the signed image.
    pub target: TargetSpec,
    /// auto rolls out as soon as the image is signed; manual waits for `sluice approve`.
    #[serde(default)]
    pub approval: Approval,
}

/// Name and version of the served model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ModelSpec {
    /// Model name, e.g. ev-load-15min.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Model version.
    #[schemars(length(min = 1, max = 128))]
    pub version: String,
    /// The model's weights as an OCI artifact: Sluice checks it exists, signs it beside the
    /// image, names it in the gates attestation, verifies it before the rollout and hands it to
    /// the server by digest (env SLUICE_MODEL_REF=repository@digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ModelArtifact>,
}

/// A model artifact in an OCI registry, named by digest (a tag could be moved).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ModelArtifact {
    /// Repository without tag or digest, e.g. registry.example/evip/models/ev-load-15min.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+$")
    )]
    pub repository: String,
    /// The artifact manifest's digest, sha256:<64 hex>.
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: String,
}

impl ModelArtifact {
    /// `repository@digest`, the reference the server is given.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// The workload a release rolls out to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Deployment in the release's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub deployment: String,
    /// Container of that Deployment whose image is replaced.
    #[schemars(length(min = 1, max = 63))]
    pub container: String,
    /// patch: Sluice sets the image on the Deployment and rolls back a failure; gate: Sluice
    /// never writes the Deployment (Git sets the image by digest) and admits the pods that run
    /// this release's verified digest where the namespace opts in to enforcement.
    #[serde(default)]
    pub mode: TargetMode,
}

/// Who moves the Deployment to the released image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TargetMode {
    /// Sluice patches the signed digest into the Deployment (its image field only, under its own
    /// field manager) and rolls a failure back.
    #[default]
    Patch,
    /// Sluice judges, signs and admits; the Deployment is written only by its owner (GitOps).
    Gate,
}

/// How the rollout is approved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Approval {
    /// Roll out as soon as the image is signed.
    #[default]
    Auto,
    /// Wait until the annotation sluice.dev/approved-digest equals the signed digest.
    Manual,
}

/// Where a release stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum Phase {
    /// Accepted, waiting for its pipeline.
    #[default]
    Pending,
    /// Pre-deploy stages are running.
    Running,
    /// A gate blocked the release; nothing was signed or deployed.
    Blocked,
    /// Every gate passed; the image is being signed.
    Signing,
    /// Signed; waiting for manual approval of the digest.
    AwaitingApproval,
    /// The Deployment is rolling out the signed digest.
    RollingOut,
    /// Post-deploy stages are running against the rollout.
    Verifying,
    /// The rollout or a post-deploy gate failed; the previous image is being restored.
    RollingBack,
    /// Rolled out and verified.
    Released,
    /// Could not complete and could not restore the previous image.
    Failed,
    /// The rollout or a post-deploy gate failed; the previous image was restored.
    RolledBack,
    /// A newer release of the same target passed its gates first.
    Superseded,
}

impl Phase {
    /// All phases, for metrics that report a count per phase.
    pub const ALL: [Phase; 12] = [
        Phase::Pending,
        Phase::Running,
        Phase::Blocked,
        Phase::Signing,
        Phase::AwaitingApproval,
        Phase::RollingOut,
        Phase::Verifying,
        Phase::RollingBack,
        Phase::Released,
        Phase::Failed,
        Phase::RolledBack,
        Phase::Superseded,
    ];

    /// Whether the release has ended and nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Blocked
                | Phase::Released
                | Phase::Failed
                | Phase::RolledBack
                | Phase::Superseded
        )
    }

    /// Whether the rollout owns the phase (approval, rollout, verification, rollback).
    pub fn is_rollout(self) -> bool {
        matches!(
            self,
            Phase::AwaitingApproval | Phase::RollingOut | Phase::Verifying | Phase::RollingBack
        )
    }

    /// The phase as it appears in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Blocked => "Blocked",
            Phase::Signing => "Signing",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::RollingOut => "RollingOut",
            Phase::Verifying => "Verifying",
            Phase::RollingBack => "RollingBack",
            Phase::Released => "Released",
            Phase::Failed => "Failed",
            Phase::RolledBack => "RolledBack",
            Phase::Superseded => "Superseded",
        }
    }
}

/// State of a stage's TaskRun.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StageState {
    /// Waiting for the stages it runs after.
    Waiting,
    /// TaskRun created, not finished.
    Running,
    /// TaskRun succeeded.
    Succeeded,
    /// TaskRun failed (a step exited non-zero or the Task could not run).
    Failed,
    /// TaskRun exceeded its timeout.
    TimedOut,
    /// TaskRun was cancelled.
    Cancelled,
    /// Not run, because the release stopped before it.
    NotRun,
}

/// A gate's decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Verdict {
    /// The stage's results satisfy its gate.
    Passed,
    /// The stage's results violate its gate, or could not be read.
    Blocked,
    /// The stage did not run.
    Skipped,
}

impl Verdict {
    /// The verdict as it appears in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "Passed",
            Verdict::Blocked => "Blocked",
            Verdict::Skipped => "Skipped",
        }
    }
}

/// Findings counted per severity (after exceptions).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct FindingCounts {
    /// Critical findings.
    pub critical: u32,
    /// High findings.
    pub high: u32,
    /// Medium findings.
    pub medium: u32,
    /// Low findings.
    pub low: u32,
    /// Findings of unknown severity.
    #[serde(default)]
    pub unknown: u32,
}

/// An upgrade that fixes findings: `package` from `installed` to `fixedIn`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixAdvice {
    /// The package, e.g. flask.
    pub package: String,
    /// The version installed.
    pub installed: String,
    /// The least version that fixes every finding listed.
    pub fixed_in: String,
    /// The findings it fixes.
    pub ids: Vec<String>,
}

impl std::fmt::Display for FixAdvice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} → {} fixes {}",
            self.package,
            self.installed,
            self.fixed_in,
            self.ids.join(", ")
        )
    }
}

/// Code quality from a QUALITY result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct QualityReport {
    /// Line coverage in percent.
    pub coverage: f64,
    /// Lint issues per level.
    pub issues: IssueCounts,
}

/// Code-quality issues counted per level.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct IssueCounts {
    /// Error-level issues.
    pub error: u32,
    /// Warning-level issues.
    pub warning: u32,
    /// Info-level issues.
    pub info: u32,
}

/// Test counts from a TEST_OUTPUT result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct TestCounts {
    /// Passed tests.
    pub successes: u32,
    /// Failed tests.
    pub failures: u32,
    /// Tests with warnings.
    #[serde(default)]
    pub warnings: u32,
}

/// Status of one stage of a release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// Name of the stage's TaskRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_run: Option<String>,
    /// State of the TaskRun.
    pub state: StageState,
    /// Verdict of the gate, once the TaskRun finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Verdict>,
    /// Findings that counted against the gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<FindingCounts>,
    /// Test counts read from TEST_OUTPUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestCounts>,
    /// Coverage and issue counts read from QUALITY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityReport>,
    /// Exception IDs that were subtracted from the findings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions_applied: Vec<String>,
    /// Upgrades that fix the findings that counted, where the scanner named them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixes: Vec<FixAdvice>,
    /// Why the gate decided as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the TaskRun finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// TaskRuns of this stage that failed for an infrastructure reason (not a step's own failure) and were retried.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// When the next attempt starts (RFC 3339), while a retry waits out its backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An image by digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ImageRef {
    /// Repository without tag or digest.
    pub repository: String,
    /// sha256:<hex> digest of the image manifest.
    pub digest: String,
}

/// Where the signature of the released image is stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureRef {
    /// Registry reference of the signature, <repo>:sha256-<hex>.sig.
    pub reference: String,
    /// Registry reference of the gates attestation, <repo>:sha256-<hex>.att.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// Identifier of the signing key (sha256 of its public key).
    pub key_id: String,
    /// When the image was signed (RFC 3339).
    pub signed_at: String,
    /// Digest of the signature manifest as pushed; while the signature tag still names it, the check before the rollout needs no second fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// The sigstore bundles written as OCI referrers (signature, then attestation), when the pipeline's format includes bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<String>,
    /// The model artifact's own signature (spec.model.artifact), <repo>:sha256-<hex>.sig or its bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Observed state of a ModelRelease.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelReleaseStatus {
    /// Where the release stands.
    #[serde(default)]
    pub phase: Phase,
    /// When the release entered its phase (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, GatesPassed, Signed and RolledOut, following the kstatus convention.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per stage, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// Gates passed out of pre-deploy gates, e.g. 3/4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates_summary: Option<String>,
    /// The image the build stage produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// The signature pushed for the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRef>,
    /// Container image of the target before the rollout; what a rollback restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_image: Option<String>,
    /// The rollout to the target Deployment, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The latest scheduled re-audit of this release, once run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescan: Option<RescanStatus>,
    /// The SecurePipeline as it was when the release started; this release is judged, signed and rolled out by it, whatever later edits say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSnapshot>,
}

/// A copy of the pipeline a release started with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSnapshot {
    /// metadata.generation of the SecurePipeline when it was copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Its spec at that generation.
    #[schemars(schema_with = "opaque_object")]
    pub spec: crate::api::SecurePipelineSpec,
}

/// An object the API server stores as given: the snapshot was validated as a SecurePipeline.
fn opaque_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// The rollout of a release's image to its target Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The Deployment rolled out.
    pub deployment: String,
    /// The image set on the container, repository@sha256:digest.
    pub image: String,
    /// Value of the pod template's sluice.dev/release annotation before the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_release: Option<String>,
    /// URL of the Service in front of the Deployment, given to post-deploy stages as TARGET_URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// When the image was applied.
    pub started_at: String,
    /// When the Deployment reported the rollout complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Why previousImage was restored, once a rollback started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// When previousImage was applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_started_at: Option<String>,
    /// Since when the Deployment has been unhealthy while verifying (RFC 3339); cleared when it recovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since: Option<String>,
    /// The condition reason the rollback ends with (RolledBack, or Vulnerable after a rescan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_cause: Option<String>,
    /// The model reference given to the container (env SLUICE_MODEL_REF), when the release binds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// SLUICE_MODEL_REF of the container before the rollout, restored by a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_model: Option<String>,
}

/// The latest scheduled re-audit of a released revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RescanStatus {
    /// Scheduled time of the rescan (RFC 3339).
    pub scheduled_at: String,
    /// The re-run stages, judged by the same gates.
    #[serde(default)]
    pub stages: Vec<StageStatus>,
}
