//! Pure rollout decisions: how far a Deployment's rollout got, the server-side apply that sets one
//! container's image, whose turn it is to roll out a Deployment, and whether a digest is approved.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Container, Service},
};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::{
    api::{
        ANNOTATION_APPROVED_DIGEST, ANNOTATION_RELEASE, ModelRelease, Phase, conditions::reason,
        release::Approval,
    },
    gates::results::{is_sha256_digest, strip_tag_and_digest},
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
    let wanted = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    // Every replica updated and available is complete even under a deadline condition: the
    // controller flips that condition back only on its next sync of the Deployment, and a restore
    // to pods that never stopped running may bring none (a rollback then waited until Sluice's
    // own deadline).
    if updated >= wanted && total <= updated && available >= updated {
        return Progress::Complete;
    }
    if let Some(c) = deadline.filter(|_| deadline_passed) {
        return Progress::Failed(format!(
            "Deployment {} exceeded its progress deadline: {}",
            dep.name_any(),
            c.message.clone().unwrap_or_default()
        ));
    }
    if updated < wanted {
        Progress::InProgress(format!("{updated} of {wanted} replicas updated"))
    } else if total > updated {
        Progress::InProgress(format!(
            "{} old replicas pending termination",
            total - updated
        ))
    } else {
        Progress::InProgress(format!(
            "{available} of {updated} updated replicas available"
        ))
    }
}

/// The image of `container` in the Deployment's pod template.
pub fn container_image(dep: &Deployment, container: &str) -> Option<String> {
    container_of(dep, container).map(|c| c.image.clone().unwrap_or_default())
}

/// The container named `name` of the Deployment's pod template.
fn container_of<'a>(dep: &'a Deployment, name: &str) -> Option<&'a Container> {
    dep.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)
}

/// The environment variable that hands the server its model artifact, `repository@digest`.
pub const MODEL_ENV: &str = "SLUICE_MODEL_REF";

/// The value of `MODEL_ENV` on `container` (a literal value only; Sluice writes no other kind).
pub fn container_model(dep: &Deployment, container: &str) -> Option<String> {
    model_ref_of(container_of(dep, container)?)
}

/// The value of `MODEL_ENV` on a container (of a template or a pod), a literal value only.
pub fn model_ref_of(container: &Container) -> Option<String> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == MODEL_ENV)
        .and_then(|e| e.value.clone())
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
pub fn image_apply(
    deployment: &str,
    container: &str,
    image: &str,
    release: Option<&str>,
    model: Option<&str>,
) -> Value {
    let mut spec = json!({"name": container, "image": image});
    // Listed by name (a merge key): only this entry is Sluice's; a restore without a model
    // drops it, the container's other variables are untouched.
    if let Some(model) = model {
        spec["env"] = json!([{"name": MODEL_ENV, "value": model}]);
    }
    let mut template = json!({"spec": {"containers": [spec]}});
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

/// Deployment annotation naming the release that holds the rollout claim, as `<name>/<uid>`. Only
/// the holder writes the Deployment's image; the claim is taken and given back with a
/// resourceVersion precondition, so two releases can never both believe they hold it.
pub const ANNOTATION_CLAIM: &str = "sluice.dev/rollout-claim";

/// Who holds a Deployment's rollout claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Name of the holding ModelRelease.
    pub release: String,
    /// Its UID: a release deleted and created again under the same name is another holder.
    pub uid: String,
}

/// The claim value a release writes.
pub fn claim_value(release: &ModelRelease) -> String {
    format!(
        "{}/{}",
        release.name_any(),
        release.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The claim recorded on `dep`, if any.
pub fn claim_of(dep: &Deployment) -> Option<Claim> {
    let value = dep.annotations().get(ANNOTATION_CLAIM)?;
    let (release, uid) = value.rsplit_once('/')?;
    Some(Claim {
        release: release.to_string(),
        uid: uid.to_string(),
    })
}

/// Whether `release` holds the claim on `dep`.
pub fn holds_claim(dep: &Deployment, release: &ModelRelease) -> bool {
    claim_of(dep).is_some_and(|c| Some(c.uid.as_str()) == release.metadata.uid.as_deref())
}

/// A merge patch that sets (or, with None, removes) the claim, valid only against the
/// Deployment's `resource_version`: the API server answers 409 if anyone wrote it since.
pub fn claim_patch(resource_version: &str, value: Option<&str>, released: Option<&str>) -> Value {
    let mut annotations = json!({ANNOTATION_CLAIM: value});
    if let Some(released) = released {
        annotations[ANNOTATION_RELEASED] = json!(released);
    }
    json!({"metadata": {"resourceVersion": resource_version, "annotations": annotations}})
}

/// Annotation on the Deployment: the newest of its releases that reached `Released`, as
/// `<creation time>/<name>`, written by that release in the same patch that gives its claim
/// back. The Deployment is what every claim is taken against (resourceVersion precondition), so
/// a release that finds the claim free decides "superseded or not" on the very copy its claim
/// will be checked against: no list of releases, and no window in which a lagging cache hides a
/// newer release that was just released.
pub const ANNOTATION_RELEASED: &str = "sluice.dev/last-released";

/// The `ANNOTATION_RELEASED` value of `r`.
pub fn released_marker(r: &ModelRelease) -> String {
    let (created, name) = release_key(r);
    format!(
        "{}/{name}",
        created.map(|t| t.to_string()).unwrap_or_default()
    )
}

/// The release the Deployment records as its newest `Released` one, when newer than `me`.
pub fn newer_released(dep: &Deployment, me: &ModelRelease) -> Option<String> {
    let marker = dep.annotations().get(ANNOTATION_RELEASED)?;
    let (created, name) = marker.split_once('/')?;
    let key = (created.parse::<Timestamp>().ok(), name.to_string());
    (name != me.name_any() && key > release_key(me)).then(|| name.to_string())
}

/// Whose turn it is to roll out the target Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// This release may take the claim (or already holds it).
    Go,
    /// Another release holds the claim and is still rolling out, verifying or rolling back.
    Wait(String),
    /// A newer release of the same Deployment reached `Released`.
    Superseded(String),
}

/// The order of a Deployment's releases: by creation time, then name (a pair created in the
/// same second is ordered by name).
pub fn release_key(r: &ModelRelease) -> (Option<Timestamp>, String) {
    (
        r.metadata.creation_timestamp.clone().map(|t| t.0),
        r.name_any(),
    )
}

/// Decides the turn of `me` from the Deployment's claim and the releases of the Deployment (from
/// the cache; a "go" is confirmed against the Deployment: see `newer_released`). A claim whose holder has ended or no longer exists is stale and may be
/// taken over; only a newer release that actually reached `Released` supersedes `me`.
pub fn turn(me: &ModelRelease, dep: &Deployment, all: &[ModelRelease]) -> Turn {
    let target = &me.spec.target.deployment;
    if let Some(claim) = claim_of(dep) {
        if Some(claim.uid.as_str()) == me.metadata.uid.as_deref() {
            return Turn::Go;
        }
        let holder = all
            .iter()
            .find(|r| r.metadata.uid.as_deref() == Some(claim.uid.as_str()));
        if let Some(h) = holder.filter(|h| !h.status.as_ref().is_some_and(|s| s.phase.is_final())) {
            return Turn::Wait(h.name_any());
        }
    }
    let newest_released = all
        .iter()
        .filter(|r| r.name_any() != me.name_any() && &r.spec.target.deployment == target)
        .filter(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Released)
        })
        .filter(|r| release_key(r) > release_key(me))
        .max_by_key(|r| release_key(r));
    match newest_released {
        Some(r) => Turn::Superseded(r.name_any()),
        None => Turn::Go,
    }
}

/// What a rollout (or a rollback) should do next, seen from the Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The Deployment still shows the image this step replaces: write `to` (the holder's own
    /// write that a restart interrupted).
    Apply,
    /// The Deployment runs `to`; how far it got.
    Follow(Progress),
    /// Someone else changed the image to this one: never written over.
    Replaced(String),
    /// This release does not hold the claim (any more).
    NotClaimed,
}

/// The next step of moving `container` of `dep` from image `from` to image `to` for `me`.
pub fn step(dep: &Deployment, me: &ModelRelease, container: &str, from: &str, to: &str) -> Step {
    if !holds_claim(dep, me) {
        return Step::NotClaimed;
    }
    match container_image(dep, container) {
        Some(current) if same_image(&current, to) => {
            Step::Follow(Progress::InProgress(String::new()))
        }
        Some(current) if same_image(&current, from) => Step::Apply,
        Some(current) => Step::Replaced(current),
        None => Step::Replaced(String::new()),
    }
}

/// Whether the Deployment's `current` image is the `recorded` one: the same string, or a tag
/// that Sluice recorded pinned to its digest (`repo:tag@sha256:…`) before writing it.
pub fn same_image(current: &str, recorded: &str) -> bool {
    current == recorded
        || (!current.contains('@')
            && recorded
                .strip_prefix(current)
                .is_some_and(|rest| rest.starts_with("@sha256:")))
}

/// Sluice's own rollout deadline: a rollout (or rollback) not complete `deadline_seconds` after
/// it was applied fails, whatever the Deployment's own progress deadline says (a paused or stuck
/// Deployment never reports one).
pub fn past_deadline(since: Option<Timestamp>, now: Timestamp, deadline_seconds: u32) -> bool {
    since.is_some_and(|since| now.duration_since(since).as_secs() >= i64::from(deadline_seconds))
}

/// Whether a released Deployment is still healthy while its post-deploy stages run: every
/// replica of the new template available and none left over. Returns why not.
pub fn unhealthy(dep: &Deployment) -> Option<String> {
    let wanted = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = dep.status.clone().unwrap_or_default();
    let generation = dep.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Some(format!(
            "Deployment {} changed (generation {generation}) while its release was being verified",
            dep.name_any()
        ));
    }
    let available = status.available_replicas.unwrap_or(0);
    let unavailable = status.unavailable_replicas.unwrap_or(0);
    (available < wanted || unavailable > 0).then(|| {
        format!(
            "pods of the new ReplicaSet became unavailable while verifying: {available} of {wanted} available ({} updated, {} total, {unavailable} unavailable, generation {generation} observed {})",
            status.updated_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0),
            status.observed_generation.unwrap_or(0)
        )
    })
}

/// The repository (its tag dropped) and digest of an image reference pinned by digest; None for
/// a reference by tag only or with a malformed digest. (`repo:tag@digest` names the digest; the
/// tag beside it is informational only.)
pub fn pinned_image(image: &str) -> Option<(&str, &str)> {
    let (name, digest) = image.rsplit_once('@')?;
    is_sha256_digest(digest).then(|| (strip_tag_and_digest(name), digest))
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
        // Every replica updated and available: complete, whatever the stale condition says.
        let mut done = status(3, 3, 3, 3);
        done.conditions = dep.status.as_ref().and_then(|s| s.conditions.clone());
        if let Some(spec) = dep.spec.as_mut() {
            spec.replicas = Some(3);
        }
        dep.status = Some(done);
        assert_eq!(progress(&dep, Some(applied), at(60)), Progress::Complete);
    }

    #[test]
    fn the_apply_body_owns_only_the_image_and_the_release_annotation() {
        let body = image_apply(
            "predictor",
            "server",
            "r/x@sha256:ab",
            Some("predictor-42"),
            None,
        );
        assert_eq!(
            body,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "predictor"},
                "spec": {"template": {
                    "metadata": {"annotations": {"sluice.dev/release": "predictor-42"}},
                    "spec": {"containers": [{"name": "server", "image": "r/x@sha256:ab"}]}}}})
        );
        let restore = image_apply("predictor", "server", "r/x:old", None, None);
        assert!(restore["spec"]["template"].get("metadata").is_none());
        let bound = image_apply(
            "predictor",
            "server",
            "r/x@sha256:ab",
            None,
            Some("m/w@sha256:cd"),
        );
        assert_eq!(
            bound["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "SLUICE_MODEL_REF", "value": "m/w@sha256:cd"}])
        );
    }

    fn release(name: &str, created: &str, phase: Phase) -> ModelRelease {
        let mut r = fixtures::release();
        r.metadata.name = Some(name.into());
        r.metadata.uid = Some(format!("uid-{name}"));
        r.metadata.creation_timestamp = Some(Time(created.parse().expect("time")));
        r.status = Some(crate::api::ModelReleaseStatus {
            phase,
            ..Default::default()
        });
        r
    }

    fn claimed_by(holder: Option<&ModelRelease>) -> Deployment {
        let mut dep = deployment(1, status(1, 2, 2, 2));
        dep.metadata.resource_version = Some("7".into());
        if let Some(h) = holder {
            dep.metadata.annotations = Some(BTreeMap::from([(
                ANNOTATION_CLAIM.to_string(),
                claim_value(h),
            )]));
        }
        dep
    }

    #[test]
    fn a_claim_held_by_a_live_release_makes_every_other_release_wait() {
        let old = release("p-1", "2026-11-23T10:00:00Z", Phase::RollingOut);
        let new = release("p-2", "2026-11-23T11:00:00Z", Phase::Signing);
        let dep = claimed_by(Some(&old));
        assert_eq!(
            turn(&new, &dep, &[old.clone(), new.clone()]),
            Turn::Wait("p-1".into())
        );
        assert_eq!(
            turn(&old, &dep, &[old.clone(), new.clone()]),
            Turn::Go,
            "the holder goes on"
        );
        assert!(holds_claim(&dep, &old) && !holds_claim(&dep, &new));
    }

    #[test]
    fn a_claim_whose_holder_ended_or_is_gone_is_stale() {
        let ended = release("p-1", "2026-11-23T10:00:00Z", Phase::RolledBack);
        let new = release("p-2", "2026-11-23T11:00:00Z", Phase::Signing);
        let dep = claimed_by(Some(&ended));
        assert_eq!(turn(&new, &dep, &[ended.clone(), new.clone()]), Turn::Go);
        assert_eq!(turn(&new, &dep, std::slice::from_ref(&new)), Turn::Go);
        // Same name, another object: the claim was the old object's.
        let mut again = ended.clone();
        again.metadata.uid = Some("uid-other".into());
        again.status = Some(crate::api::ModelReleaseStatus {
            phase: Phase::Signing,
            ..Default::default()
        });
        assert_eq!(turn(&again, &dep, std::slice::from_ref(&again)), Turn::Go);
    }

    #[test]
    fn only_a_newer_release_that_reached_released_supersedes() {
        let old = release("p-1", "2026-11-23T10:00:00Z", Phase::Signing);
        let dep = claimed_by(None);
        for (phase, expected) in [
            (Phase::Signing, Turn::Go),
            (Phase::Blocked, Turn::Go),
            (Phase::RolledBack, Turn::Go),
            (Phase::Failed, Turn::Go),
            (Phase::Released, Turn::Superseded("p-2".into())),
        ] {
            let new = release("p-2", "2026-11-23T11:00:00Z", phase);
            assert_eq!(
                turn(&old, &dep, &[old.clone(), new.clone()]),
                expected,
                "{phase:?}"
            );
        }
        // An older Released release never supersedes a newer one.
        let older = release("p-0", "2026-11-23T09:00:00Z", Phase::Released);
        assert_eq!(turn(&old, &dep, &[older, old.clone()]), Turn::Go);
        let mut elsewhere = release("p-3", "2026-11-23T12:00:00Z", Phase::Released);
        elsewhere.spec.target.deployment = "other".into();
        assert_eq!(turn(&old, &dep, &[old.clone(), elsewhere]), Turn::Go);
    }

    #[test]
    fn the_claim_patch_carries_the_resource_version_precondition() {
        assert_eq!(
            claim_patch("7", Some("p-1/u"), None),
            json!({"metadata": {"resourceVersion": "7", "annotations": {"sluice.dev/rollout-claim": "p-1/u"}}})
        );
        let given_back = claim_patch("8", None, Some("2026-11-23T12:00:00Z/p-1"));
        assert_eq!(
            given_back["metadata"]["annotations"]["sluice.dev/rollout-claim"],
            Value::Null
        );
        assert_eq!(
            given_back["metadata"]["annotations"]["sluice.dev/last-released"],
            "2026-11-23T12:00:00Z/p-1"
        );
    }

    #[test]
    fn the_deployment_records_the_newest_released_release_and_older_ones_read_it() {
        let newer = release("p-2", "2026-11-23T12:00:05Z", Phase::Released);
        let older = release("p-1", "2026-11-23T12:00:00Z", Phase::Pending);
        let same_second = release("p-0", "2026-11-23T12:00:05Z", Phase::Pending);
        let mut dep = Deployment::default();
        assert_eq!(newer_released(&dep, &older), None);
        dep.metadata.annotations =
            Some([(ANNOTATION_RELEASED.to_string(), released_marker(&newer))].into());
        assert_eq!(released_marker(&newer), "2026-11-23T12:00:05Z/p-2");
        assert_eq!(newer_released(&dep, &older).as_deref(), Some("p-2"));
        assert_eq!(newer_released(&dep, &same_second).as_deref(), Some("p-2"));
        assert_eq!(newer_released(&dep, &newer), None);
        let newest = release("p-3", "2026-11-23T12:00:09Z", Phase::Pending);
        assert_eq!(newer_released(&dep, &newest), None);
        dep.metadata.annotations =
            Some([(ANNOTATION_RELEASED.to_string(), "garbage".into())].into());
        assert_eq!(newer_released(&dep, &older), None);
    }

    fn with_image(mut dep: Deployment, image: &str) -> Deployment {
        let spec = dep.spec.get_or_insert_with(Default::default);
        spec.template.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "server".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        dep
    }

    #[test]
    fn a_step_writes_only_over_the_image_it_recorded_and_only_with_the_claim() {
        let me = release("p-1", "2026-11-23T10:00:00Z", Phase::RollingOut);
        let other = release("p-2", "2026-11-23T11:00:00Z", Phase::RollingOut);
        let (old, new) = ("r/x@sha256:aa", "r/x@sha256:bb");
        let mine = claimed_by(Some(&me));
        assert_eq!(
            step(&with_image(mine.clone(), old), &me, "server", old, new),
            Step::Apply
        );
        assert!(matches!(
            step(&with_image(mine.clone(), new), &me, "server", old, new),
            Step::Follow(_)
        ));
        assert_eq!(
            step(&with_image(mine, "r/x@sha256:cc"), &me, "server", old, new),
            Step::Replaced("r/x@sha256:cc".into())
        );
        let theirs = with_image(claimed_by(Some(&other)), old);
        assert_eq!(step(&theirs, &me, "server", old, new), Step::NotClaimed);
    }

    #[test]
    fn sluice_deadline_and_health() {
        let applied: Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
        let at = |secs: i64| applied + jiff::SignedDuration::from_secs(secs);
        assert!(!past_deadline(Some(applied), at(599), 600));
        assert!(past_deadline(Some(applied), at(600), 600));
        assert!(!past_deadline(None, at(6000), 600));
        assert_eq!(unhealthy(&deployment(3, status(3, 2, 2, 2))), None);
        assert!(
            unhealthy(&deployment(3, status(3, 2, 2, 1))).is_some_and(|m| m.contains("1 of 2"))
        );
        assert!(unhealthy(&deployment(4, status(3, 2, 2, 2))).is_some());
    }

    #[test]
    fn a_pinned_image_is_read_with_its_tag_dropped_and_a_tag_alone_is_not_pinned() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            pinned_image(&format!("reg:5000/a/b:v1@{d}")),
            Some(("reg:5000/a/b", d.as_str()))
        );
        assert_eq!(
            pinned_image(&format!("reg:5000/a/b@{d}")),
            Some(("reg:5000/a/b", d.as_str()))
        );
        assert_eq!(pinned_image("reg:5000/a/b:v1"), None);
        assert_eq!(pinned_image("reg/a@sha256:abc"), None);
        assert_eq!(pinned_image(&format!("reg/a@{}", d.to_uppercase())), None);
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
