//! Which pods are held and which are admitted: a pure judgement over the watch caches (no
//! registry, no API call), shared by the webhook (hold a targeted pod) and the gate controller
//! (let it run once its digest belongs to a verified release).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::ResourceExt;

use crate::{
    api::{ModelRelease, Phase},
    gates::results::strip_tag_and_digest,
    rollout::{model_ref_of, pinned_image},
};

/// What enforcement makes of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// No release targets the pod's Deployment: enforcement leaves it alone.
    NotTargeted,
    /// The pod runs what `release` verified.
    Admit {
        /// The release whose verified digest (and model) the pod runs.
        release: String,
    },
    /// The pod must wait; `reason` (PascalCase) and `message` say why.
    Hold {
        /// Event reason.
        reason: &'static str,
        /// What the user reads.
        message: String,
    },
}

/// The Deployment a pod belongs to: through its ReplicaSet owner (`<deployment>-<pod-template-hash>`),
/// else the first Deployment of `deployments` (same namespace) whose selector the pod matches, so a
/// bare pod carrying the Deployment's labels is judged like its pods.
pub fn deployment_of(pod: &Pod, deployments: &[Arc<Deployment>]) -> Option<String> {
    let hash = pod.labels().get("pod-template-hash");
    let by_owner = pod
        .owner_references()
        .iter()
        .filter(|o| o.kind == "ReplicaSet")
        .find_map(|o| {
            let hash = hash?;
            o.name.strip_suffix(hash.as_str())?.strip_suffix('-')
        });
    if let Some(d) = by_owner {
        return Some(d.to_string());
    }
    let ns = pod.namespace();
    deployments
        .iter()
        .filter(|d| d.namespace() == ns)
        .find(|d| selects(d, pod.labels()))
        .map(|d| d.name_any())
}

/// Whether `dep`'s selector matches `labels`. Only `matchLabels` is read: a selector with
/// `matchExpressions` is not matched by label (its pods still arrive through their ReplicaSet).
fn selects(dep: &Deployment, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = dep.spec.as_ref().map(|s| &s.selector) else {
        return false;
    };
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        return false;
    }
    let wanted = selector.match_labels.clone().unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `release` vouches for its digest now: its signature was verified just before it was
/// rolled out or admitted (`status.rollout` is written only after that), and it has not failed,
/// been rolled back or superseded since.
fn vouches(release: &ModelRelease) -> bool {
    let Some(status) = release.status.as_ref() else {
        return false;
    };
    let live = matches!(
        status.phase,
        Phase::RollingOut | Phase::Verifying | Phase::Released
    );
    live && status.signature.is_some() && status.image.is_some() && status.rollout.is_some()
}

/// Whether `pod` runs the image Sluice's own rollback of `release` restores: what the Deployment
/// ran before the failed release (pinned by digest when it started), which a rollback must be
/// able to bring back even when no release of it exists.
fn restores(release: &ModelRelease, pod: &Pod) -> bool {
    let Some(status) = release.status.as_ref() else {
        return false;
    };
    let rolling_back = matches!(status.phase, Phase::RollingBack | Phase::RolledBack);
    let Some(previous) = status.previous_image.as_deref().and_then(pinned_image) else {
        return false;
    };
    let container = &release.spec.target.container;
    rolling_back
        && containers(pod)
            .find(|c| &c.name == container)
            .and_then(|c| c.image.as_deref())
            .and_then(pinned_image)
            == Some(previous)
}

/// The releases of `ns` that target `deployment`.
fn targeting<'a>(
    releases: &'a [Arc<ModelRelease>],
    ns: &str,
    deployment: &str,
) -> Vec<&'a ModelRelease> {
    releases
        .iter()
        .map(|r| &**r)
        .filter(|r| r.namespace().as_deref() == Some(ns) && r.spec.target.deployment == deployment)
        .collect()
}

/// The containers of `pod` whose image comes from a repository a release of `ns` built: a pod
/// started by hand (`kubectl run`) from the application's repository is judged too, while pods
/// of other images (Tekton's steps, say) are left alone.
fn from_built_repositories<'a>(
    pod: &'a Pod,
    ns: &str,
    releases: &[Arc<ModelRelease>],
) -> Vec<&'a k8s_openapi::api::core::v1::Container> {
    let built: Vec<&str> = releases
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter_map(|r| r.status.as_ref()?.image.as_ref())
        .map(|i| i.repository.as_str())
        .collect();
    containers(pod)
        .filter(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| built.contains(&strip_tag_and_digest(i)))
        })
        .collect()
}

/// Whether enforcement concerns `pod`: it belongs to a Deployment a release targets, or runs an
/// image from a repository a release built. (What the webhook gates; needs only the releases'
/// targets and built repositories.)
pub fn concerns(
    pod: &Pod,
    ns: &str,
    releases: &[Arc<ModelRelease>],
    deployments: &[Arc<Deployment>],
) -> bool {
    let targeted =
        deployment_of(pod, deployments).is_some_and(|d| !targeting(releases, ns, &d).is_empty());
    targeted || !from_built_repositories(pod, ns, releases).is_empty()
}

/// Judges `pod` (namespace `ns`) against the releases of that namespace.
pub fn judge(
    pod: &Pod,
    ns: &str,
    releases: &[Arc<ModelRelease>],
    deployments: &[Arc<Deployment>],
) -> Judgement {
    let deployment = deployment_of(pod, deployments);
    let targeting = deployment
        .as_deref()
        .map(|d| targeting(releases, ns, d))
        .unwrap_or_default();
    let Some(deployment) = deployment.filter(|_| !targeting.is_empty()) else {
        return judge_by_repository(pod, ns, releases);
    };
    if let Some(release) = targeting.iter().find(|r| restores(r, pod)) {
        return Judgement::Admit {
            release: release.name_any(),
        };
    }
    let mut first_hold = None;
    for release in targeting.iter().copied().filter(|r| vouches(r)) {
        match judge_against(pod, release, &deployment) {
            Judgement::Admit { release } => return Judgement::Admit { release },
            hold => {
                first_hold.get_or_insert(hold);
            }
        }
    }
    // A model mismatch against the release of this very digest says more than "unverified".
    if let Some(hold @ Judgement::Hold { reason: MODEL, .. }) = first_hold {
        return hold;
    }
    unverified(pod, &deployment, &targeting)
}

const MODEL: &str = "ModelNotVerified";

/// A pod of no targeted Deployment whose containers run images of built repositories: each of
/// those must be a digest (and model) a release vouches for.
fn judge_by_repository(pod: &Pod, ns: &str, releases: &[Arc<ModelRelease>]) -> Judgement {
    let watched = from_built_repositories(pod, ns, releases);
    if watched.is_empty() {
        return Judgement::NotTargeted;
    }
    let vouching: Vec<&ModelRelease> = releases
        .iter()
        .map(|r| &**r)
        .filter(|r| r.namespace().as_deref() == Some(ns) && vouches(r))
        .collect();
    let mut admitted_by = None;
    for container in watched {
        let image = container.image.clone().unwrap_or_default();
        let Some((repo, digest)) = pinned_image(&image) else {
            return hold(
                "ImageNotPinned",
                format!(
                    "container {} runs {image}, from a repository releases of this namespace build, not pinned by digest; Sluice admits it only by a digest whose signature it verified",
                    container.name
                ),
            );
        };
        let release = vouching.iter().find(|r| {
            let built = r.status.as_ref().and_then(|s| s.image.as_ref());
            built.is_some_and(|i| i.repository == repo && i.digest == digest)
                && handed_model(container, r).is_ok()
        });
        let Some(release) = release else {
            return hold(
                "ImageNotVerified",
                format!(
                    "container {} runs {image}, which no verified release of this namespace names (with the model it binds); the pod stays Pending until a ModelRelease of this digest passes its gates and its signature verifies",
                    container.name
                ),
            );
        };
        admitted_by.get_or_insert_with(|| release.name_any());
    }
    Judgement::Admit {
        release: admitted_by.unwrap_or_default(),
    }
}

/// Whether `container` is handed the model `release` binds (Ok when it binds none); Err carries
/// what it was handed instead.
fn handed_model(
    container: &k8s_openapi::api::core::v1::Container,
    release: &ModelRelease,
) -> Result<(), Option<String>> {
    let model = release
        .spec
        .model
        .as_ref()
        .and_then(|m| m.artifact.as_ref())
        .map(|a| a.reference());
    let Some(model) = model else {
        return Ok(());
    };
    let handed = model_ref_of(container);
    if handed.as_deref() == Some(model.as_str()) {
        Ok(())
    } else {
        Err(handed)
    }
}

/// Whether the pod's target container runs `release`'s digest and, when the release binds a
/// model artifact, is handed that model.
fn judge_against(pod: &Pod, release: &ModelRelease, deployment: &str) -> Judgement {
    let container_name = &release.spec.target.container;
    let Some(container) = containers(pod).find(|c| &c.name == container_name) else {
        return hold(
            "ContainerNotFound",
            format!(
                "the pod has no container {container_name}, the one releases of Deployment {deployment} sign"
            ),
        );
    };
    let image = container.image.clone().unwrap_or_default();
    let (Some(status_image), Some(found)) = (
        release.status.as_ref().and_then(|s| s.image.as_ref()),
        pinned_image(&image),
    ) else {
        return hold("ImageNotVerified", String::new());
    };
    if found
        != (
            status_image.repository.as_str(),
            status_image.digest.as_str(),
        )
    {
        return hold("ImageNotVerified", String::new());
    }
    if let Err(handed) = handed_model(container, release) {
        let signed = release
            .spec
            .model
            .as_ref()
            .and_then(|m| m.artifact.as_ref())
            .map(|a| a.reference())
            .unwrap_or_default();
        return hold(
            MODEL,
            format!(
                "container {container_name} runs {image}, verified with release {}, but is handed model {} instead of the signed {signed} (env {})",
                release.name_any(),
                handed.unwrap_or_else(|| "none".into()),
                crate::rollout::MODEL_ENV
            ),
        );
    }
    Judgement::Admit {
        release: release.name_any(),
    }
}

fn containers(pod: &Pod) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Container> {
    pod.spec.iter().flat_map(|s| s.containers.iter())
}

fn hold(reason: &'static str, message: String) -> Judgement {
    Judgement::Hold { reason, message }
}

/// The hold of a pod whose image no vouching release names: says what it runs and which
/// digests would be admitted.
fn unverified(pod: &Pod, deployment: &str, targeting: &[&ModelRelease]) -> Judgement {
    let container_name = targeting
        .first()
        .map(|r| r.spec.target.container.clone())
        .unwrap_or_default();
    let image = containers(pod)
        .find(|c| c.name == container_name)
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let mut admitted: Vec<String> = targeting
        .iter()
        .filter(|r| vouches(r))
        .filter_map(|r| r.status.as_ref()?.image.as_ref().map(|i| i.digest.clone()))
        .collect();
    admitted.sort();
    admitted.dedup();
    let known = if admitted.is_empty() {
        "no release of it is verified yet".to_string()
    } else {
        format!("verified digests: {}", admitted.join(", "))
    };
    if pinned_image(&image).is_none() {
        return hold(
            "ImageNotPinned",
            format!(
                "container {container_name} runs {image}, not pinned by digest; Sluice admits pods of Deployment {deployment} only by a digest whose signature it verified ({known})"
            ),
        );
    }
    hold(
        "ImageNotVerified",
        format!(
            "container {container_name} runs {image}, which no verified release of Deployment {deployment} names ({known}); the pod stays Pending until a ModelRelease of this digest passes its gates and its signature verifies"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn pod(image: &str, model: Option<&str>) -> Pod {
        let env: Vec<_> = model
            .map(|m| json!({"name": "SLUICE_MODEL_REF", "value": m}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "labels": {"app": "p", "pod-template-hash": "5d9f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "predictor-5d9f", "uid": "u"}]},
            "spec": {"containers": [{"name": "server", "image": image, "env": env}]}
        }))
        .expect("pod")
    }

    fn release(name: &str, phase: &str, d: &str, model: Option<&str>) -> Arc<ModelRelease> {
        let mut spec = json!({"pipelineRef": {"name": "p"}, "revision": "r",
            "target": {"deployment": "predictor", "container": "server", "mode": "gate"}});
        if let Some(m) = model {
            spec["model"] = json!({"name": "m", "version": "1",
                "artifact": {"repository": "reg/models/m", "digest": m}});
        }
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "ModelRelease",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": spec,
                "status": {"phase": phase, "image": {"repository": "reg/app", "digest": d},
                    "signature": {"reference": "x", "keyId": "k", "signedAt": "t"},
                    "rollout": {"deployment": "predictor", "image": format!("reg/app@{d}"), "startedAt": "t"}}
            }))
            .expect("release"),
        )
    }

    #[test]
    fn a_pod_of_a_released_digest_is_admitted_and_any_other_digest_is_held() {
        let releases = [release("r1", "Released", &digest('a'), None)];
        let ok = pod(&format!("reg/app:v1@{}", digest('a')), None);
        assert_eq!(
            judge(&ok, "ns", &releases, &[]),
            Judgement::Admit {
                release: "r1".into()
            }
        );
        let other = pod(&format!("reg/app@{}", digest('b')), None);
        let Judgement::Hold { reason, message } = judge(&other, "ns", &releases, &[]) else {
            panic!("held expected");
        };
        assert_eq!(reason, "ImageNotVerified");
        assert!(message.contains(&digest('b')) && message.contains(&digest('a')));
    }

    #[test]
    fn a_tag_a_blocked_release_or_another_repository_is_never_admitted() {
        let releases = [
            release("ok", "Released", &digest('a'), None),
            release("blocked", "Blocked", &digest('c'), None),
        ];
        let tag = judge(&pod("reg/app:latest", None), "ns", &releases, &[]);
        assert!(matches!(
            tag,
            Judgement::Hold {
                reason: "ImageNotPinned",
                ..
            }
        ));
        let blocked = judge(
            &pod(&format!("reg/app@{}", digest('c')), None),
            "ns",
            &releases,
            &[],
        );
        assert!(matches!(
            blocked,
            Judgement::Hold {
                reason: "ImageNotVerified",
                ..
            }
        ));
        let elsewhere = judge(
            &pod(&format!("evil/app@{}", digest('a')), None),
            "ns",
            &releases,
            &[],
        );
        assert!(matches!(elsewhere, Judgement::Hold { .. }));
        assert_eq!(
            judge(&pod("x", None), "other", &releases, &[]),
            Judgement::NotTargeted
        );
    }

    #[test]
    fn a_bound_model_must_be_handed_to_the_pod_by_its_signed_digest() {
        let releases = [release("r1", "Released", &digest('a'), Some(&digest('m')))];
        let image = format!("reg/app@{}", digest('a'));
        let signed = format!("reg/models/m@{}", digest('m'));
        assert!(matches!(
            judge(&pod(&image, Some(&signed)), "ns", &releases, &[]),
            Judgement::Admit { .. }
        ));
        let swapped = format!("reg/models/m@{}", digest('n'));
        let held = judge(&pod(&image, Some(&swapped)), "ns", &releases, &[]);
        assert!(
            matches!(held, Judgement::Hold { reason: MODEL, .. }),
            "{held:?}"
        );
        assert!(matches!(
            judge(&pod(&image, None), "ns", &releases, &[]),
            Judgement::Hold { reason: MODEL, .. }
        ));
    }

    #[test]
    fn the_image_a_rollback_restores_is_admitted_while_it_rolls_back() {
        let previous = format!("reg/app@{}", digest('e'));
        let mut failed = (*release("r2", "RollingBack", &digest('b'), None)).clone();
        if let Some(s) = failed.status.as_mut() {
            s.previous_image = Some(previous.clone());
        }
        let releases = [Arc::new(failed.clone())];
        assert!(matches!(
            judge(&pod(&previous, None), "ns", &releases, &[]),
            Judgement::Admit { .. }
        ));
        // The failed digest itself is not vouched for while it rolls back.
        let bad = pod(&format!("reg/app@{}", digest('b')), None);
        assert!(matches!(
            judge(&bad, "ns", &releases, &[]),
            Judgement::Hold { .. }
        ));
        if let Some(s) = failed.status.as_mut() {
            s.phase = Phase::Released;
        }
        let releases = [Arc::new(failed)];
        let restored = judge(&pod(&previous, None), "ns", &releases, &[]);
        assert!(matches!(restored, Judgement::Hold { .. }), "{restored:?}");
    }

    #[test]
    fn a_pod_started_by_hand_from_a_built_repository_is_judged_and_others_are_left_alone() {
        let releases = [release("r1", "Released", &digest('a'), None)];
        let mut by_hand = pod(&format!("reg/app@{}", digest('b')), None);
        by_hand.metadata.owner_references = None;
        by_hand.metadata.labels = None;
        assert!(concerns(&by_hand, "ns", &releases, &[]));
        let held = judge(&by_hand, "ns", &releases, &[]);
        assert!(
            matches!(
                held,
                Judgement::Hold {
                    reason: "ImageNotVerified",
                    ..
                }
            ),
            "{held:?}"
        );
        let mut released = by_hand.clone();
        released.spec.as_mut().expect("spec").containers[0].image =
            Some(format!("reg/app:v2@{}", digest('a')));
        assert_eq!(
            judge(&released, "ns", &releases, &[]),
            Judgement::Admit {
                release: "r1".into()
            }
        );
        let mut tagged = by_hand.clone();
        tagged.spec.as_mut().expect("spec").containers[0].image = Some("reg/app:latest".into());
        assert!(matches!(
            judge(&tagged, "ns", &releases, &[]),
            Judgement::Hold {
                reason: "ImageNotPinned",
                ..
            }
        ));
        let mut other = by_hand;
        other.spec.as_mut().expect("spec").containers[0].image = Some("reg/tekton/step:1".into());
        assert!(!concerns(&other, "ns", &releases, &[]));
        assert_eq!(judge(&other, "ns", &releases, &[]), Judgement::NotTargeted);
    }

    #[test]
    fn a_bare_pod_with_the_deployment_labels_is_judged_like_its_pods() {
        let dep: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "predictor", "namespace": "ns"},
            "spec": {"selector": {"matchLabels": {"app": "p"}}, "template": {}}
        }))
        .expect("deployment");
        let mut bare = pod("reg/app:latest", None);
        bare.metadata.owner_references = None;
        assert_eq!(
            deployment_of(&bare, &[Arc::new(dep.clone())]).as_deref(),
            Some("predictor")
        );
        assert_eq!(deployment_of(&bare, &[]), None);
        bare.metadata.labels = Some(BTreeMap::from([("app".into(), "q".into())]));
        assert_eq!(deployment_of(&bare, &[Arc::new(dep)]), None);
    }
}
