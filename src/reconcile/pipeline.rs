//! SecurePipeline reconciler: validates what the CRD schema cannot (the stage graph, that the
//! referenced Tasks and the signing Secret exist) and reports Ready or Stalled.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{Api, ResourceExt, runtime::controller::Action};

use super::{Ctx, Error, Notice, api, history, release_plan, rescan, status_write::StatusWriter};
use crate::{
    api::{
        ModelRelease, SecurePipeline, SecurePipelineStatus,
        conditions::{self, Health, reason},
        pipeline::{SignerKind, SigningSpec},
    },
    tekton::Task,
};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "securepipeline";

/// What the pipeline's references resolved to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Task names referenced by stages that do not exist.
    pub missing_tasks: Vec<String>,
    /// Whether the signing Secret is named and missing.
    pub signing_secret_missing: bool,
    /// Newest ModelRelease of this pipeline.
    pub last_release: Option<String>,
}

/// Reconciles one SecurePipeline.
pub async fn reconcile(pipeline: Arc<SecurePipeline>, ctx: Ctx) -> Result<Action, Error> {
    super::timed(
        &ctx,
        CONTROLLER,
        &*pipeline,
        reconcile_inner(&pipeline, &ctx),
    )
    .await
}

async fn reconcile_inner(pipeline: &SecurePipeline, ctx: &Ctx) -> Result<Action, Error> {
    let ns = pipeline.namespace().ok_or(Error::NoNamespace)?;
    let name = pipeline.name_any();
    let releases = ctx
        .releases(&ns, |r| r.spec.pipeline_ref.name == name)
        .await?;
    let refs = dereference(pipeline, ctx, &ns, &releases).await?;
    let old = pipeline.status.clone().unwrap_or_default();
    let mut status = build_status(pipeline, &refs, Time((ctx.now)()));
    rescan::run(ctx, pipeline, &releases, &mut status).await?;
    history::prune(ctx, pipeline, &releases).await?;
    conditions::keep_transition_times(&mut status.conditions, &old.conditions);
    let ready = conditions::is_true(&status.conditions, conditions::READY);
    if status != old {
        StatusWriter::new(ctx.client.clone(), pipeline)
            .write(&status)
            .await?;
        let was_ready = conditions::is_true(&old.conditions, conditions::READY);
        if ready != was_ready || old.conditions.is_empty() {
            let message = conditions::get(&status.conditions, conditions::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            let reason = if ready { reason::VALID } else { "Invalid" };
            Notice {
                warning: !ready,
                ..Notice::normal(reason, message)
            }
            .emit(ctx, pipeline, "Validate", None)
            .await;
        }
    }
    // Tasks and Secrets are not watched: look again soon while something is missing.
    let idle = Duration::from_secs(if ready { 300 } else { 30 });
    Ok(Action::requeue(
        rescan::until_next(pipeline, (ctx.now)()).map_or(idle, |d| d.min(idle)),
    ))
}

/// What the pipeline refers to (Tasks, the signing Secret) and its newest release among
/// `releases` (those naming it).
async fn dereference(
    pipeline: &SecurePipeline,
    ctx: &Ctx,
    ns: &str,
    releases: &[ModelRelease],
) -> Result<References, Error> {
    let tasks: Api<Task> = Api::namespaced(ctx.client.clone(), ns);
    let mut refs = References::default();
    for stage in &pipeline.spec.stages {
        let kind = stage.task_ref.kind.as_deref().unwrap_or("Task");
        let Some(name) = stage.task_ref.name.as_ref().filter(|_| kind == "Task") else {
            continue;
        };
        if !refs.missing_tasks.contains(name)
            && tasks
                .get_metadata_opt(name)
                .await
                .map_err(api("get-task"))?
                .is_none()
        {
            refs.missing_tasks.push(name.clone());
        }
    }
    if let Some(signing) = &pipeline.spec.signing {
        // Metadata only: the key material never leaves the API server here.
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        refs.signing_secret_missing = secrets
            .get_metadata_opt(signing.signer().1)
            .await
            .map_err(api("get-secret"))?
            .is_none();
    }
    refs.last_release = releases
        .iter()
        .max_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                a.name_any(),
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    b.name_any(),
                ))
        })
        .map(|r| r.name_any());
    Ok(refs)
}

/// The status a pipeline should have, given what its references resolved to. Pure.
pub fn build_status(
    pipeline: &SecurePipeline,
    refs: &References,
    now: Time,
) -> SecurePipelineStatus {
    let mut status = pipeline.status.clone().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let name = pipeline.name_any();
    let problem = release_plan::pipeline_problem(pipeline)
        .map(|p| (p.reason, p.message))
        .or_else(|| {
            (!refs.missing_tasks.is_empty()).then(|| {
                (
                    reason::TASK_NOT_FOUND,
                    format!("SecurePipeline {name}: Task {} not found in namespace {}; apply the Task or fix the stage's taskRef", refs.missing_tasks.join(", "), pipeline.namespace().unwrap_or_default()),
                )
            })
        })
        .or_else(|| {
            rescan::schedule_problem(pipeline).map(|m| {
                (
                    reason::RESCAN_INVALID,
                    format!("SecurePipeline {name}: {m}"),
                )
            })
        })
        .or_else(|| {
            refs.signing_secret_missing.then(|| {
                let (kind, secret) = pipeline.spec.signing.as_ref().map_or((SignerKind::CosignKey, ""), SigningSpec::signer);
                (
                    reason::SIGNING_SECRET_NOT_FOUND,
                    format!("SecurePipeline {name}: signing Secret {secret} not found; {}", secret_hint(kind, secret)),
                )
            })
        });
    let valid = format!(
        "{} stages valid; ready for releases",
        pipeline.spec.stages.len()
    );
    let (health, r, m) = match &problem {
        Some((r, m)) => (Health::Stalled, *r, m.as_str()),
        None => (Health::Ready, reason::VALID, valid.as_str()),
    };
    conditions::set_health(&mut status.conditions, health, r, m, generation, &now);
    status.observed_generation = generation;
    status.stage_count = u32::try_from(pipeline.spec.stages.len()).ok();
    status.last_release = refs.last_release.clone();
    status
}

/// How to create the signing Secret a pipeline names.
pub fn secret_hint(kind: SignerKind, secret: &str) -> String {
    match kind {
        SignerKind::CosignKey => {
            format!("create it with `cosign generate-key-pair k8s://<namespace>/{secret}`")
        }
        SignerKind::Pkcs11 => format!(
            "create it with `kubectl create secret generic {secret} --from-literal=pin=<user PIN>`"
        ),
        SignerKind::Kms => format!(
            "create it with `kubectl create secret generic {secret} --from-literal=token=<token>`"
        ),
        SignerKind::X509 => format!(
            "create it with `kubectl create secret generic {secret} --from-file=x509.pem=<key.pem> --from-file=cert.pem=<cert.pem> --from-file=chain.pem=<chain.pem>`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn now() -> Time {
        Time(fixtures::test_now())
    }

    #[test]
    fn a_valid_pipeline_is_ready() {
        let refs = References {
            last_release: Some("predictor-42".into()),
            ..References::default()
        };
        let status = build_status(&fixtures::pipeline(), &refs, now());
        assert!(conditions::is_true(&status.conditions, conditions::READY));
        assert!(!conditions::is_true(
            &status.conditions,
            conditions::STALLED
        ));
        assert_eq!(status.stage_count, Some(4));
        assert_eq!(status.last_release.as_deref(), Some("predictor-42"));
        assert_eq!(status.observed_generation, Some(1));
    }

    #[test]
    fn missing_tasks_and_secrets_stall_with_a_reason() {
        let refs = References {
            missing_tasks: vec!["pytest".into()],
            ..References::default()
        };
        let status = build_status(&fixtures::pipeline(), &refs, now());
        let stalled = conditions::get(&status.conditions, conditions::STALLED).expect("Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", reason::TASK_NOT_FOUND)
        );
        assert!(
            stalled
                .message
                .contains("Task pytest not found in namespace evip"),
            "{}",
            stalled.message
        );

        let mut signed = fixtures::pipeline();
        signed.spec.signing =
            serde_json::from_value(serde_json::json!({"secretRef": {"name": "cosign-key"}}))
                .expect("valid");
        let refs = References {
            signing_secret_missing: true,
            ..References::default()
        };
        let status = build_status(&signed, &refs, now());
        let ready = conditions::get(&status.conditions, conditions::READY).expect("Ready");
        assert_eq!(ready.reason, reason::SIGNING_SECRET_NOT_FOUND);
        assert!(
            ready
                .message
                .contains("cosign generate-key-pair k8s://<namespace>/cosign-key")
        );
    }

    #[test]
    fn a_cycle_or_no_build_stage_is_invalid() {
        let mut cyclic = fixtures::pipeline();
        cyclic.spec.stages[0].run_after = vec!["build".into()];
        let status = build_status(&cyclic, &References::default(), now());
        let ready = conditions::get(&status.conditions, conditions::READY).expect("Ready");
        assert_eq!(ready.reason, reason::PIPELINE_INVALID);
        assert!(ready.message.contains("cycle"), "{}", ready.message);

        let mut unbuilt = fixtures::pipeline();
        unbuilt.spec.stages[2].produces = None;
        let status = build_status(&unbuilt, &References::default(), now());
        let ready = conditions::get(&status.conditions, conditions::READY).expect("Ready");
        assert!(
            ready
                .message
                .contains("exactly one stage must declare produces: image, found 0"),
            "{}",
            ready.message
        );
    }
}
