//! Pure rollout decisions: how far a Deployment's rollout got, the server-side apply that sets one
//! container's image, whose turn it is to roll out a Deployment, and whether a digest is approved.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::{
    ANNOTATION_APPROVED_DIGEST, ANNOTATION_RELEASE, ModelRelease, Phase,
    conditions::{self, reason},
    release::Approval,
};

/// How far a Deployment's rollout got, as `kubectl rollout status` judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every replica runs the new template and is available.
    Complete,
    /// Still rolling; the message says what is awaited.
    InProgress(String),
    /// The Deployment controller gave up (`ProgressDeadlineExceeded`).
    Failed(String),
}

/// The rollout state of `dep` at `now`. The Deployment controller carries a
/// `ProgressDeadlineExceeded` condition over into the next rollout until that one progresses, so
/// for a rollout applied at `since` the condition counts only once the deadline has elapsed since.
pub fn progress(dep: &Deployment, since: Option<Timestamp>, now: Timestamp) -> Progress {
    let generation = dep.metadata.generation.unwrap_or(0);
    let status = dep.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return Progress::InProgress(format!(
            "waiting for the Deployment controller to observe generation {generation}"
        ));
    }
    let deadline_seconds = dep
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let deadline_passed = since
        .is_none_or(|since| now.duration_since(since).as_secs() >= i64::from(deadline_seconds));
    let deadline = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = deadline.filter(|_| deadline_passed) {
        return Progress::Failed(format!(
            "Deployment {} exceeded its progress deadline: {}",
            dep.name_any(),
            c.message.clone().unwrap_or_default()
        ));
    }
    let wanted = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < wanted {
        Progress::InProgress(format!("{updated} of {wanted} replicas updated"))
    } else if total > updated {
        Progress::InProgress(format!(
            "{} old replicas pending termination",
            total - updated
        ))
    } else if available < updated {
        Progress::InProgress(format!(
            "{available} of {updated} updated replicas available"
        ))
    } else {
        Progress::Complete
    }
}

/// The image of `container` in the Deployment's pod template.
pub fn container_image(dep: &Deployment, container: &str) -> Option<String> {
    dep.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)
        .map(|c| c.image.clone().unwrap_or_default())
}

/// The release named by the pod template's annotation.
pub fn template_release(dep: &Deployment) -> Option<String> {
    dep.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(ANNOTATION_RELEASE)
        .cloned()
}

/// The server-side apply body that owns only `container`'s image and the pod template's release
/// annotation; without `release`, Sluice gives the annotation up.
pub fn image_apply(deployment: &str, container: &str, image: &str, release: Option<&str>) -> Value {
    let mut template = json!({"spec": {"containers": [{"name": container, "image": image}]}});
    if let Some(release) = release {
        template["metadata"] = json!({"annotations": {ANNOTATION_RELEASE: release}});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment},
        "spec": {"template": template},
    })
}

/// The URL of the first Service (by name) whose selector picks the Deployment's pods.
pub fn service_url(dep: &Deployment, services: &[Service]) -> Option<String> {
    let labels: BTreeMap<String, String> = dep
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .clone()
        .unwrap_or_default();
    let mut matching: Vec<&Service> = services
        .iter()
        .filter(|s| {
            let selector = s.spec.as_ref().and_then(|sp| sp.selector.as_ref());
            selector.is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
        })
        .collect();
    matching.sort_by_key(|s| s.name_any());
    let svc = matching.first()?;
    let port = svc
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .first()
        .map_or(80, |p| p.port);
    Some(format!(
        "http://{}.{}.svc.cluster.local:{port}",
        svc.name_any(),
        svc.namespace().unwrap_or_default()
    ))
}

/// Whose turn it is to roll out the target Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// This release may roll out.
    Go,
    /// Another release of the same Deployment is rolling out.
    Wait(String),
    /// A newer release of the same Deployment passed its gates.
    Superseded(String),
}

fn newer(a: &ModelRelease, b: &ModelRelease) -> bool {
    let key = |r: &ModelRelease| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.name_any(),
        )
    };
    key(a) > key(b)
}

/// Decides the turn of `me` among the releases in its namespace. Only releases that have not
/// started their rollout can be superseded, so an older one never overwrites a newer one.
pub fn turn(me: &ModelRelease, all: &[ModelRelease]) -> Turn {
    let rivals = all.iter().filter(|r| {
        r.name_any() != me.name_any() && r.spec.target.deployment == me.spec.target.deployment
    });
    let mut newest_passed: Option<&ModelRelease> = None;
    for r in rivals {
        let status = r.status.clone().unwrap_or_default();
        if matches!(
            status.phase,
            Phase::RollingOut | Phase::Verifying | Phase::RollingBack
        ) {
            return Turn::Wait(r.name_any());
        }
        let passed = conditions::is_true(&status.conditions, conditions::GATES_PASSED);
        if passed && newer(r, me) && newest_passed.is_none_or(|n| newer(r, n)) {
            newest_passed = Some(r);
        }
    }
    match newest_passed {
        Some(r) => Turn::Superseded(r.name_any()),
        None => Turn::Go,
    }
}

/// Checks `approval: manual`: the annotation must name exactly the signed digest. Returns the
/// condition reason and message when the release must wait.
pub fn approval_pending(release: &ModelRelease, digest: &str) -> Option<(&'static str, String)> {
    if release.spec.approval != Approval::Manual {
        return None;
    }
    let name = release.name_any();
    match release.annotations().get(ANNOTATION_APPROVED_DIGEST) {
        Some(d) if d == digest => None,
        Some(other) => Some((
            reason::APPROVAL_DIGEST_MISMATCH,
            format!(
                "{ANNOTATION_APPROVED_DIGEST} is {other}, but the signed digest is {digest}; an approval releases only the digest it names: run `sluice approve {name}` after checking {digest}"
            ),
        )),
        None => Some((
            reason::AWAITING_APPROVAL,
            format!(
                "signed {digest}; waiting for approval: `sluice approve {name}` (or annotate {ANNOTATION_APPROVED_DIGEST}={digest})"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    use super::*;
    use crate::fixtures;

    fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("predictor".into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..DeploymentSpec::default()
            }),
            status: Some(status),
        }
    }

    fn status(observed: i64, updated: i32, total: i32, available: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            updated_replicas: Some(updated),
            replicas: Some(total),
            available_replicas: Some(available),
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn progress_reads_the_deployment_status_like_kubectl_rollout_status() {
        let now = Timestamp::now();
        assert!(
            matches!(progress(&deployment(3, status(2, 2, 2, 2)), None, now), Progress::InProgress(m) if m.contains("generation 3"))
        );
        assert!(
            matches!(progress(&deployment(3, status(3, 1, 3, 2)), None, now), Progress::InProgress(m) if m.contains("1 of 2"))
        );
        assert!(
            matches!(progress(&deployment(3, status(3, 2, 3, 2)), None, now), Progress::InProgress(m) if m.contains("old replicas"))
        );
        assert!(
            matches!(progress(&deployment(3, status(3, 2, 2, 1)), None, now), Progress::InProgress(m) if m.contains("available"))
        );
        assert_eq!(
            progress(&deployment(3, status(3, 2, 2, 2)), None, now),
            Progress::Complete
        );
    }

    #[test]
    fn a_deadline_exceeded_counts_once_the_deadline_elapsed_since_the_apply() {
        let applied: Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
        let mut s = status(3, 1, 3, 2);
        s.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"p-1\" has timed out progressing.".into()),
            last_update_time: Some(Time(applied)),
            ..DeploymentCondition::default()
        }]);
        let mut dep = deployment(3, s);
        if let Some(spec) = dep.spec.as_mut() {
            spec.progress_deadline_seconds = Some(30);
        }
        let at = |secs: i64| applied + jiff::SignedDuration::from_secs(secs);
        assert!(
            matches!(progress(&dep, None, at(1)), Progress::Failed(m) if m.contains("timed out"))
        );
        assert!(matches!(
            progress(&dep, Some(applied), at(29)),
            Progress::InProgress(_)
        ));
        assert!(matches!(
            progress(&dep, Some(applied), at(30)),
            Progress::Failed(_)
        ));
    }

    #[test]
    fn the_apply_body_owns_only_the_image_and_the_release_annotation() {
        let body = image_apply("predictor", "server", "r/x@sha256:ab", Some("predictor-42"));
        assert_eq!(
            body,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "predictor"},
                "spec": {"template": {
                    "metadata": {"annotations": {"sluice.dev/release": "predictor-42"}},
                    "spec": {"containers": [{"name": "server", "image": "r/x@sha256:ab"}]}}}})
        );
        let restore = image_apply("predictor", "server", "r/x:old", None);
        assert!(restore["spec"]["template"].get("metadata").is_none());
    }

    fn release(name: &str, created: &str, phase: Phase, gates_passed: bool) -> ModelRelease {
        let mut r = fixtures::release();
        r.metadata.name = Some(name.into());
        r.metadata.creation_timestamp = Some(Time(created.parse().expect("time")));
        let mut status = crate::api::ModelReleaseStatus {
            phase,
            ..Default::default()
        };
        if gates_passed {
            let now = Time(created.parse().expect("time"));
            conditions::set(
                &mut status.conditions,
                conditions::GATES_PASSED,
                true,
                "GatesPassed",
                "",
                Some(1),
                &now,
            );
        }
        r.status = Some(status);
        r
    }

    #[test]
    fn one_rollout_per_deployment_and_the_newest_passed_release_wins() {
        let old = release("p-1", "2026-11-23T10:00:00Z", Phase::Signing, true);
        let new = release("p-2", "2026-11-23T11:00:00Z", Phase::Running, false);
        assert_eq!(turn(&old, &[old.clone(), new.clone()]), Turn::Go);
        let new_passed = release("p-2", "2026-11-23T11:00:00Z", Phase::Signing, true);
        assert_eq!(
            turn(&old, &[old.clone(), new_passed.clone()]),
            Turn::Superseded("p-2".into())
        );
        assert_eq!(
            turn(&new_passed, &[old.clone(), new_passed.clone()]),
            Turn::Go
        );
        let rolling = release("p-1", "2026-11-23T10:00:00Z", Phase::RollingOut, true);
        assert_eq!(
            turn(&new_passed, &[rolling, new_passed.clone()]),
            Turn::Wait("p-1".into())
        );
        let mut elsewhere = new_passed.clone();
        elsewhere.spec.target.deployment = "other".into();
        assert_eq!(turn(&old, &[old.clone(), elsewhere]), Turn::Go);
    }

    #[test]
    fn manual_approval_binds_to_the_exact_digest() {
        let digest = "sha256:aa";
        let mut r = fixtures::release();
        assert_eq!(approval_pending(&r, digest), None);
        r.spec.approval = Approval::Manual;
        assert_eq!(
            approval_pending(&r, digest).map(|p| p.0),
            Some(reason::AWAITING_APPROVAL)
        );
        r.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_APPROVED_DIGEST.to_string(),
            "sha256:bb".to_string(),
        )]));
        assert_eq!(
            approval_pending(&r, digest).map(|p| p.0),
            Some(reason::APPROVAL_DIGEST_MISMATCH)
        );
        r.metadata.annotations = Some(BTreeMap::from([(
            ANNOTATION_APPROVED_DIGEST.to_string(),
            digest.to_string(),
        )]));
        assert_eq!(approval_pending(&r, digest), None);
    }
}
