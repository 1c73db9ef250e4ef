//! Condition types and reasons, and the one function that updates a condition list.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The resource is fully reconciled and working.
pub const READY: &str = "Ready";
/// The controller is working toward the desired state (kstatus "abnormal-true").
pub const RECONCILING: &str = "Reconciling";
/// Progress is impossible without a change by the user (kstatus "abnormal-true").
pub const STALLED: &str = "Stalled";
/// Every pre-deploy gate of the release passed.
pub const GATES_PASSED: &str = "GatesPassed";
/// The released image is signed in the registry.
pub const SIGNED: &str = "Signed";
/// The target Deployment runs the signed digest.
pub const ROLLED_OUT: &str = "RolledOut";
/// A scheduled rescan found what the gates now block in the released image.
pub const VULNERABLE: &str = "Vulnerable";

/// Reasons, one word each, as Events and conditions show them.
pub mod reason {
    /// Stages are running.
    pub const PROGRESSING: &str = "Progressing";
    /// The referenced SecurePipeline does not exist.
    pub const PIPELINE_NOT_FOUND: &str = "PipelineNotFound";
    /// The referenced SecurePipeline is invalid.
    pub const PIPELINE_INVALID: &str = "PipelineInvalid";
    /// A referenced Task does not exist.
    pub const TASK_NOT_FOUND: &str = "TaskNotFound";
    /// The signing Secret does not exist.
    pub const SIGNING_SECRET_NOT_FOUND: &str = "SigningSecretNotFound";
    /// A gate blocked the release.
    pub const GATE_BLOCKED: &str = "GateBlocked";
    /// Every gate passed.
    pub const GATES_PASSED: &str = "GatesPassed";
    /// Gates are still being evaluated.
    pub const GATES_PENDING: &str = "GatesPending";
    /// The image is being signed.
    pub const SIGNING: &str = "Signing";
    /// The image is signed.
    pub const SIGNED: &str = "Signed";
    /// Signed; the rollout starts next.
    pub const AWAITING_ROLLOUT: &str = "AwaitingRollout";
    /// `approval: manual` and no approval for the signed digest yet.
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// The approval annotation names another digest.
    pub const APPROVAL_DIGEST_MISMATCH: &str = "ApprovalDigestMismatch";
    /// The target Deployment does not exist in the release's namespace.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// The target Deployment has no container of the given name.
    pub const CONTAINER_NOT_FOUND: &str = "ContainerNotFound";
    /// Another release of the same Deployment is rolling out.
    pub const WAITING_FOR_ROLLOUT: &str = "WaitingForRollout";
    /// A newer release of the same Deployment passed its gates first.
    pub const SUPERSEDED: &str = "Superseded";
    /// The signature in the registry did not verify just before the rollout.
    pub const SIGNATURE_INVALID: &str = "SignatureInvalid";
    /// Blocked: spec.model.artifact names a digest that is not in its repository.
    pub const MODEL_ARTIFACT_MISSING: &str = "ModelArtifactMissing";
    /// Blocked: the model artifact's signature did not verify just before the rollout.
    pub const MODEL_SIGNATURE_INVALID: &str = "ModelSignatureInvalid";
    /// Signing: waiting for Tekton Chains to sign the image (`signer: chains`).
    pub const WAITING_FOR_CHAINS: &str = "WaitingForChains";
    /// Blocked: Tekton Chains did not sign the image in time.
    pub const CHAINS_SIGNATURE_MISSING: &str = "ChainsSignatureMissing";
    /// Blocked: Tekton Chains reported that it failed to sign the build.
    pub const CHAINS_SIGNING_FAILED: &str = "ChainsSigningFailed";
    /// The Deployment is rolling out the signed digest.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Post-deploy stages are running against the rolled-out release.
    pub const VERIFYING: &str = "Verifying";
    /// The release runs and passed every gate.
    pub const RELEASED: &str = "Released";
    /// The rollout did not complete.
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
    /// The previous image is being restored.
    pub const ROLLING_BACK: &str = "RollingBack";
    /// The Deployment runs the release's image on every replica.
    pub const ROLLED_OUT: &str = "RolledOut";
    /// The previous image was restored.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Restoring the previous image failed too.
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
    /// The rollout did not complete within Sluice's own deadline.
    pub const ROLLOUT_DEADLINE_EXCEEDED: &str = "RolloutDeadlineExceeded";
    /// Pods of the new ReplicaSet went unavailable while the release was verified.
    pub const UNHEALTHY: &str = "Unhealthy";
    /// Someone else changed the Deployment's image during the rollout.
    pub const IMAGE_REPLACED: &str = "ImageReplaced";
    /// The release lost its claim on the Deployment during the rollout.
    pub const CLAIM_LOST: &str = "ClaimLost";
    /// The ModelRelease was deleted while its image was rolling out or being verified.
    pub const DELETED: &str = "Deleted";
    /// A rescan found what the gates now block.
    pub const VULNERABLE: &str = "Vulnerable";
    /// `spec.rescan` cannot be used.
    pub const RESCAN_INVALID: &str = "RescanInvalid";
    /// The latest rescan passed every gate.
    pub const RESCAN_PASSED: &str = "RescanPassed";
    /// Gate mode: the signature verified; pods running the digest are admitted.
    pub const ADMITTED: &str = "Admitted";
    /// Gate mode: admitted; waiting for the Deployment's owner to set the digest.
    pub const WAITING_FOR_DEPLOYMENT: &str = "WaitingForDeployment";
    /// The pipeline names no signing key.
    pub const SIGNING_NOT_CONFIGURED: &str = "SigningNotConfigured";
    /// The pipeline is valid and ready for releases.
    pub const VALID: &str = "Valid";
}

/// Where an object stands in kstatus terms (as Flux and Argo CD read it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Working toward the desired state: Reconciling.
    Progressing,
    /// Cannot go on without a change by the user: Stalled.
    Stalled,
    /// Done and healthy: Ready.
    Ready,
    /// Ended without becoming ready; `Stalled` when it is a failure.
    Ended {
        /// Whether the end is a failure.
        failed: bool,
    },
}

/// The one setter of the kstatus trio: Ready, Reconciling and Stalled always change together, with
/// the same reason and message, for both kinds. Returns whether any of them changed.
pub fn set_health(
    conditions: &mut Vec<Condition>,
    health: Health,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let (ready, reconciling, stalled) = match health {
        Health::Progressing => (false, true, false),
        Health::Stalled => (false, false, true),
        Health::Ready => (true, false, false),
        Health::Ended { failed } => (false, false, failed),
    };
    [
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
    ]
    .into_iter()
    .fold(false, |changed, (type_, value)| {
        set(conditions, type_, value, reason, message, generation, now) || changed
    })
}

/// Sets one condition, keeping lastTransitionTime when its status did not change.
/// Returns whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    let wanted = |last: Time| Condition {
        type_: type_.to_string(),
        status: status.clone(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time: last,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let last = if existing.status == status {
                existing.last_transition_time.clone()
            } else {
                now.clone()
            };
            let new = wanted(last);
            let changed = *existing != new;
            *existing = new;
            changed
        }
        None => {
            conditions.push(wanted(now.clone()));
            true
        }
    }
}

/// Keeps the persisted lastTransitionTime of every condition whose status did not change since
/// `persisted`, however many times it was rewritten in between during one reconcile.
pub fn keep_transition_times(conditions: &mut [Condition], persisted: &[Condition]) {
    for c in conditions.iter_mut() {
        if let Some(old) = persisted
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// Finds a condition by type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid"))
    }

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let mut c = Vec::new();
        assert!(set(&mut c, READY, false, "A", "a", Some(1), &at(10)));
        assert!(set(&mut c, READY, false, "B", "b", Some(1), &at(20)));
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(c[0].reason, "B");
        assert!(!set(&mut c, READY, false, "B", "b", Some(1), &at(30)));
        assert!(set(&mut c, READY, true, "B", "b", Some(1), &at(40)));
        assert_eq!(c[0].last_transition_time, at(40));
        assert!(is_true(&c, READY));
        assert_eq!(c.len(), 1);
    }
}
