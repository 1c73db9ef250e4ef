//! The gate controller (leader only): watches the pods the webhook held (label
//! `sluice.dev/gate=held`) and every release change of their namespace, and removes Sluice's
//! scheduling gate once the pod's digest (and model) belongs to a release whose signature was
//! verified; until then the pod stays Pending, annotated and with a Warning Event saying why.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};

use super::{
    ANNOTATION_HELD, GATE, GATE_ADMITTED, GATE_HELD, LABEL_GATE,
    admission::{Judgement, judge},
    gate_index,
};
use crate::{
    api::ModelRelease,
    metrics::OutcomeLabels,
    reconcile::{Ctx, Error, Notice, api},
};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "podgate";

/// Runs the gate controller until `stop` resolves; `releases` triggers a look at the held pods of
/// the release's namespace (a release verified, failed or deleted changes their verdict).
pub async fn run(
    client: Client,
    ctx: Ctx,
    releases: impl futures::Stream<Item = Result<ModelRelease, watcher::Error>> + Send + 'static,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let held = watcher::Config::default().labels(&format!("{LABEL_GATE}={GATE_HELD}"));
    let controller = Controller::new(Api::<Pod>::all(client), held);
    let pods = controller.store();
    controller
        .watches_stream(releases, move |r: ModelRelease| {
            let ns = r.namespace();
            pods.state()
                .into_iter()
                .filter(|p| p.namespace() == ns)
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stop)
        .run(
            reconcile,
            |_pod, e, ctx| crate::reconcile::error_policy(CONTROLLER, e, 1, &ctx.metrics),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(pod: Arc<Pod>, ctx: Ctx) -> Result<Action, Error> {
    let Some(index) = gate_index(&pod) else {
        return Ok(Action::await_change());
    };
    let ns = pod.namespace().ok_or(Error::NoNamespace)?;
    let (releases, deployments) = match &ctx.caches {
        Some(c) => {
            c.ready().await;
            (c.releases.state(), c.deployments.state())
        }
        None => (Vec::new(), Vec::new()),
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let admitted = match judge(&pod, &ns, &releases, &deployments) {
        Judgement::Admit { release } => Some((
            "Verified",
            format!("{} runs what release {release} verified", describe(&pod)),
        )),
        Judgement::NotTargeted => Some((
            "NotTargeted",
            "no ModelRelease targets this pod's Deployment any more".to_string(),
        )),
        Judgement::Hold { reason, message } => {
            let said = format!("{reason}: {message}");
            if pod.annotations().get(ANNOTATION_HELD) != Some(&said) {
                let patch =
                    serde_json::json!({"metadata": {"annotations": {ANNOTATION_HELD: said}}});
                pods.patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(api("annotate-held-pod"))?;
                count(&ctx, "Held", reason);
                Notice::warning(reason, message)
                    .emit(&ctx, &*pod, "Hold", None)
                    .await;
            }
            None
        }
    };
    if let Some((why, note)) = admitted {
        admit(&pods, &pod, index).await?;
        count(&ctx, "Admitted", why);
        let note = format!("{note}; scheduling gate {GATE} removed");
        Notice::normal("Admitted", note)
            .emit(&ctx, &*pod, "Admit", None)
            .await;
    }
    Ok(Action::await_change())
}

fn describe(pod: &Pod) -> String {
    let images: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.image.as_ref().map(|i| format!("{}={i}", c.name)))
        .collect();
    format!("pod {} ({})", pod.name_any(), images.join(", "))
}

/// Removes the gate (tested by name at its index: a concurrent change fails the patch instead of
/// removing another gate) and marks the pod admitted.
async fn admit(pods: &Api<Pod>, pod: &Pod, index: usize) -> Result<(), Error> {
    let mut ops = vec![
        serde_json::json!({"op": "test", "path": format!("/spec/schedulingGates/{index}/name"), "value": GATE}),
        serde_json::json!({"op": "remove", "path": format!("/spec/schedulingGates/{index}")}),
        serde_json::json!({"op": "add", "path": format!("/metadata/labels/{}", LABEL_GATE.replace('/', "~1")), "value": GATE_ADMITTED}),
    ];
    if pod.annotations().contains_key(ANNOTATION_HELD) {
        ops.push(serde_json::json!({"op": "remove", "path": format!("/metadata/annotations/{}", ANNOTATION_HELD.replace('/', "~1"))}));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).unwrap_or_default();
    match pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone, or the gate moved: the next event for the pod judges it again.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(api("ungate-pod")(e)),
    }
}

fn count(ctx: &Ctx, outcome: &'static str, reason: &'static str) {
    ctx.metrics
        .pod_gates
        .get_or_create(&OutcomeLabels { outcome, reason })
        .inc();
}
