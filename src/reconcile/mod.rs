//! The two controllers: one pipeline of steps per custom resource (dereference, plan, apply,
//! update status), sharing one `Context`.

pub mod history;
pub mod pipeline;
pub mod release;
pub mod release_plan;
pub mod release_rollout;
pub mod release_signing;
pub mod rescan;

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};
use tracing::warn;

use crate::metrics::{ControllerLabels, ErrorLabels, SharedMetrics};

/// What every reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: SharedMetrics,
    /// Clock, replaceable in tests.
    pub now: fn() -> Timestamp,
    /// Registries (host:port) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
}

impl Context {
    /// A context for the given client.
    pub fn new(client: Client, metrics: SharedMetrics) -> Self {
        let reporter = Reporter {
            controller: "sluice".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            now: Timestamp::now,
            insecure_registries: Vec::new(),
        }
    }

    /// Publishes an Event; a failure to publish is logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let mut note = note;
        // The Events API limits notes to 1 kB.
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: related,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Errors of a reconcile; each has a bounded category used as metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done, a bounded string.
        action: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The object has no namespace (cannot happen for these namespaced kinds).
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    /// Bounded category for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api { action, .. } => action,
            Error::NoNamespace => "no-namespace",
        }
    }
}

/// Wraps a client error with the action that failed.
pub fn api(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api { action, source }
}

/// Requeue policy for a failed reconcile: conflicts retry soon, other API errors back off.
pub fn error_policy(controller: &'static str, error: &Error, metrics: &SharedMetrics) -> Action {
    metrics
        .failures
        .get_or_create(&ErrorLabels {
            controller,
            category: error.category(),
        })
        .inc();
    warn!(controller, error = %error, "reconcile failed");
    match error {
        Error::Api {
            source: kube::Error::Api(status),
            ..
        } if status.code == 409 => Action::requeue(Duration::from_secs(1)),
        Error::Api { .. } => Action::requeue(Duration::from_secs(15)),
        Error::NoNamespace => Action::await_change(),
    }
}

/// Counts and times one reconcile of `controller`.
pub async fn timed(
    ctx: &Ctx,
    controller: &'static str,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let labels = ControllerLabels { controller };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let result = reconcile.await;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Shared handle to the context.
pub type Ctx = Arc<Context>;
