//! Enforcement, opt-in per namespace (label `sluice.dev/enforce: "true"`, matched by the webhook
//! configuration's namespaceSelector): new pods of Deployments that releases target are held by a
//! scheduling gate until their image digest (and model) belongs to a release whose signature
//! Sluice verified. The webhook only adds the gate (`webhook`); the leader's gate controller
//! (`gate`) judges from its caches (`admission`) and removes it, or leaves the pod Pending with an
//! Event that says why. The webhook's TLS is the operator's (`tls`) or cert-manager's.

pub mod admission;
pub mod gate;
pub mod serve;
pub mod tls;
pub mod webhook;

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};

use crate::api::ModelRelease;

/// The scheduling gate Sluice adds and removes.
pub const GATE: &str = "sluice.dev/verified";
/// Label on a pod that carries (or carried) Sluice's gate: `held` or `admitted`.
pub const LABEL_GATE: &str = "sluice.dev/gate";
/// `LABEL_GATE` while the gate is on.
pub const GATE_HELD: &str = "held";
/// `LABEL_GATE` once the gate controller removed the gate.
pub const GATE_ADMITTED: &str = "admitted";
/// Annotation on a held pod: why it is held (the Event says it too).
pub const ANNOTATION_HELD: &str = "sluice.dev/held";
/// The namespace label that opts in to enforcement.
pub const LABEL_ENFORCE: &str = "sluice.dev/enforce";

/// The webhook's caches: every replica keeps them (any replica may answer the API server), apart
/// from the leader's controller caches, which exist only during a term.
#[derive(Clone)]
pub struct Stores {
    /// Every ModelRelease.
    pub releases: Store<ModelRelease>,
    /// Every Deployment.
    pub deployments: Store<Deployment>,
}

impl Stores {
    /// Starts the two watches; the stores fill as they list.
    pub fn start(client: &Client) -> Self {
        Self {
            releases: reflect(Api::all(client.clone()), |r: &mut ModelRelease| {
                // The webhook reads a release's namespace, target and built repository only.
                r.status = r.status.take().map(|s| crate::api::ModelReleaseStatus {
                    image: s.image,
                    ..Default::default()
                });
                r.metadata.annotations = None;
                r.metadata.labels = None;
            }),
            deployments: reflect(Api::all(client.clone()), |d: &mut Deployment| {
                // ... and a Deployment's name and selector: its pod template is most of it.
                d.status = None;
                d.metadata.annotations = None;
                if let Some(spec) = d.spec.as_mut() {
                    spec.template = Default::default();
                }
            }),
        }
    }

    /// Waits for both first lists.
    pub async fn ready(&self) {
        let _ = self.releases.wait_until_ready().await;
        let _ = self.deployments.wait_until_ready().await;
    }

    /// Whether enforcement concerns `pod` of namespace `ns` (see `admission::concerns`).
    pub fn concerns(&self, pod: &Pod, ns: &str) -> bool {
        admission::concerns(pod, ns, &self.releases.state(), &self.deployments.state())
    }
}

/// A watch cache of `api`'s objects, each trimmed by `slim` before it is stored.
fn reflect<K: crate::reconcile::caches::Watched>(api: Api<K>, slim: fn(&mut K)) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            slim(o);
        })
        .reflect(writer)
        .for_each(|_| async {});
    tokio::spawn(stream);
    store
}

/// Whether `pod` still carries Sluice's gate, and at which index.
pub fn gate_index(pod: &Pod) -> Option<usize> {
    pod.spec
        .as_ref()?
        .scheduling_gates
        .as_ref()?
        .iter()
        .position(|g| g.name == GATE)
}
