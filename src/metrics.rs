//! Prometheus metrics. Every label has a bounded set of values: controller names, phases, stage
//! names of the pipelines (at most 32 each), verdicts and error categories.

use std::sync::Arc;

use kube::runtime::reflector::Store;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::api::{ModelRelease, Phase};

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// modelrelease or securepipeline.
    pub controller: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// modelrelease or securepipeline.
    pub controller: &'static str,
    /// Bounded error category.
    pub category: &'static str,
}

/// Labels of a gate verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Stage name.
    pub stage: String,
    /// Passed, Blocked or Skipped.
    pub verdict: &'static str,
    /// Bounded category of the reason.
    pub category: &'static str,
}

/// Labels of a failure category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    /// Bounded category.
    pub category: &'static str,
}

/// Labels of the releases-by-phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Release phase.
    pub phase: &'static str,
}

/// Labels of rollout outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Final phase.
    pub outcome: &'static str,
    /// Bounded reason.
    pub reason: &'static str,
}

/// Labels of an enforcement webhook answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// gated (a scheduling gate added), untouched (not a targeted pod) or invalid.
    pub decision: &'static str,
}

/// Labels naming a stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Stage name.
    pub stage: String,
}

/// Labels of a registry request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    /// resolve (HEAD of a manifest), pull or push.
    pub operation: &'static str,
    /// ok or error.
    pub result: &'static str,
}

/// Registry request durations by operation and result; shared by every registry client.
pub type RegistryTimings = Family<RegistryLabels, Histogram>;

/// Buckets for stages and phases: from a scripted stage (well under a second) to an hour's scan.
const LONG_BUCKETS: [f64; 13] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

fn long_histogram() -> Histogram {
    Histogram::new(LONG_BUCKETS)
}

fn short_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every metric Sluice exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, by controller.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciles that failed, by controller and category.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration, by controller.
    pub duration: Family<ControllerLabels, Histogram>,
    /// Gate verdicts, by stage, verdict and category.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// TaskRuns created.
    pub task_runs_created: Counter,
    /// Running TaskRuns cancelled because their release ended.
    pub task_runs_cancelled: Counter,
    /// Terms as leader that ended because the Lease could not be kept.
    pub leadership_lost: Counter,
    /// Duration of signing (registry check, signing, push).
    pub signing_duration: Histogram,
    /// Signing failures by category.
    pub signing_failures: Family<CategoryLabels, Counter>,
    /// Rollouts that ended, by outcome (Released, RolledBack, Failed) and reason.
    pub rollouts: Family<OutcomeLabels, Counter>,
    /// Rescans whose gates now block, by stage.
    pub rescan_findings: Family<StageLabels, Counter>,
    /// Time a release spent in a phase, observed when it leaves it.
    pub phase_duration: Family<PhaseLabels, Histogram>,
    /// Time from a release's creation to its end, by final phase.
    pub release_duration: Family<PhaseLabels, Histogram>,
    /// Wall time of a stage's TaskRun, from creation to completion, observed at its verdict.
    pub stage_duration: Family<StageLabels, Histogram>,
    /// Registry request durations.
    pub registry_duration: RegistryTimings,
    /// Signatures waiting for a signing slot.
    pub signing_queue: Gauge,
    /// Time a signature waited for its slot.
    pub signing_wait: Histogram,
    /// Objects triggered and not yet reconciled, by controller.
    pub workqueue_depth: Family<ControllerLabels, Gauge>,
    /// Time the enforcement webhook took to answer an admission request, by decision.
    pub webhook_duration: Family<DecisionLabels, Histogram>,
    /// Scheduling gates judged by the gate controller: Admitted (gate removed) or Held, by reason.
    pub pod_gates: Family<OutcomeLabels, Counter>,
    releases: Family<PhaseLabels, Gauge>,
    release_store: std::sync::RwLock<Option<Store<ModelRelease>>>,
    names: Vec<&'static str>,
}

/// Registers `metric` and notes its name (a family with no samples yet renders nothing).
fn register(
    registry: &mut Registry,
    names: &mut Vec<&'static str>,
    name: &'static str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    names.push(name);
    registry.register(name, help, metric);
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let mut names = Vec::new();
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let verdicts = Family::<VerdictLabels, Counter>::default();
        let task_runs_created = Counter::default();
        let task_runs_cancelled = Counter::default();
        let releases = Family::<PhaseLabels, Gauge>::default();
        let leadership_lost = Counter::default();
        register(
            &mut registry,
            &mut names,
            "leadership_lost",
            "Terms as leader that ended because the Lease could not be renewed in time or was taken",
            leadership_lost.clone(),
        );
        let signing_duration = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let signing_failures = Family::<CategoryLabels, Counter>::default();
        register(
            &mut registry,
            &mut names,
            "signing_duration_seconds",
            "Duration of signing and pushing signatures",
            signing_duration.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "signing_failures",
            "Signing failures by category",
            signing_failures.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "reconciles",
            "Reconciles run",
            reconciles.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "reconcile_failures",
            "Reconciles that failed",
            failures.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "reconcile_duration_seconds",
            "Duration of reconciles",
            duration.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "gate_verdicts",
            "Gate verdicts decided",
            verdicts.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "taskruns_created",
            "TaskRuns created for stages",
            task_runs_created.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "taskruns_cancelled",
            "Running TaskRuns cancelled because their release ended",
            task_runs_cancelled.clone(),
        );
        register(
            &mut registry,
            &mut names,
            "releases",
            "ModelReleases by phase",
            releases.clone(),
        );
        let rollouts = Family::<OutcomeLabels, Counter>::default();
        register(
            &mut registry,
            &mut names,
            "rollouts",
            "Rollouts that ended, by outcome and reason",
            rollouts.clone(),
        );
        let rescan_findings = Family::<StageLabels, Counter>::default();
        register(
            &mut registry,
            &mut names,
            "rescan_blocked",
            "Rescans whose gate now blocks the released image, by stage",
            rescan_findings.clone(),
        );
        let phase_duration = Family::<PhaseLabels, Histogram>::new_with_constructor(long_histogram);
        register(
            &mut registry,
            &mut names,
            "phase_duration_seconds",
            "Time a release spent in a phase, observed when it leaves it",
            phase_duration.clone(),
        );
        let release_duration =
            Family::<PhaseLabels, Histogram>::new_with_constructor(long_histogram);
        register(
            &mut registry,
            &mut names,
            "release_duration_seconds",
            "Time from a release's creation to its end, by final phase",
            release_duration.clone(),
        );
        let stage_duration = Family::<StageLabels, Histogram>::new_with_constructor(long_histogram);
        register(
            &mut registry,
            &mut names,
            "stage_duration_seconds",
            "Wall time of a stage's TaskRun from creation to completion",
            stage_duration.clone(),
        );
        let registry_duration = RegistryTimings::new_with_constructor(short_histogram);
        register(
            &mut registry,
            &mut names,
            "registry_request_duration_seconds",
            "Duration of OCI registry requests by operation and result",
            registry_duration.clone(),
        );
        let signing_queue = Gauge::default();
        register(
            &mut registry,
            &mut names,
            "signing_queue_depth",
            "Signatures waiting for a signing slot",
            signing_queue.clone(),
        );
        let signing_wait = short_histogram();
        register(
            &mut registry,
            &mut names,
            "signing_wait_seconds",
            "Time a signature waited for a signing slot",
            signing_wait.clone(),
        );
        let workqueue_depth = Family::<ControllerLabels, Gauge>::default();
        register(
            &mut registry,
            &mut names,
            "workqueue_depth",
            "Objects triggered and not yet reconciled, by controller",
            workqueue_depth.clone(),
        );
        let webhook_duration = Family::<DecisionLabels, Histogram>::new_with_constructor(|| {
            // A cache lookup: answers take well under a millisecond.
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
            ])
        });
        register(
            &mut registry,
            &mut names,
            "webhook_admission_duration_seconds",
            "Time the enforcement webhook took to answer a pod admission request, by decision",
            webhook_duration.clone(),
        );
        let pod_gates = Family::<OutcomeLabels, Counter>::default();
        register(
            &mut registry,
            &mut names,
            "pod_gates",
            "Pods judged by the gate controller: Admitted (scheduling gate removed) or Held, by reason",
            pod_gates.clone(),
        );
        Self {
            registry,
            webhook_duration,
            pod_gates,
            phase_duration,
            release_duration,
            stage_duration,
            registry_duration,
            signing_queue,
            signing_wait,
            workqueue_depth,
            reconciles,
            failures,
            duration,
            verdicts,
            task_runs_created,
            task_runs_cancelled,
            signing_duration,
            signing_failures,
            rollouts,
            rescan_findings,
            releases,
            release_store: std::sync::RwLock::new(None),
            names,
            leadership_lost,
        }
    }
}

impl Metrics {
    /// Lets the releases-by-phase gauge read the controller's cache at scrape time.
    /// (A new term as leader brings a new store.)
    pub fn watch_releases(&self, store: Store<ModelRelease>) {
        *self
            .release_store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store);
    }

    /// The names of every metric, without the `sluice_` prefix and the `_total` suffix.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let store = self
            .release_store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(store) = store {
            let state = store.state();
            for phase in Phase::ALL {
                let n = state
                    .iter()
                    .filter(|r| r.status.as_ref().map(|s| s.phase).unwrap_or_default() == phase)
                    .count();
                self.releases
                    .get_or_create(&PhaseLabels {
                        phase: phase.as_str(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_bounded_labels() {
        let m = Metrics::default();
        m.reconciles
            .get_or_create(&ControllerLabels {
                controller: "modelrelease",
            })
            .inc();
        m.verdicts
            .get_or_create(&VerdictLabels {
                stage: "sast".into(),
                verdict: "Blocked",
                category: "FindingsOverLimit",
            })
            .inc();
        let text = m.render();
        assert!(
            text.contains(r#"sluice_reconciles_total{controller="modelrelease"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"sluice_gate_verdicts_total{stage="sast",verdict="Blocked",category="FindingsOverLimit"} 1"#), "{text}");
    }

    #[test]
    fn every_metric_the_chart_dashboard_queries_is_exported() {
        let dashboard = include_str!("../charts/sluice/dashboards/sluice.json");
        let parsed: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard JSON");
        assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
        let metrics = Metrics::default();
        let mut queried = 0;
        for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let Some(name) = word.strip_prefix("sluice_") else {
                continue;
            };
            let base = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
            assert!(
                metrics.names().contains(&base),
                "the dashboard queries sluice_{name}, which is not exported"
            );
            queried += 1;
        }
        assert!(queried >= 15, "{queried}");
    }
}
