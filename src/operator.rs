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
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt, controller,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use tracing::{error, info, warn};

use crate::{
    api::{ModelRelease, SecurePipeline},
    leader::{Leadership, LeaseConfig},
    metrics::{ControllerLabels, Metrics, SharedMetrics},
    reconcile::{self, Context, caches::Caches},
    tekton::TaskRun,
    workqueue::Pending,
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
    /// The PKCS#11 module for HSM signing, if any.
    pub pkcs11_module: Option<std::path::PathBuf>,
    /// Reconciles of ModelReleases running at once (0: unbounded).
    pub max_concurrent_reconciles: u16,
    /// The enforcement webhook, when served.
    pub webhook: Option<crate::enforcement::serve::WebhookConfig>,
}

/// The default bound on ModelRelease reconciles in flight: enough to keep a 2-core operator and
/// its API server busy, few enough that a backlog of thousands queues in the operator (where a
/// reconcile costs nothing) instead of as requests the API server answers with 429s and 504s.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 16;

#[derive(Clone)]
struct Web {
    metrics: SharedMetrics,
    ready: Arc<AtomicBool>,
}

/// Runs until a signal arrives or leadership is lost.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let client = operator_client().await?;
    let pkcs11 = config
        .pkcs11_module
        .as_deref()
        .map(crate::signing::pkcs11::load_module)
        .transpose()?;
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let web = Web {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    info!(address = %config.listen, "serving /healthz, /readyz and /metrics");
    let server = tokio::spawn(axum::serve(listener, router(web.clone())).into_future());
    let webhook = match &config.webhook {
        Some(w) => Some(
            crate::enforcement::serve::start(client.clone(), w.clone(), metrics.clone()).await?,
        ),
        None => None,
    };
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
        context.pkcs11 = pkcs11.clone();
        let feeds = Feeds::new();
        context.caches = Some(feeds.caches.clone());
        let ctx = Arc::new(context);
        let term = tokio::select! {
            () = controllers(client.clone(), ctx, metrics.clone(), &stop, feeds, config.max_concurrent_reconciles, webhook.is_some()) => Term::Stopped,
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
    if let Some(w) = webhook {
        w.abort();
    }
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

/// Objects a watch buffers for its slowest trigger before the watch waits for it.
const FANOUT_BUFFER: usize = 1024;

/// A trigger stream fed by one of the shared watches.
type Trigger<K> =
    futures::stream::Map<futures::channel::mpsc::Receiver<K>, fn(K) -> Result<K, watcher::Error>>;

/// One watch of a kind: its cache writer, the triggers it feeds, and whether its first list is in.
struct Feed<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer: Writer<K>,
    triggers: Vec<futures::channel::mpsc::Sender<K>>,
    listed: tokio::sync::watch::Sender<bool>,
}

impl<K: reconcile::caches::Watched> Feed<K> {
    fn new() -> (Store<K>, tokio::sync::watch::Receiver<bool>, Self) {
        let (store, writer) = reflector::store();
        let (listed, listed_rx) = tokio::sync::watch::channel(false);
        let feed = Self {
            writer,
            triggers: Vec::new(),
            listed,
        };
        (store, listed_rx, feed)
    }

    /// A new trigger stream: every object the watch applies or deletes, in order.
    fn trigger(&mut self) -> Trigger<K> {
        let (tx, rx) = futures::channel::mpsc::channel(FANOUT_BUFFER);
        self.triggers.push(tx);
        rx.map(Ok)
    }

    /// Drives the watch into the cache and the triggers until the process stops. An object
    /// reaches the triggers after the cache holds it, so a reconcile it starts reads it there.
    async fn run(self, api: Api<K>, config: watcher::Config) {
        let Self {
            writer,
            mut triggers,
            listed,
        } = self;
        // managedFields are never read from a cache and are a large share of every object:
        // without them the caches of a 2,000-release backlog hold much less.
        let slim = watcher(api, config)
            .default_backoff()
            .modify(|o: &mut K| o.meta_mut().managed_fields = None);
        let mut events = std::pin::pin!(slim.reflect(writer));
        while let Some(event) = events.next().await {
            let obj = match event {
                Ok(
                    watcher::Event::Apply(o)
                    | watcher::Event::InitApply(o)
                    | watcher::Event::Delete(o),
                ) => o,
                // Said here rather than through `Store::wait_until_ready`: its future keeps one
                // waker only, so of several reconciles waiting on it all but one were never woken.
                Ok(watcher::Event::InitDone) => {
                    listed.send_replace(true);
                    continue;
                }
                Ok(watcher::Event::Init) => continue,
                Err(e) => {
                    warn!(error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            for tx in &mut triggers {
                // A trigger whose controller stopped is simply skipped.
                let _ = futures::SinkExt::send(tx, obj.clone()).await;
            }
        }
    }
}

/// One watch per kind, feeding both controllers as triggers and the reconcilers as caches.
struct Feeds {
    caches: Caches,
    releases: Feed<ModelRelease>,
    pipelines: Feed<SecurePipeline>,
    task_runs: Feed<TaskRun>,
    deployments: Feed<Deployment>,
    services: Feed<Service>,
}

impl Feeds {
    fn new() -> Self {
        let (releases_store, r, releases) = Feed::new();
        let (pipelines_store, p, pipelines) = Feed::new();
        let (task_runs_store, t, task_runs) = Feed::new();
        // Read by a rollout only while it waits (a claim, an image write or a rollback is
        // decided on a fresh read: the claim's precondition is its resourceVersion).
        let (deployments_store, d, deployments) = Feed::new();
        // Read when a rollout starts (the Service in front of the Deployment: TARGET_URL).
        let (services_store, s, services) = Feed::new();
        Self {
            caches: Caches {
                releases: releases_store,
                pipelines: pipelines_store,
                task_runs: task_runs_store,
                deployments: deployments_store,
                services: services_store,
                listed: vec![r, p, t, d, s],
            },
            releases,
            pipelines,
            task_runs,
            deployments,
            services,
        }
    }
}

async fn controllers(
    client: Client,
    ctx: reconcile::Ctx,
    metrics: SharedMetrics,
    stop: &Shutdown,
    mut feeds: Feeds,
    concurrency: u16,
    enforce: bool,
) {
    // Not `any_semantic()`: after an API-server restart a list at resourceVersion 0 was served
    // from a watch cache behind the new server's watch window, and every watch from its version
    // ended in 410 Gone. A consistent list starts a watch the server can serve. (A restarted API
    // server here also answered some custom-resource requests only after minutes, its etcd client
    // retrying: the caches can lag that long, so every status write carries a precondition; see
    // `reconcile::status_write`.)
    let wc = watch_config();
    let caches = feeds.caches.clone();
    metrics.watch_releases(caches.releases.clone());
    let siblings = caches.releases.clone();
    let by_deployment = caches.releases.clone();
    let by_pipeline = caches.releases.clone();
    let queued = Arc::new(Pending::new(
        caches.releases.clone(),
        depth_gauge(&metrics, reconcile::release::CONTROLLER),
    ));
    let [q1, q2, q3, q4, q5, q6, q7] = std::array::from_fn(|_| queued.clone());
    // Each controller's runner waits for its own cache's first list (kube's `wait_until_ready`, one
    // waiter per cache); reconciles wait for all four through `Caches::ready`.
    let release_loop = Controller::for_stream(
        feeds.releases.trigger().inspect(move |r| {
            if let Ok(r) = r {
                q1.mark([ObjectRef::from_obj(r)]);
            }
        }),
        caches.releases.clone(),
    )
    .owns_stream(feeds.task_runs.trigger().inspect(move |tr| {
        if let Ok(tr) = tr {
            q2.mark(owning_releases(tr));
        }
    }))
    // Rescan TaskRuns carry no owner reference (the release's own stages never see them).
    .watches_stream(feeds.task_runs.trigger(), move |tr: TaskRun| {
        let of = tr.labels().get(reconcile::rescan::LABEL_RESCAN_OF).cloned();
        q3.mark(
            tr.namespace()
                .zip(of)
                .map(|(ns, r)| ObjectRef::<ModelRelease>::new(&r).within(&ns)),
        )
    })
    .watches_stream(
        feeds.pipelines.trigger(),
        move |pipeline: SecurePipeline| {
            let ns = pipeline.namespace();
            let name = pipeline.name_any();
            q4.mark(
                by_pipeline
                    .state()
                    .into_iter()
                    .filter(|r| r.namespace() == ns && r.spec.pipeline_ref.name == name)
                    .map(|r| ObjectRef::from_obj(&*r)),
            )
        },
    )
    .watches_stream(feeds.deployments.trigger(), move |dep: Deployment| {
        q5.mark(reconcile::wakeups::after_deployment_change(
            &dep,
            &by_deployment.state(),
        ))
    })
    // A release that ended may give the Deployment's turn to the next one.
    .watches_stream(feeds.releases.trigger(), move |changed: ModelRelease| {
        q6.mark(reconcile::wakeups::after_release_change(
            &changed,
            &siblings.state(),
        ))
    })
    .with_config(controller::Config::default().concurrency(concurrency))
    .graceful_shutdown_on({
        let s = stop.clone();
        async move { s.wait().await }
    })
    .run(
        move |obj, ctx| {
            q7.started(&ObjectRef::from_obj(&*obj));
            reconcile::release::reconcile(obj, ctx)
        },
        |obj, e, ctx| {
            let failures = ctx.failures.get(&reconcile::object_key(&*obj));
            reconcile::error_policy(reconcile::release::CONTROLLER, e, failures, &ctx.metrics)
        },
        ctx.clone(),
    )
    .for_each(|_| async {});
    // Pods held by the enforcement webhook: judged only where the webhook is served.
    let gate_loop = {
        let releases = feeds.releases.trigger();
        let (client, ctx, s) = (client.clone(), ctx.clone(), stop.clone());
        async move {
            if enforce {
                crate::enforcement::gate::run(client, ctx, releases, async move { s.wait().await })
                    .await;
            }
        }
    };
    let queued = Arc::new(Pending::new(
        caches.pipelines.clone(),
        depth_gauge(&metrics, reconcile::pipeline::CONTROLLER),
    ));
    let [q1, q2, q3, q4] = std::array::from_fn(|_| queued.clone());
    let pipeline_wakeups = reconcile::wakeups::PipelineWakeups::default();
    let pipeline_loop = Controller::for_stream(
        feeds.pipelines.trigger().inspect(move |p| {
            if let Ok(p) = p {
                q1.mark([ObjectRef::from_obj(p)]);
            }
        }),
        caches.pipelines.clone(),
    )
    // Only rescans concern the pipeline; a release's stages reach it through the release.
    .watches_stream(feeds.task_runs.trigger(), move |tr: TaskRun| {
        let rescan = tr.labels().contains_key(reconcile::rescan::LABEL_RESCAN_OF);
        let pipeline = tr.labels().get(crate::api::LABEL_PIPELINE).cloned();
        q2.mark(
            tr.namespace()
                .zip(pipeline.filter(|_| rescan))
                .map(|(ns, p)| ObjectRef::<SecurePipeline>::new(&p).within(&ns)),
        )
    })
    .watches_stream(feeds.releases.trigger(), move |r: ModelRelease| {
        let wake = pipeline_wakeups.concerns(&r);
        q3.mark(
            r.namespace()
                .filter(|_| wake)
                .map(|ns| ObjectRef::<SecurePipeline>::new(&r.spec.pipeline_ref.name).within(&ns)),
        )
    })
    .graceful_shutdown_on({
        let s = stop.clone();
        async move { s.wait().await }
    })
    .run(
        move |obj, ctx| {
            q4.started(&ObjectRef::from_obj(&*obj));
            reconcile::pipeline::reconcile(obj, ctx)
        },
        |obj, e, ctx| {
            let failures = ctx.failures.get(&reconcile::object_key(&*obj));
            reconcile::error_policy(reconcile::pipeline::CONTROLLER, e, failures, &ctx.metrics)
        },
        ctx,
    )
    .for_each(|_| async {});
    let task_run_config = watch_config().labels(crate::api::LABEL_PIPELINE);
    let Feeds {
        releases,
        pipelines,
        task_runs,
        deployments,
        services,
        ..
    } = feeds;
    let watches = async {
        tokio::join!(
            releases.run(Api::all(client.clone()), wc.clone()),
            pipelines.run(Api::all(client.clone()), wc.clone()),
            task_runs.run(Api::all(client.clone()), task_run_config),
            deployments.run(Api::all(client.clone()), wc.clone()),
            services.run(Api::all(client.clone()), wc),
        );
    };
    info!("controllers started");
    tokio::select! {
        _ = async { tokio::join!(release_loop, pipeline_loop, gate_loop) } => {},
        () = watches => {},
    }
    info!("controllers stopped");
}

/// The work-queue depth gauge of `controller`.
fn depth_gauge(
    metrics: &Metrics,
    controller: &'static str,
) -> prometheus_client::metrics::gauge::Gauge {
    metrics
        .workqueue_depth
        .get_or_create(&ControllerLabels { controller })
        .clone()
}

/// The releases a TaskRun's owner references name (what `owns_stream` triggers).
fn owning_releases(tr: &TaskRun) -> Vec<ObjectRef<ModelRelease>> {
    let ns = tr.namespace().unwrap_or_default();
    tr.owner_references()
        .iter()
        .filter(|o| o.kind == "ModelRelease")
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect()
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
