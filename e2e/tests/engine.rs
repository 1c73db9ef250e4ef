//! The release state machine under concurrency and faults, on the real control plane (kcm,
//! scheduler, Tekton, kwok, registry). Stage outcomes are scripted by `sim.sluice.dev/*`
//! annotations: these tests prove the state machine, not the stages.

use std::{collections::BTreeSet, ops::ControlFlow, time::Duration};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{DeleteParams, ListParams};
use serde_json::json;
use sluice::{
    api::{ModelRelease, Phase, conditions, release::Verdict},
    rollout::ANNOTATION_CLAIM,
};
use sluice_e2e::{POLL, REPOSITORY, Sim, TestNamespace, clean_sims, eventually};

const TIMEOUT: Duration = Duration::from_secs(180);
const STABLE: &str = "127.0.0.1:35000/evip/predictor:stable";
const ENDED: &[Phase] = &[
    Phase::Released,
    Phase::RolledBack,
    Phase::Failed,
    Phase::Blocked,
    Phase::Superseded,
];

fn ready_reason(r: &ModelRelease) -> String {
    r.status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, conditions::READY))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

fn phase(r: &ModelRelease) -> Phase {
    r.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

async fn setup(prefix: &str, deadline: i32) -> anyhow::Result<TestNamespace> {
    let ns = TestNamespace::new(prefix).await?;
    ns.with_signing_key("engine-pw")?;
    ns.target(STABLE, deadline).await?;
    Ok(ns)
}

/// Sims of a clean release that built `digest`.
fn built(digest: &str) -> Vec<(&'static str, Sim)> {
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(digest));
    sims
}

/// The images the Deployment's ReplicaSets ran: one per image change.
async fn replica_set_images(ns: &TestNamespace) -> anyhow::Result<BTreeSet<String>> {
    let rs = ns.api::<ReplicaSet>().list(&ListParams::default()).await?;
    Ok(rs
        .items
        .iter()
        .filter_map(|rs| sluice_e2e::replica_set_image(rs, "server"))
        .collect())
}

async fn claim(ns: &TestNamespace) -> anyhow::Result<Option<String>> {
    let d = ns.api::<Deployment>().get("predictor").await?;
    Ok(d.metadata
        .annotations
        .and_then(|a| a.get(ANNOTATION_CLAIM).cloned()))
}

/// The claim is given back right after the final phase is stored: wait for that write.
async fn claim_released(ns: &TestNamespace) -> anyhow::Result<()> {
    eventually("the claim is given back", TIMEOUT, POLL, async || {
        Ok(match claim(ns).await? {
            None => ControlFlow::Break(()),
            Some(c) => ControlFlow::Continue(c),
        })
    })
    .await
}

#[tokio::test]
async fn releases_of_one_deployment_created_at_the_same_instant_roll_out_one_at_a_time()
-> anyhow::Result<()> {
    let ns = setup("pair", 30).await?;
    let mut expected_images = BTreeSet::from([STABLE.to_string()]);
    for round in 0..3 {
        let (a, b) = (format!("pair-{round}-a"), format!("pair-{round}-b"));
        let da = ns.push_image(&format!("{a}-image"))?;
        let db = ns.push_image(&format!("{b}-image"))?;
        let (sa, sb) = (built(&da), built(&db));
        let (ra, rb) = tokio::join!(ns.release(&a, &sa), ns.release(&b, &sb));
        let (ra, rb) = (ra?, rb?);
        let fa = ns.wait_phase(&a, ENDED, TIMEOUT).await?;
        let fb = ns.wait_phase(&b, ENDED, TIMEOUT).await?;
        let phases = [phase(&fa), phase(&fb)];
        // Both pass their gates: one is Released, the other either Released before it or
        // Superseded by it; never RolledBack or Failed by a fight over the image.
        for (r, p) in [(&fa, phases[0]), (&fb, phases[1])] {
            assert!(
                matches!(p, Phase::Released | Phase::Superseded),
                "{}: {p:?} {}",
                r.metadata.name.clone().unwrap_or_default(),
                ready_reason(r)
            );
        }
        // The Deployment ends on the digest of the newest Released release.
        let newest = [(&ra, &fa, &da), (&rb, &fb, &db)]
            .into_iter()
            .filter(|(_, f, _)| phase(f) == Phase::Released)
            .max_by_key(|(r, _, _)| {
                (
                    r.metadata.creation_timestamp.clone().map(|t| t.0),
                    r.metadata.name.clone(),
                )
            })
            .map(|(_, _, d)| format!("{REPOSITORY}@{d}"))
            .expect("one of the pair is Released");
        ns.wait_available(TIMEOUT).await?;
        assert_eq!(ns.target_image().await?, newest, "round {round}");
        for (f, d) in [(&fa, &da), (&fb, &db)] {
            if phase(f) == Phase::Released {
                expected_images.insert(format!("{REPOSITORY}@{d}"));
            }
        }
        // At most one image change per rollout: no ReplicaSet for anything else.
        assert_eq!(
            replica_set_images(&ns).await?,
            expected_images,
            "round {round}"
        );
        claim_released(&ns).await?;
    }
    // One image write per rollout: the Deployment controller counts pod-template revisions.
    // (Its generation also counts the claim, which Deployments treat as a spec change.)
    let revision = ns
        .api::<Deployment>()
        .get("predictor")
        .await?
        .metadata
        .annotations
        .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
        .unwrap_or_default();
    assert_eq!(
        revision,
        expected_images.len().to_string(),
        "template revisions"
    );
    Ok(())
}

#[tokio::test]
async fn a_release_deleted_mid_rollout_restores_the_previous_image_first() -> anyhow::Result<()> {
    // A long progress deadline: the never-ready rollout stays in flight until the deletion.
    let ns = setup("delete", 600).await?;
    let repo = "127.0.0.1:35000/never-ready/predictor";
    let digest = ns.push_image_to(&format!("{repo}:{}", ns.name), "deleted", None)?;
    ns.patch_pipeline(&json!({"spec": {"image": {"repository": repo}}}).to_string())?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built_in(repo, &digest));
    ns.release("doomed", &sims).await?;
    let r = ns
        .wait_phase("doomed", &[Phase::RollingOut], TIMEOUT)
        .await?;
    assert!(
        r.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == "sluice.dev/rollout")),
        "a release rolling out carries the finalizer"
    );
    // The phase is written before the Deployment is patched (intent first, so a restart in
    // between finishes the apply): wait for the patch itself.
    let target = format!("{repo}@{digest}");
    eventually("the new image is applied", TIMEOUT, POLL, async || {
        let image = ns.target_image().await?;
        Ok(if image == target {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(image)
        })
    })
    .await?;
    assert!(claim(&ns).await?.is_some_and(|c| c.starts_with("doomed/")));
    ns.api::<ModelRelease>()
        .delete("doomed", &DeleteParams::default())
        .await?;
    let api = ns.api::<ModelRelease>();
    eventually("the release is gone", TIMEOUT, POLL, async || {
        Ok(match api.get_opt("doomed").await? {
            None => ControlFlow::Break(()),
            Some(r) => ControlFlow::Continue(format!("{:?}", r.status.map(|s| s.phase))),
        })
    })
    .await?;
    assert_eq!(
        ns.target_image().await?,
        STABLE,
        "the previous image is back"
    );
    ns.wait_available(TIMEOUT).await?;
    claim_released(&ns).await?;
    Ok(())
}

#[tokio::test]
async fn a_task_that_cannot_be_resolved_is_retried_and_the_release_goes_on() -> anyhow::Result<()> {
    let ns = TestNamespace::new("retry").await?;
    // The audit's Task is missing when the release starts (a GitOps sync still applying it).
    let task = ns.kubectl(&["get", "task", "pypa-audit", "-o", "json"])?;
    ns.kubectl(&["delete", "task", "pypa-audit"])?;
    ns.release("retried", &clean_sims()).await?;
    let api = ns.api::<ModelRelease>();
    let retrying = eventually("a retry of dependency-audit", TIMEOUT, POLL, async || {
        let r = api.get("retried").await?;
        let status = r.status.clone().unwrap_or_default();
        let stage = status
            .stages
            .iter()
            .find(|s| s.name == "dependency-audit")
            .cloned();
        Ok(match stage {
            Some(s) if s.retries > 0 => ControlFlow::Break(s),
            _ => ControlFlow::Continue(format!("{:?}", status.stages)),
        })
    })
    .await?;
    assert!(retrying.gate.is_none(), "not judged: {retrying:?}");
    let why = retrying.reason.clone().unwrap_or_default();
    assert!(why.contains("infrastructure"), "{why}");
    assert_ne!(phase(&api.get("retried").await?), Phase::Blocked);
    // The Task comes back; the next attempt runs it.
    let mut task: serde_json::Value = serde_json::from_str(&task)?;
    for field in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        if let Some(m) = task["metadata"].as_object_mut() {
            m.remove(field);
        }
    }
    let path = std::env::temp_dir().join(format!("{}-task.json", ns.name));
    std::fs::write(&path, task.to_string())?;
    ns.kubectl(&["apply", "-f", &path.to_string_lossy()])?;
    let r = ns
        .wait_phase("retried", &[Phase::Signing, Phase::Blocked], TIMEOUT)
        .await?;
    let status = r.status.clone().unwrap_or_default();
    let audit = status
        .stages
        .iter()
        .find(|s| s.name == "dependency-audit")
        .expect("audit");
    assert_eq!(status.phase, Phase::Signing, "{}", ready_reason(&r));
    assert_eq!(audit.gate, Some(Verdict::Passed), "{audit:?}");
    assert!(audit.retries >= 1);
    assert!(
        audit
            .task_run
            .as_deref()
            .is_some_and(|t| t.contains("retry")),
        "{audit:?}"
    );
    // The failed attempt stays as evidence: one TaskRun per attempt, never two of one attempt.
    let runs = ns.task_runs("retried").await?;
    let audits = runs
        .iter()
        .filter(|t| {
            t.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("sluice.dev/stage"))
                .map(String::as_str)
                == Some("dependency-audit")
        })
        .count();
    assert_eq!(audits, usize::try_from(audit.retries)? + 1);
    Ok(())
}

#[tokio::test]
async fn a_test_run_that_collected_nothing_blocks_the_release() -> anyhow::Result<()> {
    let ns = TestNamespace::new("notests").await?;
    let mut sims = clean_sims();
    sims[0] = (
        "unit-tests",
        Sim::results(&[(
            "TEST_OUTPUT",
            r#"{"result":"SUCCESS","successes":0,"failures":0,"warnings":0}"#,
        )]),
    );
    ns.release("empty-suite", &sims).await?;
    let r = ns
        .wait_phase("empty-suite", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    assert_eq!(phase(&r), Phase::Blocked, "{}", ready_reason(&r));
    assert!(
        ready_reason(&r).contains("0 tests ran"),
        "{}",
        ready_reason(&r)
    );
    Ok(())
}

#[tokio::test]
async fn stage_results_with_multi_byte_characters_at_every_offset_block_and_never_crash()
-> anyhow::Result<()> {
    let ns = TestNamespace::new("utf8").await?;
    // serde_json names the unknown field in its error ("unknown field `…", 15 bytes before the
    // name), which Sluice cuts at 200 bytes: put each kind of multi-byte character across that
    // cut at every byte offset it has (the old `String::truncate` panicked there).
    let mut names = Vec::new();
    for (i, ch) in ["é", "€", "😀"].into_iter().enumerate() {
        for offset in 0..ch.len() {
            let pad = 180 + offset;
            let field = format!("{}{}", "x".repeat(pad), ch.repeat(20));
            let findings = format!(r#"{{"critical":0,"{field}":1}}"#);
            let mut sims = clean_sims();
            sims[1] = ("dependency-audit", Sim::results(&[("FINDINGS", &findings)]));
            let name = format!("utf8-{i}-{offset}");
            ns.release(&name, &sims).await?;
            names.push(name);
        }
    }
    for name in &names {
        let r = ns
            .wait_phase(name, &[Phase::Blocked, Phase::Signing], TIMEOUT)
            .await?;
        assert_eq!(phase(&r), Phase::Blocked, "{name}: {}", ready_reason(&r));
        assert!(
            ready_reason(&r).contains("malformed"),
            "{name}: {}",
            ready_reason(&r)
        );
    }
    // The operator lived through all of them: a clean release still goes through.
    ns.release("after-utf8", &clean_sims()).await?;
    let r = ns
        .wait_phase("after-utf8", &[Phase::Signing, Phase::Blocked], TIMEOUT)
        .await?;
    assert_eq!(phase(&r), Phase::Signing, "{}", ready_reason(&r));
    Ok(())
}

#[tokio::test]
async fn a_pipeline_edited_mid_release_does_not_change_how_it_is_judged_or_rolled_out()
-> anyhow::Result<()> {
    let ns = setup("edited", 30).await?;
    let digest = ns.push_image("edited")?;
    let sims = built(&digest);
    ns.release_with("pinned", &sims, json!({"approval": "manual"}))
        .await?;
    let r = ns
        .wait_phase("pinned", &[Phase::AwaitingApproval], TIMEOUT)
        .await?;
    let started_with = r
        .status
        .as_ref()
        .and_then(|s| s.pipeline.as_ref())
        .and_then(|p| p.generation)
        .expect("the pipeline generation is recorded");
    // Mid-release the audit gate tightens and the build changes Task.
    ns.kubectl(&[
        "patch",
        "securepipeline",
        "predictor",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/stages/1/gate","value":{"findings":{"maxSeverity":"none"}}},
            {"op":"replace","path":"/spec/stages/3/taskRef","value":{"name":"pytest"}}]"#,
    ])?;
    let out = std::process::Command::new(sluice_e2e::repo_dir().join("target/debug/sluice"))
        .env("KUBECONFIG", sluice_e2e::state_dir().join("kubeconfig"))
        .args(["approve", "pinned", "-n", &ns.name, "--digest", &digest])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = ns.wait_phase("pinned", ENDED, TIMEOUT).await?;
    assert_eq!(phase(&r), Phase::Released, "{}", ready_reason(&r));
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(
        status.pipeline.and_then(|p| p.generation),
        Some(started_with)
    );
    assert_eq!(ns.target_image().await?, format!("{REPOSITORY}@{digest}"));
    // A new release is judged by the edited pipeline: the medium finding now blocks.
    ns.release("after-edit", &sims).await?;
    let r = ns
        .wait_phase(
            "after-edit",
            &[Phase::Blocked, Phase::Signing, Phase::Released],
            TIMEOUT,
        )
        .await?;
    assert_eq!(phase(&r), Phase::Blocked, "{}", ready_reason(&r));
    Ok(())
}

#[tokio::test]
async fn rescans_of_the_live_release_survive_history_keep_one() -> anyhow::Result<()> {
    let ns = setup("keepone", 30).await?;
    let digest = ns.push_image("keepone")?;
    ns.release("live", &built(&digest)).await?;
    ns.wait_phase("live", &[Phase::Released], TIMEOUT).await?;
    // A newer release that is blocked: with keep 1 it is the one finished release kept, but the
    // live release's TaskRuns and rescans must stay all the same.
    let mut blocked = clean_sims();
    blocked[1] = ("dependency-audit", Sim::findings(1, 0, 0, 0));
    ns.release("blocked-later", &blocked).await?;
    ns.wait_phase("blocked-later", &[Phase::Blocked], TIMEOUT)
        .await?;
    ns.patch_pipeline(r#"{"spec":{"history":{"keep":1},"rescan":{"schedule":"*/3 * * * * *","stages":["dependency-audit"]}}}"#)?;
    let api = ns.api::<ModelRelease>();
    let rescan_runs = |ns: &TestNamespace| {
        let lp = ListParams::default().labels("sluice.dev/rescan-of=live");
        let api = ns.api::<sluice::tekton::TaskRun>();
        async move { anyhow::Ok(api.list(&lp).await?.items) }
    };
    // Two scheduled rescans recorded on the release, and their TaskRuns still there.
    eventually("two rescans recorded and kept", TIMEOUT, POLL, async || {
        // TaskRuns first: a schedule is created before it can be recorded.
        let runs = rescan_runs(&ns).await?;
        let r = api.get("live").await?;
        let recorded = r.status.as_ref().and_then(|s| s.rescan.clone());
        let schedules: BTreeSet<String> = runs
            .iter()
            .filter_map(|t| {
                t.metadata
                    .labels
                    .as_ref()?
                    .get("sluice.dev/rescan-at")
                    .cloned()
            })
            .collect();
        Ok(match recorded {
            Some(rescan) if schedules.len() >= 2 => {
                let at: jiff::Timestamp = rescan.scheduled_at.parse()?;
                assert!(
                    schedules.contains(&at.as_second().to_string()),
                    "the rescan on record has its TaskRuns: {schedules:?} {rescan:?}"
                );
                ControlFlow::Break(())
            }
            other => ControlFlow::Continue(format!("{other:?} {schedules:?}")),
        })
    })
    .await?;
    assert_eq!(
        ns.task_runs("live").await?.len(),
        5,
        "the live release keeps its TaskRuns"
    );
    let pv = ns
        .pipeline_condition("predictor", conditions::VULNERABLE, "False")
        .await?;
    assert!(pv.message.contains("passed"), "{}", pv.message);
    Ok(())
}

#[tokio::test]
async fn a_pod_that_goes_unready_while_verifying_rolls_the_release_back() -> anyhow::Result<()> {
    let ns = setup("unhealthy", 30).await?;
    ns.patch_pipeline(r#"{"spec":{"rollout":{"unhealthyGraceSeconds":2}}}"#)?;
    let digest = ns.push_image("unhealthy")?;
    // The DAST scan keeps running, so the release stays Verifying while its pods go bad.
    ns.release_holding("sickly", &built(&digest), "dast")
        .await?;
    ns.wait_phase("sickly", &[Phase::Verifying], TIMEOUT)
        .await?;
    let want = format!("{REPOSITORY}@{digest}");
    let pods = ns
        .api::<k8s_openapi::api::core::v1::Pod>()
        .list(&ListParams::default().labels("app=predictor"))
        .await?;
    let pod = pods
        .items
        .iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .any(|c| c.image.as_deref() == Some(want.as_str()))
                })
        })
        .and_then(|p| p.metadata.name.clone())
        .expect("a pod of the new ReplicaSet");
    // Its readiness probe starts failing (kwok leaves a Running pod's status alone).
    ns.kubectl(&[
        "patch",
        "pod",
        &pod,
        "--subresource=status",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"ProbeFailed"}]}}"#,
    ])?;
    let r = ns.wait_phase("sickly", ENDED, TIMEOUT).await?;
    assert_eq!(phase(&r), Phase::RolledBack, "{}", ready_reason(&r));
    assert!(
        ready_reason(&r).contains("unavailable"),
        "{}",
        ready_reason(&r)
    );
    assert_eq!(ns.target_image().await?, STABLE);
    claim_released(&ns).await?;
    Ok(())
}
