//! `SecurePipeline`: the policy every release of one application must pass.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Toleration, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most stages one pipeline may declare; keeps CEL validation cost bounded.
pub const MAX_STAGES: usize = 32;

/// The security stages every release of one application must pass, and how to sign what passed.
// Each printcolumn(...) repeats type_; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "SecurePipeline",
    doc = "The security stages every release of one application must pass, and how the image that passed is signed.",
    namespaced,
    status = "SecurePipelineStatus",
    shortname = "sp",
    category = "sluice",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Stages", type_ = "integer", json_path = ".status.stageCount"),
    printcolumn(
        name = "Last Release",
        type_ = "string",
        json_path = ".status.lastRelease"
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
    validation = Rule::new("self.stages.all(s, self.stages.exists_one(t, t.name == s.name))").message("stage names must be unique within a pipeline"),
    validation = Rule::new("self.stages.all(s, !has(s.runAfter) || s.runAfter.all(r, self.stages.exists(t, t.name == r)))").message("every runAfter entry must name a stage of this pipeline"),
    validation = Rule::new("self.stages.filter(s, has(s.produces)).size() <= 1").message("at most one stage may declare produces: image"),
    validation = Rule::new("!has(self.rescan) || self.rescan.stages.all(r, self.stages.exists(t, t.name == r))").message("every rescan stage must name a stage of this pipeline"),
    validation = Rule::new("self.stages.all(s, (has(s.when) && s.when == 'postDeploy') || !has(s.runAfter) || s.runAfter.all(r, !self.stages.exists(t, t.name == r && has(t.when) && t.when == 'postDeploy')))").message("a preDeploy stage cannot runAfter a postDeploy stage")
)]
pub struct SecurePipelineSpec {
    /// Where the application's source lives; every stage receives it as SOURCE_URL.
    pub source: SourceSpec,
    /// The image repository the build stage pushes to and Sluice signs in.
    pub image: ImageSpec,
    /// The stages of the release, a DAG ordered by runAfter; each becomes one Tekton TaskRun per release.
    #[schemars(length(min = 1, max = 32))]
    pub stages: Vec<Stage>,
    /// The cosign key pair that signs every image whose gates passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
    /// Accepted risks: finding IDs that do not count against a gate until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub exceptions: Vec<Exception>,
    /// Re-run some stages on a schedule against the revision currently released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescan: Option<RescanSpec>,
    /// How many finished releases keep their TaskRuns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySpec>,
    /// How long Sluice lets a rollout (or rollback) take before it gives up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
    /// ServiceAccount the stage TaskRuns run as (Tekton's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
}

/// Source repository of the application.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Git URL of the application's source.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Default branch or tag; a ModelRelease names the exact commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub revision: Option<String>,
}

/// Image repository of the application.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository without tag or digest, e.g. registry.example/evip/predictor.
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+$")
    )]
    pub repository: String,
    /// A kubernetes.io/dockerconfigjson Secret with credentials for the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectRef>,
}

/// A reference to an object in the pipeline's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One security stage: a Tekton Task run once per release, and the gate its results must pass.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.produces) || !has(self.when) || self.when == 'preDeploy'").message("a postDeploy stage cannot produce the image"))]
pub struct Stage {
    /// Stage name, a DNS label unique in the pipeline; the TaskRun is named <release>-<stage>.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The Tekton Task this stage runs.
    pub task_ref: TaskRef,
    /// Parameters passed to the Task in addition to SOURCE_URL, SOURCE_REVISION, IMAGE and IMAGE_DIGEST.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub params: Vec<Param>,
    /// Workspaces bound to the Task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub workspaces: Vec<WorkspaceBinding>,
    /// Stages that must pass their gates before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub run_after: Vec<String>,
    /// What the stage's results must show for the release to go on; a stage without a gate passes when its TaskRun succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// preDeploy (default) runs before signing; postDeploy runs against the rolled-out candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<StageWhen>,
    /// Set to image on the stage that builds the image; Sluice reads its IMAGE_URL and IMAGE_DIGEST results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produces: Option<Produces>,
    /// Tekton timeout of the TaskRun, e.g. 30m or 1h0m0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// Where the stage's pod runs (the TaskRun's podTemplate), e.g. on a node set aside for builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<StagePodTemplate>,
}

/// The part of Tekton's podTemplate a stage may set: placement, and the node's network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagePodTemplate {
    /// Runs the stage's pod in the node's network namespace, e.g. a build that pushes to a registry on the node's loopback. Off by default: grant it only to stages whose Task you trust.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Node labels the pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tolerations: Vec<Toleration>,
}

impl Stage {
    /// Whether the stage runs after the rollout rather than before signing.
    pub fn is_post_deploy(&self) -> bool {
        self.when == Some(StageWhen::PostDeploy)
    }
}

/// When a stage runs relative to the rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StageWhen {
    /// Before signing: blocks the release before anything is deployed.
    PreDeploy,
    /// After the rollout: a blocked gate rolls the release back.
    PostDeploy,
}

/// What a stage produces for later stages.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Produces {
    /// The image to sign and roll out, from the IMAGE_URL and IMAGE_DIGEST results.
    Image,
}

/// A Tekton Task reference: a Task by name, or a remote resolver.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) != has(self.resolver)").message("taskRef needs exactly one of name or resolver"))]
pub struct TaskRef {
    /// Name of a Task in the release's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Kind of the referenced Task (Task by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub kind: Option<String>,
    /// Tekton remote resolver: cluster, bundles, git, hub or http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub resolver: Option<String>,
    /// Parameters of the resolver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub params: Vec<Param>,
}

/// A string parameter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Param {
    /// Parameter name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Parameter value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A Tekton workspace binding (the volume kinds a stage may use).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceBinding {
    /// Workspace name declared by the Task.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Sub-directory of the volume to expose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// A fresh empty directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDir>,
    /// An existing PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimRef>,
    /// A Secret mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolume>,
    /// A ConfigMap mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<LocalObjectRef>,
}

/// An emptyDir volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDir {
    /// Storage medium: "" (node disk) or Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// Size limit, a Kubernetes quantity such as 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

/// A PersistentVolumeClaim by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    /// Name of the claim.
    pub claim_name: String,
}

/// A Secret by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    /// Name of the Secret.
    pub secret_name: String,
}

/// What a stage's results must show. Both parts may be set; each is checked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tests) || has(self.findings) || has(self.quality)").message("a gate needs tests, findings or quality"))]
pub struct Gate {
    /// Reads the TEST_OUTPUT result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsGate>,
    /// Reads the FINDINGS result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<FindingsGate>,
    /// Reads the QUALITY result (coverage and lint issues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityGate>,
}

/// Gate on code quality: a coverage floor, per-level issue maximums, or both.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minCoverage) || has(self.maxIssues)").message("a quality gate needs minCoverage or maxIssues"))]
pub struct QualityGate {
    /// Lowest line coverage allowed, in percent (0 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub min_coverage: Option<f64>,
    /// Most issues allowed per level; a level left out is not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_issues: Option<IssueLimits>,
}

/// Per-level maximum counts of code-quality issues.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssueLimits {
    /// Most error-level issues allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<u32>,
    /// Most warning-level issues allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<u32>,
    /// Most info-level issues allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<u32>,
}

/// Gate on a test report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestsGate {
    /// Most failed tests allowed (0 by default).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_failures: u32,
    /// Fewest tests that must have run (passed, failed or warned); a run that collected fewer blocks (1 by default; 0 accepts an empty run).
    #[serde(default = "default_min_tests")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub min_tests: u32,
}

fn default_min_tests() -> u32 {
    1
}

/// Gate on security findings: a highest allowed severity, per-severity maximums, or both.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maxSeverity) || has(self.max)").message("a findings gate needs maxSeverity or max"))]
pub struct FindingsGate {
    /// Highest severity allowed; any finding above it blocks (none blocks on every finding). Unknown severities count as high.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_severity: Option<MaxSeverity>,
    /// Most findings allowed per severity; a severity left out is not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<SeverityLimits>,
}

/// The highest severity a findings gate allows.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum MaxSeverity {
    /// No finding at all is allowed.
    None,
    /// Low findings are allowed.
    Low,
    /// Low and medium findings are allowed.
    Medium,
    /// Everything but critical findings is allowed.
    High,
    /// Every finding is allowed (the gate only records them).
    Critical,
}

/// Per-severity maximum counts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeverityLimits {
    /// Most critical findings allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<u32>,
    /// Most high findings allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<u32>,
    /// Most medium findings allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<u32>,
    /// Most low findings allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<u32>,
    /// Most findings of unknown severity allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<u32>,
}

/// The key that signs released images: exactly one of a cosign key pair or an x509 key with its certificate chain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.secretRef), has(self.x509), has(self.kms), has(self.pkcs11)].filter(x, x).size() == 1").message("spec.signing needs exactly one signer: secretRef (a cosign key pair), x509 (a private key with its certificate chain), kms (a key that never leaves the KMS) or pkcs11 (a key in an HSM)"))]
#[x_kube(validation = Rule::new("!has(self.chains) || (has(self.signer) && self.signer == 'chains')").message("spec.signing.chains applies only with signer: chains"))]
pub struct SigningSpec {
    /// Secret with cosign.key, cosign.password and cosign.pub, as `cosign generate-key-pair k8s://` writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,
    /// A private key and its certificate chain; the signature carries the certificate and chain, as cosign's does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Signing>,
    /// A key held by a KMS, which signs without the key ever leaving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<KmsSigning>,
    /// A key held by an HSM, used through the PKCS#11 module the operator was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Signing>,
    /// Where signatures and the gates attestation go: legacy (cosign's .sig/.att tags, the default), bundle (sigstore bundles as OCI referrers of the image) or both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SignatureFormat>,
    /// Who signs the image: sluice (the default) or chains (Tekton Chains signs it; Sluice waits for that signature, verifies it and attaches only its gates attestation, signed by the signer above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<ImageSigner>,
    /// With signer chains: the public key Chains signs with and how long to wait for its signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chains: Option<ChainsSigning>,
}

/// Who signs the released image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ImageSigner {
    /// Sluice signs it with spec.signing's key.
    #[default]
    Sluice,
    /// Tekton Chains signs it; Sluice verifies that signature before the rollout.
    Chains,
}

/// How Sluice works beside Tekton Chains when Chains signs the image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainsSigning {
    /// Secret with cosign.pub, the public key of Chains' signing key (its signing-secrets or KMS key). When unset, the public key of the signer above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_ref: Option<LocalObjectRef>,
    /// How long to wait for Chains' signature once the image is built before the release is blocked; 600 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub timeout_seconds: Option<u32>,
}

/// How long a release waits for Chains' signature when `timeoutSeconds` is unset.
pub const DEFAULT_CHAINS_TIMEOUT_SECONDS: u32 = 600;

/// How signatures are stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SignatureFormat {
    /// cosign's `.sig` and `.att` tags.
    #[default]
    Legacy,
    /// Sigstore bundles (v0.3) as OCI 1.1 referrers.
    Bundle,
    /// Both.
    Both,
}

impl SignatureFormat {
    /// Whether the `.sig`/`.att` tags are written.
    pub fn legacy(self) -> bool {
        matches!(self, Self::Legacy | Self::Both)
    }

    /// Whether bundles are written.
    pub fn bundle(self) -> bool {
        matches!(self, Self::Bundle | Self::Both)
    }
}

/// Signing with an HSM key through PKCS#11; the key never leaves the token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs11Signing {
    /// Label of the token holding the key.
    #[schemars(length(min = 1, max = 32))]
    pub token_label: String,
    /// Label (CKA_LABEL) of the ECDSA P-256 private key and its public key.
    #[schemars(length(min = 1, max = 128))]
    pub key_label: String,
    /// Secret holding the user PIN under the key `pin`.
    pub pin_secret_ref: LocalObjectRef,
}

/// Signing with a KMS key: today the transit engine of a Vault-API server (HashiCorp Vault, OpenBao), as cosign's `hashivault://` keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmsSigning {
    /// The key, as cosign names it: hashivault://<transit key name>. The key must be ecdsa-p256.
    #[schemars(regex(pattern = r"^hashivault://[A-Za-z0-9_.-]{1,128}$"))]
    pub uri: String,
    /// Address of the server (VAULT_ADDR), e.g. https://vault.example:8200.
    #[schemars(regex(pattern = r"^https?://[A-Za-z0-9.:\[\]-]+/?$"))]
    pub address: String,
    /// Mount path of the transit engine (TRANSIT_SECRET_ENGINE_PATH); transit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$"))]
    pub transit_path: Option<String>,
    /// Secret holding the server token under the key `token`; it needs the transit sign and read policies for the key.
    pub token_secret_ref: LocalObjectRef,
}

/// Signing with an x509 certificate, without a transparency log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct X509Signing {
    /// Secret with x509.pem (the PKCS#8 or SEC1 ECDSA P-256 private key, optionally followed by the certificate and its chain, as Tekton Chains lays it out), and optionally cert.pem (the leaf certificate) and chain.pem (intermediates, then the root).
    pub secret_ref: LocalObjectRef,
}

/// Which signer `spec.signing` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignerKind {
    /// A cosign key pair.
    CosignKey,
    /// An x509 key and certificate chain.
    X509,
    /// A KMS key.
    Kms,
    /// An HSM key (PKCS#11).
    Pkcs11,
}

impl SigningSpec {
    /// Whether Tekton Chains signs the image (Sluice only attests and verifies).
    pub fn chains_signs(&self) -> bool {
        self.signer == Some(ImageSigner::Chains)
    }

    /// The signer and the Secret holding its material.
    pub fn signer(&self) -> (SignerKind, &str) {
        if let Some(k) = &self.kms {
            return (SignerKind::Kms, k.token_secret_ref.name.as_str());
        }
        if let Some(h) = &self.pkcs11 {
            return (SignerKind::Pkcs11, h.pin_secret_ref.name.as_str());
        }
        match (&self.secret_ref, &self.x509) {
            (_, Some(x)) => (SignerKind::X509, x.secret_ref.name.as_str()),
            (Some(r), None) => (SignerKind::CosignKey, r.name.as_str()),
            // Admission refuses this; an empty name reads as a missing Secret.
            (None, None) => (SignerKind::CosignKey, ""),
        }
    }
}

/// An accepted risk: one finding ID that does not count against gates until it expires.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exception {
    /// Finding ID as the scanner reports it, e.g. PYSEC-2024-48 or CVE-2024-1234.
    #[schemars(length(min = 1, max = 256))]
    pub id: String,
    /// Why the risk is accepted; required so every exception is reviewed.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// Last day (UTC, YYYY-MM-DD) on which the exception applies.
    #[schemars(regex(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"))]
    pub expires: String,
}

/// Scheduled re-audit of the released revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(r"self.schedule.matches('^@(yearly|annually|monthly|weekly|daily|hourly)$') || !self.schedule.matches('(^|[ ,]),|,( |$)') && self.schedule.matches('^ *(\\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)* +(\\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*( +(\\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*)? +[^ ]+ +[^ ]+ +[^ ]+ *$')").message("schedule needs 5 cron fields (6 with leading seconds) or @daily-style; seconds, minutes and hours must each be a list of '*', 'N' or 'N-M', each optionally '/STEP', and no field may have an empty list item"))]
pub struct RescanSpec {
    /// Cron schedule in UTC, e.g. "0 3 * * *".
    #[schemars(length(min = 6, max = 128))]
    pub schedule: String,
    /// Stages to re-run.
    #[schemars(length(min = 1, max = 32))]
    pub stages: Vec<String>,
    /// What a newly blocking finding does: mark the release Vulnerable (default) or also roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_finding: Option<OnFinding>,
}

/// Reaction to a rescan whose gate now blocks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnFinding {
    /// Set the Vulnerable condition and emit an event.
    Report,
    /// Also restore the last release that still passes.
    Rollback,
}

/// Sluice's own limits on a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// Seconds a rollout or rollback may take from the image write until every replica is available; past it the release rolls back (default 600).
    #[serde(default = "default_rollout_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub deadline_seconds: u32,
    /// Seconds the Deployment may stay unhealthy (a pod of the new ReplicaSet unready or crash-looping) while post-deploy stages run before the release rolls back (default 15).
    #[serde(default = "default_health_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub unhealthy_grace_seconds: u32,
}

/// The health grace when the pipeline sets none.
pub const DEFAULT_UNHEALTHY_GRACE_SECONDS: u32 = 15;

fn default_health_grace() -> u32 {
    DEFAULT_UNHEALTHY_GRACE_SECONDS
}

/// The rollout deadline when the pipeline sets none.
pub const DEFAULT_ROLLOUT_DEADLINE_SECONDS: u32 = 600;

fn default_rollout_deadline() -> u32 {
    DEFAULT_ROLLOUT_DEADLINE_SECONDS
}

impl SecurePipelineSpec {
    /// How long a Deployment may stay unhealthy while its release is verified, in seconds.
    pub fn unhealthy_grace_seconds(&self) -> u32 {
        self.rollout
            .as_ref()
            .map_or(DEFAULT_UNHEALTHY_GRACE_SECONDS, |r| {
                r.unhealthy_grace_seconds
            })
    }

    /// Sluice's rollout deadline for this pipeline, in seconds.
    pub fn rollout_deadline_seconds(&self) -> u32 {
        self.rollout
            .as_ref()
            .map_or(DEFAULT_ROLLOUT_DEADLINE_SECONDS, |r| r.deadline_seconds)
    }
}

/// Retention of finished releases' TaskRuns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// How many finished releases keep their TaskRuns; older ones are deleted, their verdicts stay in status.
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
}

/// Observed state of a SecurePipeline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurePipelineStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, following the kstatus convention.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of stages in the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_count: Option<u32>,
    /// Name of the newest ModelRelease of this pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_release: Option<String>,
    /// When the scheduled rescan last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rescan: Option<String>,
}
