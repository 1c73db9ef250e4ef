//! ModelRelease reconciler: dereference the pipeline and TaskRuns, plan, create TaskRuns, update status.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;

use super::{Ctx, Error, api, release_plan};
use crate::{
    api::{FIELD_MANAGER, LABEL_RELEASE, ModelRelease, SecurePipeline},
    metrics::{ControllerLabels, VerdictLabels},
    tekton::TaskRun,
};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "modelrelease";

/// Reconciles one ModelRelease.
pub async fn reconcile(release: Arc<ModelRelease>, ctx: Ctx) -> Result<Action, Error> {
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let result = reconcile_inner(&release, &ctx).await;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(release: &ModelRelease, ctx: &Ctx) -> Result<Action, Error> {
    let ns = release.namespace().ok_or(Error::NoNamespace)?;
    let name = release.name_any();
    let pipelines: Api<SecurePipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let task_runs: Api<TaskRun> = Api::namespaced(ctx.client.clone(), &ns);

    let pipeline = pipelines
        .get_opt(&release.spec.pipeline_ref.name)
        .await
        .map_err(api("get-pipeline"))?;
    let owned = task_runs
        .list(&ListParams::default().labels(&format!("{LABEL_RELEASE}={name}")))
        .await
        .map_err(api("list-taskruns"))?;
    let plan = release_plan::plan(release, pipeline.as_ref(), &owned.items, (ctx.now)());

    for tr in &plan.create {
        create_task_run(&task_runs, tr).await?;
        ctx.metrics.task_runs_created.inc();
    }
    if release.status.as_ref() != Some(&plan.status) {
        let patch = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "ModelRelease", "status": plan.status});
        Api::<ModelRelease>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api("patch-release-status"))?;
    }
    for (stage, verdict, category) in &plan.decided {
        let labels = VerdictLabels {
            stage: stage.clone(),
            verdict: verdict.as_str(),
            category,
        };
        ctx.metrics.verdicts.get_or_create(&labels).inc();
    }
    for n in plan.notices {
        info!(release = %name, namespace = %ns, reason = n.reason, "{}", n.note);
        ctx.publish(release, n.warning, n.reason, "Reconcile", n.note)
            .await;
    }
    Ok(next_action(&plan.status, pipeline.is_some()))
}

async fn create_task_run(api_: &Api<TaskRun>, tr: &TaskRun) -> Result<(), Error> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api_.create(&pp, tr).await {
        Ok(_) => Ok(()),
        // The deterministic name makes a second create after a restart or a stale list a no-op.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(api("create-taskrun")(e)),
    }
}

fn next_action(status: &crate::api::ModelReleaseStatus, pipeline_found: bool) -> Action {
    if status.phase.is_final() {
        Action::await_change()
    } else if !pipeline_found {
        // The pipeline watch also triggers us; this is a safety net.
        Action::requeue(Duration::from_secs(60))
    } else {
        // TaskRun events trigger reconciles; the periodic one only guards against missed events.
        Action::requeue(Duration::from_secs(300))
    }
}
