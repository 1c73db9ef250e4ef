//! Killing the operator (SIGKILL) mid-release and starting it again creates no duplicate TaskRun,
//! and the release still finishes. Its own test binary, so no other test shares the outage.

use std::{collections::BTreeSet, ops::ControlFlow, time::Duration};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::ListParams;
use sluice::api::{ModelRelease, Phase};
use sluice_e2e::{ENDED, REPOSITORY, Sim, TestNamespace, clean_sims, eventually, operator};

/// The tests of this binary kill the one operator: one at a time.
static OUTAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn sigkill_mid_release_creates_no_duplicate_taskrun() -> anyhow::Result<()> {
    let _outage = OUTAGE.lock().await;
    let ns = TestNamespace::new("restart").await?;
    // Kill as soon as the first TaskRuns exist, before the build stage was created.
    let sims: Vec<(&str, Sim)> = clean_sims();
    ns.release("predictor-50", &sims).await?;
    // Polled often: the stages finish within a second or two.
    eventually(
        "a first TaskRun",
        Duration::from_secs(60),
        Duration::from_millis(20),
        async || {
            let n = ns.task_runs("predictor-50").await?.len();
            Ok(if n > 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue("none".into())
            })
        },
    )
    .await?;
    operator("kill")?;
    let during = ns.task_runs("predictor-50").await?.len();
    operator("start")?;
    let r = ns
        .wait_phase(
            "predictor-50",
            &[Phase::Signing, Phase::Blocked],
            Duration::from_secs(90),
        )
        .await?;
    // No signing key in this namespace: the release stops at Signing.
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Signing));
    let trs = ns.task_runs("predictor-50").await?;
    let stages: BTreeSet<String> = trs
        .iter()
        .filter_map(|t| {
            t.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("sluice.dev/stage"))
                .cloned()
        })
        .collect();
    assert_eq!(
        trs.len(),
        4,
        "TaskRuns after the restart: {} (had {during} when killed)",
        trs.len()
    );
    assert_eq!(stages.len(), 4, "one TaskRun per stage: {stages:?}");
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_rollout_rolls_out_once_and_keeps_the_previous_image() -> anyhow::Result<()> {
    let _outage = OUTAGE.lock().await;
    let ns = TestNamespace::new("restart-rollout").await?;
    ns.with_signing_key("pw")?;
    let stable = "127.0.0.1:35000/evip/predictor:stable";
    let before = ns.target(stable, 30).await?;
    let digest = ns.push_image("restart")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-51", &sims).await?;
    let api = ns.api::<ModelRelease>();
    eventually(
        "RollingOut",
        Duration::from_secs(90),
        Duration::from_millis(20),
        async || {
            let phase = api.get("predictor-51").await?.status.map(|s| s.phase);
            Ok(if phase == Some(Phase::RollingOut) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{phase:?}"))
            })
        },
    )
    .await?;
    operator("kill")?;
    operator("start")?;
    let r = ns
        .wait_phase(
            "predictor-51",
            &[Phase::Released, Phase::RolledBack, Phase::Failed],
            Duration::from_secs(90),
        )
        .await?;
    let status = r.status.unwrap_or_default();
    assert_eq!(status.phase, Phase::Released);
    assert_eq!(status.previous_image.as_deref(), Some(stable));
    let after = ns.api::<Deployment>().get("predictor").await?;
    // The pod-template revision counts image writes (the generation also counts the claim).
    let revision = |d: &Deployment| -> Option<u32> {
        d.metadata
            .annotations
            .as_ref()?
            .get("deployment.kubernetes.io/revision")?
            .parse()
            .ok()
    };
    assert_eq!(
        revision(&after),
        revision(&before).map(|r| r + 1),
        "exactly one rollout"
    );
    assert_eq!(ns.target_image().await?, format!("{REPOSITORY}@{digest}"));
    let sets = ns.api::<ReplicaSet>().list(&ListParams::default()).await?;
    assert_eq!(sets.items.len(), 2, "the stable ReplicaSet and one new one");
    let sig = format!("{REPOSITORY}:{}.sig", digest.replace(':', "-"));
    let manifest = std::process::Command::new(sluice_e2e::tool("crane")?)
        .args(["manifest", &sig])
        .output()?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout)?;
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(1),
        "one signature"
    );
    Ok(())
}

/// Enforcement across a crash: pods held before the release is verified are admitted by the next
/// operator (its gate controller lists the held pods again), none is left Pending and none ran
/// before the verdict.
#[tokio::test]
async fn sigkill_while_pods_are_held_admits_them_after_the_restart() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use sluice::enforcement::{GATE_ADMITTED, LABEL_GATE};

    let _outage = OUTAGE.lock().await;
    let ns = TestNamespace::new("restart-gate").await?;
    ns.kubectl(&["label", "namespace", &ns.name, "sluice.dev/enforce=true"])?;
    ns.with_signing_key("restart-pw")?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 30)
        .await?;
    let digest = ns.push_image("gated")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    let spec = serde_json::json!({"target": {"deployment": "predictor", "container": "server", "mode": "gate"}});
    ns.release_with("predictor-53", &sims, spec).await?;
    // Git applies the digest with the release, before any verdict: the new pods are held.
    let image = format!("{REPOSITORY}@{digest}");
    ns.git_sets_image(&image, None).await?;
    let pods = ns.api::<Pod>();
    let of_image = |p: &Pod| {
        p.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .any(|c| c.image.as_deref() == Some(&image))
        })
    };
    eventually(
        "a held pod",
        Duration::from_secs(60),
        Duration::from_millis(20),
        async || {
            let held = pods
                .list(&ListParams::default().labels(&format!("{LABEL_GATE}=held")))
                .await?
                .items
                .into_iter()
                .any(|p| of_image(&p));
            Ok(if held {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue("none".into())
            })
        },
    )
    .await?;
    operator("kill")?;
    operator("start")?;
    let r = ns
        .wait_phase("predictor-53", &ENDED, Duration::from_secs(120))
        .await?;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Released),
        "{:?}",
        r.status
    );
    let running = eventually(
        "both pods admitted and running",
        Duration::from_secs(120),
        Duration::from_millis(250),
        async || {
            let mine: Vec<Pod> = pods
                .list(&ListParams::default().labels("app=predictor"))
                .await?
                .items
                .into_iter()
                .filter(|p| of_image(p) && p.metadata.deletion_timestamp.is_none())
                .collect();
            let ok = mine
                .iter()
                .filter(|p| {
                    let ungated = sluice::enforcement::gate_index(p).is_none();
                    let phase =
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    ungated && phase
                })
                .count();
            Ok(if ok == 2 {
                ControlFlow::Break(mine)
            } else {
                ControlFlow::Continue(format!("{ok} of {} running", mine.len()))
            })
        },
    )
    .await?;
    for p in running {
        // Every pod of the digest went through the gate: none was created past it.
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_GATE))
                .map(String::as_str),
            Some(GATE_ADMITTED)
        );
    }
    Ok(())
}
