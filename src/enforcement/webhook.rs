//! The mutating admission webhook: a new pod of a Deployment that releases target (in a namespace
//! that opted in) gets Sluice's scheduling gate and the `sluice.dev/gate: held` label. The answer
//! is computed from the watch caches alone: nothing on this path calls the registry or the API
//! server, so a bulk GitOps apply costs the API server one cache lookup per pod.

use std::{sync::Arc, time::Instant};

use axum::{Json, Router, extract::State, routing::post};
use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{GATE, GATE_HELD, LABEL_GATE, Stores};
use crate::metrics::{DecisionLabels, SharedMetrics};

/// The webhook's path, as the MutatingWebhookConfiguration names it.
pub const PATH: &str = "/mutate-pods";

#[derive(Clone)]
struct Hook {
    stores: Stores,
    metrics: SharedMetrics,
}

/// The webhook's routes.
pub fn router(stores: Stores, metrics: SharedMetrics) -> Router {
    Router::new()
        .route(PATH, post(review))
        .with_state(Hook { stores, metrics })
}

async fn review(
    State(hook): State<Hook>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let request: Result<AdmissionRequest<Pod>, _> = review.try_into();
    let (response, decision) = match request {
        Ok(req) => answer(&hook.stores, &req),
        Err(e) => {
            warn!(error = %e, "admission review without a request");
            (AdmissionResponse::invalid(e.to_string()), "invalid")
        }
    };
    hook.metrics
        .webhook_duration
        .get_or_create(&DecisionLabels { decision })
        .observe(started.elapsed().as_secs_f64());
    Json(response.into_review())
}

/// Allows every request; a new pod the releases target is allowed with the gate patched in.
fn answer(stores: &Stores, req: &AdmissionRequest<Pod>) -> (AdmissionResponse, &'static str) {
    let allow = AdmissionResponse::from(req);
    let (Operation::Create, Some(pod)) = (&req.operation, req.object.as_ref()) else {
        return (allow, "untouched");
    };
    let ns = req.namespace.clone().unwrap_or_default();
    if !stores.concerns(pod, &ns) {
        return (allow, "untouched");
    }
    debug!(namespace = %ns, "holding a new pod for Sluice's verdict");
    match allow.clone().with_patch(gate_patch(pod)) {
        Ok(gated) => (gated, "gated"),
        Err(e) => {
            warn!(error = %e, "could not encode the gate patch; the pod is admitted ungated");
            (allow, "invalid")
        }
    }
}

/// Adds the scheduling gate and the label the gate controller watches.
fn gate_patch(pod: &Pod) -> json_patch::Patch {
    let mut ops = Vec::new();
    let gates = pod.spec.as_ref().and_then(|s| s.scheduling_gates.as_ref());
    let gate = serde_json::json!({"name": GATE});
    ops.push(match gates {
        Some(_) => {
            serde_json::json!({"op": "add", "path": "/spec/schedulingGates/-", "value": gate})
        }
        None => serde_json::json!({"op": "add", "path": "/spec/schedulingGates", "value": [gate]}),
    });
    ops.push(match pod.metadata.labels {
        Some(_) => serde_json::json!({
            "op": "add", "path": format!("/metadata/labels/{}", LABEL_GATE.replace('/', "~1")),
            "value": GATE_HELD
        }),
        None => serde_json::json!({"op": "add", "path": "/metadata/labels", "value": {LABEL_GATE: GATE_HELD}}),
    });
    serde_json::from_value(serde_json::Value::Array(ops)).unwrap_or_default()
}

/// Serves `router` over TLS on `listener`; each connection is handshaken in its own task, with the
/// configuration `tls` holds at that moment (a renewed certificate serves new connections).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
    router: Router,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let config = tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let service = router.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper_util::service::TowerToHyperService::new(service);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .await
            {
                debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_gate_patch_adds_the_gate_and_label_to_a_pod_with_or_without_them() {
        let bare: Pod = serde_json::from_value(json!({"spec": {"containers": []}})).expect("pod");
        let mut doc = serde_json::to_value(&bare).expect("json");
        json_patch::patch(&mut doc, &gate_patch(&bare)).expect("applies");
        assert_eq!(doc["spec"]["schedulingGates"], json!([{"name": GATE}]));
        assert_eq!(doc["metadata"]["labels"][LABEL_GATE], GATE_HELD);

        let full: Pod = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "p"}},
            "spec": {"containers": [], "schedulingGates": [{"name": "other"}]}
        }))
        .expect("pod");
        let mut doc = serde_json::to_value(&full).expect("json");
        json_patch::patch(&mut doc, &gate_patch(&full)).expect("applies");
        assert_eq!(
            doc["spec"]["schedulingGates"],
            json!([{"name": "other"}, {"name": GATE}])
        );
        assert_eq!(doc["metadata"]["labels"]["app"], "p");
        assert_eq!(doc["metadata"]["labels"][LABEL_GATE], GATE_HELD);
    }
}
