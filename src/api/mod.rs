//! Custom resource types of the `sluice.dev/v1alpha1` API, their conditions and reasons.

pub mod conditions;
pub mod pipeline;
pub mod release;

pub use pipeline::{SecurePipeline, SecurePipelineSpec, SecurePipelineStatus, Stage};
pub use release::{ModelRelease, ModelReleaseSpec, ModelReleaseStatus, Phase};

/// The ModelRelease field selector naming its target Deployment (a CRD selectable field).
pub const FIELD_TARGET_DEPLOYMENT: &str = "spec.target.deployment";
/// Label on every TaskRun naming the ModelRelease it belongs to.
pub const LABEL_RELEASE: &str = "sluice.dev/release";
/// Label on every TaskRun naming its stage.
pub const LABEL_STAGE: &str = "sluice.dev/stage";
/// Label on every TaskRun naming the SecurePipeline of its release.
pub const LABEL_PIPELINE: &str = "sluice.dev/pipeline";
/// Field manager of every write Sluice makes.
pub const FIELD_MANAGER: &str = "sluice";
/// Pod-template annotation naming the ModelRelease whose image the pods run.
pub const ANNOTATION_RELEASE: &str = "sluice.dev/release";
/// ModelRelease annotation approving exactly one signed digest for rollout (`approval: manual`).
pub const ANNOTATION_APPROVED_DIGEST: &str = "sluice.dev/approved-digest";
/// Finalizer on a ModelRelease from the moment it may touch its Deployment until it has let go
/// of the rollout claim: deleting the release first undoes a rollout still in flight.
pub const FINALIZER_ROLLOUT: &str = "sluice.dev/rollout";
