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

/// Labels naming a stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Stage name.
    pub stage: String,
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
    releases: Family<PhaseLabels, Gauge>,
    release_store: std::sync::RwLock<Option<Store<ModelRelease>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
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
        registry.register(
            "leadership_lost",
            "Terms as leader that ended because the Lease could not be renewed in time or was taken",
            leadership_lost.clone(),
        );
        let signing_duration = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let signing_failures = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "signing_duration_seconds",
            "Duration of signing and pushing signatures",
            signing_duration.clone(),
        );
        registry.register(
            "signing_failures",
            "Signing failures by category",
            signing_failures.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            duration.clone(),
        );
        registry.register("gate_verdicts", "Gate verdicts decided", verdicts.clone());
        registry.register(
            "taskruns_created",
            "TaskRuns created for stages",
            task_runs_created.clone(),
        );
        registry.register(
            "taskruns_cancelled",
            "Running TaskRuns cancelled because their release ended",
            task_runs_cancelled.clone(),
        );
        registry.register("releases", "ModelReleases by phase", releases.clone());
        let rollouts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "rollouts",
            "Rollouts that ended, by outcome and reason",
            rollouts.clone(),
        );
        let rescan_findings = Family::<StageLabels, Counter>::default();
        registry.register(
            "rescan_blocked",
            "Rescans whose gate now blocks the released image, by stage",
            rescan_findings.clone(),
        );
        Self {
            registry,
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
}
