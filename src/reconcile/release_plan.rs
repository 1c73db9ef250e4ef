//! What one reconcile of a ModelRelease should do, computed from what was observed. Pure: no client,
//! no clock, so every decision is testable from fixtures.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{Timestamp, tz::TimeZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::{
    api::{
        ModelRelease, ModelReleaseStatus, Phase, SecurePipeline, Stage,
        conditions::{self, Health, reason},
        pipeline::Produces,
        release::{ImageRef, PipelineSnapshot, StageState, StageStatus, Verdict},
    },
    dag,
    gates::{self, GateContext},
    names,
    tekton::{self, TaskRun},
};

pub use super::Notice;

/// The outcome of planning one reconcile.
#[derive(Debug, Clone)]
pub struct Plan {
    /// TaskRuns to create.
    pub create: Vec<TaskRun>,
    /// The status the release should have.
    pub status: ModelReleaseStatus,
    /// Events to publish.
    pub notices: Vec<Notice>,
    /// Verdicts decided in this reconcile, for metrics: (stage, verdict, category).
    pub decided: Vec<(String, Verdict, &'static str)>,
}

/// Why the pipeline cannot be used, as a condition reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message.
    pub message: String,
}

/// Checks what the controller can check beyond the CRD's CEL rules.
pub fn pipeline_problem(pipeline: &SecurePipeline) -> Option<Unusable> {
    let name = pipeline.name_any();
    if let Err(e) = dag::order(&pipeline.spec.stages) {
        return Some(Unusable {
            reason: reason::PIPELINE_INVALID,
            message: format!("SecurePipeline {name}: {e}; fix spec.stages"),
        });
    }
    let builders = pipeline
        .spec
        .stages
        .iter()
        .filter(|s| s.produces == Some(Produces::Image))
        .count();
    (builders != 1).then(|| Unusable {
        reason: reason::PIPELINE_INVALID,
        message: format!("SecurePipeline {name}: exactly one stage must declare produces: image, found {builders}"),
    })
}

/// The pipeline that judges `release`: the copy recorded when it started, else the live one (a
/// release is judged against the pipeline as it was when it started; later edits apply to new
/// releases, and a pipeline deleted mid-release strands nothing).
pub fn effective_pipeline(
    release: &ModelRelease,
    live: Option<&SecurePipeline>,
) -> Option<SecurePipeline> {
    let Some(snapshot) = release.status.as_ref().and_then(|s| s.pipeline.as_ref()) else {
        return live.cloned();
    };
    let mut spec = snapshot.spec.clone();
    // What judges the release is pinned; how Sluice reaches the registry and the key is not: a
    // release stalled on missing credentials or a missing key recovers when the pipeline is fixed.
    if let Some(live) = live {
        spec.image.credentials_secret_ref = live.spec.image.credentials_secret_ref.clone();
        spec.signing = live.spec.signing.clone();
    }
    let mut pipeline = SecurePipeline::new(&release.spec.pipeline_ref.name, spec);
    pipeline.metadata.namespace = release.namespace();
    pipeline.metadata.generation = snapshot.generation;
    pipeline.metadata.uid = live.and_then(|l| l.metadata.uid.clone());
    Some(pipeline)
}

/// Plans one reconcile of `release`, given its pipeline (None when it does not exist) and the
/// TaskRuns labelled with its name.
pub fn plan(
    release: &ModelRelease,
    pipeline: Option<&SecurePipeline>,
    task_runs: &[TaskRun],
    now: Timestamp,
) -> Plan {
    let old = release.status.clone().unwrap_or_default();
    let mut builder = Builder::new(release, old.clone(), now);
    match pipeline {
        None => builder.stalled(Unusable {
            reason: reason::PIPELINE_NOT_FOUND,
            message: format!(
                "SecurePipeline {} not found in namespace {}; create it or fix spec.pipelineRef",
                release.spec.pipeline_ref.name,
                release.namespace().unwrap_or_default()
            ),
        }),
        Some(p) => match pipeline_problem(p) {
            Some(problem) => builder.stalled(problem),
            None => {
                if builder.status.pipeline.is_none() {
                    builder.status.pipeline = Some(PipelineSnapshot {
                        generation: p.metadata.generation,
                        spec: p.spec.clone(),
                    });
                }
                builder.run_stages(p, task_runs);
            }
        },
    }
    builder.finish(&old)
}

struct Builder<'a> {
    release: &'a ModelRelease,
    status: ModelReleaseStatus,
    now: Timestamp,
    create: Vec<TaskRun>,
    notices: Vec<Notice>,
    decided: Vec<(String, Verdict, &'static str)>,
}

impl<'a> Builder<'a> {
    fn new(release: &'a ModelRelease, status: ModelReleaseStatus, now: Timestamp) -> Self {
        Self {
            release,
            status,
            now,
            create: Vec::new(),
            notices: Vec::new(),
            decided: Vec::new(),
        }
    }

    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let generation = self.release.metadata.generation;
        let now = Time(self.now);
        conditions::set(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            generation,
            &now,
        );
    }

    fn health(&mut self, health: Health, reason: &str, message: &str) {
        let generation = self.release.metadata.generation;
        conditions::set_health(
            &mut self.status.conditions,
            health,
            reason,
            message,
            generation,
            &Time(self.now),
        );
    }

    fn stalled(&mut self, problem: Unusable) {
        if self.status.phase.is_final() {
            return;
        }
        self.health(Health::Stalled, problem.reason, &problem.message);
    }

    fn run_stages(&mut self, pipeline: &SecurePipeline, task_runs: &[TaskRun]) {
        // By the name Sluice gives each stage's TaskRun: a TaskRun that only carries the labels
        // is not the stage's, and one squatting on the name is judged untrusted, not ignored.
        let release_name = self.release.name_any();
        let by_stage: BTreeMap<&str, &TaskRun> = pipeline
            .spec
            .stages
            .iter()
            .filter_map(|s| {
                let name = names::attempt_name(&release_name, &s.name, self.retries_of(s));
                task_runs
                    .iter()
                    .find(|tr| tr.metadata.name.as_deref() == Some(name.as_str()))
                    .map(|tr| (s.name.as_str(), tr))
            })
            .collect();
        let today = self.now.to_zoned(TimeZone::UTC).date();
        let ctx = GateContext {
            exceptions: &pipeline.spec.exceptions,
            today,
            repository: &pipeline.spec.image.repository,
        };
        let ordered = dag::order(&pipeline.spec.stages).unwrap_or_default();
        let (post, pre): (Vec<&Stage>, Vec<&Stage>) =
            ordered.iter().copied().partition(|s| s.is_post_deploy());
        // First judge whatever has finished, so a block seen now stops every stage not yet started.
        let mut entries: Vec<StageStatus> = pre
            .iter()
            .map(|s| self.observe(pipeline, s, by_stage.get(s.name.as_str()), ctx))
            .collect();
        let may_start = !self.status.phase.is_final();
        let mut passed =
            self.start_ready(pipeline, &pre, &mut entries, &BTreeSet::new(), may_start);
        let mut post_entries: Vec<StageStatus> = post
            .iter()
            .map(|s| match by_stage.get(s.name.as_str()) {
                None if !self.has_verdict(s) => waiting(s, "runs after the rollout"),
                tr => self.observe(pipeline, s, tr, ctx),
            })
            .collect();
        if pre.len() == passed.len() {
            let verifying = self.status.phase == Phase::Verifying;
            passed = self.start_ready(pipeline, &post, &mut post_entries, &passed, verifying);
        }
        let pre_count = entries.len();
        entries.extend(post_entries);
        self.status.stages = entries;
        self.decide_phase(pre_count, passed.len());
    }

    fn has_verdict(&self, stage: &Stage) -> bool {
        self.status
            .stages
            .iter()
            .any(|e| e.name == stage.name && e.gate.is_some())
    }

    /// Marks the waiting stages not run when one of `stages` blocked, else starts those whose
    /// runAfter stages passed (when `may_start`). Returns every passed stage, `before` included.
    fn start_ready(
        &mut self,
        pipeline: &SecurePipeline,
        stages: &[&Stage],
        entries: &mut [StageStatus],
        before: &BTreeSet<String>,
        may_start: bool,
    ) -> BTreeSet<String> {
        let blocked = entries.iter().any(|e| e.gate == Some(Verdict::Blocked));
        let mut passed = before.clone();
        passed.extend(
            entries
                .iter()
                .filter(|e| e.gate == Some(Verdict::Passed))
                .map(|e| e.name.clone()),
        );
        let target_url = self
            .status
            .rollout
            .as_ref()
            .and_then(|r| r.target_url.clone());
        for (stage, entry) in stages.iter().zip(entries.iter_mut()) {
            if entry.state != StageState::Waiting {
                continue;
            }
            if blocked {
                entry.state = StageState::NotRun;
                entry.gate = Some(Verdict::Skipped);
                entry.reason = Some("not run: the release was blocked by another stage".into());
            } else if may_start && dag::is_ready(stage, &passed) && self.retry_due(entry) {
                let url = target_url.as_deref().filter(|_| stage.is_post_deploy());
                let mut tr = tekton::build(
                    self.release,
                    pipeline,
                    stage,
                    self.status.image.as_ref(),
                    url,
                );
                tr.metadata.name = Some(names::attempt_name(
                    &self.release.name_any(),
                    &stage.name,
                    entry.retries,
                ));
                entry.state = StageState::Running;
                entry.reason = None;
                entry.retry_at = None;
                entry.task_run = tr.metadata.name.clone();
                self.notices.push(Notice {
                    warning: false,
                    reason: "TaskRunCreated",
                    note: format!(
                        "created TaskRun {} for stage {}",
                        tr.metadata.name.clone().unwrap_or_default(),
                        stage.name
                    ),
                    task_run: tr.metadata.name.clone(),
                });
                self.create.push(tr);
            }
        }
        passed
    }

    /// The status of one stage from its previous entry and its TaskRun; a verdict once given stands.
    fn observe(
        &mut self,
        pipeline: &SecurePipeline,
        stage: &Stage,
        tr: Option<&&TaskRun>,
        ctx: GateContext<'_>,
    ) -> StageStatus {
        if let Some(prev) = self
            .status
            .stages
            .iter()
            .find(|e| e.name == stage.name && e.gate.is_some())
        {
            return prev.clone();
        }
        let retries = self.retries_of(stage);
        let Some(tr) = tr else {
            // A retry waiting out its backoff keeps its entry until its TaskRun exists.
            if let Some(prev) = self
                .status
                .stages
                .iter()
                .find(|e| e.name == stage.name && e.retries > 0)
            {
                return prev.clone();
            }
            return waiting(stage, "waiting for the stages it runs after");
        };
        if tr.spec.status.as_deref() == Some(tekton::CANCELLED) && self.status.phase.is_final() {
            return cancelled(stage, tr, self.status.phase);
        }
        let target_url = self
            .status
            .rollout
            .as_ref()
            .and_then(|r| r.target_url.as_deref());
        if let Some(problem) = tekton::provenance_problem(
            tr,
            self.release,
            pipeline,
            stage,
            self.status.image.as_ref(),
            target_url,
        ) {
            return self.untrusted(stage, tr, problem);
        }
        if let Some(retry) = self.retry(stage, tr, retries) {
            return retry;
        }
        let Some((mut entry, verdict)) = judge_task_run(stage, tr, ctx) else {
            return StageStatus {
                name: stage.name.clone(),
                task_run: tr.metadata.name.clone(),
                state: StageState::Running,
                gate: None,
                findings: None,
                tests: None,
                quality: None,
                exceptions_applied: Vec::new(),
                fixes: Vec::new(),
                reason: None,
                completed_at: None,
                retries,
                retry_at: None,
            };
        };
        entry.retries = retries;
        if retries > 0
            && let Some(reason) = entry.reason.as_mut()
        {
            reason.push_str(&format!(
                " (attempt {} of {})",
                retries + 1,
                MAX_RETRIES + 1
            ));
        }
        if let (Verdict::Passed, Some(image)) = (verdict.verdict, verdict.image) {
            self.status.image = Some(ImageRef {
                repository: image.repository,
                digest: image.digest,
            });
        }
        self.decided
            .push((stage.name.clone(), verdict.verdict, verdict.category));
        self.notices.push(Notice {
            warning: verdict.verdict == Verdict::Blocked,
            reason: if verdict.verdict == Verdict::Blocked {
                "GateBlocked"
            } else {
                "GatePassed"
            },
            note: verdict.reason,
            task_run: tr.metadata.name.clone(),
        });
        entry
    }

    /// How many times `stage` was retried so far, from the stored status.
    fn retries_of(&self, stage: &Stage) -> u32 {
        self.status
            .stages
            .iter()
            .find(|e| e.name == stage.name)
            .map_or(0, |e| e.retries)
    }

    /// Whether a waiting stage may start now: a retry waits out its backoff.
    fn retry_due(&self, entry: &StageStatus) -> bool {
        entry
            .retry_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_none_or(|at| self.now >= at)
    }

    /// A TaskRun that failed for an infrastructure reason (Tekton could not resolve the Task or
    /// create the pod: not a step's own failure) is retried with backoff, a bounded number of
    /// times, instead of blocking the release; the stage's status says so.
    fn retry(&mut self, stage: &Stage, tr: &TaskRun, retries: u32) -> Option<StageStatus> {
        let gates::RunOutcome::Failed { reason, message } = tekton::outcome(tr)? else {
            return None;
        };
        if !tekton::is_transient_failure(&reason) || retries >= MAX_RETRIES {
            return None;
        }
        let wait = jiff::SignedDuration::from_secs(RETRY_BACKOFF_SECONDS << retries);
        let at = self.now.checked_add(wait).unwrap_or(self.now);
        let why = format!(
            "stage {}: TaskRun {} failed for an infrastructure reason ({reason}: {}); retry {} of {MAX_RETRIES} at {at}",
            stage.name,
            tr.name_any(),
            crate::text::bounded(&message, 200),
            retries + 1
        );
        self.notices.push(Notice {
            warning: true,
            reason: "StageRetrying",
            note: why.clone(),
            task_run: tr.metadata.name.clone(),
        });
        Some(StageStatus {
            name: stage.name.clone(),
            task_run: tr.metadata.name.clone(),
            state: StageState::Waiting,
            gate: None,
            findings: None,
            tests: None,
            quality: None,
            exceptions_applied: Vec::new(),
            fixes: Vec::new(),
            reason: Some(why),
            completed_at: None,
            retries: retries + 1,
            retry_at: Some(at.to_string()),
        })
    }

    /// Blocks `stage` on a TaskRun whose results cannot be trusted.
    fn untrusted(&mut self, stage: &Stage, tr: &TaskRun, problem: String) -> StageStatus {
        let reason = format!("stage {}: {problem}", stage.name);
        self.decided
            .push((stage.name.clone(), Verdict::Blocked, UNTRUSTED_TASK_RUN));
        self.notices.push(Notice {
            warning: true,
            reason: "GateBlocked",
            note: reason.clone(),
            task_run: tr.metadata.name.clone(),
        });
        StageStatus {
            name: stage.name.clone(),
            task_run: tr.metadata.name.clone(),
            state: tekton::outcome(tr).map_or(StageState::Running, state_of),
            gate: Some(Verdict::Blocked),
            findings: None,
            tests: None,
            quality: None,
            exceptions_applied: Vec::new(),
            fixes: Vec::new(),
            reason: Some(reason),
            completed_at: tr.status.as_ref().and_then(|s| s.completion_time.clone()),
            retries: 0,
            retry_at: None,
        }
    }

    /// Sets the phase from the pre-deploy verdicts (the first `gate_count` stages); from the
    /// approval on, the rollout decides the phase and only the gate conditions are kept here.
    fn decide_phase(&mut self, gate_count: usize, all_passed: usize) {
        let total = self.status.stages.len();
        self.status.gates_summary = Some(format!("{all_passed}/{total}"));
        if self.status.phase.is_final() {
            return;
        }
        let passed = self.status.stages[..gate_count]
            .iter()
            .filter(|e| e.gate == Some(Verdict::Passed))
            .count();
        let blocking: Vec<String> = self.status.stages[..gate_count]
            .iter()
            .filter(|e| e.gate == Some(Verdict::Blocked))
            .filter_map(|e| e.reason.clone())
            .collect();
        if !blocking.is_empty() {
            let message = format!("release blocked: {}", blocking.join("; "));
            self.status.phase = Phase::Blocked;
            self.condition(
                conditions::GATES_PASSED,
                false,
                reason::GATE_BLOCKED,
                &message,
            );
            self.health(Health::Stalled, reason::GATE_BLOCKED, &message);
        } else if passed == gate_count {
            let image = self.status.image.as_ref().map_or_else(String::new, |i| {
                format!(" for {}@{}", i.repository, i.digest)
            });
            let gates_message = format!("all {gate_count} pre-deploy gates passed{image}");
            let (why, waiting) = match &self.status.signature {
                Some(sig) => (
                    reason::AWAITING_ROLLOUT,
                    format!(
                        "{gates_message}; signed as {} with key {}; rolling out next",
                        sig.reference, sig.key_id
                    ),
                ),
                None => (
                    reason::SIGNING,
                    format!("{gates_message}; signing the image"),
                ),
            };
            if let Some(sig) = &self.status.signature {
                let signed = format!("signed as {} with key {}", sig.reference, sig.key_id);
                self.condition(conditions::SIGNED, true, reason::SIGNED, &signed);
            }
            self.condition(
                conditions::GATES_PASSED,
                true,
                reason::GATES_PASSED,
                &gates_message,
            );
            if self.status.phase.is_rollout() {
                return;
            }
            self.status.phase = Phase::Signing;
            self.health(Health::Progressing, why, &waiting);
        } else {
            let running: Vec<&str> = self
                .status
                .stages
                .iter()
                .filter(|e| e.state == StageState::Running)
                .map(|e| e.name.as_str())
                .collect();
            self.status.phase = if running.is_empty() && passed == 0 {
                Phase::Pending
            } else {
                Phase::Running
            };
            let message = format!(
                "{passed}/{gate_count} gates passed; running: {}",
                if running.is_empty() {
                    "none".to_string()
                } else {
                    running.join(", ")
                }
            );
            self.condition(
                conditions::GATES_PASSED,
                false,
                reason::GATES_PENDING,
                &message,
            );
            self.health(Health::Progressing, reason::PROGRESSING, &message);
        }
    }

    fn finish(mut self, old: &ModelReleaseStatus) -> Plan {
        self.status.observed_generation = self.release.metadata.generation;
        if self.status.phase != old.phase {
            let message = conditions::get(&self.status.conditions, conditions::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            self.notices.push(Notice {
                warning: matches!(
                    self.status.phase,
                    Phase::Blocked | Phase::Failed | Phase::RolledBack
                ),
                reason: self.status.phase.as_str(),
                note: format!(
                    "phase {} -> {}: {message}",
                    old.phase.as_str(),
                    self.status.phase.as_str()
                ),
                task_run: None,
            });
        } else if conditions::is_true(&self.status.conditions, conditions::STALLED)
            && !conditions::is_true(&old.conditions, conditions::STALLED)
        {
            let c = conditions::get(&self.status.conditions, conditions::STALLED).cloned();
            if let Some(c) = c {
                self.notices.push(Notice {
                    warning: true,
                    reason: static_reason(&c.reason),
                    note: c.message,
                    task_run: None,
                });
            }
        }
        Plan {
            create: self.create,
            status: self.status,
            notices: self.notices,
            decided: self.decided,
        }
    }
}

/// The verdict of a finished TaskRun of `stage`, as a status entry and as the gate decided it;
/// None while it runs.
pub fn judge_task_run(
    stage: &Stage,
    tr: &TaskRun,
    ctx: GateContext<'_>,
) -> Option<(StageStatus, gates::GateVerdict)> {
    let outcome = tekton::outcome(tr)?;
    let verdict = gates::judge(stage, &outcome, &tekton::results(tr), ctx);
    let state = state_of(outcome);
    let entry = StageStatus {
        name: stage.name.clone(),
        task_run: tr.metadata.name.clone(),
        state,
        gate: Some(verdict.verdict),
        findings: verdict.findings.clone(),
        tests: verdict.tests.clone(),
        quality: verdict.quality.clone(),
        exceptions_applied: verdict.exceptions_applied.clone(),
        fixes: verdict.fixes.clone(),
        reason: Some(verdict.reason.clone()),
        completed_at: tr.status.as_ref().and_then(|s| s.completion_time.clone()),
        retries: 0,
        retry_at: None,
    };
    Some((entry, verdict))
}

/// A stage Sluice cancelled because the release ended in `phase`: skipped, not judged; still
/// running until Tekton has stopped it.
fn cancelled(stage: &Stage, tr: &TaskRun, phase: Phase) -> StageStatus {
    let outcome = tekton::outcome(tr);
    let done = outcome.is_some();
    StageStatus {
        name: stage.name.clone(),
        task_run: tr.metadata.name.clone(),
        state: outcome.map_or(StageState::Running, state_of),
        gate: done.then_some(Verdict::Skipped),
        findings: None,
        tests: None,
        quality: None,
        exceptions_applied: Vec::new(),
        fixes: Vec::new(),
        reason: Some(format!(
            "{}: the release ended {}",
            if done { "cancelled" } else { "cancelling" },
            phase.as_str()
        )),
        completed_at: tr.status.as_ref().and_then(|s| s.completion_time.clone()),
        retries: 0,
        retry_at: None,
    }
}

/// The release's own TaskRuns still running once it has ended (blocked, rolled back, failed):
/// their verdicts can no longer change anything, so they are cancelled.
pub fn to_cancel<'a>(
    release: &ModelRelease,
    status: &ModelReleaseStatus,
    task_runs: &'a [TaskRun],
) -> Vec<&'a TaskRun> {
    if !status.phase.is_final() {
        return Vec::new();
    }
    task_runs
        .iter()
        .filter(|tr| tekton::outcome(tr).is_none() && tr.spec.status.is_none())
        .filter(|tr| tekton::controlled_by(tr, release))
        .collect()
}

fn state_of(outcome: gates::RunOutcome) -> StageState {
    match outcome {
        gates::RunOutcome::Succeeded => StageState::Succeeded,
        gates::RunOutcome::Failed { .. } => StageState::Failed,
        gates::RunOutcome::TimedOut => StageState::TimedOut,
        gates::RunOutcome::Cancelled => StageState::Cancelled,
    }
}

/// Retries of a stage whose TaskRun failed for an infrastructure reason, before it blocks.
pub const MAX_RETRIES: u32 = 3;
/// Backoff before the first retry, doubled for each further one.
pub const RETRY_BACKOFF_SECONDS: i64 = 10;

/// The verdict category of a stage whose TaskRun Sluice did not make as the stage says.
pub const UNTRUSTED_TASK_RUN: &str = "UntrustedTaskRun";

fn static_reason(r: &str) -> &'static str {
    match r {
        reason::PIPELINE_NOT_FOUND => reason::PIPELINE_NOT_FOUND,
        reason::PIPELINE_INVALID => reason::PIPELINE_INVALID,
        _ => "Stalled",
    }
}

fn waiting(stage: &Stage, why: &str) -> StageStatus {
    StageStatus {
        name: stage.name.clone(),
        task_run: None,
        state: StageState::Waiting,
        gate: None,
        findings: None,
        tests: None,
        quality: None,
        exceptions_applied: Vec::new(),
        fixes: Vec::new(),
        reason: Some(why.to_string()),
        completed_at: None,
        retries: 0,
        retry_at: None,
    }
}

/// Records that signing failed: `Signed=False` with the reason; a configuration problem stalls the
/// release (fixable by the user, retried), a digest missing from the registry blocks it for good.
pub fn signing_failed(
    release: &ModelRelease,
    status: &mut ModelReleaseStatus,
    category: &str,
    message: &str,
    block: bool,
    now: Timestamp,
) {
    let generation = release.metadata.generation;
    let now = Time(now);
    let mut set = |t: &str, v: bool, r: &str| {
        conditions::set(&mut status.conditions, t, v, r, message, generation, &now)
    };
    set(conditions::SIGNED, false, category);
    // Waiting for Tekton Chains is progress, not a failure a user must fix.
    let waiting = category == conditions::reason::WAITING_FOR_CHAINS;
    conditions::set_health(
        &mut status.conditions,
        if waiting {
            Health::Progressing
        } else {
            Health::Stalled
        },
        category,
        message,
        generation,
        &now,
    );
    if block {
        status.phase = Phase::Blocked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    /// Plans `release` against the fixture pipeline at the fixture clock.
    fn plan_at_fixture_time(release: &ModelRelease, task_runs: &[TaskRun]) -> Plan {
        plan(
            release,
            Some(&fixtures::pipeline()),
            task_runs,
            fixtures::test_now(),
        )
    }

    fn all_passed() -> Vec<TaskRun> {
        let digest = format!("sha256:{}", "c".repeat(64));
        vec![
            fixtures::finished_task_run(
                "unit-tests",
                true,
                &[(
                    "TEST_OUTPUT",
                    r#"{"result":"SUCCESS","successes":3,"failures":0}"#,
                )],
            ),
            fixtures::finished_task_run("dependency-audit", true, &[("FINDINGS", "{}")]),
            fixtures::finished_task_run(
                "build",
                true,
                &[
                    ("IMAGE_URL", "registry.example/evip/predictor:3f2a9c1"),
                    ("IMAGE_DIGEST", &digest),
                ],
            ),
        ]
    }

    #[test]
    fn passing_every_gate_asks_for_signing_and_a_signature_makes_it_signed() {
        let trs = all_passed();
        let p = plan_at_fixture_time(&fixtures::release(), &trs);
        assert_eq!(p.status.phase, Phase::Signing);
        let ready = conditions::get(&p.status.conditions, conditions::READY).expect("Ready");
        assert_eq!(ready.reason, reason::SIGNING);
        assert!(conditions::get(&p.status.conditions, conditions::SIGNED).is_none());

        let mut release = fixtures::release();
        let mut status = p.status.clone();
        status.signature = Some(crate::api::release::SignatureRef {
            reference: "registry.example/evip/predictor:sha256-cc.sig".into(),
            attestation: None,
            key_id: "sha256:ab".into(),
            signed_at: "2026-11-23T12:00:00Z".into(),
            manifest_digest: None,
            bundles: Vec::new(),
            model: None,
        });
        release.status = Some(status);
        let signed = plan_at_fixture_time(&release, &trs);
        assert!(conditions::is_true(
            &signed.status.conditions,
            conditions::SIGNED
        ));
        let ready = conditions::get(&signed.status.conditions, conditions::READY).expect("Ready");
        assert_eq!(ready.reason, reason::AWAITING_ROLLOUT);
        assert!(
            ready
                .message
                .contains("signed as registry.example/evip/predictor:sha256-cc.sig")
        );
    }

    fn stage_of(p: &Plan, stage: &str) -> StageStatus {
        p.status
            .stages
            .iter()
            .find(|e| e.name == stage)
            .cloned()
            .expect("stage entry")
    }

    #[test]
    fn a_taskrun_this_release_does_not_control_is_not_trusted() {
        let mut trs = all_passed();
        // Passing results, but made by someone else under the stage's name.
        trs[1].metadata.owner_references = None;
        let p = plan_at_fixture_time(&fixtures::release(), &trs);
        assert_eq!(p.status.phase, Phase::Blocked);
        let audit = stage_of(&p, "dependency-audit");
        assert_eq!(audit.gate, Some(Verdict::Blocked));
        let reason = audit.reason.unwrap_or_default();
        assert!(reason.contains("not created by this release"), "{reason}");
        assert!(
            p.decided
                .iter()
                .any(|(s, _, c)| s == "dependency-audit" && *c == UNTRUSTED_TASK_RUN)
        );
        assert!(p.status.signature.is_none() && p.create.is_empty());
    }

    #[test]
    fn a_taskrun_with_another_revision_or_task_is_not_trusted_but_tekton_defaults_are() {
        let mut trs = all_passed();
        let revision = trs[0]
            .spec
            .params
            .iter_mut()
            .find(|p| p.name == "SOURCE_REVISION")
            .expect("param");
        revision.value = "0000000".into();
        let p = plan_at_fixture_time(&fixtures::release(), &trs);
        let tests = stage_of(&p, "unit-tests");
        assert_eq!(tests.gate, Some(Verdict::Blocked));
        assert!(
            tests.reason.unwrap_or_default().contains("SOURCE_REVISION"),
            "the reason names the parameter"
        );

        let mut trs = all_passed();
        trs[1].spec.task_ref.as_mut().expect("taskRef").name = Some("always-clean".into());
        let p = plan_at_fixture_time(&fixtures::release(), &trs);
        let audit = stage_of(&p, "dependency-audit");
        assert!(
            audit
                .reason
                .unwrap_or_default()
                .contains("does not run the Task")
        );

        let mut trs = all_passed();
        for tr in &mut trs {
            tr.spec.task_ref.as_mut().expect("taskRef").kind = Some("Task".into());
        }
        let p = plan_at_fixture_time(&fixtures::release(), &trs);
        assert_eq!(p.status.phase, Phase::Signing);
    }

    #[test]
    fn a_cancelled_stage_of_a_blocked_release_is_skipped_not_judged() {
        let mut unit = fixtures::running_task_run("unit-tests");
        let trs = vec![
            unit.clone(),
            fixtures::finished_task_run(
                "dependency-audit",
                true,
                &[("FINDINGS", r#"{"critical":1}"#)],
            ),
        ];
        let p = plan_at_fixture_time(&fixtures::release(), &trs);
        assert_eq!(p.status.phase, Phase::Blocked);
        let cancel = to_cancel(&fixtures::release(), &p.status, &trs);
        assert_eq!(cancel.len(), 1);
        assert_eq!(
            cancel[0].metadata.name.as_deref(),
            Some("predictor-42-unit-tests")
        );

        // Tekton stopped it: the stage reads as cancelled and skipped, and nothing is left to cancel.
        unit.spec.status = Some(tekton::CANCELLED.into());
        if let Some(s) = unit.status.as_mut() {
            s.conditions[0].status = "False".into();
            s.conditions[0].reason = Some("TaskRunCancelled".into());
        }
        let mut release = fixtures::release();
        release.status = Some(p.status);
        let trs = vec![unit, trs[1].clone()];
        let again = plan_at_fixture_time(&release, &trs);
        let entry = stage_of(&again, "unit-tests");
        assert_eq!(entry.gate, Some(Verdict::Skipped));
        assert_eq!(entry.state, StageState::Cancelled);
        assert!(to_cancel(&release, &again.status, &trs).is_empty());
        let ready = conditions::get(&again.status.conditions, conditions::READY).expect("Ready");
        assert!(
            ready.message.contains("dependency-audit"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn a_signing_failure_stalls_or_blocks() {
        let p = plan_at_fixture_time(&fixtures::release(), &all_passed());
        let mut stalled = p.status.clone();
        signing_failed(
            &fixtures::release(),
            &mut stalled,
            "KeyInvalid",
            "wrong password",
            false,
            fixtures::test_now(),
        );
        assert_eq!(stalled.phase, Phase::Signing);
        assert!(conditions::is_true(
            &stalled.conditions,
            conditions::STALLED
        ));
        let mut blocked = p.status.clone();
        signing_failed(
            &fixtures::release(),
            &mut blocked,
            "DigestNotFound",
            "not in the registry",
            true,
            fixtures::test_now(),
        );
        assert_eq!(blocked.phase, Phase::Blocked);
        let signed = conditions::get(&blocked.conditions, conditions::SIGNED).expect("Signed");
        assert_eq!(
            (signed.status.as_str(), signed.reason.as_str()),
            ("False", "DigestNotFound")
        );
    }

    #[test]
    fn planning_again_from_the_written_status_changes_nothing() {
        let first = plan_at_fixture_time(&fixtures::release(), &[]);
        let mut release = fixtures::release();
        release.status = Some(first.status.clone());
        let running = [
            fixtures::running_task_run("unit-tests"),
            fixtures::running_task_run("dependency-audit"),
        ];
        let later = fixtures::test_now() + jiff::SignedDuration::from_secs(60);
        let second = plan(&release, Some(&fixtures::pipeline()), &running, later);
        assert!(second.create.is_empty());
        assert!(second.notices.is_empty(), "{:?}", second.notices);
        assert_eq!(second.status, first.status);
    }

    /// A TaskRun of `stage` that Tekton failed with `reason` before any step ran.
    fn failed_with(stage: &str, reason: &str, attempt: u32) -> TaskRun {
        let mut tr = fixtures::finished_task_run(stage, false, &[]);
        tr.metadata.name = Some(names::attempt_name("predictor-42", stage, attempt));
        if let Some(s) = tr.status.as_mut() {
            s.conditions[0].reason = Some(reason.into());
            s.conditions[0].message =
                Some("error requesting remote resource: context deadline exceeded ✗".into());
        }
        tr
    }

    fn entry<'a>(p: &'a Plan, stage: &str) -> &'a StageStatus {
        p.status
            .stages
            .iter()
            .find(|e| e.name == stage)
            .expect("stage entry")
    }

    #[test]
    fn a_transient_failure_is_retried_with_backoff_then_blocks_after_the_last_retry() {
        let mut release = fixtures::release();
        let mut now = fixtures::test_now();
        let running = fixtures::running_task_run("dependency-audit");
        for attempt in 0..MAX_RETRIES {
            let trs = vec![
                failed_with("unit-tests", "TaskRunResolutionFailed", attempt),
                running.clone(),
            ];
            let p = plan(&release, Some(&fixtures::pipeline()), &trs, now);
            let e = entry(&p, "unit-tests");
            assert_eq!(
                p.status.phase,
                Phase::Running,
                "attempt {attempt}: {:?}",
                e.reason
            );
            assert_eq!(e.gate, None);
            assert_eq!(e.retries, attempt + 1);
            assert!(
                e.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("infrastructure")),
                "{:?}",
                e.reason
            );
            assert!(p.create.is_empty(), "the retry waits out its backoff");
            assert!(
                p.notices
                    .iter()
                    .any(|n| n.reason == "StageRetrying" && n.warning)
            );
            release.status = Some(p.status.clone());
            // Before the backoff ends nothing starts; after it, the next attempt under its own name.
            let early = plan(
                &release,
                Some(&fixtures::pipeline()),
                std::slice::from_ref(&running),
                now,
            );
            assert!(early.create.is_empty());
            now += jiff::SignedDuration::from_secs(RETRY_BACKOFF_SECONDS << attempt);
            let due = plan(
                &release,
                Some(&fixtures::pipeline()),
                std::slice::from_ref(&running),
                now,
            );
            let names: Vec<_> = due.create.iter().map(|t| t.name_any()).collect();
            assert_eq!(
                names,
                [names::attempt_name(
                    "predictor-42",
                    "unit-tests",
                    attempt + 1
                )]
            );
            assert_eq!(entry(&due, "unit-tests").state, StageState::Running);
            release.status = Some(due.status);
        }
        let last = vec![
            failed_with("unit-tests", "TaskRunResolutionFailed", MAX_RETRIES),
            running,
        ];
        let p = plan(&release, Some(&fixtures::pipeline()), &last, now);
        assert_eq!(p.status.phase, Phase::Blocked);
        let e = entry(&p, "unit-tests");
        assert_eq!(e.gate, Some(Verdict::Blocked));
        assert!(
            e.reason
                .as_deref()
                .is_some_and(|r| r.contains("attempt 4 of 4")),
            "{:?}",
            e.reason
        );
    }

    #[test]
    fn a_steps_own_failure_blocks_at_once() {
        let trs = vec![failed_with("unit-tests", "Failed", 0)];
        let p = plan_at_fixture_time(&fixtures::release(), &trs);
        assert_eq!(p.status.phase, Phase::Blocked);
        assert_eq!(entry(&p, "unit-tests").retries, 0);
    }

    #[test]
    fn a_release_is_judged_by_the_pipeline_it_started_with() {
        let first = plan_at_fixture_time(&fixtures::release(), &[]);
        let snapshot = first
            .status
            .pipeline
            .clone()
            .expect("snapshot taken at the start");
        assert_eq!(snapshot.generation, Some(1));
        let mut release = fixtures::release();
        release.status = Some(first.status);
        // The pipeline is edited: the audit now tolerates nothing and the build runs another Task.
        let mut edited = fixtures::pipeline();
        edited.metadata.generation = Some(2);
        edited.spec.stages[1].gate = Some(
            serde_json::from_value(serde_json::json!({"findings": {"maxSeverity": "none"}}))
                .expect("gate"),
        );
        edited.spec.stages[2].task_ref.name = Some("kaniko".into());
        let pipeline = effective_pipeline(&release, Some(&edited)).expect("pipeline");
        assert_eq!(pipeline.metadata.generation, Some(1));
        let trs = vec![
            fixtures::finished_task_run(
                "unit-tests",
                true,
                &[(
                    "TEST_OUTPUT",
                    r#"{"result":"SUCCESS","successes":3,"failures":0}"#,
                )],
            ),
            fixtures::finished_task_run(
                "dependency-audit",
                true,
                &[("FINDINGS", r#"{"medium":1}"#)],
            ),
        ];
        let p = plan(&release, Some(&pipeline), &trs, fixtures::test_now());
        assert_eq!(
            entry(&p, "dependency-audit").gate,
            Some(Verdict::Passed),
            "judged by the old gate"
        );
        assert_eq!(p.create.len(), 1);
        assert_eq!(
            p.create[0]
                .spec
                .task_ref
                .as_ref()
                .and_then(|t| t.name.as_deref()),
            Some("buildah")
        );
        // A pipeline deleted mid-release strands nothing.
        assert!(effective_pipeline(&release, None).is_some());
        // A new release takes the edited pipeline.
        let fresh = effective_pipeline(&fixtures::release(), Some(&edited)).expect("live");
        assert_eq!(fresh.metadata.generation, Some(2));
        assert_eq!(fresh.spec, edited.spec);
    }
}
