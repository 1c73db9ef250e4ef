//! `make bench`: Sluice against Tekton Chains on the local cluster, the same kind of work — sign
//! the image a build TaskRun reported — alternating the two (A/B, then B/A), and prints a table
//! of figures and ratios.
//!
//! Both sign images this run pushes for real (one small image each, distinct digests) that a
//! scripted build TaskRun reports (`IMAGE_URL`/`IMAGE_DIGEST`, the kwok fake node finishes its
//! pod): for Chains a TaskRun in `chains-bench` (the one namespace it watches here), for Sluice a
//! ModelRelease whose pipeline has only that build stage, rolled out to its own Deployment.
//! Measured per image: from the build TaskRun seen Succeeded (the bench's own watch) to its `.sig`
//! tag seen in the registry (one tags/list of the run's repository every 50 ms). Controller CPU
//! and RSS come from /proc; API requests from the API server's audit log, where each controller
//! has its own client certificate (users `sluice-operator`, `tekton-chains`); Sluice's requests
//! are counted until its releases are Released (TaskRun creation, status, rollout included),
//! Chains' until it has annotated its TaskRuns.
//!
//! Figures are printed, never judged; the run fails only when an image was never signed or a
//! release never ended (nothing lost), or the operator died (lost its Lease) during the run.
//!
//! Env: BENCH_ROUNDS (2), BENCH_STEADY (40 images at BENCH_RATE 2/s), BENCH_BURST (100),
//! BENCH_BACKLOG (2000 over 200 Deployments; 0 skips it; BENCH_BACKLOG_ARMS=sluice runs only
//! Sluice's). The operator is restarted with its benchmark identity (`.e2e/kubeconfig-sluice`) and the binary `SLUICE_BIN` (make bench: release).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, Seek},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use sluice::{
    api::{ModelRelease, SecurePipeline},
    registry::Registry,
    tekton::TaskRun,
};
use sluice_e2e::{Sim, TestNamespace, operator, state_dir};

const REGISTRY: &str = "127.0.0.1:35000";
/// The namespace the e2e cluster's Chains watches for the benchmark.
const CHAINS_NS: &str = "chains-bench";
/// Deployments the Sluice releases roll out to (the backlog spreads over all of them).
const DEPLOYMENTS: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Arm {
    Chains,
    Sluice,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::Chains => "chains",
            Arm::Sluice => "sluice",
        }
    }
    fn user(self) -> &'static str {
        match self {
            Arm::Chains => "tekton-chains",
            Arm::Sluice => "sluice-operator",
        }
    }
    fn pid_file(self) -> &'static str {
        match self {
            Arm::Chains => "run/tekton-chains-controller.pid",
            Arm::Sluice => "run/operator.pid",
        }
    }
}

struct Config {
    rounds: usize,
    steady: usize,
    rate: f64,
    burst: usize,
    backlog: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one run of one arm measured.
#[derive(Default, Clone)]
struct Run {
    latencies: Vec<f64>,
    /// First build done → last signature, seconds.
    span: f64,
    cpu: f64,
    rss_mb: f64,
    requests: usize,
    lists: usize,
    throttled: usize,
    signed: usize,
    n: usize,
}

struct Bench {
    chains: TestNamespace,
    sluice: TestNamespace,
    operator_pid: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    sluice::install_crypto_provider();
    let cfg = Config {
        rounds: env_or("BENCH_ROUNDS", 2),
        steady: env_or("BENCH_STEADY", 40),
        rate: env_or("BENCH_RATE", 2.0),
        burst: env_or("BENCH_BURST", 100),
        backlog: env_or("BENCH_BACKLOG", 2000),
    };
    let bench = Bench::setup().await?;
    let mut runs: BTreeMap<(&str, Arm), Vec<Run>> = BTreeMap::new();
    let mut lost = 0;
    for round in 0..cfg.rounds {
        // A/B, then B/A: neither always runs on a warmer (or fuller) cluster.
        let order = if round % 2 == 0 {
            [Arm::Chains, Arm::Sluice]
        } else {
            [Arm::Sluice, Arm::Chains]
        };
        for arm in order {
            let gap = Duration::from_secs_f64(1.0 / cfg.rate);
            let steady = bench
                .run(arm, &format!("s{round}"), cfg.steady, gap)
                .await?;
            let burst = bench
                .run(arm, &format!("b{round}"), cfg.burst, Duration::ZERO)
                .await?;
            for (phase, r) in [("steady", steady), ("burst", burst)] {
                lost += r.n - r.signed;
                println!(
                    "bench: round {round} {:<6} {phase:<6} {} of {} signed, p50 {:.3} s",
                    arm.name(),
                    r.signed,
                    r.n,
                    percentile(&r.latencies, 50.0)
                );
                runs.entry((phase, arm)).or_default().push(r);
            }
        }
    }
    print_table(&runs);
    if cfg.backlog > 0 {
        // BENCH_BACKLOG_ARMS=sluice re-measures Sluice alone (Chains' column then reads 0 and n/a).
        let arms = std::env::var("BENCH_BACKLOG_ARMS").unwrap_or_else(|_| "chains,sluice".into());
        let chains = if arms.contains("chains") {
            bench.backlog(Arm::Chains, cfg.backlog).await?
        } else {
            println!("bench: Chains' backlog skipped (BENCH_BACKLOG_ARMS={arms})");
            Run::default()
        };
        let sluice = bench.backlog(Arm::Sluice, cfg.backlog).await?;
        lost += (chains.n - chains.signed) + (sluice.n - sluice.signed);
        print_backlog(cfg.backlog, &chains, &sluice);
    }
    let alive = pid_of(Arm::Sluice)? == bench.operator_pid;
    if cfg.backlog > 0 {
        // After the liveness check: this restarts the operator on purpose.
        lost += bench.after_restart(cfg.backlog).await?;
    }
    println!(
        "bench: invariants: {lost} images or releases lost; operator {}",
        if alive {
            "kept running (Lease held)"
        } else {
            "was replaced: it died or lost its Lease"
        }
    );
    if lost > 0 || !alive {
        bail!("the benchmark lost work");
    }
    Ok(())
}

impl Bench {
    async fn setup() -> Result<Self> {
        // The operator with its own identity, for the audit log.
        // SAFETY: single-threaded at this point in main; nothing else reads the environment.
        unsafe {
            std::env::set_var(
                "SLUICE_OPERATOR_KUBECONFIG",
                state_dir().join("kubeconfig-sluice"),
            )
        };
        operator("stop")?;
        operator("start")?;
        let chains = TestNamespace::named(CHAINS_NS).await?;
        let sluice = TestNamespace::new("bench").await?;
        sluice.with_signing_key("bench-pw")?;
        let key = sluice.pipeline().await?.spec.signing;
        let deployments = sluice.api::<Deployment>();
        stream::iter(0..DEPLOYMENTS)
            .map(|i| {
                let api = deployments.clone();
                async move {
                    let d = deployment(i)?;
                    api.create(&PostParams::default(), &d).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        let operator_pid = pid_of(Arm::Sluice)?;
        println!(
            "bench: operator pid {operator_pid} as sluice-operator, Chains pid {} as tekton-chains; {DEPLOYMENTS} Deployments; signing {:?}",
            pid_of(Arm::Chains)?,
            key.map(|k| format!("{:?}", k.signer().0))
        );
        Ok(Self {
            chains,
            sluice,
            operator_pid,
        })
    }

    /// Pushes `n` images, submits their builds `gap` apart, and measures until all are signed.
    async fn run(&self, arm: Arm, id: &str, n: usize, gap: Duration) -> Result<Run> {
        let repo = format!("{REGISTRY}/bench/{}-{id}", arm.name());
        let digests = push_images(&repo, n).await?;
        if arm == Arm::Sluice {
            self.pipeline(id, &repo).await?;
        }
        let names: Vec<String> = (0..n).map(|i| format!("{}-{id}-{i}", arm.name())).collect();
        let by_release: HashMap<String, String> =
            names.iter().cloned().zip(digests.iter().cloned()).collect();
        let ns = self.namespace(arm);
        let (cpu0, audit0) = (cpu_seconds(arm)?, audit_offset()?);
        let done = watch_builds(ns.api::<TaskRun>(), by_release);
        let signed = watch_signatures(&repo, digests.clone());
        for (i, (name, digest)) in names.iter().zip(&digests).enumerate() {
            let submit = self.submit(arm, id, name, digest, i % DEPLOYMENTS);
            if gap.is_zero() {
                tokio::spawn(submit);
            } else {
                submit.await?;
                tokio::time::sleep(gap).await;
            }
        }
        let deadline = Duration::from_secs(300 + 2 * n as u64);
        let sig_at = signed.wait_all(deadline).await;
        self.wait_finished(arm, &names, deadline).await?;
        let done_at = done.snapshot();
        let (requests, lists, throttled) = audit_count(audit0, arm.user())?;
        summarize(
            &digests, &done_at, &sig_at, cpu0, arm, requests, lists, throttled,
        )
    }

    fn namespace(&self, arm: Arm) -> &TestNamespace {
        match arm {
            Arm::Chains => &self.chains,
            Arm::Sluice => &self.sluice,
        }
    }

    /// A pipeline of one stage, the scripted build, signing into `repo`.
    async fn pipeline(&self, id: &str, repo: &str) -> Result<()> {
        let signing = self.sluice.pipeline().await?.spec.signing;
        let p: SecurePipeline = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "SecurePipeline",
            "metadata": {"name": format!("bench-{id}")},
            "spec": {"source": {"url": "https://git.example/evip/predictor.git"}, "image": {"repository": repo},
                     "stages": [{"name": "build", "taskRef": {"name": "buildah"}, "produces": "image"}],
                     "signing": signing}
        }))?;
        self.sluice
            .api::<SecurePipeline>()
            .create(&PostParams::default(), &p)
            .await?;
        Ok(())
    }

    /// Submits one build: Chains' TaskRun, or Sluice's ModelRelease (which makes the TaskRun).
    fn submit(
        &self,
        arm: Arm,
        id: &str,
        name: &str,
        digest: &str,
        deployment: usize,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let repo = format!("{REGISTRY}/bench/{}-{id}", arm.name());
        let sim = Sim::built_in(&repo, digest).message;
        let (name, id) = (name.to_string(), id.to_string());
        let (trs, releases) = (
            self.chains.api::<TaskRun>(),
            self.sluice.api::<ModelRelease>(),
        );
        async move {
            let pp = PostParams::default();
            match arm {
                Arm::Chains => {
                    let tr: TaskRun = serde_json::from_value(json!({
                        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                        "metadata": {"name": format!("{name}-build"),
                                     "labels": {"sluice.dev/stage": "build", "sluice.dev/release": name},
                                     "annotations": {"sim.sluice.dev/build.message": sim}},
                        "spec": {"taskRef": {"name": "buildah"}, "params": [
                            {"name": "SOURCE_URL", "value": "https://git.example/evip"},
                            {"name": "SOURCE_REVISION", "value": "3f2a9c1"},
                            {"name": "IMAGE", "value": repo}]}
                    }))?;
                    trs.create(&pp, &tr).await?;
                }
                Arm::Sluice => {
                    let r: ModelRelease = serde_json::from_value(json!({
                        "apiVersion": "sluice.dev/v1alpha1", "kind": "ModelRelease",
                        "metadata": {"name": name, "annotations": {"sim.sluice.dev/build.message": sim}},
                        "spec": {"pipelineRef": {"name": format!("bench-{id}")}, "revision": "3f2a9c1",
                                 "target": {"deployment": format!("d-{deployment}"), "container": "server"}}
                    }))?;
                    releases.create(&pp, &r).await?;
                }
            }
            Ok(())
        }
    }

    /// Waits until every release ended (Sluice) or every TaskRun carries Chains' verdict.
    /// Restarts the operator with the finished backlog (and its TaskRuns) present and times a new
    /// release: its first TaskRun (judged) and its signature. Returns 1 when it never ended.
    async fn after_restart(&self, backlog: usize) -> Result<usize> {
        let (id, name) = ("backlog", "sluice-after-restart");
        let repo = format!("{REGISTRY}/bench/sluice-{id}");
        let digests = push_images(&repo, 1).await?;
        operator("stop")?;
        operator("start")?;
        let started = Instant::now();
        let by_release = HashMap::from([(name.to_string(), digests[0].clone())]);
        let done = watch_builds(self.namespace(Arm::Sluice).api::<TaskRun>(), by_release);
        let signed = watch_signatures(&repo, digests.clone());
        self.submit(Arm::Sluice, id, name, &digests[0], 0).await?;
        let sig_at = signed.wait_all(Duration::from_secs(300)).await;
        let ended = self
            .wait_finished(Arm::Sluice, &[name.to_string()], Duration::from_secs(300))
            .await;
        let build = done.snapshot().get(name).map(|t| t.duration_since(started));
        let sig = sig_at.get(&digests[0]).map(|t| t.duration_since(started));
        let secs =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!(
            "bench: operator restarted with {backlog} finished releases present: a new release's build done after {}, signed after {} (restart included)",
            secs(build),
            secs(sig)
        );
        Ok(usize::from(ended.is_err() || sig.is_none()))
    }

    async fn wait_finished(&self, arm: Arm, names: &[String], deadline: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let pending = match arm {
                Arm::Sluice => {
                    let all = self
                        .sluice
                        .api::<ModelRelease>()
                        .list(&ListParams::default())
                        .await?;
                    let ended: std::collections::HashSet<_> = all
                        .items
                        .iter()
                        .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_final()))
                        .map(|r| r.metadata.name.clone().unwrap_or_default())
                        .collect();
                    names.iter().filter(|n| !ended.contains(*n)).count()
                }
                Arm::Chains => {
                    let all = self
                        .chains
                        .api::<TaskRun>()
                        .list(&ListParams::default())
                        .await?;
                    let marked: std::collections::HashSet<_> = all
                        .items
                        .iter()
                        .filter(|t| {
                            t.metadata
                                .annotations
                                .as_ref()
                                .is_some_and(|a| a.contains_key("chains.tekton.dev/signed"))
                        })
                        .map(|t| t.metadata.name.clone().unwrap_or_default())
                        .collect();
                    names
                        .iter()
                        .filter(|n| !marked.contains(&format!("{n}-build")))
                        .count()
                }
            };
            if pending == 0 || start.elapsed() > deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `n` builds at once; for Sluice over all Deployments (n / 200 releases each).
    async fn backlog(&self, arm: Arm, n: usize) -> Result<Run> {
        let id = "backlog";
        let repo = format!("{REGISTRY}/bench/{}-{id}", arm.name());
        let digests = push_images(&repo, n).await?;
        if arm == Arm::Sluice {
            self.pipeline(id, &repo).await?;
        }
        let names: Vec<String> = (0..n).map(|i| format!("{}-{id}-{i}", arm.name())).collect();
        let (cpu0, audit0) = (cpu_seconds(arm)?, audit_offset()?);
        let by_release: HashMap<String, String> =
            names.iter().cloned().zip(digests.iter().cloned()).collect();
        let done = watch_builds(self.namespace(arm).api::<TaskRun>(), by_release);
        let signed = watch_signatures(&repo, digests.clone());
        let peak = Arc::new(Mutex::new(0.0_f64));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(rss) = rss_mb(arm) {
                        let mut p = peak.lock().expect("peak");
                        *p = p.max(rss);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        stream::iter(names.iter().zip(&digests).enumerate())
            .map(|(i, (name, digest))| self.submit(arm, id, name, digest, i % DEPLOYMENTS))
            .buffer_unordered(32)
            .try_collect::<Vec<_>>()
            .await?;
        let deadline = Duration::from_secs(3600);
        let sig_at = signed.wait_all(deadline).await;
        self.wait_finished(arm, &names, deadline).await?;
        sampler.abort();
        let (requests, lists, throttled) = audit_count(audit0, arm.user())?;
        let mut run = summarize(
            &digests,
            &done.snapshot(),
            &sig_at,
            cpu0,
            arm,
            requests,
            lists,
            throttled,
        )?;
        run.rss_mb = *peak.lock().expect("peak");
        Ok(run)
    }
}

fn deployment(i: usize) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("d-{i}")},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": format!("d-{i}")}},
                 "template": {"metadata": {"labels": {"app": format!("d-{i}")}},
                              "spec": {"nodeSelector": {"type": "kwok"},
                                       "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                                       "containers": [{"name": "server", "image": format!("{REGISTRY}/bench/seed:1")}]}}}
    }))?)
}

/// Pushes `n` small distinct images to `repo` (by digest, no tag); returns their digests.
async fn push_images(repo: &str, n: usize) -> Result<Vec<String>> {
    let registry = Arc::new(Registry::for_repository(
        repo,
        true,
        RegistryAuth::Anonymous,
    ));
    let stamp = jiff::Timestamp::now().as_nanosecond();
    stream::iter(0..n)
        .map(|i| {
            let (registry, repo) = (registry.clone(), repo.to_string());
            async move {
                let config = json!({"architecture": "amd64", "os": "linux",
                    "config": {"Labels": {"bench": format!("{stamp}-{i}")}},
                    "rootfs": {"type": "layers", "diff_ids": []}});
                let config = serde_json::to_vec(&config)?;
                let size = config.len();
                let config_digest = registry.push_blob(&repo, config).await?;
                let manifest = serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": config_digest, "size": size},
                    "layers": []
                }))?;
                let digest = sluice::registry::sha256_digest(&manifest);
                registry
                    .push_manifest(
                        &format!("{repo}@{digest}"),
                        manifest,
                        "application/vnd.oci.image.manifest.v1+json",
                    )
                    .await?;
                anyhow::Ok(digest)
            }
        })
        .buffered(16)
        .try_collect()
        .await
}

/// When the bench first saw each release's build TaskRun Succeeded, by image digest.
struct Builds(Arc<Mutex<HashMap<String, Instant>>>);

impl Builds {
    fn snapshot(&self) -> HashMap<String, Instant> {
        self.0.lock().expect("builds").clone()
    }
}

fn watch_builds(api: Api<TaskRun>, by_release: HashMap<String, String>) -> Builds {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let out = seen.clone();
    let config = watcher::Config::default().labels("sluice.dev/stage=build");
    let total = by_release.len();
    tokio::spawn(async move {
        let mut events = watcher(api, config).applied_objects().boxed();
        while let Some(Ok(tr)) = events.next().await {
            let succeeded = sluice::tekton::outcome(&tr)
                .is_some_and(|o| matches!(o, sluice::gates::RunOutcome::Succeeded));
            let release = tr
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("sluice.dev/release"));
            if let (true, Some(digest)) = (succeeded, release.and_then(|r| by_release.get(r))) {
                let mut s = seen.lock().expect("builds");
                s.entry(digest.clone()).or_insert_with(Instant::now);
                if s.len() == total {
                    return;
                }
            }
        }
    });
    Builds(out)
}

/// When each digest's `.sig` tag first appeared in `repo`.
struct Signatures(tokio::task::JoinHandle<HashMap<String, Instant>>, Instant);

impl Signatures {
    async fn wait_all(self, deadline: Duration) -> HashMap<String, Instant> {
        let left = deadline.saturating_sub(self.1.elapsed());
        match tokio::time::timeout(left, self.0).await {
            Ok(Ok(seen)) => seen,
            _ => HashMap::new(),
        }
    }
}

fn watch_signatures(repo: &str, digests: Vec<String>) -> Signatures {
    let path = repo.trim_start_matches(&format!("{REGISTRY}/")).to_string();
    let handle = tokio::spawn(async move {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let wanted: HashMap<String, String> = digests
            .iter()
            .map(|d| (format!("{}.sig", d.replace(':', "-")), d.clone()))
            .collect();
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let reference: oci_client::Reference = format!("{REGISTRY}/{path}:latest")
            .parse()
            .expect("reference");
        while seen.len() < wanted.len() {
            if let Ok(tags) = client
                .list_tags(&reference, &RegistryAuth::Anonymous, None, None)
                .await
            {
                let now = Instant::now();
                for t in tags.tags {
                    if let Some(d) = wanted.get(&t) {
                        seen.entry(d.clone()).or_insert(now);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    });
    Signatures(handle, Instant::now())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    digests: &[String],
    done_at: &HashMap<String, Instant>,
    sig_at: &HashMap<String, Instant>,
    cpu0: f64,
    arm: Arm,
    requests: usize,
    lists: usize,
    throttled: usize,
) -> Result<Run> {
    let mut latencies = Vec::new();
    for d in digests {
        if let (Some(done), Some(sig)) = (done_at.get(d), sig_at.get(d)) {
            latencies.push(sig.saturating_duration_since(*done).as_secs_f64());
        }
    }
    let first = done_at.values().min().copied();
    let last = sig_at.values().max().copied();
    let span = first
        .zip(last)
        .map_or(0.0, |(f, l)| l.saturating_duration_since(f).as_secs_f64());
    Ok(Run {
        latencies,
        span,
        cpu: cpu_seconds(arm)? - cpu0,
        rss_mb: rss_mb(arm)?,
        requests,
        lists,
        throttled,
        signed: sig_at.len(),
        n: digests.len(),
    })
}

fn pid_of(arm: Arm) -> Result<u32> {
    let text = std::fs::read_to_string(state_dir().join(arm.pid_file()))
        .with_context(|| format!("{} is not running", arm.name()))?;
    Ok(text.trim().parse()?)
}

/// User plus system CPU time of the controller's process, seconds.
fn cpu_seconds(arm: Arm) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid_of(arm)?))?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Ok(ticks / 100.0)
}

fn rss_mb(arm: Arm) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid_of(arm)?))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

fn audit_path() -> std::path::PathBuf {
    state_dir().join("logs/audit.log")
}

fn audit_offset() -> Result<u64> {
    Ok(std::fs::metadata(audit_path())
        .map(|m| m.len())
        .unwrap_or(0))
}

/// Requests `user` made since `offset` in the audit log: all, LISTs, and answers 429 or 5xx.
fn audit_count(offset: u64, user: &str) -> Result<(usize, usize, usize)> {
    let mut file = std::fs::File::open(audit_path()).context("the API server's audit log")?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let (mut all, mut lists, mut throttled) = (0, 0, 0);
    for line in std::io::BufReader::new(file).lines() {
        let Ok(event) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        if event["user"]["username"] != user {
            continue;
        }
        all += 1;
        lists += usize::from(event["verb"] == "list");
        let code = event["responseStatus"]["code"].as_u64().unwrap_or(0);
        throttled += usize::from(code == 429 || code >= 500);
    }
    Ok((all, lists, throttled))
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// All runs of one phase and arm merged: latencies pooled, counts and costs summed.
fn merged(runs: &[Run]) -> Run {
    let mut m = Run::default();
    for r in runs {
        m.latencies.extend(&r.latencies);
        m.span += r.span;
        m.cpu += r.cpu;
        m.rss_mb = m.rss_mb.max(r.rss_mb);
        m.requests += r.requests;
        m.lists += r.lists;
        m.throttled += r.throttled;
        m.signed += r.signed;
        m.n += r.n;
    }
    m
}

fn ratio(sluice: f64, chains: f64) -> String {
    if chains > 0.0 && sluice.is_finite() && chains.is_finite() {
        format!("{:.2}×", sluice / chains)
    } else {
        "n/a".into()
    }
}

fn print_table(runs: &BTreeMap<(&str, Arm), Vec<Run>>) {
    let get = |phase, arm| merged(runs.get(&(phase, arm)).map_or(&[][..], Vec::as_slice));
    let (cs, ss) = (get("steady", Arm::Chains), get("steady", Arm::Sluice));
    let (cb, sb) = (get("burst", Arm::Chains), get("burst", Arm::Sluice));
    println!();
    println!("| | Chains | Sluice | Sluice / Chains |");
    println!("|---|---|---|---|");
    for (label, c, s) in [("steady", &cs, &ss), ("burst", &cb, &sb)] {
        let p = |r: &Run, q| percentile(&r.latencies, q);
        println!(
            "| {label}: build done → .sig p50 / p95 / p99 (s) | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {} / {} / {} |",
            p(c, 50.0),
            p(c, 95.0),
            p(c, 99.0),
            p(s, 50.0),
            p(s, 95.0),
            p(s, 99.0),
            ratio(p(s, 50.0), p(c, 50.0)),
            ratio(p(s, 95.0), p(c, 95.0)),
            ratio(p(s, 99.0), p(c, 99.0))
        );
    }
    let rate = |r: &Run| r.signed as f64 / r.span.max(1e-3);
    println!(
        "| burst: images signed per second (first build done → last .sig) | {:.1}/s ({:.1} s) | {:.1}/s ({:.1} s) | {} time |",
        rate(&cb),
        cb.span,
        rate(&sb),
        sb.span,
        ratio(sb.span, cb.span)
    );
    let all_c = merged(&[cs.clone(), cb.clone()]);
    let all_s = merged(&[ss.clone(), sb.clone()]);
    let per100 = |r: &Run| 100.0 * r.cpu / r.signed.max(1) as f64;
    println!(
        "| controller CPU per 100 images (s) | {:.1} | {:.1} | {} |",
        per100(&all_c),
        per100(&all_s),
        ratio(per100(&all_s), per100(&all_c))
    );
    println!(
        "| RSS after the runs (MB) | {:.0} | {:.0} | {} |",
        all_c.rss_mb,
        all_s.rss_mb,
        ratio(all_s.rss_mb, all_c.rss_mb)
    );
    let per = |r: &Run| r.requests as f64 / r.signed.max(1) as f64;
    for (label, c, s) in [("steady", &cs, &ss), ("burst", &cb, &sb)] {
        println!(
            "| API requests per signed image, {label} (LISTs) | {:.1} ({}) | {:.1} ({}) | {} |",
            per(c),
            c.lists,
            per(s),
            s.lists,
            ratio(per(s), per(c))
        );
    }
    println!();
    println!("goals (printed, not judged):");
    let goal = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  steady p50 ≤ 100 ms: {:.3} s — {}",
        percentile(&ss.latencies, 50.0),
        goal(percentile(&ss.latencies, 50.0) <= 0.1)
    );
    println!(
        "  steady p99 ≤ 1/5 of Chains': {} — {}",
        ratio(
            percentile(&ss.latencies, 99.0),
            percentile(&cs.latencies, 99.0)
        ),
        goal(percentile(&ss.latencies, 99.0) * 5.0 <= percentile(&cs.latencies, 99.0))
    );
    println!(
        "  burst p50 ≤ 1/3 of Chains': {} — {}",
        ratio(
            percentile(&sb.latencies, 50.0),
            percentile(&cb.latencies, 50.0)
        ),
        goal(percentile(&sb.latencies, 50.0) * 3.0 <= percentile(&cb.latencies, 50.0))
    );
    println!(
        "  burst all signed in ≤ 1/2 of Chains' time: {} — {}",
        ratio(sb.span, cb.span),
        goal(sb.span * 2.0 <= cb.span)
    );
    println!(
        "  API requests per image ≤ Chains': {} — {}; LISTs in steady state: {}",
        ratio(per(&all_s), per(&all_c)),
        goal(per(&all_s) <= per(&all_c)),
        ss.lists
    );
    println!(
        "  CPU per image ≤ 1/2 of Chains': {} — {}",
        ratio(per100(&all_s), per100(&all_c)),
        goal(per100(&all_s) * 2.0 <= per100(&all_c))
    );
}

fn print_backlog(n: usize, chains: &Run, sluice: &Run) {
    let rate = |r: &Run| r.signed as f64 / r.span.max(1e-3);
    println!();
    println!("| backlog of {n} | Chains | Sluice | Sluice / Chains |");
    println!("|---|---|---|---|");
    println!(
        "| signed, all terminal | {} of {} | {} of {} | |",
        chains.signed, chains.n, sluice.signed, sluice.n
    );
    println!(
        "| drained in (s), rate | {:.0} s, {:.1}/s | {:.0} s, {:.1}/s | {} time |",
        chains.span,
        rate(chains),
        sluice.span,
        rate(sluice),
        ratio(sluice.span, chains.span)
    );
    println!(
        "| peak RSS with the backlog (MB) | {:.0} | {:.0} | {} (goal ≤ 0.17×) |",
        chains.rss_mb,
        sluice.rss_mb,
        ratio(sluice.rss_mb, chains.rss_mb)
    );
    println!(
        "| API requests (LISTs), 429/5xx answers | {} ({}), {} | {} ({}), {} | {} |",
        chains.requests,
        chains.lists,
        chains.throttled,
        sluice.requests,
        sluice.lists,
        sluice.throttled,
        ratio(sluice.requests as f64, chains.requests as f64)
    );
}
