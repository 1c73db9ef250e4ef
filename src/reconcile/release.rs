//! ModelRelease reconciler: dereference the pipeline and TaskRuns, plan, create TaskRuns, update status.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;

use super::{
    Ctx, Error, Notice, api, release_plan, release_rollout, release_signing,
    status_write::{StatusWriter, read_fresh},
};
use crate::{
    api::{FIELD_MANAGER, ModelRelease, SecurePipeline},
    api::{Phase, conditions},
    metrics::{CategoryLabels, VerdictLabels},
    tekton::TaskRun,
};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "modelrelease";

/// Reconciles one ModelRelease.
pub async fn reconcile(release: Arc<ModelRelease>, ctx: Ctx) -> Result<Action, Error> {
    super::timed(&ctx, CONTROLLER, &*release, reconcile_fresh(&release, &ctx)).await
}

/// Reconciles the cached copy; when a write finds that the API server has moved past it (a
/// lagging watch), reads the release fresh and reconciles that instead: the reconcile is
/// idempotent, and nothing was written from the stale copy.
async fn reconcile_fresh(release: &ModelRelease, ctx: &Ctx) -> Result<Action, Error> {
    match reconcile_inner(release, ctx).await {
        Err(Error::Stale(action)) => {
            let ns = release.namespace().ok_or(Error::NoNamespace)?;
            match read_fresh(&ctx.client, release).await? {
                Some(fresh) if fresh.resource_version() != release.resource_version() => {
                    info!(release = %release.name_any(), namespace = %ns, action, "cached copy was stale; reconciling a fresh read");
                    reconcile_inner(&fresh, ctx).await
                }
                Some(_) => Err(Error::Stale(action)),
                None => Ok(Action::await_change()),
            }
        }
        other => other,
    }
}

async fn reconcile_inner(release: &ModelRelease, ctx: &Ctx) -> Result<Action, Error> {
    let ns = release.namespace().ok_or(Error::NoNamespace)?;
    let name = release.name_any();
    let task_runs: Api<TaskRun> = Api::namespaced(ctx.client.clone(), &ns);

    let live = ctx.pipeline(&ns, &release.spec.pipeline_ref.name).await?;
    let pipeline = release_plan::effective_pipeline(release, live.as_ref());
    let writer = StatusWriter::new(ctx.client.clone(), release);
    let mut seen = ctx.release_task_runs(&ns, &name).await?;
    let mut plan = release_plan::plan(release, pipeline.as_ref(), &seen, (ctx.now)());
    // A TaskRun without Sluice's labels may hold a stage's name: judge it (the planner finds it
    // untrusted) rather than creating over it, which would fail with 409 forever.
    // A release being deleted starts nothing new: its owner is going away.
    let deleting = release.metadata.deletion_timestamp.is_some();
    let to_create = if deleting { &[][..] } else { &plan.create[..] };
    // A name already taken — by a TaskRun the cache does not show yet, or one without Sluice's
    // labels — is read and judged (the planner finds a stranger untrusted) rather than created
    // over, which would fail with 409 forever.
    let taken = create_task_runs(ctx, &task_runs, to_create).await?;
    if !taken.is_empty() {
        seen.extend(taken);
        plan = release_plan::plan(release, pipeline.as_ref(), &seen, (ctx.now)());
    }
    if let Some(p) = pipeline.as_ref() {
        sign_if_due(ctx, release, p, &seen, &mut plan).await?;
        // Rescans are new audits: the pipeline's policy as it is now judges them.
        let policy = live.as_ref().unwrap_or(p);
        record_rescan(ctx, release, policy, &mut plan).await?;
        release_rollout::Rollout::new(
            ctx,
            release,
            p,
            &writer,
            &mut plan.status,
            &mut plan.notices,
        )
        .rescan_rollback(super::rescan::spec_rollback(policy))
        .advance()
        .await?;
    }
    if let Some(old) = release.status.as_ref() {
        conditions::keep_transition_times(&mut plan.status.conditions, &old.conditions);
    }

    if release.status.as_ref() != Some(&plan.status) {
        super::phase_clock::write(
            &writer,
            release,
            &mut plan.status,
            (ctx.now)(),
            &ctx.metrics,
        )
        .await?;
    }
    // After the status that ended the release is stored: a crash in between only repeats this.
    cancel_task_runs(ctx, release, &task_runs, &plan.status, &seen).await?;
    for (stage, verdict, category) in &plan.decided {
        let labels = VerdictLabels {
            stage: stage.clone(),
            verdict: verdict.as_str(),
            category,
        };
        ctx.metrics.verdicts.get_or_create(&labels).inc();
        observe_stage_duration(ctx, &plan.status, stage, &seen);
    }
    for n in plan.notices {
        n.emit(ctx, release, "Reconcile", None).await;
    }
    Ok(next_action(&plan.status, pipeline.is_some()))
}

/// Records the wall time of the TaskRun that decided `stage`: from its creation (what the
/// release waited for, pod scheduling included) to Tekton's completion time.
fn observe_stage_duration(
    ctx: &Ctx,
    status: &crate::api::ModelReleaseStatus,
    stage: &str,
    seen: &[TaskRun],
) {
    let Some(name) = status
        .stages
        .iter()
        .find(|s| s.name == stage)
        .and_then(|s| s.task_run.as_deref())
    else {
        return;
    };
    let Some(tr) = seen.iter().find(|tr| tr.name_any() == name) else {
        return;
    };
    let created = tr.creation_timestamp().map(|t| t.0);
    let completed = tr
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_deref())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    if let Some((created, completed)) = created.zip(completed) {
        let millis = (completed.as_millisecond() - created.as_millisecond()).max(0);
        ctx.metrics
            .stage_duration
            .get_or_create(&crate::metrics::StageLabels {
                stage: stage.to_string(),
            })
            .observe(millis as f64 / 1000.0);
    }
}

/// Signs once every gate passed and no signature is recorded; folds the outcome into the plan.
async fn sign_if_due(
    ctx: &Ctx,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    task_runs: &[TaskRun],
    plan: &mut release_plan::Plan,
) -> Result<(), Error> {
    let due = plan.status.phase == Phase::Signing && plan.status.signature.is_none();
    let Some(image) = plan.status.image.clone().filter(|_| due) else {
        return Ok(());
    };
    // The one read that must be fresh before a registry write: a cached copy that lags (the
    // release signed and moved on) would attach a second attestation.
    let current = read_fresh(&ctx.client, release).await?;
    if current.is_some_and(|c| c.resource_version() != release.resource_version()) {
        return Err(Error::Stale("sign"));
    }
    let now = (ctx.now)();
    let chains = release_signing::chains_progress(pipeline, &plan.status.stages, task_runs);
    let span =
        tracing::info_span!("sign", image = %format!("{}@{}", image.repository, image.digest));
    let signed = release_signing::sign(ctx, release, pipeline, &image, &plan.status.stages, chains);
    match tracing::Instrument::instrument(signed, span).await {
        Ok(signature) => {
            let mut note = format!(
                "signed {}@{} as {} with key {}",
                image.repository, image.digest, signature.reference, signature.key_id
            );
            let artifact = release
                .spec
                .model
                .as_ref()
                .and_then(|m| m.artifact.as_ref());
            if let (Some(a), Some(sig)) = (artifact, &signature.model) {
                note.push_str(&format!("; model {} as {sig}", a.reference()));
            }
            let mut signed = release.clone();
            let mut status = plan.status.clone();
            status.signature = Some(signature);
            signed.status = Some(status);
            let replanned = release_plan::plan(&signed, Some(pipeline), task_runs, now);
            plan.status = replanned.status;
            plan.notices.push(release_plan::Notice {
                warning: false,
                reason: "Signed",
                note,
                task_run: None,
            });
        }
        Err(f) => {
            let waiting = f.category == conditions::reason::WAITING_FOR_CHAINS;
            if !waiting {
                ctx.metrics
                    .signing_failures
                    .get_or_create(&CategoryLabels {
                        category: f.category,
                    })
                    .inc();
            }
            let previous = release
                .status
                .as_ref()
                .and_then(|s| conditions::get(&s.conditions, conditions::SIGNED))
                .map(|c| c.reason.clone());
            release_plan::signing_failed(
                release,
                &mut plan.status,
                f.category,
                &f.message,
                f.block,
                now,
            );
            if previous.as_deref() != Some(f.category) {
                plan.notices.push(release_plan::Notice {
                    warning: !waiting,
                    reason: if waiting { f.category } else { "SigningFailed" },
                    note: f.message,
                    task_run: None,
                });
            }
        }
    }
    Ok(())
}

/// Folds the latest finished rescan of a Released release into its status: the release
/// controller is the one writer of ModelRelease status, the pipeline controller only schedules.
async fn record_rescan(
    ctx: &Ctx,
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    plan: &mut release_plan::Plan,
) -> Result<(), Error> {
    if plan.status.phase != Phase::Released || pipeline.spec.rescan.is_none() {
        return Ok(());
    }
    let runs = super::rescan::task_runs_of(ctx, release).await?;
    let now = (ctx.now)();
    let Some(rescan) = super::rescan::latest_rescan(pipeline, release, &runs, now) else {
        return Ok(());
    };
    let blocked: Vec<String> = rescan
        .stages
        .iter()
        .filter(|s| s.gate == Some(crate::api::release::Verdict::Blocked))
        .map(|s| s.name.clone())
        .collect();
    if let Some(notice) = super::rescan::fold(release, &mut plan.status, rescan, now) {
        for stage in blocked {
            ctx.metrics
                .rescan_findings
                .get_or_create(&crate::metrics::StageLabels { stage })
                .inc();
        }
        plan.notices.push(notice);
    }
    Ok(())
}

/// Asks Tekton to cancel the release's TaskRuns that are still running after it ended.
async fn cancel_task_runs(
    ctx: &Ctx,
    release: &ModelRelease,
    api_: &Api<TaskRun>,
    status: &crate::api::ModelReleaseStatus,
    seen: &[TaskRun],
) -> Result<(), Error> {
    let why = conditions::get(&status.conditions, conditions::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    for tr in release_plan::to_cancel(release, status, seen) {
        let name = tr.name_any();
        let patch = json!({"spec": {"status": crate::tekton::CANCELLED,
            "statusMessage": format!("cancelled by Sluice: {why}")}});
        match api_
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Gone already (history pruning, deletion): nothing left to stop.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(api("cancel-taskrun")(e)),
        }
        ctx.metrics.task_runs_cancelled.inc();
        let note = format!(
            "cancelled TaskRun {name}: the release ended ({})",
            status.phase.as_str()
        );
        Notice {
            task_run: Some(name),
            ..Notice::normal("TaskRunCancelled", note)
        }
        .emit(ctx, release, "Cancel", None)
        .await;
    }
    Ok(())
}

/// Creates the `planned` TaskRuns; returns those whose names were already taken, as read then.
/// One create each (no read first): the deterministic names make a second create after a
/// restart or a lagging cache a 409, and only then is the TaskRun read.
async fn create_task_runs(
    ctx: &Ctx,
    api_: &Api<TaskRun>,
    planned: &[TaskRun],
) -> Result<Vec<TaskRun>, Error> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let mut taken = Vec::new();
    for tr in planned {
        match api_.create(&pp, tr).await {
            Ok(_) => {
                ctx.metrics.task_runs_created.inc();
            }
            Err(kube::Error::Api(s)) if s.code == 409 => taken.extend(
                api_.get_opt(&tr.name_any())
                    .await
                    .map_err(api("get-taskrun"))?,
            ),
            Err(e) => return Err(api("create-taskrun")(e)),
        };
    }
    Ok(taken)
}

fn next_action(status: &crate::api::ModelReleaseStatus, pipeline_found: bool) -> Action {
    let waiting_turn = conditions::get(&status.conditions, conditions::READY)
        .is_some_and(|c| c.reason == conditions::reason::WAITING_FOR_ROLLOUT);
    let retrying = status.stages.iter().any(|s| s.retry_at.is_some());
    let vulnerable = status.phase == Phase::Released
        && conditions::is_true(&status.conditions, conditions::VULNERABLE);
    if vulnerable {
        // An onFinding rollback may wait for the earlier release's own rescan verdict.
        Action::requeue(Duration::from_secs(30))
    } else if status.phase.is_final() {
        Action::await_change()
    } else if retrying {
        // A stage waits out its retry backoff: come back when it may start.
        Action::requeue(Duration::from_secs(
            super::release_plan::RETRY_BACKOFF_SECONDS.unsigned_abs(),
        ))
    } else if waiting_turn {
        // The holder's end and any change of the Deployment wake the next waiting release;
        // this only bounds a missed wake-up (every waiting release of a busy Deployment
        // looking every few seconds added up to hundreds of reads a second in a backlog).
        Action::requeue(Duration::from_secs(30))
    } else if matches!(
        status.phase,
        Phase::RollingOut | Phase::Verifying | Phase::RollingBack
    ) {
        // Deployment events trigger reconciles too; this bounds the wait if one is missed and
        // checks Sluice's own rollout deadline and the health of a release being verified.
        Action::requeue(Duration::from_secs(5))
    } else if conditions::get(&status.conditions, conditions::SIGNED)
        .is_some_and(|c| c.reason == conditions::reason::WAITING_FOR_CHAINS)
    {
        // Chains' annotation on the build TaskRun wakes the release; this bounds a missed one
        // and the wait for a signature Chains stores without annotating.
        Action::requeue(Duration::from_secs(5))
    } else if !pipeline_found {
        // The pipeline watch also triggers us; this is a safety net.
        Action::requeue(Duration::from_secs(60))
    } else if conditions::is_true(&status.conditions, conditions::STALLED) {
        // Secrets and the registry are not watched: retry a stalled signing soon.
        Action::requeue(Duration::from_secs(20))
    } else {
        // TaskRun events trigger reconciles; the periodic one only guards against missed events.
        Action::requeue(Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        fixtures::{self, ApiServer},
        reconcile::Context,
    };

    const PIPELINE_URI: &str =
        "/apis/sluice.dev/v1alpha1/namespaces/evip/securepipelines/predictor";
    const TASKRUNS_URI: &str = "/apis/tekton.dev/v1/namespaces/evip/taskruns";

    /// Answers the reconciler's look-ups of the TaskRun names it is about to create: all free.
    fn already_exists() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"})
    }
    const STATUS_URI: &str =
        "/apis/sluice.dev/v1alpha1/namespaces/evip/modelreleases/predictor-42/status";

    /// The release as the API server returns it after a status patch.
    fn with_status(patch: &Value) -> Value {
        let mut release = serde_json::to_value(fixtures::release()).expect("json");
        release["status"] = patch["status"].clone();
        release
    }

    fn list(items: Vec<TaskRun>) -> Value {
        json!({"apiVersion": "tekton.dev/v1", "kind": "TaskRunList", "metadata": {}, "items": items})
    }

    async fn serve_pipeline_and_taskruns(
        server: &mut ApiServer,
        pipeline: Option<&SecurePipeline>,
        trs: Vec<TaskRun>,
    ) {
        let get = server.expect(Method::GET, PIPELINE_URI).await;
        match pipeline {
            Some(p) => get.ok(&serde_json::to_value(p).expect("json")),
            None => get.not_found(),
        }
        let listed = server
            .expect(
                Method::GET,
                &format!("{TASKRUNS_URI}?&labelSelector=sluice.dev%2Frelease%3Dpredictor-42"),
            )
            .await;
        listed.ok(&list(trs));
    }

    /// Runs the reconcile against a scenario and returns what the reconcile returned.
    async fn run<F, Fut>(release: ModelRelease, scenario: F) -> Result<Action, Error>
    where
        F: FnOnce(ApiServer) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ApiServer> + Send + 'static,
    {
        let (ctx, server) = Context::test();
        let verifier = tokio::spawn(scenario(server));
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            reconcile(Arc::new(release), ctx),
        )
        .await
        .expect("reconcile made a request the scenario did not expect");
        let mut server = verifier.await.expect("scenario passed");
        server.expect_nothing_more().await;
        result
    }

    #[tokio::test]
    async fn a_new_release_creates_the_taskruns_of_stages_without_dependencies() {
        let result = run(fixtures::release(), |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, Some(&fixtures::pipeline()), vec![]).await;
            for stage in ["unit-tests", "dependency-audit"] {
                let post = server
                    .expect(
                        Method::POST,
                        &format!("{TASKRUNS_URI}?&fieldManager=sluice"),
                    )
                    .await;
                let tr = &post.body;
                assert_eq!(tr["metadata"]["name"], format!("predictor-42-{stage}"));
                assert_eq!(tr["metadata"]["labels"]["sluice.dev/stage"], stage);
                assert_eq!(
                    tr["metadata"]["labels"]["sluice.dev/release"],
                    "predictor-42"
                );
                assert_eq!(tr["metadata"]["labels"]["sluice.dev/pipeline"], "predictor");
                assert_eq!(
                    tr["metadata"]["labels"]["team"], "evip",
                    "release labels propagate"
                );
                assert_eq!(
                    tr["metadata"]["annotations"],
                    json!({"note": "x"}),
                    "kubectl annotations do not"
                );
                assert_eq!(tr["metadata"]["ownerReferences"][0]["uid"], "r-uid");
                assert_eq!(tr["metadata"]["ownerReferences"][0]["controller"], true);
                assert_eq!(
                    tr["spec"]["params"],
                    json!([
                        {"name": "SOURCE_URL", "value": "https://git.example/evip/predictor.git"},
                        {"name": "SOURCE_REVISION", "value": "3f2a9c1"},
                        {"name": "IMAGE", "value": "registry.example/evip/predictor:3f2a9c1"}
                    ])
                );
                assert!(tr["spec"].get("managedBy").is_none());
                let body = post.body.clone();
                post.respond(StatusCode::CREATED, &body);
            }
            let patch = server.expect(Method::PATCH, STATUS_URI).await;
            let status = &patch.body["status"];
            assert_eq!(status["phase"], "Running");
            assert_eq!(status["observedGeneration"], 1);
            assert_eq!(status["gatesSummary"], "0/4");
            let states: Vec<&str> = status["stages"]
                .as_array()
                .expect("stages")
                .iter()
                .map(|s| s["state"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(states, ["Running", "Running", "Waiting", "Waiting"]);
            let body = with_status(&patch.body);
            patch.ok(&body);
            server.expect_event("TaskRunCreated").await;
            server.expect_event("TaskRunCreated").await;
            server.expect_event("Running").await;
            server
        })
        .await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn reconciling_again_creates_nothing_and_patches_nothing() {
        // The status the first reconcile wrote, computed by the same planner.
        let running = vec![
            fixtures::running_task_run("unit-tests"),
            fixtures::running_task_run("dependency-audit"),
        ];
        let first = release_plan::plan(
            &fixtures::release(),
            Some(&fixtures::pipeline()),
            &[],
            fixtures::test_now(),
        );
        let mut release = fixtures::release();
        release.status = Some(first.status);
        let result = run(release, |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, Some(&fixtures::pipeline()), running).await;
            server
        })
        .await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn a_taskrun_squatting_on_a_stage_name_blocks_instead_of_being_created_over() {
        let result = run(fixtures::release(), |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, Some(&fixtures::pipeline()), vec![]).await;
            let mut squatter = fixtures::finished_task_run("unit-tests", true, &[]);
            squatter.metadata.labels = None;
            squatter.metadata.owner_references = None;
            let post = server.expect(Method::POST, TASKRUNS_URI).await;
            assert_eq!(post.body["metadata"]["name"], "predictor-42-unit-tests");
            post.respond(StatusCode::CONFLICT, &already_exists());
            server
                .expect(
                    Method::GET,
                    &format!("{TASKRUNS_URI}/predictor-42-unit-tests"),
                )
                .await
                .ok(&serde_json::to_value(&squatter).expect("json"));
            let post = server.expect(Method::POST, TASKRUNS_URI).await;
            let body = post.body.clone();
            post.respond(StatusCode::CREATED, &body);
            // Re-planned with the squatter: blocked (the other stage's TaskRun is cancelled by
            // the next reconcile, which sees it).
            let patch = server.expect(Method::PATCH, STATUS_URI).await;
            assert_eq!(patch.body["status"]["phase"], "Blocked");
            let reason = patch.body["status"]["stages"][0]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(reason.contains("not created by this release"), "{reason}");
            let body = with_status(&patch.body);
            patch.ok(&body);
            let blocked = server.expect_event("GateBlocked").await;
            assert_eq!(blocked["type"], "Warning");
            server.expect_event("Blocked").await;
            server
        })
        .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn an_existing_taskrun_on_create_is_not_an_error() {
        let result = run(fixtures::release(), |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, Some(&fixtures::pipeline()), vec![]).await;
            for stage in ["unit-tests", "dependency-audit"] {
                let post = server.expect(Method::POST, TASKRUNS_URI).await;
                post.respond(StatusCode::CONFLICT, &already_exists());
                // Ours, created by an earlier reconcile the cache does not show yet.
                let ours = fixtures::running_task_run(stage);
                server
                    .expect(Method::GET, &format!("{TASKRUNS_URI}/predictor-42-{stage}"))
                    .await
                    .ok(&serde_json::to_value(&ours).expect("json"));
            }
            let patch = server.expect(Method::PATCH, STATUS_URI).await;
            let body = with_status(&patch.body);
            patch.ok(&body);
            // Read back, they are judged as running: no second "created" Event.
            for reason in ["Running"] {
                server.expect_event(reason).await;
            }
            server
        })
        .await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn a_blocked_release_cancels_its_taskruns_still_running() {
        let trs = vec![
            fixtures::running_task_run("unit-tests"),
            fixtures::finished_task_run(
                "dependency-audit",
                true,
                &[("FINDINGS", r#"{"critical":1}"#)],
            ),
        ];
        let result = run(fixtures::release(), |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, Some(&fixtures::pipeline()), trs).await;
            let patch = server.expect(Method::PATCH, STATUS_URI).await;
            assert_eq!(patch.body["status"]["phase"], "Blocked");
            let body = with_status(&patch.body);
            patch.ok(&body);
            let cancel = server
                .expect(
                    Method::PATCH,
                    &format!("{TASKRUNS_URI}/predictor-42-unit-tests"),
                )
                .await;
            assert_eq!(cancel.body["spec"]["status"], "TaskRunCancelled");
            let message = cancel.body["spec"]["statusMessage"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(message.contains("dependency-audit"), "{message}");
            let tr = serde_json::to_value(fixtures::running_task_run("unit-tests")).expect("json");
            cancel.ok(&tr);
            server.expect_event("TaskRunCancelled").await;
            server.expect_event("GateBlocked").await;
            server.expect_event("Blocked").await;
            server
        })
        .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn a_critical_finding_blocks_the_release_and_starts_nothing_more() {
        let trs = vec![
            fixtures::finished_task_run(
                "unit-tests",
                true,
                &[(
                    "TEST_OUTPUT",
                    r#"{"result":"SUCCESS","successes":12,"failures":0}"#,
                )],
            ),
            fixtures::finished_task_run(
                "dependency-audit",
                true,
                &[(
                    "FINDINGS",
                    r#"{"critical":1,"high":0,"medium":0,"low":0,"ids":[{"id":"PYSEC-2024-1","severity":"critical"}]}"#,
                )],
            ),
        ];
        let result = run(fixtures::release(), |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, Some(&fixtures::pipeline()), trs).await;
            let patch = server.expect(Method::PATCH, STATUS_URI).await;
            let status = &patch.body["status"];
            assert_eq!(status["phase"], "Blocked");
            assert_eq!(status["stages"][1]["gate"], "Blocked");
            assert_eq!(status["stages"][1]["findings"]["critical"], 1);
            assert_eq!(status["stages"][2]["state"], "NotRun");
            let ready = status["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .find(|c| c["type"] == "Ready")
                .expect("Ready")
                .clone();
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "GateBlocked");
            assert_eq!(
                ready["message"],
                "release blocked: stage dependency-audit: 1 critical above maxSeverity medium \
                 (PYSEC-2024-1 critical)"
            );
            let body = with_status(&patch.body);
            patch.ok(&body);
            server.expect_event("GatePassed").await;
            let blocked = server.expect_event("GateBlocked").await;
            assert_eq!(blocked["type"], "Warning");
            server.expect_event("Blocked").await;
            server
        })
        .await;
        assert!(matches!(result, Ok(a) if a == Action::await_change()));
    }

    #[tokio::test]
    async fn passing_gates_start_the_build_with_the_guaranteed_params() {
        let trs = vec![
            fixtures::finished_task_run(
                "unit-tests",
                true,
                &[(
                    "TEST_OUTPUT",
                    r#"{"result":"SUCCESS","successes":12,"failures":0}"#,
                )],
            ),
            fixtures::finished_task_run(
                "dependency-audit",
                true,
                &[("FINDINGS", r#"{"critical":0,"high":0,"medium":1,"low":3}"#)],
            ),
        ];
        let result = run(fixtures::release(), |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, Some(&fixtures::pipeline()), trs).await;
            let post = server.expect(Method::POST, TASKRUNS_URI).await;
            assert_eq!(post.body["metadata"]["name"], "predictor-42-build");
            assert_eq!(post.body["spec"]["taskRef"], json!({"name": "buildah"}));
            let body = post.body.clone();
            post.respond(StatusCode::CREATED, &body);
            let patch = server.expect(Method::PATCH, STATUS_URI).await;
            assert_eq!(patch.body["status"]["gatesSummary"], "2/4");
            let body = with_status(&patch.body);
            patch.ok(&body);
            for reason in ["GatePassed", "GatePassed", "TaskRunCreated", "Running"] {
                server.expect_event(reason).await;
            }
            server
        })
        .await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn a_missing_pipeline_stalls_the_release() {
        let result = run(fixtures::release(), |mut server| async move {
            serve_pipeline_and_taskruns(&mut server, None, vec![]).await;
            let patch = server.expect(Method::PATCH, STATUS_URI).await;
            let conditions = patch.body["status"]["conditions"]
                .as_array()
                .expect("conditions")
                .clone();
            let stalled = conditions
                .iter()
                .find(|c| c["type"] == "Stalled")
                .expect("Stalled");
            assert_eq!(stalled["status"], "True");
            assert_eq!(stalled["reason"], "PipelineNotFound");
            assert_eq!(patch.body["status"]["phase"], "Pending");
            let body = with_status(&patch.body);
            patch.ok(&body);
            server.expect_event("PipelineNotFound").await;
            server
        })
        .await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn an_api_error_is_returned_with_its_category() {
        let result = run(fixtures::release(), |mut server| async move {
            let get = server.expect(Method::GET, PIPELINE_URI).await;
            get.respond(StatusCode::INTERNAL_SERVER_ERROR, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "boom"}));
            server
        })
        .await;
        assert_eq!(result.expect_err("error").category(), "get-pipeline");
    }
}
