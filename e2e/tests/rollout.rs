//! Gated rollout on the real control plane: kube-controller-manager rolls the Deployment out and
//! kube-scheduler places its pods on the kwok node, which makes them Ready (or, for images under a
//! /never-ready/ repository, never Ready). Stage outcomes (test counts, findings, the built digest)
//! are scripted by `sim.sluice.dev/*` annotations: these tests prove the rollout, not the stages.

use std::{process::Command, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use kube::api::ListParams;
use serde_json::json;
use sluice::api::{ModelRelease, Phase, conditions};
use sluice_e2e::{ENDED, REPOSITORY, Sim, TestNamespace, clean_sims, state_dir};

const TIMEOUT: Duration = Duration::from_secs(120);
const STABLE: &str = "127.0.0.1:35000/evip/predictor:stable";

fn ready_reason(r: &ModelRelease) -> String {
    r.status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, conditions::READY))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

/// A namespace with a signing key and the target Deployment running STABLE.
async fn setup(prefix: &str, deadline: i32) -> anyhow::Result<(TestNamespace, Deployment)> {
    let ns = TestNamespace::new(prefix).await?;
    ns.with_signing_key("rollout-pw")?;
    let dep = ns.target(STABLE, deadline).await?;
    Ok((ns, dep))
}

#[tokio::test]
async fn a_clean_release_rolls_out_the_signed_digest_and_is_released() -> anyhow::Result<()> {
    let (ns, _) = setup("rollout", 30).await?;
    let digest = ns.push_image("clean")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-80", &sims).await?;
    let r = ns.wait_phase("predictor-80", &ENDED, TIMEOUT).await?;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Released),
        "{}",
        ready_reason(&r)
    );
    let status = r.status.clone().unwrap_or_default();
    let want = format!("{REPOSITORY}@{digest}");
    assert_eq!(ns.target_image().await?, want);
    assert_eq!(status.previous_image.as_deref(), Some(STABLE));
    assert_eq!(status.gates_summary.as_deref(), Some("5/5"));
    assert!(conditions::is_true(&status.conditions, conditions::READY));
    assert!(conditions::is_true(
        &status.conditions,
        conditions::ROLLED_OUT
    ));

    // The ReplicaSet of the new template runs every replica (the one the Deployment scaled up,
    // read until the ReplicaSet controller's status says so: it is written apart from the
    // Deployment's), and the pods say which release they run.
    let sets = ns.api::<ReplicaSet>();
    sluice_e2e::eventually(
        "the signed digest's ReplicaSet ready",
        Duration::from_secs(30),
        sluice_e2e::POLL,
        async || {
            let rs = sets.list(&ListParams::default()).await?;
            let live = rs
                .items
                .iter()
                .filter(|rs| {
                    sluice_e2e::replica_set_image(rs, "server").as_deref() == Some(want.as_str())
                })
                .max_by_key(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
                .and_then(|rs| rs.status.as_ref().map(|s| (s.replicas, s.ready_replicas)));
            Ok(match live {
                Some((_, Some(2))) => std::ops::ControlFlow::Break(()),
                other => std::ops::ControlFlow::Continue(format!("{other:?}")),
            })
        },
    )
    .await?;
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=predictor"))
        .await?;
    let running: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(
        running.len(),
        2,
        "{:?}",
        running.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
    );
    for pod in running {
        assert_eq!(
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("sluice.dev/release"))
                .map(String::as_str),
            Some("predictor-80")
        );
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "pod {:?} not Ready", pod.metadata.name);
    }
    assert_only_image_and_annotation_owned(&ns).await?;

    // The DAST stage ran against the Service in front of the Deployment.
    let dast = ns
        .task_runs("predictor-80")
        .await?
        .into_iter()
        .find(|t| t.metadata.name.as_deref() == Some("predictor-80-dast"))
        .expect("the dast TaskRun");
    let url = dast
        .spec
        .params
        .iter()
        .find(|p| p.name == "TARGET_URL")
        .map(|p| p.value.clone());
    assert_eq!(
        url,
        Some(format!(
            "http://predictor.{}.svc.cluster.local:8080",
            ns.name
        ))
    );
    assert_deployment_event(&ns, "SluiceRollout")?;
    Ok(())
}

/// `kubectl describe deployment` shows an Event of that reason from Sluice.
fn assert_deployment_event(ns: &TestNamespace, reason: &str) -> anyhow::Result<()> {
    let reasons = ns.kubectl(&[
        "get",
        "events.events.k8s.io",
        "-o",
        r#"jsonpath={range .items[?(@.regarding.kind=="Deployment")]}{.reason}{" "}{end}"#,
    ])?;
    assert!(
        reasons.split_whitespace().any(|r| r == reason),
        "no {reason} Event on the Deployment: {reasons}"
    );
    Ok(())
}

/// Sluice's managed fields on the Deployment cover the server image and the release annotation only.
async fn assert_only_image_and_annotation_owned(ns: &TestNamespace) -> anyhow::Result<()> {
    let dep = ns.api::<Deployment>().get("predictor").await?;
    let sluice = dep
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.manager.as_deref() == Some("sluice"))
        .expect("a managedFields entry of sluice");
    assert_eq!(sluice.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(sluice.fields_v1.expect("fieldsV1"))?;
    let want = json!({"f:spec": {"f:template": {
        "f:metadata": {"f:annotations": {"f:sluice.dev/release": {}}},
        "f:spec": {"f:containers": {r#"k:{"name":"server"}"#: {".": {}, "f:image": {}, "f:name": {}}}}}}});
    assert_eq!(fields, want);
    Ok(())
}

#[tokio::test]
async fn an_insecure_release_is_blocked_and_the_deployment_untouched() -> anyhow::Result<()> {
    let (ns, before) = setup("insecure", 30).await?;
    let digest = ns.push_image("insecure")?;
    let mut sims = clean_sims();
    sims[1] = ("dependency-audit", Sim::findings(1, 0, 0, 0));
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-81", &sims).await?;
    ns.wait_phase("predictor-81", &[Phase::Blocked], TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ns.api::<Deployment>().get("predictor").await?;
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(ns.target_image().await?, STABLE);
    let sig = format!("{REPOSITORY}:{}.sig", digest.replace(':', "-"));
    let out = Command::new(sluice_e2e::tool("crane")?)
        .args(["manifest", &sig])
        .output()?;
    assert!(
        !out.status.success(),
        "a blocked release must push no signature"
    );
    Ok(())
}

#[tokio::test]
async fn a_replaced_signature_stops_the_rollout() -> anyhow::Result<()> {
    let (ns, before) = setup("resign", 30).await?;
    let digest = ns.push_image("victim")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    manual_release(&ns, "predictor-82", &sims).await?;
    ns.wait_phase("predictor-82", &[Phase::AwaitingApproval], TIMEOUT)
        .await?;
    // Between signing and rollout, the .sig is replaced by one made with another key for another image.
    let keys = std::env::temp_dir().join(format!("{}-attacker", ns.name));
    std::fs::create_dir_all(&keys)?;
    let cosign = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(sluice_e2e::tool("cosign")?)
            .current_dir(&keys)
            .env("COSIGN_PASSWORD", "x")
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cosign {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    cosign(&["generate-key-pair"])?;
    let other = ns.push_image("attacker")?;
    cosign(&[
        "sign",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "--allow-http-registry",
        "--yes",
        &format!("{REPOSITORY}@{other}"),
    ])?;
    let tag = |d: &str| format!("{REPOSITORY}:{}.sig", d.replace(':', "-"));
    let out = Command::new(sluice_e2e::tool("crane")?)
        .args(["copy", &tag(&other), &tag(&digest)])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    approve(&ns, "predictor-82", None)?;
    let r = ns
        .wait_phase(
            "predictor-82",
            &[Phase::Blocked, Phase::RollingOut, Phase::Released],
            TIMEOUT,
        )
        .await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Blocked, "{}", ready_reason(&r));
    let ready = conditions::get(&status.conditions, conditions::READY).expect("Ready");
    assert_eq!(ready.reason, "SignatureInvalid");
    assert!(
        ready.message.contains("does not verify with this key"),
        "{}",
        ready.message
    );
    let after = ns.api::<Deployment>().get("predictor").await?;
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(ns.target_image().await?, STABLE);
    Ok(())
}

async fn manual_release(
    ns: &TestNamespace,
    name: &str,
    sims: &[(&str, Sim)],
) -> anyhow::Result<()> {
    ns.release_with(name, sims, json!({"approval": "manual"}))
        .await?;
    Ok(())
}

fn approve(
    ns: &TestNamespace,
    name: &str,
    digest: Option<&str>,
) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new(sluice_e2e::repo_dir().join("target/debug/sluice"));
    cmd.env("KUBECONFIG", state_dir().join("kubeconfig"))
        .args(["approve", name, "-n", &ns.name]);
    if let Some(d) = digest {
        cmd.args(["--digest", d]);
    }
    Ok(cmd.output()?)
}

#[tokio::test]
async fn manual_approval_releases_only_the_approved_digest() -> anyhow::Result<()> {
    let (ns, before) = setup("approve", 30).await?;
    let digest = ns.push_image("approved")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    manual_release(&ns, "predictor-83", &sims).await?;
    let r = ns
        .wait_phase("predictor-83", &[Phase::AwaitingApproval], TIMEOUT)
        .await?;
    assert!(
        ready_reason(&r).starts_with("AwaitingApproval"),
        "{}",
        ready_reason(&r)
    );

    // An approval for another digest releases nothing.
    let other = format!("sha256:{}", "b".repeat(64));
    let refused = approve(&ns, "predictor-83", Some(&other))?;
    assert!(!refused.status.success());
    ns.kubectl(&[
        "annotate",
        "modelrelease",
        "predictor-83",
        &format!("sluice.dev/approved-digest={other}"),
    ])?;
    let api = ns.api::<ModelRelease>();
    sluice_e2e::eventually(
        "the mismatch is reported",
        TIMEOUT,
        sluice_e2e::POLL,
        async || {
            let r = api.get("predictor-83").await?;
            let reason = ready_reason(&r);
            Ok(if reason.starts_with("ApprovalDigestMismatch") {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(reason)
            })
        },
    )
    .await?;
    let r = api.get("predictor-83").await?;
    assert_eq!(r.status.map(|s| s.phase), Some(Phase::AwaitingApproval));
    let after = ns.api::<Deployment>().get("predictor").await?;
    assert_eq!(after.metadata.generation, before.metadata.generation);

    let ok = approve(&ns, "predictor-83", Some(&digest))?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    ns.wait_phase("predictor-83", &[Phase::Released], TIMEOUT)
        .await?;
    assert_eq!(ns.target_image().await?, format!("{REPOSITORY}@{digest}"));
    Ok(())
}

#[tokio::test]
async fn pods_that_never_become_ready_roll_back_to_the_previous_image() -> anyhow::Result<()> {
    let (ns, _) = setup("unready", 6).await?;
    let repo = "127.0.0.1:35000/never-ready/predictor";
    let digest = ns.push_image_to(&format!("{repo}:{}", ns.name), "unready", None)?;
    ns.patch_pipeline(&json!({"spec": {"image": {"repository": repo}}}).to_string())?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built_in(repo, &digest));
    ns.release("predictor-84", &sims).await?;
    let r = ns.wait_phase("predictor-84", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::RolledBack, "{}", ready_reason(&r));
    let reason = ready_reason(&r);
    assert!(reason.contains("progress deadline"), "{reason}");
    assert_eq!(ns.target_image().await?, STABLE);
    let rolled = conditions::get(&status.conditions, conditions::ROLLED_OUT).expect("RolledOut");
    assert_eq!(
        (rolled.status.as_str(), rolled.reason.as_str()),
        ("False", "RolloutFailed")
    );
    ns.wait_available(TIMEOUT).await?;
    assert_deployment_event(&ns, "SluiceRollback")?;
    Ok(())
}

#[tokio::test]
async fn a_blocking_dast_gate_after_rollout_rolls_back() -> anyhow::Result<()> {
    let (ns, _) = setup("dast", 30).await?;
    let digest = ns.push_image("dast")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    sims[4] = ("dast", Sim::findings(0, 2, 0, 0));
    ns.release("predictor-85", &sims).await?;
    let r = ns.wait_phase("predictor-85", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::RolledBack, "{}", ready_reason(&r));
    assert!(
        ready_reason(&r).contains("post-deploy gate blocked"),
        "{}",
        ready_reason(&r)
    );
    let dast = status
        .stages
        .iter()
        .find(|s| s.name == "dast")
        .expect("dast stage");
    assert_eq!(dast.gate, Some(sluice::api::release::Verdict::Blocked));
    assert_eq!(ns.target_image().await?, STABLE);
    Ok(())
}

#[tokio::test]
async fn a_rollback_restores_the_digest_the_tag_named_even_after_the_tag_moved()
-> anyhow::Result<()> {
    let ns = TestNamespace::new("pinned").await?;
    ns.with_signing_key("rollout-pw")?;
    let live = format!("{REPOSITORY}:{}-live", ns.name);
    let before = ns.push_image_to(&live, "before", None)?;
    ns.target(&live, 30).await?;
    let digest = ns.push_image("pinned")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    sims[4] = ("dast", Sim::findings(0, 2, 0, 0));
    ns.release("predictor-86", &sims).await?;
    // Move the tag once the release has recorded what ran before it.
    let api = ns.api::<ModelRelease>();
    sluice_e2e::eventually(
        "previousImage recorded",
        TIMEOUT,
        Duration::from_millis(50),
        async || {
            let status = api.get("predictor-86").await?.status.unwrap_or_default();
            Ok(
                if status.previous_image.is_some() || ENDED.contains(&status.phase) {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(format!("{:?}", status.phase))
                },
            )
        },
    )
    .await?;
    let moved = ns.push_image_to(&live, "moved", None)?;
    assert_ne!(moved, before);
    let r = ns.wait_phase("predictor-86", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::RolledBack, "{}", ready_reason(&r));
    let pinned = format!("{live}@{before}");
    assert_eq!(status.previous_image.as_deref(), Some(pinned.as_str()));
    assert_eq!(ns.target_image().await?, pinned);
    Ok(())
}

#[tokio::test]
async fn a_missing_target_stalls_and_nothing_is_written() -> anyhow::Result<()> {
    let ns = TestNamespace::new("notarget").await?;
    ns.with_signing_key("pw")?;
    let digest = ns.push_image("notarget")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-86", &sims).await?;
    let api = ns.api::<ModelRelease>();
    let r = sluice_e2e::eventually("TargetNotFound", TIMEOUT, sluice_e2e::POLL, async || {
        let r = api.get("predictor-86").await?;
        let stalled = r
            .status
            .as_ref()
            .and_then(|s| conditions::get(&s.conditions, conditions::STALLED))
            .cloned();
        Ok(match stalled {
            Some(c) if c.status == "True" && c.reason == "TargetNotFound" => {
                std::ops::ControlFlow::Break(r)
            }
            other => std::ops::ControlFlow::Continue(format!("{other:?}")),
        })
    })
    .await?;
    let status = r.status.unwrap_or_default();
    assert!(status.rollout.is_none());
    assert!(status.previous_image.is_none());
    assert!(ns.api::<Deployment>().get_opt("predictor").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_rescan_that_finds_a_new_critical_cve_marks_the_running_release_vulnerable()
-> anyhow::Result<()> {
    let (ns, _) = setup("rescan", 30).await?;
    let digest = ns.push_image("rescan")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-87", &sims).await?;
    ns.wait_phase("predictor-87", &[Phase::Released], TIMEOUT)
        .await?;
    // A CVE is published after the release: the audit now reports a critical finding.
    let critical = Sim::findings(1, 0, 0, 0).message;
    ns.kubectl(&[
        "annotate",
        "--overwrite",
        "modelrelease",
        "predictor-87",
        &format!("sim.sluice.dev/dependency-audit.message={critical}"),
    ])?;
    ns.patch_pipeline(
        r#"{"spec":{"rescan":{"schedule":"*/2 * * * * *","stages":["dependency-audit"]}}}"#,
    )?;
    let vulnerable = ns
        .release_condition("predictor-87", conditions::VULNERABLE, "True")
        .await?;
    assert!(
        vulnerable.message.contains("1 critical"),
        "{}",
        vulnerable.message
    );
    let status = ns
        .api::<ModelRelease>()
        .get("predictor-87")
        .await?
        .status
        .unwrap_or_default();
    let rescan = status.rescan.expect("rescan status");
    assert_eq!(rescan.stages.len(), 1);
    assert_eq!(
        rescan.stages[0].gate,
        Some(sluice::api::release::Verdict::Blocked)
    );
    assert_eq!(status.phase, Phase::Released);
    assert_eq!(ns.target_image().await?, format!("{REPOSITORY}@{digest}"));
    let pv = ns
        .pipeline_condition("predictor", conditions::VULNERABLE, "True")
        .await?;
    assert!(pv.message.contains("predictor-87"), "{}", pv.message);
    Ok(())
}

#[tokio::test]
async fn an_older_release_waiting_for_approval_is_superseded_and_its_taskruns_pruned()
-> anyhow::Result<()> {
    let (ns, _) = setup("supersede", 30).await?;
    ns.patch_pipeline(r#"{"spec":{"history":{"keep":1}}}"#)?;
    let old_digest = ns.push_image("older")?;
    let new_digest = ns.push_image("newer")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&old_digest));
    manual_release(&ns, "predictor-88", &sims).await?;
    ns.wait_phase("predictor-88", &[Phase::AwaitingApproval], TIMEOUT)
        .await?;
    sims[3] = ("build", Sim::built(&new_digest));
    ns.release("predictor-89", &sims).await?;
    ns.wait_phase("predictor-89", &[Phase::Released], TIMEOUT)
        .await?;
    let older = ns
        .wait_phase("predictor-88", &[Phase::Superseded], TIMEOUT)
        .await?;
    assert!(
        ready_reason(&older).contains("predictor-89"),
        "{}",
        ready_reason(&older)
    );
    // Approving the superseded digest now changes nothing: the newer release stays.
    let out = approve(&ns, "predictor-88", Some(&old_digest))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let older = ns.api::<ModelRelease>().get("predictor-88").await?;
    assert_eq!(older.status.map(|s| s.phase), Some(Phase::Superseded));
    assert_eq!(
        ns.target_image().await?,
        format!("{REPOSITORY}@{new_digest}")
    );

    // history.keep = 1: the older finished release loses its TaskRuns, its verdicts stay.
    let api = ns.api::<ModelRelease>();
    sluice_e2e::eventually(
        "older TaskRuns pruned",
        TIMEOUT,
        sluice_e2e::POLL,
        async || {
            let left = ns.task_runs("predictor-88").await?.len();
            Ok(if left == 0 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(format!("{left} TaskRuns left"))
            })
        },
    )
    .await?;
    assert_eq!(ns.task_runs("predictor-89").await?.len(), 5);
    let older = api.get("predictor-88").await?;
    let stages = older.status.map(|s| s.stages).unwrap_or_default();
    assert_eq!(
        stages
            .iter()
            .filter(|s| s.gate == Some(sluice::api::release::Verdict::Passed))
            .count(),
        4
    );
    Ok(())
}

#[tokio::test]
async fn a_vulnerable_release_with_on_finding_rollback_restores_the_last_passing_one()
-> anyhow::Result<()> {
    let (ns, _) = setup("rescanback", 30).await?;
    let first = ns.push_image("first")?;
    let second = ns.push_image("second")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&first));
    ns.release("predictor-90", &sims).await?;
    ns.wait_phase("predictor-90", &[Phase::Released], TIMEOUT)
        .await?;
    sims[3] = ("build", Sim::built(&second));
    ns.release("predictor-91", &sims).await?;
    ns.wait_phase("predictor-91", &[Phase::Released], TIMEOUT)
        .await?;
    assert_eq!(ns.target_image().await?, format!("{REPOSITORY}@{second}"));
    let critical = Sim::findings(1, 0, 0, 0).message;
    ns.kubectl(&[
        "annotate",
        "--overwrite",
        "modelrelease",
        "predictor-91",
        &format!("sim.sluice.dev/dependency-audit.message={critical}"),
    ])?;
    ns.patch_pipeline(r#"{"spec":{"rescan":{"schedule":"*/2 * * * * *","stages":["dependency-audit"],"onFinding":"rollback"}}}"#)?;
    let r = ns
        .wait_phase("predictor-91", &[Phase::RolledBack], TIMEOUT)
        .await?;
    assert!(
        ready_reason(&r).starts_with("Vulnerable"),
        "{}",
        ready_reason(&r)
    );
    assert!(
        ready_reason(&r).contains("restored predictor-90"),
        "{}",
        ready_reason(&r)
    );
    assert_eq!(ns.target_image().await?, format!("{REPOSITORY}@{first}"));
    ns.wait_available(TIMEOUT).await?;
    let first_release = ns.api::<ModelRelease>().get("predictor-90").await?;
    assert_eq!(first_release.status.map(|s| s.phase), Some(Phase::Released));
    // Through the rollout path: the restore was followed to the end, shown on the Deployment,
    // and the claim given back.
    assert!(
        ready_reason(&r).contains("runs 127.0.0.1:35000/evip/predictor@"),
        "{}",
        ready_reason(&r)
    );
    assert_deployment_event(&ns, "SluiceRollback")?;
    let deployments = ns.api::<Deployment>();
    sluice_e2e::eventually(
        "the claim is given back",
        TIMEOUT,
        sluice_e2e::POLL,
        async || {
            let dep = deployments.get("predictor").await?;
            let held = dep
                .metadata
                .annotations
                .is_some_and(|a| a.contains_key(sluice::rollout::ANNOTATION_CLAIM));
            Ok(if held {
                std::ops::ControlFlow::Continue("claimed".to_string())
            } else {
                std::ops::ControlFlow::Break(())
            })
        },
    )
    .await?;
    Ok(())
}
