//! Stages become TaskRuns, Tekton and kwok run them, and the gates read the real results.

use std::{ops::ControlFlow, time::Duration};

use kube::api::PostParams;
use serde_json::json;
use sluice::api::{
    ModelRelease, Phase, SecurePipeline,
    conditions::{self, READY},
    release::{StageState, Verdict},
};
use sluice::tekton::TaskRun;
use sluice_e2e::{FAKE_DIGEST, POLL, REPOSITORY, Sim, TestNamespace, clean_sims, eventually};

const TIMEOUT: Duration = Duration::from_secs(90);

fn stage<'a>(r: &'a ModelRelease, name: &str) -> &'a sluice::api::release::StageStatus {
    r.status
        .as_ref()
        .and_then(|s| s.stages.iter().find(|e| e.name == name))
        .unwrap_or_else(|| panic!("no stage {name}"))
}

fn ready_message(r: &ModelRelease) -> String {
    conditions::get(&r.status.as_ref().expect("status").conditions, READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn clean_release_passes_every_gate_in_dag_order() -> anyhow::Result<()> {
    let ns = TestNamespace::new("clean").await?;
    ns.release("predictor-42", &clean_sims()).await?;
    let r = ns
        .wait_phase("predictor-42", &[Phase::Signing, Phase::Blocked], TIMEOUT)
        .await?;
    let status = r.status.clone().expect("status");
    assert_eq!(status.phase, Phase::Signing, "{status:?}");
    assert!(conditions::is_true(
        &status.conditions,
        conditions::GATES_PASSED
    ));
    assert_eq!(status.gates_summary.as_deref(), Some("4/5"));
    let image = status.image.expect("image");
    assert_eq!(
        (image.repository.as_str(), image.digest.as_str()),
        (REPOSITORY, FAKE_DIGEST)
    );
    assert_eq!(
        stage(&r, "dependency-audit")
            .findings
            .as_ref()
            .map(|f| f.medium),
        Some(1)
    );
    assert_eq!(
        stage(&r, "unit-tests").tests.as_ref().map(|t| t.successes),
        Some(14)
    );
    assert_eq!(stage(&r, "dast").state, StageState::Waiting);

    // The build ran only after the three stages it runs after had finished.
    let trs = ns.task_runs("predictor-42").await?;
    assert_eq!(trs.len(), 4, "one TaskRun per pre-deploy stage");
    let created = |stage: &str| {
        trs.iter()
            .find(|t| {
                t.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("sluice.dev/stage"))
                    .map(String::as_str)
                    == Some(stage)
            })
            .unwrap_or_else(|| panic!("TaskRun of {stage}"))
    };
    let build = created("build");
    for dep in ["unit-tests", "dependency-audit", "sast"] {
        let done = created(dep)
            .status
            .as_ref()
            .and_then(|s| s.completion_time.clone())
            .expect("completed");
        let build_created = build
            .metadata
            .creation_timestamp
            .as_ref()
            .expect("created")
            .0;
        assert!(
            build_created >= done.parse()?,
            "build created {build_created} before {dep} finished {done}"
        );
    }
    let params = &build.spec.params;
    assert!(
        params
            .iter()
            .any(|p| p.name == "SOURCE_REVISION" && p.value == "3f2a9c1")
    );
    assert!(
        params
            .iter()
            .any(|p| p.name == "IMAGE" && p.value == format!("{REPOSITORY}:3f2a9c1"))
    );
    assert_eq!(
        build
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("e2e"))
            .map(String::as_str),
        Some("true"),
        "release labels propagate"
    );
    Ok(())
}

#[tokio::test]
async fn a_critical_finding_blocks_before_the_build() -> anyhow::Result<()> {
    let ns = TestNamespace::new("critical").await?;
    let mut sims = clean_sims();
    sims[1] = ("dependency-audit", Sim::findings(1, 0, 0, 0));
    ns.release("predictor-43", &sims).await?;
    let r = ns
        .wait_phase("predictor-43", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Blocked));
    assert_eq!(stage(&r, "dependency-audit").gate, Some(Verdict::Blocked));
    assert!(
        ready_message(&r).contains("stage dependency-audit: 1 critical above maxSeverity medium"),
        "{}",
        ready_message(&r)
    );
    assert_eq!(stage(&r, "build").state, StageState::NotRun);
    let trs = ns.task_runs("predictor-43").await?;
    assert!(
        trs.iter()
            .all(|t| !t.metadata.name.as_deref().unwrap_or("").ends_with("-build")),
        "no build after a block"
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_step_blocks() -> anyhow::Result<()> {
    let ns = TestNamespace::new("failed").await?;
    let mut sims = clean_sims();
    sims[0] = ("unit-tests", Sim::exit(2));
    ns.release("predictor-44", &sims).await?;
    let r = ns
        .wait_phase("predictor-44", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    let unit = stage(&r, "unit-tests");
    assert_eq!(unit.state, StageState::Failed);
    assert_eq!(unit.gate, Some(Verdict::Blocked));
    assert!(
        unit.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("stage unit-tests: TaskRun failed"),
        "{unit:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_taskrun_made_by_someone_else_under_a_stage_name_is_not_trusted() -> anyhow::Result<()> {
    let ns = TestNamespace::new("squat").await?;
    // Made before the release, with a clean result and without Sluice's owner or labels.
    let clean = r#"[{"key":"TEST_OUTPUT","value":"{\"result\":\"SUCCESS\",\"successes\":1,\"failures\":0}","type":1}]"#;
    let squatter = json!({
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {"name": "predictor-47-unit-tests",
                     "annotations": {"sim.sluice.dev/unit-tests.message": clean}},
        "spec": {"taskRef": {"name": "pytest"}, "params": [
            {"name": "SOURCE_URL", "value": "https://git.example/evip/predictor.git"},
            {"name": "SOURCE_REVISION", "value": "3f2a9c1"}]}
    });
    let squatter: TaskRun = serde_json::from_value(squatter)?;
    ns.api::<TaskRun>()
        .create(&PostParams::default(), &squatter)
        .await?;
    ns.release("predictor-47", &clean_sims()).await?;
    let r = ns
        .wait_phase("predictor-47", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    let unit = stage(&r, "unit-tests");
    assert_eq!(unit.gate, Some(Verdict::Blocked), "{unit:?}");
    let reason = unit.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("was not created by this release"),
        "{reason}"
    );
    assert!(ready_message(&r).contains("not created by this release"));
    Ok(())
}

#[tokio::test]
async fn a_blocked_release_cancels_the_stages_still_running() -> anyhow::Result<()> {
    let ns = TestNamespace::new("cancel").await?;
    let mut sims = clean_sims();
    sims[1] = ("dependency-audit", Sim::findings(1, 0, 0, 0));
    // The unit tests would run on; the audit blocks meanwhile.
    ns.release_holding("predictor-48", &sims, "unit-tests")
        .await?;
    ns.wait_phase("predictor-48", &[Phase::Blocked], TIMEOUT)
        .await?;
    let api = ns.api::<TaskRun>();
    let cancelled = eventually("unit tests cancelled", TIMEOUT, POLL, async || {
        let tr = api.get("predictor-48-unit-tests").await?;
        let reason = tr
            .status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .and_then(|c| c.reason.clone())
            .unwrap_or_default();
        Ok(if reason == "TaskRunCancelled" {
            ControlFlow::Break(tr)
        } else {
            ControlFlow::Continue(format!("{:?}", tr.status))
        })
    })
    .await?;
    assert_eq!(cancelled.spec.status.as_deref(), Some("TaskRunCancelled"));
    assert!(
        cancelled
            .spec
            .status_message
            .unwrap_or_default()
            .contains("dependency-audit")
    );
    let r = eventually("the stage reads as cancelled", TIMEOUT, POLL, async || {
        let r = ns.api::<ModelRelease>().get("predictor-48").await?;
        Ok(if stage(&r, "unit-tests").state == StageState::Cancelled {
            ControlFlow::Break(r)
        } else {
            ControlFlow::Continue(format!("{:?}", stage(&r, "unit-tests")))
        })
    })
    .await?;
    assert_eq!(stage(&r, "unit-tests").gate, Some(Verdict::Skipped));
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Blocked));
    assert!(ready_message(&r).contains("dependency-audit"));
    let events = ns.kubectl(&[
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    assert!(events.contains("TaskRunCancelled"), "{events}");
    Ok(())
}

#[tokio::test]
async fn malformed_and_missing_results_block_with_distinct_reasons() -> anyhow::Result<()> {
    let ns = TestNamespace::new("malformed").await?;
    let mut sims = clean_sims();
    sims[2] = (
        "sast",
        Sim::results(&[("FINDINGS", "{\"critical\": \"lots\"}")]),
    );
    ns.release("predictor-45", &sims).await?;
    let mut missing = clean_sims();
    missing.remove(0);
    ns.release("predictor-46", &missing).await?;

    let r = ns
        .wait_phase("predictor-45", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    let sast = stage(&r, "sast");
    assert_eq!(sast.gate, Some(Verdict::Blocked));
    assert!(
        sast.reason
            .as_deref()
            .unwrap_or("")
            .contains("result FINDINGS is malformed"),
        "{sast:?}"
    );
    let r = ns
        .wait_phase("predictor-46", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    let unit = stage(&r, "unit-tests");
    assert_eq!(unit.state, StageState::Succeeded);
    assert!(
        unit.reason
            .as_deref()
            .unwrap_or("")
            .contains("result TEST_OUTPUT is missing"),
        "{unit:?}"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_release_garbage_collects_its_taskruns() -> anyhow::Result<()> {
    let ns = TestNamespace::new("gc").await?;
    ns.release("predictor-47", &clean_sims()).await?;
    ns.wait_phase("predictor-47", &[Phase::Signing], TIMEOUT)
        .await?;
    assert_eq!(ns.task_runs("predictor-47").await?.len(), 4);
    sluice_e2e::delete_release(&ns, "predictor-47").await?;
    eventually(
        "TaskRuns of a deleted release garbage-collected",
        TIMEOUT,
        POLL,
        async || {
            let left = ns.task_runs("predictor-47").await?.len();
            Ok(if left == 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{left} TaskRuns"))
            })
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_pipeline_reports_ready_or_a_missing_task() -> anyhow::Result<()> {
    let ns = TestNamespace::new("pipeline").await?;
    ns.pipeline_condition("predictor", READY, "True").await?;
    let mut broken: SecurePipeline = ns.pipeline().await?;
    broken.metadata = kube::api::ObjectMeta {
        name: Some("broken".into()),
        ..Default::default()
    };
    broken.status = None;
    broken.spec.stages[0].task_ref.name = Some("no-such-task".into());
    ns.api::<SecurePipeline>()
        .create(&PostParams::default(), &broken)
        .await?;
    let stalled = ns
        .pipeline_condition("broken", conditions::STALLED, "True")
        .await?;
    assert_eq!(stalled.reason, "TaskNotFound");
    assert!(
        stalled.message.contains("no-such-task"),
        "{}",
        stalled.message
    );
    Ok(())
}

#[tokio::test]
async fn invalid_pipelines_are_rejected_at_admission_with_readable_messages() -> anyhow::Result<()>
{
    let ns = TestNamespace::new("admission").await?;
    let base = |stages: serde_json::Value, extra: serde_json::Value| {
        let mut spec = json!({
            "source": {"url": "https://git.example/x.git"},
            "image": {"repository": REPOSITORY},
            "stages": stages
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "SecurePipeline", "metadata": {"name": "bad"}, "spec": spec})
    };
    let t = json!({"name": "pytest"});
    let cases = [
        (
            base(
                json!([{"name": "a", "taskRef": t}, {"name": "a", "taskRef": t}]),
                json!({}),
            ),
            "stage names must be unique within a pipeline",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t, "gate": {"quality": {}}}]),
                json!({}),
            ),
            "a quality gate needs minCoverage or maxIssues",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t, "gate": {"quality": {"minCoverage": 101}}}]),
                json!({}),
            ),
            "minCoverage in body should be less than or equal to 100",
        ),
        (
            base(json!([{"name": "a", "taskRef": t, "gate": {}}]), json!({})),
            "a gate needs tests, findings or quality",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t, "runAfter": ["nope"]}]),
                json!({}),
            ),
            "every runAfter entry must name a stage of this pipeline",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t}]),
                json!({"exceptions": [{"id": "X", "reason": "r"}]}),
            ),
            "spec.exceptions[0].expires: Required value",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t}]),
                json!({"exceptions": [{"id": "X", "expires": "2027-01-01"}]}),
            ),
            "spec.exceptions[0].reason: Required value",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t, "produces": "image"}, {"name": "b", "taskRef": t, "produces": "image"}]),
                json!({}),
            ),
            "at most one stage may declare produces: image",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t, "gate": {"findings": {"maxSeverity": "severe"}}}]),
                json!({}),
            ),
            "supported values: \"none\", \"low\", \"medium\", \"high\", \"critical\"",
        ),
        (
            base(json!([{"name": "Not_A_Label", "taskRef": t}]), json!({})),
            "spec.stages[0].name",
        ),
        (
            base(json!([{"name": "a", "taskRef": {}}]), json!({})),
            "taskRef needs exactly one of name or resolver",
        ),
        (
            // Accepted by croner, then a search to the year 5000 (found by fuzzing).
            base(
                json!([{"name": "a", "taskRef": t}]),
                json!({"rescan": {"schedule": "* l * * * 1", "stages": ["a"]}}),
            ),
            "seconds, minutes and hours must each be a list of",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t}]),
                json!({"rescan": {"schedule": ", 4 * , * 0", "stages": ["a"]}}),
            ),
            "seconds, minutes and hours must each be a list of",
        ),
        (
            base(
                json!([{"name": "a", "taskRef": t}]),
                json!({"rescan": {"schedule": "0 0 1,,15 * *", "stages": ["a"]}}),
            ),
            "no field may have an empty list item",
        ),
    ];
    let api = ns.api::<SecurePipeline>();
    for (object, expected) in cases {
        let pipeline: SecurePipeline = match serde_json::from_value(object.clone()) {
            Ok(p) => p,
            // Shapes Rust's types cannot hold (a missing required field) go through kubectl.
            Err(_) => {
                let path = std::env::temp_dir().join(format!("{}-bad.json", ns.name));
                std::fs::write(&path, object.to_string())?;
                let err = ns
                    .kubectl(&["create", "-f", path.to_str().unwrap_or_default()])
                    .expect_err("rejected");
                assert!(
                    err.to_string().contains(expected),
                    "expected {expected:?} in {err}"
                );
                continue;
            }
        };
        let err = api
            .create(&PostParams::default(), &pipeline)
            .await
            .expect_err("rejected");
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in {err}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn release_identity_fields_are_immutable() -> anyhow::Result<()> {
    let ns = TestNamespace::new("immutable").await?;
    ns.release("predictor-48", &clean_sims()).await?;
    let gvk = kube::core::GroupVersionKind::gvk("sluice.dev", "v1alpha1", "ModelRelease");
    let err = ns
        .patch_dynamic(
            gvk,
            "modelreleases",
            "predictor-48",
            &json!({"spec": {"revision": "other"}}),
        )
        .await
        .expect_err("rejected");
    assert!(
        err.to_string()
            .contains("pipelineRef, revision and target are immutable"),
        "{err}"
    );
    Ok(())
}

/// The QUALITY results here are scripted by sim annotations (kwok): this proves the gate, not
/// coverage.py; the real-node group and the demo read a real one.
#[tokio::test]
async fn a_release_is_blocked_by_coverage_under_the_quality_gate_s_minimum() -> anyhow::Result<()> {
    let ns = TestNamespace::new("quality").await?;
    ns.patch_pipeline(
        r#"{"spec":{"stages":[
            {"name":"code-quality","taskRef":{"name":"pytest"},"gate":{"quality":{"minCoverage":80,"maxIssues":{"error":0}}}},
            {"name":"build","runAfter":["code-quality"],"taskRef":{"name":"buildah"},"produces":"image"}]}}"#,
    )?;
    let quality = |coverage: f64| {
        Sim::results(&[(
            "QUALITY",
            &format!(
                r#"{{"coverage": {coverage}, "issues": {{"error": 0, "warning": 2, "info": 5}}}}"#
            ),
        )])
    };
    ns.release("low", &[("code-quality", quality(61.5))])
        .await?;
    ns.release(
        "high",
        &[
            ("code-quality", quality(92.0)),
            ("build", Sim::built(FAKE_DIGEST)),
        ],
    )
    .await?;
    let r = ns
        .wait_phase("low", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Blocked));
    let q = stage(&r, "code-quality");
    assert_eq!(q.gate, Some(Verdict::Blocked), "{q:?}");
    assert_eq!(q.quality.as_ref().map(|q| q.coverage), Some(61.5));
    assert!(
        ready_message(&r).contains("coverage 61.5% is below the 80% required (minCoverage)"),
        "{}",
        ready_message(&r)
    );
    assert_eq!(stage(&r, "build").gate, Some(Verdict::Skipped));
    let r = ns
        .wait_phase("high", &[Phase::Blocked, Phase::Signing], TIMEOUT)
        .await?;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Signing),
        "{:?}",
        r.status
    );
    assert_eq!(
        stage(&r, "code-quality")
            .quality
            .as_ref()
            .map(|q| q.issues.info),
        Some(5)
    );
    Ok(())
}
