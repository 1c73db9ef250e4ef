//! The release engine's soak: many releases over several Deployments at once (pairs created at
//! the same instant, releases deleted mid-rollout, blocked and rolled-back ones) while the
//! operator is SIGKILLed at random moments, the registry is down for a while and the API server
//! is SIGKILLed and restarted. Prints every invariant with its count and exits non-zero on any
//! violation. Stage outcomes are scripted (kwok): this soaks the state machine, not the stages.
//!
//! Run by `e2e/soak` (a cluster and the operator must be up); `--short` is the CI form.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Event, Secret},
};
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;
use sluice::{
    api::{ModelRelease, Phase},
    tekton::TaskRun,
};
use sluice_e2e::{Sim, TestNamespace, clean_sims, operator, repo_dir, state_dir, tool};

const STABLE: &str = "127.0.0.1:35000/evip/predictor:stable";
const NEVER_READY: &str = "127.0.0.1:35000/never-ready/predictor";
const PASSWORD: &str = "soak-secret-password-7f3a";

/// The soak's size and faults.
struct Plan {
    releases: usize,
    deployments: usize,
    operator_kills: usize,
    registry_down: Duration,
    deadline: Duration,
}

/// What one release is scripted to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Clean,
    Blocked,
    DastBlocks,
    DeletedMidRollout,
}

struct Planned {
    name: String,
    deployment: String,
    script: Script,
    digest: String,
}

/// A tiny deterministic generator (xorshift), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    sluice::install_crypto_provider();
    let short = std::env::args().any(|a| a == "--short");
    let plan = if short {
        Plan {
            releases: 16,
            deployments: 4,
            operator_kills: 2,
            registry_down: Duration::from_secs(10),
            deadline: Duration::from_secs(600),
        }
    } else {
        Plan {
            releases: 40,
            deployments: 8,
            operator_kills: 5,
            registry_down: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
        }
    };
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::try_from(jiff::Timestamp::now().as_nanosecond() & 0xffff_ffff).unwrap_or(7) | 1
        });
    println!(
        "soak: {} releases over {} Deployments, {} operator SIGKILLs, registry down {:?}, API server SIGKILLed once; seed {seed}",
        plan.releases, plan.deployments, plan.operator_kills, plan.registry_down
    );
    let mut rng = Rng(seed);
    let ns = TestNamespace::new("soak").await?;
    ns.with_signing_key(PASSWORD)?;
    ns.patch_pipeline(r#"{"spec":{"rollout":{"deadlineSeconds":120,"unhealthyGraceSeconds":5}}}"#)?;
    for d in 0..plan.deployments {
        create_target(&ns, &format!("target-{d}")).await?;
    }
    never_ready_pipeline(&ns)?;
    let planned = plan_releases(&ns, &plan, &mut rng)?;
    let started = jiff::Timestamp::now();
    let t0 = Instant::now();

    let faults = tokio::spawn(faults(plan.operator_kills, plan.registry_down, seed));
    let mut deleted = BTreeSet::new();
    create_all(&ns, &planned, &mut rng, &mut deleted).await?;
    faults.await.context("fault task")??;
    supervise_operator()?;
    let terminal = wait_terminal(&ns, &planned, &deleted, plan.deadline, t0).await?;
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for r in ns
        .api::<ModelRelease>()
        .list(&ListParams::default())
        .await?
        .items
    {
        *phases
            .entry(r.status.map_or(Phase::Pending, |s| s.phase).as_str())
            .or_default() += 1;
    }
    for r in ns
        .api::<ModelRelease>()
        .list(&ListParams::default())
        .await?
        .items
    {
        let s = r.status.clone().unwrap_or_default();
        if matches!(s.phase, Phase::Failed | Phase::RolledBack) {
            let why = sluice::api::conditions::get(&s.conditions, "Ready")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            println!(
                "soak: {} {:?}: {why}",
                r.metadata.name.clone().unwrap_or_default(),
                s.phase
            );
        }
    }
    println!(
        "soak: settled after {:?}: {phases:?}, {} deleted mid-rollout",
        t0.elapsed(),
        deleted.len()
    );

    let mut report = Report::default();
    report.check(
        "every release terminal within 10 minutes",
        terminal.0,
        terminal.1,
    );
    check_rollouts(&ns, &planned, &deleted, &mut report).await?;
    check_task_runs(&ns, &mut report).await?;
    check_signatures(&ns, &mut report).await?;
    check_images_verify(&ns, started, &mut report).await?;
    check_no_secrets(&ns, &mut report).await?;
    report.finish()
}

/// Pipeline `never-ready`: the same stages, building into the repository whose pods kwok never
/// makes ready (so a rollout of it stays in flight until it is deleted).
fn never_ready_pipeline(ns: &TestNamespace) -> Result<()> {
    let text = ns.kubectl(&["get", "securepipeline", "predictor", "-o", "json"])?;
    let mut p: serde_json::Value = serde_json::from_str(&text)?;
    p["metadata"] = json!({"name": "never-ready"});
    p["spec"]["image"]["repository"] = json!(NEVER_READY);
    p.as_object_mut().map(|o| o.remove("status"));
    let path = std::env::temp_dir().join(format!("{}-never-ready.json", ns.name));
    std::fs::write(&path, p.to_string())?;
    ns.kubectl(&["apply", "-f", &path.to_string_lossy()])?;
    Ok(())
}

/// Creates Deployment `name` running STABLE (2 replicas) on the kwok node.
async fn create_target(ns: &TestNamespace, name: &str) -> Result<()> {
    let dep: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "server", "image": STABLE}]
                }
            }
        }
    }))?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &dep)
        .await?;
    Ok(())
}

/// Picks each release's Deployment and script, and pushes its image.
fn plan_releases(ns: &TestNamespace, plan: &Plan, rng: &mut Rng) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for i in 0..plan.releases {
        // Releases 2k and 2k+1 share a Deployment, so they can be created as a pair.
        let deployment = format!("target-{}", (i / 2) % plan.deployments);
        // The first few cover every script once; the rest are drawn.
        let last = plan.releases - 1;
        let script = match (i, rng.below(10)) {
            // The newest of two Deployments, so nothing supersedes them before they roll out.
            (i, _) if i == last || i + 2 == last => Script::DeletedMidRollout,
            (4, _) => Script::DastBlocks,
            (6, _) => Script::Blocked,
            (_, r) => match r {
                0 => Script::Blocked,
                1 => Script::DastBlocks,
                _ => Script::Clean,
            },
        };
        let name = format!("soak-{i:03}");
        let digest = if script == Script::DeletedMidRollout {
            ns.push_image_to(&format!("{NEVER_READY}:{}-{name}", ns.name), &name, None)?
        } else {
            ns.push_image(&name)?
        };
        out.push(Planned {
            name,
            deployment,
            script,
            digest,
        });
    }
    Ok(out)
}

fn sims(p: &Planned) -> Vec<(&'static str, Sim)> {
    let mut sims = clean_sims();
    match p.script {
        Script::Clean => sims[3] = ("build", Sim::built(&p.digest)),
        Script::Blocked => sims[1] = ("dependency-audit", Sim::findings(1, 0, 0, 0)),
        Script::DastBlocks => {
            sims[3] = ("build", Sim::built(&p.digest));
            sims[4] = ("dast", Sim::findings(0, 3, 0, 0));
        }
        Script::DeletedMidRollout => sims[3] = ("build", Sim::built_in(NEVER_READY, &p.digest)),
    }
    sims
}

/// Creates the releases: in pairs at the same instant where the plan puts two in a row on the
/// same Deployment, with short random pauses otherwise; deletes the mid-rollout ones once they
/// roll out.
async fn create_all(
    ns: &TestNamespace,
    planned: &[Planned],
    rng: &mut Rng,
    deleted: &mut BTreeSet<String>,
) -> Result<()> {
    let mut i = 0;
    let mut to_delete = Vec::new();
    while i < planned.len() {
        // Two releases of one Deployment created at the same instant.
        let pair = i % 2 == 0 && i + 1 < planned.len() && (i == 0 || rng.below(2) == 0);
        let batch: Vec<&Planned> = planned[i..(if pair { i + 2 } else { i + 1 })]
            .iter()
            .collect();
        // Polled together: a pair's two requests leave at the same instant.
        for r in futures::future::join_all(batch.iter().map(|p| create(ns, p))).await {
            r?;
        }
        for p in &batch {
            if p.script == Script::DeletedMidRollout {
                to_delete.push(p.name.clone());
            }
        }
        i += batch.len();
        tokio::time::sleep(Duration::from_millis(100 * rng.below(10))).await;
    }
    println!(
        "soak: created {} releases; {} to delete mid-rollout",
        planned.len(),
        to_delete.len()
    );
    let api = ns.api::<ModelRelease>();
    for name in to_delete {
        let rolling = sluice_e2e::eventually(
            &format!("{name} rolling out"),
            Duration::from_secs(300),
            Duration::from_millis(500),
            async || {
                let r = api.get_opt(&name).await.ok().flatten();
                let phase = r.as_ref().and_then(|r| r.status.as_ref()).map(|s| s.phase);
                Ok(match phase {
                    Some(Phase::RollingOut) => std::ops::ControlFlow::Break(true),
                    Some(p) if p.is_final() => {
                        let why = r
                            .as_ref()
                            .and_then(|r| r.status.as_ref())
                            .and_then(|s| sluice::api::conditions::get(&s.conditions, "Ready"))
                            .map(|c| c.message.clone())
                            .unwrap_or_default();
                        println!("soak: {name} ended {p:?} before its rollout: {why}");
                        std::ops::ControlFlow::Break(false)
                    }
                    other => std::ops::ControlFlow::Continue(format!("{other:?}")),
                })
            },
        )
        .await
        .unwrap_or_else(|e| {
            println!("soak: {name} did not roll out: {e}");
            false
        });
        if rolling {
            api.delete(&name, &DeleteParams::default()).await?;
            deleted.insert(name);
        }
    }
    Ok(())
}

async fn create(ns: &TestNamespace, p: &Planned) -> Result<()> {
    let mut spec = json!({"target": {"deployment": p.deployment, "container": "server"}});
    if p.script == Script::DeletedMidRollout {
        spec["pipelineRef"] = json!({"name": "never-ready"});
    }
    ns.release_with(&p.name, &sims(p), spec).await?;
    Ok(())
}

/// The faults, at random moments: operator SIGKILLs (restarted at once, as a Deployment's
/// kubelet would), the registry down, the API server SIGKILLed and restarted.
async fn faults(operator_kills: usize, registry_down: Duration, seed: u64) -> Result<()> {
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let api_kill_at = rng.below(u64::try_from(operator_kills)?.max(1));
    for k in 0..operator_kills {
        tokio::time::sleep(Duration::from_millis(1500 + 500 * rng.below(8))).await;
        operator("kill")?;
        println!(
            "soak: fault: operator SIGKILLed ({} of {operator_kills})",
            k + 1
        );
        operator("start")?;
        if u64::try_from(k)? == api_kill_at {
            cluster(&["kill", "registry"])?;
            println!("soak: fault: registry down for {registry_down:?}");
            tokio::time::sleep(registry_down).await;
            cluster(&["start", "registry"])?;
            cluster(&["kill", "kube-apiserver"])?;
            println!("soak: fault: kube-apiserver SIGKILLed");
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster(&["start", "kube-apiserver"])?;
            println!("soak: fault: kube-apiserver back");
            supervise_operator()?;
        }
    }
    Ok(())
}

fn cluster(args: &[&str]) -> Result<()> {
    let status = Command::new(repo_dir().join("e2e/cluster"))
        .args(args)
        .status()?;
    if !status.success() {
        bail!("e2e/cluster {args:?} failed");
    }
    Ok(())
}

/// Starts the operator again if it exited (a lost Lease makes it exit; its Deployment would
/// restart it).
fn supervise_operator() -> Result<()> {
    operator("start")
}

/// Waits until every release not deleted has ended, restarting the operator if it exited.
/// Returns (terminal, total).
async fn wait_terminal(
    ns: &TestNamespace,
    planned: &[Planned],
    deleted: &BTreeSet<String>,
    deadline: Duration,
    t0: Instant,
) -> Result<(usize, usize)> {
    let api = ns.api::<ModelRelease>();
    let total = planned.len() - deleted.len();
    loop {
        supervise_operator()?;
        let all = api.list(&ListParams::default()).await?.items;
        let ended = all
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_final()))
            .count();
        let gone = planned
            .iter()
            .filter(|p| deleted.contains(&p.name))
            .all(|p| {
                all.iter()
                    .all(|r| r.metadata.name.as_deref() != Some(&p.name))
            });
        if ended == total && gone {
            return Ok((ended, total));
        }
        if t0.elapsed() > deadline {
            for r in all
                .iter()
                .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_final()))
            {
                println!(
                    "soak: not terminal: {} {:?}",
                    r.metadata.name.clone().unwrap_or_default(),
                    r.status.as_ref().map(|s| s.phase)
                );
            }
            return Ok((ended, total));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Default)]
struct Report {
    checks: usize,
    violations: usize,
}

impl Report {
    /// Prints `what: ok/violated (good of all)`.
    fn check(&mut self, what: &str, good: usize, all: usize) {
        let ok = good == all;
        self.checks += 1;
        if !ok {
            self.violations += 1;
        }
        println!(
            "soak: invariant: {what}: {} ({good} of {all})",
            if ok { "holds" } else { "VIOLATED" }
        );
    }

    fn finish(self) -> Result<()> {
        let passed = self.checks - self.violations;
        println!("{passed} passed, {} failed", self.violations);
        if self.violations > 0 {
            bail!("{} invariants violated", self.violations);
        }
        Ok(())
    }
}

fn release_time(r: &ModelRelease) -> Option<jiff::Timestamp> {
    r.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Rollout windows per Deployment never overlap; the pod-template revisions are at most one per
/// rollout plus one per rollback; each Deployment ends on its newest Released release's digest.
async fn check_rollouts(
    ns: &TestNamespace,
    planned: &[Planned],
    deleted: &BTreeSet<String>,
    report: &mut Report,
) -> Result<()> {
    let all = ns
        .api::<ModelRelease>()
        .list(&ListParams::default())
        .await?
        .items;
    let mut by_dep: BTreeMap<String, Vec<&ModelRelease>> = BTreeMap::new();
    for r in &all {
        by_dep
            .entry(r.spec.target.deployment.clone())
            .or_default()
            .push(r);
    }
    let deployments: BTreeSet<&str> = planned.iter().map(|p| p.deployment.as_str()).collect();
    let (mut no_overlap, mut writes_ok, mut ends_ok) = (0, 0, 0);
    for dep_name in &deployments {
        let releases = by_dep.get(*dep_name).cloned().unwrap_or_default();
        // Windows from the image write to the release's end.
        let mut windows: Vec<(jiff::Timestamp, jiff::Timestamp, String)> = releases
            .iter()
            .filter_map(|r| {
                let s = r.status.as_ref()?;
                let start: jiff::Timestamp = s.rollout.as_ref()?.started_at.parse().ok()?;
                let end = sluice::api::conditions::get(&s.conditions, "Ready")
                    .map(|c| c.last_transition_time.0)?;
                Some((start, end, r.metadata.name.clone().unwrap_or_default()))
            })
            .collect();
        windows.sort();
        let overlap = windows.windows(2).find(|w| w[1].0 < w[0].1);
        match overlap {
            None => no_overlap += 1,
            Some(w) => println!(
                "soak: {dep_name}: rollouts of {} and {} overlap",
                w[0].2, w[1].2
            ),
        }
        let dep = ns.api::<Deployment>().get(dep_name).await?;
        let revision: usize = dep
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let rollouts = releases
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.rollout.is_some()))
            .count()
            + planned
                .iter()
                .filter(|p| &p.deployment == dep_name && deleted.contains(&p.name))
                .count();
        let rollbacks = releases
            .iter()
            .filter(|r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.rollout.as_ref())
                    .is_some_and(|ro| ro.rollback_started_at.is_some())
            })
            .count()
            + planned
                .iter()
                .filter(|p| &p.deployment == dep_name && deleted.contains(&p.name))
                .count();
        if revision.saturating_sub(1) <= rollouts + rollbacks {
            writes_ok += 1;
        } else {
            println!(
                "soak: {dep_name}: {} image changes for {rollouts} rollouts and {rollbacks} rollbacks",
                revision.saturating_sub(1)
            );
        }
        let newest = releases
            .iter()
            .filter(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Released)
            })
            .max_by_key(|r| (release_time(r), r.metadata.name.clone()));
        let want = newest
            .and_then(|r| {
                r.status
                    .as_ref()?
                    .rollout
                    .as_ref()
                    .map(|ro| ro.image.clone())
            })
            .unwrap_or_else(|| STABLE.to_string());
        let have = sluice::rollout::container_image(&dep, "server").unwrap_or_default();
        if have == want {
            ends_ok += 1;
        } else {
            println!("soak: {dep_name}: runs {have}, but its newest Released release is {want}");
        }
    }
    let n = deployments.len();
    report.check(
        "never two rollouts of one Deployment in flight",
        no_overlap,
        n,
    );
    report.check(
        "at most one image change per rollout plus one per rollback",
        writes_ok,
        n,
    );
    report.check(
        "every Deployment ends on the digest of its newest Released release",
        ends_ok,
        n,
    );
    Ok(())
}

/// One TaskRun per stage (plus one per recorded infrastructure retry).
async fn check_task_runs(ns: &TestNamespace, report: &mut Report) -> Result<()> {
    let runs = ns
        .api::<TaskRun>()
        .list(&ListParams::default())
        .await?
        .items;
    let releases = ns
        .api::<ModelRelease>()
        .list(&ListParams::default())
        .await?
        .items;
    let mut per_stage: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in &runs {
        let labels = t.metadata.labels.clone().unwrap_or_default();
        if let (Some(r), Some(s)) = (
            labels.get("sluice.dev/release"),
            labels.get("sluice.dev/stage"),
        ) {
            *per_stage.entry((r.clone(), s.clone())).or_default() += 1;
        }
    }
    let allowed = |release: &str, stage: &str| {
        releases
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(release))
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.stages.iter().find(|e| e.name == stage))
            .map_or(1, |e| 1 + usize::try_from(e.retries).unwrap_or(0))
    };
    let good = per_stage
        .iter()
        .filter(|((r, s), n)| {
            let ok = **n <= allowed(r, s);
            if !ok {
                println!("soak: {r}/{s}: {n} TaskRuns");
            }
            ok
        })
        .count();
    report.check("one TaskRun per stage", good, per_stage.len());
    Ok(())
}

fn crane_layers(reference: &str) -> Result<usize> {
    let out = Command::new(tool("crane")?)
        .args(["manifest", reference])
        .output()?;
    if !out.status.success() {
        return Ok(0);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(manifest["layers"].as_array().map_or(0, Vec::len))
}

/// One `.sig` and one `.att` layer per signed digest.
async fn check_signatures(ns: &TestNamespace, report: &mut Report) -> Result<()> {
    let releases = ns
        .api::<ModelRelease>()
        .list(&ListParams::default())
        .await?
        .items;
    let signed: BTreeSet<(String, String)> = releases
        .iter()
        .filter_map(|r| {
            let s = r.status.as_ref()?;
            s.signature.as_ref()?;
            let i = s.image.as_ref()?;
            Some((i.repository.clone(), i.digest.clone()))
        })
        .collect();
    let mut good = 0;
    for (repo, digest) in &signed {
        let tag = digest.replace(':', "-");
        let sig = crane_layers(&format!("{repo}:{tag}.sig"))?;
        let att = crane_layers(&format!("{repo}:{tag}.att"))?;
        if sig == 1 && att == 1 {
            good += 1;
        } else {
            println!("soak: {repo}@{digest}: {sig} signature and {att} attestation layers");
        }
    }
    report.check(
        "one .sig and one .att layer per signed digest",
        good,
        signed.len(),
    );
    Ok(())
}

/// Every image any ReplicaSet ran since the start, other than the pre-existing STABLE one,
/// verifies with the real cosign CLI.
async fn check_images_verify(
    ns: &TestNamespace,
    started: jiff::Timestamp,
    report: &mut Report,
) -> Result<()> {
    let sets = ns
        .api::<ReplicaSet>()
        .list(&ListParams::default())
        .await?
        .items;
    let images: BTreeSet<String> = sets
        .iter()
        .filter(|rs| {
            rs.metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| t.0 >= started)
        })
        .filter_map(|rs| sluice_e2e::replica_set_image(rs, "server"))
        .filter(|i| i != STABLE)
        .collect();
    let key = std::env::temp_dir()
        .join(format!("{}-keys", ns.name))
        .join("cosign.pub");
    let mut good = 0;
    for image in &images {
        let out = Command::new(tool("cosign")?)
            .args(["verify", "--key"])
            .arg(&key)
            .args([
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                image,
            ])
            .output()?;
        if out.status.success() {
            good += 1;
        } else {
            println!(
                "soak: {image} does not verify: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    report.check(
        "every image a ReplicaSet ran verifies with cosign",
        good,
        images.len(),
    );
    Ok(())
}

/// The key's password, its PEM body and the Secret's encoded key appear nowhere in the operator
/// log, the namespace's Events or the releases' status.
async fn check_no_secrets(ns: &TestNamespace, report: &mut Report) -> Result<()> {
    let secret = ns.api::<Secret>().get("cosign-key").await?;
    let data = secret.data.unwrap_or_default();
    let key = data
        .get("cosign.key")
        .map(|k| String::from_utf8_lossy(&k.0).into_owned())
        .unwrap_or_default();
    // A line of the key's base64 body is long and random enough to be a fingerprint.
    let body_line = key
        .lines()
        .find(|l| l.len() > 40 && !l.starts_with("-----"))
        .unwrap_or("unlikely-to-appear")
        .to_string();
    let needles = [PASSWORD.to_string(), body_line];
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for log in ["operator.log", "operator-standby.log"] {
        if let Ok(text) = std::fs::read_to_string(state_dir().join("logs").join(log)) {
            haystacks.push((log.to_string(), text));
        }
    }
    let events = ns.api::<Event>().list(&ListParams::default()).await?.items;
    haystacks.push(("events".into(), serde_json::to_string(&events)?));
    let releases = ns
        .api::<ModelRelease>()
        .list(&ListParams::default())
        .await?
        .items;
    let statuses: Vec<_> = releases.iter().map(|r| &r.status).collect();
    haystacks.push(("release status".into(), serde_json::to_string(&statuses)?));
    let mut good = 0;
    for (what, text) in &haystacks {
        if needles.iter().any(|n| text.contains(n.as_str())) {
            println!("soak: secret material found in {what}");
        } else {
            good += 1;
        }
    }
    report.check(
        "no secret material in logs, events or status",
        good,
        haystacks.len(),
    );
    Ok(())
}
