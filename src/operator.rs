//! `sluice run`: the HTTP endpoints, leader election and both controllers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client, ResourceExt,
    runtime::{Controller, reflector::ObjectRef, watcher},
};
use tracing::{error, info, warn};

use crate::{
    api::{ModelRelease, SecurePipeline},
    leader::{Leadership, LeaseConfig},
    metrics::{Metrics, SharedMetrics},
    reconcile::{self, Context},
    tekton::TaskRun,
};

/// Settings of `sluice run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Address of /healthz, /readyz and /metrics.
    pub listen: SocketAddr,
    /// Leader-election Lease.
    pub lease: LeaseConfig,
    /// Registries (host:port) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
}

#[derive(Clone)]
struct Web {
    metrics: SharedMetrics,
    ready: Arc<AtomicBool>,
}

/// Runs until a signal arrives or leadership is lost.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let client = operator_client().await?;
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let web = Web {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    info!(address = %config.listen, "serving /healthz, /readyz and /metrics");
    let server = tokio::spawn(axum::serve(listener, router(web.clone())).into_future());
    // A standby replica is healthy and ready: it serves probes while it waits for the Lease.
    web.ready.store(true, Ordering::SeqCst);
    let stop = Shutdown::listen();

    // Leadership lost (a slow API server, another replica) ends only this term: the controllers
    // stop, and the replica stands by for the Lease again instead of exiting.
    let outcome = loop {
        let leadership = tokio::select! {
            l = Leadership::acquire(client.clone(), config.lease.clone()) => l,
            () = stop.wait() => break Ok(()),
        };
        let mut context = Context::new(client.clone(), metrics.clone());
        context.insecure_registries = config.insecure_registries.clone();
        let ctx = Arc::new(context);
        let term = tokio::select! {
            () = controllers(client.clone(), ctx, metrics.clone(), &stop) => Term::Stopped,
            () = leadership.keep() => Term::Lost,
            () = async { stop.wait().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the grace period; stopping anyway");
                Term::Stopped
            }
        };
        leadership.release().await;
        match term {
            Term::Stopped => break Ok(()),
            Term::Lost => {
                metrics.leadership_lost.inc();
                warn!("lost leadership; stepped down, standing by for the Lease again");
            }
        }
    };
    server.abort();
    outcome
}

/// How a term as leader ended.
enum Term {
    /// Shutdown requested.
    Stopped,
    /// The Lease could not be renewed in time or another replica took it.
    Lost,
}

fn router(web: Web) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(w): State<Web>| async move {
                if w.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(w): State<Web>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    w.metrics.render(),
                )
            }),
        )
        .with_state(web)
}

/// SIGTERM or Ctrl-C, seen by every waiter. One listener is installed before anything else runs,
/// so a signal that arrives between two phases of start-up is never lost.
#[derive(Clone)]
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    fn listen() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { futures::future::pending::<()>().await } } => {},
            }
            info!("shutdown requested");
            let _ = tx.send(true);
        });
        Self(rx)
    }

    async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

async fn controllers(client: Client, ctx: reconcile::Ctx, metrics: SharedMetrics, stop: &Shutdown) {
    let releases: Api<ModelRelease> = Api::all(client.clone());
    let pipelines: Api<SecurePipeline> = Api::all(client.clone());
    let task_runs: Api<TaskRun> = Api::all(client.clone());
    let task_runs_all = task_runs.clone();
    // Not `any_semantic()`: after an API-server restart a list at resourceVersion 0 was served
    // from a watch cache behind the new server's watch window, and every watch from its version
    // ended in 410 Gone. A consistent list starts a watch the server can serve. (A restarted API
    // server here also answered some custom-resource requests only after minutes, its etcd client
    // retrying: the caches can lag that long, so every status write carries a precondition; see
    // `reconcile::status_write`.)
    let wc = watch_config();

    let release_controller = Controller::new(releases.clone(), wc.clone());
    let release_store = release_controller.store();
    metrics.watch_releases(release_store.clone());
    let deployment_store = release_store.clone();
    let sibling_store = release_store.clone();
    let release_loop = release_controller
        .owns(task_runs, watch_config().labels(crate::api::LABEL_RELEASE))
        // Rescan TaskRuns carry no release label (the release's own stages never see them).
        .watches(
            task_runs_all.clone(),
            watch_config().labels(reconcile::rescan::LABEL_RESCAN_OF),
            |tr: TaskRun| {
                let of = tr.labels().get(reconcile::rescan::LABEL_RESCAN_OF).cloned();
                tr.namespace()
                    .zip(of)
                    .map(|(ns, r)| ObjectRef::<ModelRelease>::new(&r).within(&ns))
            },
        )
        .watches(
            pipelines.clone(),
            wc.clone(),
            move |pipeline: SecurePipeline| {
                let ns = pipeline.namespace();
                let name = pipeline.name_any();
                release_store
                    .state()
                    .into_iter()
                    .filter(|r| r.namespace() == ns && r.spec.pipeline_ref.name == name)
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Deployment>::all(client.clone()),
            wc.clone(),
            move |dep: Deployment| {
                reconcile::wakeups::after_deployment_change(&dep, &deployment_store.state())
            },
        )
        // A release that ended gives the Deployment's turn to the newest one waiting.
        .watches(
            releases.clone(),
            wc.clone(),
            move |changed: ModelRelease| {
                reconcile::wakeups::after_release_change(&changed, &sibling_store.state())
            },
        )
        .graceful_shutdown_on({
            let s = stop.clone();
            async move { s.wait().await }
        })
        .run(
            reconcile::release::reconcile,
            |obj, e, ctx| {
                let failures = ctx.failures.get(&reconcile::object_key(&*obj));
                reconcile::error_policy(reconcile::release::CONTROLLER, e, failures, &ctx.metrics)
            },
            ctx.clone(),
        )
        .for_each(|_| async {});

    let pipeline_loop = Controller::new(pipelines, wc.clone())
        .watches(
            Api::<TaskRun>::all(client.clone()),
            watch_config().labels(reconcile::rescan::LABEL_RESCAN_OF),
            |tr: TaskRun| {
                let pipeline = tr.labels().get(crate::api::LABEL_PIPELINE).cloned();
                tr.namespace()
                    .zip(pipeline)
                    .map(|(ns, p)| ObjectRef::<SecurePipeline>::new(&p).within(&ns))
            },
        )
        .watches(releases, wc, |r: ModelRelease| {
            r.namespace()
                .map(|ns| ObjectRef::<SecurePipeline>::new(&r.spec.pipeline_ref.name).within(&ns))
        })
        .graceful_shutdown_on({
            let s = stop.clone();
            async move { s.wait().await }
        })
        .run(
            reconcile::pipeline::reconcile,
            |obj, e, ctx| {
                let failures = ctx.failures.get(&reconcile::object_key(&*obj));
                reconcile::error_policy(reconcile::pipeline::CONTROLLER, e, failures, &ctx.metrics)
            },
            ctx,
        )
        .for_each(|_| async {});
    info!("controllers started");
    tokio::join!(release_loop, pipeline_loop);
    info!("controllers stopped");
}

/// Seconds the API server keeps one watch open before it ends it cleanly.
const WATCH_SECONDS: u32 = 40;

/// Every watch ends after `WATCH_SECONDS` and resumes from its resourceVersion: with the client's
/// read timeout above it, a watch whose connection died with its API server (a SIGKILL leaves a
/// half-open stream behind) is noticed within a minute, not after the default five.
fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_SECONDS)
}

/// The client of `sluice run`: a read timeout that only a dead connection hits (every watch
/// ends sooner, see `watch_config`), so the caches never silently go stale.
async fn operator_client() -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.read_timeout = Some(Duration::from_secs(u64::from(WATCH_SECONDS) + 20));
    // Names Sluice and its version in the API server's audit log and metrics.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Ok(Client::try_from(config)?)
}

/// The User-Agent of every request to the API server.
pub const USER_AGENT: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

/// How long in-flight reconciles may finish after a shutdown signal; they are idempotent, so
/// cutting one short only repeats it in the next process.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Default lease duration: a successor takes over at most this long after a crash.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Logs a fatal error of `run`.
pub fn report(e: &anyhow::Error) {
    error!(error = %e, "sluice stopped");
}
