//! The two controllers: one pipeline of steps per custom resource (dereference, plan, apply,
//! update status), sharing one `Context`.

pub mod caches;
pub mod history;
pub mod phase_clock;
pub mod pipeline;
pub mod release;
pub mod release_plan;
pub mod release_rollout;
pub mod release_signing;
pub mod rescan;
pub mod signing_pool;
pub mod status_write;
pub mod wakeups;

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
    /// Consecutive failed reconciles per object, for the backoff.
    pub failures: FailureCounts,
    /// The shared watch caches; `None` reads the API server (unit tests).
    pub caches: Option<caches::Caches>,
    /// Decrypted signers, registry clients and signing slots.
    pub signing: signing_pool::SigningPool,
    /// The PKCS#11 module the operator was started with, initialized once.
    pub pkcs11: Option<std::sync::Arc<cryptoki::context::Pkcs11>>,
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
            signing: signing_pool::SigningPool::new(metrics.clone()),
            metrics,
            now: Timestamp::now,
            insecure_registries: Vec::new(),
            failures: FailureCounts::default(),
            caches: None,
            pkcs11: None,
        }
    }

    /// Publishes an Event; a failure to publish is logged, never fatal. Only `Notice::emit`
    /// calls it, so every Event is also a log line.
    async fn publish<K: Resource<DynamicType = ()>>(
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
        crate::text::truncate(&mut note, 1000);
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

/// Something to tell the user about an object: one log line and one Event, with the same
/// reason and note (the one notice type of both controllers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Warning rather than Normal.
    pub warning: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human-readable note.
    pub note: String,
    /// The TaskRun the notice is about, so Events about different stages are not merged.
    pub task_run: Option<String>,
}

impl Notice {
    /// A Normal notice.
    pub fn normal(reason: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
            task_run: None,
        }
    }

    /// A Warning notice.
    pub fn warning(reason: &'static str, note: String) -> Self {
        Self {
            warning: true,
            ..Self::normal(reason, note)
        }
    }

    /// Logs the notice and publishes it as an Event on `obj`; `action` says what Sluice was
    /// doing, `related` names a second object (by default the notice's TaskRun).
    pub async fn emit<K: Resource<DynamicType = ()>>(
        self,
        ctx: &Context,
        obj: &K,
        action: &str,
        related: Option<ObjectReference>,
    ) {
        let kind = K::kind(&());
        let name = obj.meta().name.as_deref().unwrap_or_default();
        let namespace = obj.meta().namespace.as_deref().unwrap_or_default();
        if self.warning {
            warn!(%kind, name, namespace, reason = self.reason, "{}", self.note);
        } else {
            tracing::info!(%kind, name, namespace, reason = self.reason, "{}", self.note);
        }
        let related = related.or_else(|| {
            self.task_run.map(|tr| ObjectReference {
                api_version: Some("tekton.dev/v1".into()),
                kind: Some("TaskRun".into()),
                name: Some(tr),
                namespace: obj.meta().namespace.clone(),
                ..ObjectReference::default()
            })
        });
        ctx.publish(obj, self.warning, self.reason, action, self.note, related)
            .await;
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
    /// A write's precondition failed: the object changed since it was read. Retried soon.
    #[error("{0}: the object changed since it was read")]
    Stale(&'static str),
    /// The reconcile panicked; the process lives on and this object backs off.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

impl Error {
    /// Bounded category for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api { action, .. } => action,
            Error::NoNamespace => "no-namespace",
            Error::Stale(action) => action,
            Error::Panicked(_) => "panic",
        }
    }
}

/// Wraps a client error with the action that failed.
pub fn api(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api { action, source }
}

/// Requeue policy for a failed reconcile: conflicts retry soon; other failures back off
/// exponentially per object (`failures` is how many reconciles of it failed in a row).
pub fn error_policy(
    controller: &'static str,
    error: &Error,
    failures: u32,
    metrics: &SharedMetrics,
) -> Action {
    metrics
        .failures
        .get_or_create(&ErrorLabels {
            controller,
            category: error.category(),
        })
        .inc();
    warn!(controller, error = %error, failures, "reconcile failed");
    match error {
        Error::Api {
            source: kube::Error::Api(status),
            ..
        } if status.code == 409 => Action::requeue(backoff(failures)),
        // With backoff too: under an overloaded API server the caches lag, writes conflict again
        // and again, and a fixed 1 s retry of 2,000 releases kept it overloaded (~60 req/s of
        // fresh GETs, half of them answered 500, in the 2,000-release benchmark).
        Error::Stale(_) => Action::requeue(backoff(failures)),
        Error::NoNamespace => Action::await_change(),
        Error::Api { .. } | Error::Panicked(_) => Action::requeue(backoff(failures)),
    }
}

/// 2 s doubling per consecutive failure, at most a minute: a registry or API server that was
/// down for minutes must not leave releases waiting minutes more once it is back.
pub fn backoff(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.clamp(1, 16)).min(60);
    Duration::from_secs(secs)
}

/// Consecutive failed reconciles per object, so one bad object backs off alone.
#[derive(Default)]
pub struct FailureCounts(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl FailureCounts {
    /// Records the outcome of a reconcile of `key`; returns the failures in a row so far.
    pub fn record(&self, key: &str, failed: bool) -> u32 {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed {
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            map.remove(key);
            0
        }
    }

    /// Failures in a row of `key`.
    pub fn get(&self, key: &str) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// Counts and times one reconcile of `obj` by `controller`. A panic inside it is caught here: it
/// becomes an error of this object only (a Warning event, a failure metric and a backoff), never
/// the end of the process that every other release depends on.
pub async fn timed<K>(
    ctx: &Ctx,
    controller: &'static str,
    obj: &K,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
{
    use futures::FutureExt;
    use tracing::Instrument;
    if let Some(caches) = &ctx.caches {
        caches.ready().await;
    }
    let labels = ControllerLabels { controller };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        otel.name = %format!("reconcile {}", K::kind(&())),
        controller,
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = obj.meta().name.as_deref().unwrap_or_default(),
        otel.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    crate::telemetry::join_object_trace(&span, obj.meta().uid.as_deref());
    let caught = std::panic::AssertUnwindSafe(reconcile)
        .catch_unwind()
        .instrument(span.clone())
        .await;
    if let Ok(Err(e)) = &caught {
        span.record("otel.status_code", "ERROR");
        span.record("error", e.to_string());
    }
    let result = match caught {
        Ok(result) => result,
        Err(payload) => {
            let what = panic_message(payload.as_ref());
            tracing::error!(controller, panic = %what, "reconcile panicked; backing off this object");
            let note = format!(
                "Sluice hit an internal error while reconciling this object and will retry with backoff: {what}"
            );
            Notice::warning("ReconcilePanicked", note)
                .emit(ctx, obj, "Reconcile", None)
                .await;
            Err(Error::Panicked(what))
        }
    };
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    let key = object_key(obj);
    ctx.failures.record(&key, result.is_err());
    result
}

/// The namespace/name of an object, the key of its failure count.
pub fn object_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    crate::text::bounded(&text, 300)
}

/// Shared handle to the context.
pub type Ctx = Arc<Context>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[tokio::test]
    async fn a_panicking_reconcile_is_an_error_of_that_object_with_a_warning_event() {
        let (ctx, mut server) = Context::test();
        let release = fixtures::release();
        let events = tokio::spawn(async move {
            let event = server.expect_event("ReconcilePanicked").await;
            assert_eq!(event["type"], "Warning");
            let note = event["note"].as_str().unwrap_or_default().to_string();
            assert!(note.contains("is_char_boundary"), "{note}");
            server
        });
        let panicking = async {
            let s = "é".repeat(3);
            // The kind of bug issue #10 found: a cut inside a multi-byte character.
            let cut = s.get(..1).map(str::len).unwrap_or_else(|| {
                let mut owned = s.clone();
                owned.truncate(1);
                owned.len()
            });
            Ok(Action::requeue(Duration::from_secs(cut as u64)))
        };
        let result = timed(&ctx, "modelrelease", &release, panicking).await;
        assert!(matches!(&result, Err(Error::Panicked(_))), "{result:?}");
        let error = result.expect_err("panicked");
        assert_eq!(error.category(), "panic");
        assert_eq!(ctx.failures.get(&object_key(&release)), 1);
        let action = error_policy("modelrelease", &error, 1, &ctx.metrics);
        assert_eq!(action, Action::requeue(Duration::from_secs(2)));
        assert!(ctx.metrics.render().contains("category=\"panic\""));
        events.await.expect("event published");
        // The next success resets the object's backoff.
        let ok = timed(&ctx, "modelrelease", &release, async {
            Ok(Action::await_change())
        })
        .await;
        assert!(ok.is_ok());
        assert_eq!(ctx.failures.get(&object_key(&release)), 0);
    }

    #[test]
    fn a_conflict_or_stale_write_backs_off_like_any_failure_of_the_object() {
        let metrics = SharedMetrics::default();
        let stale = error_policy("release", &Error::Stale("sign"), 3, &metrics);
        assert_eq!(stale, Action::requeue(Duration::from_secs(8)));
        let first = error_policy("release", &Error::Stale("sign"), 1, &metrics);
        assert_eq!(first, Action::requeue(Duration::from_secs(2)));
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_a_minute() {
        let secs: Vec<u64> = [1, 2, 3, 5, 6, 40].map(|n| backoff(n).as_secs()).to_vec();
        assert_eq!(secs, [2, 4, 8, 32, 60, 60]);
    }
}
