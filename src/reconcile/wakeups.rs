//! Which releases a change wakes. Waking every unfinished sibling of a Deployment on every
//! change cost ~58 reconciles per release under load; these wake only the releases whose next
//! step the change can unblock.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{ResourceExt, runtime::reflector::ObjectRef};

use crate::{
    api::{
        ModelRelease, Phase,
        conditions::{self, reason},
    },
    rollout::{self, release_key},
};

fn ended(r: &ModelRelease) -> bool {
    r.status.as_ref().is_some_and(|s| s.phase.is_final())
}

fn ready_reason(r: &ModelRelease) -> Option<&str> {
    let status = r.status.as_ref()?;
    conditions::get(&status.conditions, conditions::READY).map(|c| c.reason.as_str())
}

fn targets(r: &ModelRelease, ns: Option<&str>, deployment: &str) -> bool {
    r.namespace().as_deref() == ns && r.spec.target.deployment == deployment
}

/// The newest release of `deployment` in `ns` that waits for its turn: when the claim comes
/// free it is the one that goes; when it ends, its own change wakes the next.
fn newest_waiting(
    ns: Option<&str>,
    deployment: &str,
    all: &[Arc<ModelRelease>],
) -> Option<ObjectRef<ModelRelease>> {
    all.iter()
        .filter(|r| targets(r, ns, deployment) && !ended(r))
        .filter(|r| ready_reason(r) == Some(reason::WAITING_FOR_ROLLOUT))
        .max_by_key(|r| release_key(r))
        .map(|r| ObjectRef::from_obj(&**r))
}

/// Whether `r` waits past its stages: for its turn on the Deployment, or for approval.
fn past_its_stages(r: &ModelRelease) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| s.phase == Phase::AwaitingApproval)
        || ready_reason(r) == Some(reason::WAITING_FOR_ROLLOUT)
}

/// A release changed. Once it is `Released`, every sibling past its stages (the older ones are
/// now superseded, a newer one may go); once it ended otherwise, the newest sibling waiting for
/// the turn. Each of those, when it ends, wakes the next.
pub fn after_release_change(
    changed: &ModelRelease,
    all: &[Arc<ModelRelease>],
) -> Vec<ObjectRef<ModelRelease>> {
    if !ended(changed) {
        return Vec::new();
    }
    let ns = changed.namespace();
    let deployment = &changed.spec.target.deployment;
    let name = changed.name_any();
    let released = changed.status.as_ref().map(|s| s.phase) == Some(Phase::Released);
    if released {
        return all
            .iter()
            .filter(|r| targets(r, ns.as_deref(), deployment) && !ended(r))
            .filter(|r| r.name_any() != name && past_its_stages(r))
            .map(|r| ObjectRef::from_obj(&**r))
            .collect();
    }
    newest_waiting(ns.as_deref(), deployment, all)
        .filter(|r| r.name != name)
        .into_iter()
        .collect()
}

/// A Deployment changed: the release holding its rollout claim, the releases stalled because
/// it (or its container) was missing, and, when nobody holds the claim, the newest waiting one.
pub fn after_deployment_change(
    dep: &Deployment,
    all: &[Arc<ModelRelease>],
) -> Vec<ObjectRef<ModelRelease>> {
    let ns = dep.namespace();
    let name = dep.name_any();
    let claim = rollout::claim_of(dep);
    let mut woken: Vec<ObjectRef<ModelRelease>> = all
        .iter()
        .filter(|r| targets(r, ns.as_deref(), &name) && !ended(r))
        .filter(|r| {
            let holder = claim
                .as_ref()
                .is_some_and(|c| r.metadata.uid.as_deref() == Some(c.uid.as_str()));
            let stalled = matches!(
                ready_reason(r),
                Some(reason::TARGET_NOT_FOUND | reason::CONTAINER_NOT_FOUND)
            );
            // Gate mode waits for the Deployment's owner to set the admitted digest.
            let gated = r.spec.target.mode == crate::api::release::TargetMode::Gate;
            holder || stalled || gated
        })
        .map(|r| ObjectRef::from_obj(&**r))
        .collect();
    if claim.is_none() {
        woken.extend(newest_waiting(ns.as_deref(), &name, all));
    }
    woken
}

/// Which release events concern the release's pipeline: its status names the newest release
/// and its rescans and history pruning look at ended ones, so a release's first sight and its end
/// wake the pipeline; the steps in between (stages, signing, rollout: ~16 events per release) do
/// not. Each pipeline reconcile reads its Tasks and Secret from the API server.
#[derive(Default)]
pub struct PipelineWakeups {
    /// UIDs of releases seen and not yet ended.
    running: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl PipelineWakeups {
    /// Whether this event of `r` should wake its pipeline.
    pub fn concerns(&self, r: &ModelRelease) -> bool {
        let uid = r.uid().unwrap_or_default();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if ended(r) {
            // Its end (or a finished release seen again after a restart or relist).
            running.remove(&uid);
            return true;
        }
        running.insert(uid)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_pipeline_hears_of_a_release_when_it_appears_and_when_it_ends_only() {
        let wake = PipelineWakeups::default();
        let mut r: ModelRelease = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "ModelRelease",
            "metadata": {"name": "r1", "namespace": "ml", "uid": "u1"},
            "spec": {"pipelineRef": {"name": "p"}, "revision": "abc",
                     "target": {"deployment": "d", "container": "c"}}
        }))
        .expect("release");
        assert!(wake.concerns(&r), "first sight");
        assert!(!wake.concerns(&r), "a step in between");
        let mut status = crate::api::ModelReleaseStatus {
            phase: Phase::Signing,
            ..Default::default()
        };
        r.status = Some(status.clone());
        assert!(!wake.concerns(&r), "still running");
        status.phase = Phase::Released;
        r.status = Some(status);
        assert!(wake.concerns(&r), "its end");
        assert!(
            wake.concerns(&r),
            "an ended release seen again (relist) is cheap and rare"
        );
        r.metadata.uid = Some("u2".into());
        r.status = None;
        assert!(wake.concerns(&r), "another release");
    }
    use super::*;
    use crate::{api::ModelReleaseStatus, fixtures};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn release(name: &str, second: i64, phase: Phase, why: &str) -> Arc<ModelRelease> {
        let mut r = fixtures::release();
        r.metadata.name = Some(name.into());
        r.metadata.uid = Some(format!("uid-{name}"));
        r.metadata.creation_timestamp = Some(Time(
            jiff::Timestamp::from_second(1_700_000_000 + second).expect("timestamp"),
        ));
        r.status = Some(ModelReleaseStatus {
            phase,
            conditions: vec![Condition {
                type_: conditions::READY.into(),
                status: "False".into(),
                reason: why.into(),
                message: String::new(),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..ModelReleaseStatus::default()
        });
        Arc::new(r)
    }

    fn names(refs: &[ObjectRef<ModelRelease>]) -> Vec<&str> {
        refs.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn a_released_release_wakes_the_siblings_past_their_stages_another_end_only_the_newest() {
        let all = vec![
            release("r1", 1, Phase::Released, reason::RELEASED),
            release("r2", 2, Phase::Signing, reason::WAITING_FOR_ROLLOUT),
            release("r3", 3, Phase::Signing, reason::WAITING_FOR_ROLLOUT),
            release("r4", 4, Phase::Running, "StagesRunning"),
            release("r5", 0, Phase::AwaitingApproval, "AwaitingApproval"),
        ];
        // Released: the waiting and the approval-pending ones (older ones are now superseded).
        assert_eq!(
            names(&after_release_change(&all[0], &all)),
            ["r2", "r3", "r5"]
        );
        // Blocked: only the newest one waiting for the turn.
        let blocked = release("r6", 6, Phase::Blocked, "Blocked");
        assert_eq!(names(&after_release_change(&blocked, &all)), ["r3"]);
        // A change of a release still running wakes nobody.
        assert!(after_release_change(&all[3], &all).is_empty());
    }

    #[test]
    fn a_deployment_change_wakes_the_claim_holder_and_the_stalled_only() {
        let holder = release("r1", 1, Phase::RollingOut, "RollingOut");
        let all = vec![
            holder.clone(),
            release("r2", 2, Phase::Signing, reason::WAITING_FOR_ROLLOUT),
            release("r3", 3, Phase::Signing, reason::TARGET_NOT_FOUND),
            release("r4", 4, Phase::Running, "StagesRunning"),
        ];
        let mut dep = Deployment::default();
        dep.metadata.name = Some("predictor".into());
        dep.metadata.namespace = Some("evip".into());
        dep.metadata.annotations = Some(
            [(
                rollout::ANNOTATION_CLAIM.to_string(),
                rollout::claim_value(&holder),
            )]
            .into(),
        );
        assert_eq!(names(&after_deployment_change(&dep, &all)), ["r1", "r3"]);
        // Nobody holds the claim: the newest waiting release is woken too.
        dep.metadata.annotations = None;
        assert_eq!(names(&after_deployment_change(&dep, &all)), ["r3", "r2"]);
    }
}
