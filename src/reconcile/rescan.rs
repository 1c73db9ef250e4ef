//! Continuous re-audit: on `spec.rescan.schedule`, re-run the listed stages against the revision
//! each target Deployment currently runs (its newest Released ModelRelease), judge them with the
//! same gates, and mark what now blocks `Vulnerable` on the release and on the pipeline.

use std::collections::BTreeMap;

use jiff::{Timestamp, tz::TimeZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt, api::PostParams};

use super::{Ctx, Error, api, release_plan};
use crate::rollout::release_key;
use crate::{
    api::{
        FIELD_MANAGER, LABEL_RELEASE, LABEL_STAGE, ModelRelease, ModelReleaseStatus, Phase,
        SecurePipeline, SecurePipelineStatus,
        conditions::{self, reason},
        pipeline::OnFinding,
        release::{RescanStatus, Verdict},
    },
    gates::GateContext,
    names,
    tekton::{self, TaskRun},
};

/// Label on rescan TaskRuns naming the release re-audited (not `sluice.dev/release`, so the
/// release's own stages never see them).
pub const LABEL_RESCAN_OF: &str = "sluice.dev/rescan-of";
/// Label on rescan TaskRuns: the scheduled time, Unix seconds.
pub const LABEL_RESCAN_AT: &str = "sluice.dev/rescan-at";

/// Parses a cron schedule (five fields, or six with leading seconds), UTC.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    if let Some(e) = time_fields_problem(schedule) {
        return Err(format!("invalid cron schedule {schedule:?}: {e}"));
    }
    croner::Cron::new(schedule)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("invalid cron schedule {schedule:?}: {e}"))
}

/// Why the seconds/minutes/hours fields are refused, if they are. croner accepts fields there
/// that match nothing (`L`, a bare `,`) and then searches hour by hour up to the year 5000:
/// minutes of CPU on a runtime thread (found by fuzzing). Each field must be a list of `*`, `N`
/// or `N-M` (N ≤ M), each with an optional `/S` (S ≥ 1): always a non-empty set.
fn time_fields_problem(schedule: &str) -> Option<String> {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() == 1 && fields[0].starts_with('@') {
        return None;
    }
    let time_fields = match fields.len() {
        5 => 2,
        6 => 3,
        n => return Some(format!("expected 5 or 6 fields, found {n}")),
    };
    if let Some(bad) = fields.iter().find(|f| f.split(',').any(str::is_empty)) {
        return Some(format!("field {bad:?} has an empty list item"));
    }
    let bad = fields[..time_fields]
        .iter()
        .find(|f| !f.split(',').all(time_item_ok))?;
    Some(format!(
        "time field {bad:?} must be a list of '*', 'N' or 'N-M', each optionally '/STEP'"
    ))
}

/// One item of a seconds/minutes/hours list: `*`, `N` or `N-M` with N ≤ M, then optionally `/S`, S ≥ 1.
fn time_item_ok(item: &str) -> bool {
    let number = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    let step_ok = step.is_none_or(|s| number(s).is_some_and(|n| n >= 1));
    let range_ok = range == "*"
        || match range.split_once('-') {
            Some((a, b)) => number(a).zip(number(b)).is_some_and(|(a, b)| a <= b),
            None => number(range).is_some(),
        };
    step_ok && range_ok
}

/// Why `spec.rescan.schedule` cannot be used, if it cannot.
pub fn schedule_problem(pipeline: &SecurePipeline) -> Option<String> {
    let rescan = pipeline.spec.rescan.as_ref()?;
    if let Err(e) = parse_schedule(&rescan.schedule) {
        return Some(e);
    }
    let names: Vec<&str> = pipeline
        .spec
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let unknown: Vec<&str> = rescan
        .stages
        .iter()
        .map(String::as_str)
        .filter(|s| !names.contains(s))
        .collect();
    (!unknown.is_empty()).then(|| {
        format!(
            "spec.rescan.stages names unknown stages: {}",
            unknown.join(", ")
        )
    })
}

fn to_chrono(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// The latest scheduled time in `(last, now]`, if any: missed runs are not caught up one by one.
pub fn due(schedule: &str, last: Timestamp, now: Timestamp) -> Result<Option<Timestamp>, String> {
    let cron = parse_schedule(schedule)?;
    let mut latest = None;
    let mut after = to_chrono(last);
    // Bounded: a per-second schedule after a long outage must not spin.
    for _ in 0..10_000 {
        let Ok(next) = cron.find_next_occurrence(&after, false) else {
            break;
        };
        let next_ts = Timestamp::from_second(next.timestamp()).map_err(|e| e.to_string())?;
        if next_ts > now {
            break;
        }
        latest = Some(next_ts);
        after = next;
    }
    Ok(latest)
}

/// How long until the next scheduled rescan (at least a second), if one is scheduled.
pub fn until_next(pipeline: &SecurePipeline, now: Timestamp) -> Option<std::time::Duration> {
    let cron = parse_schedule(&pipeline.spec.rescan.as_ref()?.schedule).ok()?;
    let next = cron.find_next_occurrence(&to_chrono(now), false).ok()?;
    let secs = (next.timestamp() - now.as_second()).max(1);
    Some(std::time::Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The release each target Deployment runs: the newest Released release of the pipeline.
pub fn released<'a>(
    pipeline: &SecurePipeline,
    releases: &'a [ModelRelease],
) -> Vec<&'a ModelRelease> {
    let name = pipeline.name_any();
    let mut by_target: BTreeMap<&str, &ModelRelease> = BTreeMap::new();
    for r in releases.iter().filter(|r| {
        r.spec.pipeline_ref.name == name
            && r.status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Released)
    }) {
        let key = |r: &ModelRelease| {
            (
                r.metadata.creation_timestamp.clone().map(|t| t.0),
                r.name_any(),
            )
        };
        let slot = by_target.entry(&r.spec.target.deployment).or_insert(r);
        if key(r) > key(slot) {
            *slot = r;
        }
    }
    by_target.into_values().collect()
}

/// The TaskRun re-running `stage` for `release` at the scheduled time `at`.
pub fn task_run(
    release: &ModelRelease,
    pipeline: &SecurePipeline,
    stage: &crate::api::Stage,
    at: Timestamp,
) -> TaskRun {
    let image = release.status.as_ref().and_then(|s| s.image.as_ref());
    let mut tr = tekton::build(release, pipeline, stage, image, None);
    let release_name = release.name_any();
    tr.metadata.name = Some(names::task_run_name(
        &release_name,
        &format!("rescan-{}-{}", at.as_second(), stage.name),
    ));
    let labels = tr.metadata.labels.get_or_insert_default();
    labels.remove(LABEL_RELEASE);
    labels.insert(LABEL_RESCAN_OF.into(), release_name);
    labels.insert(LABEL_RESCAN_AT.into(), at.as_second().to_string());
    tr
}

/// Runs the scheduled rescan when due, then folds finished rescans into the releases' status.
pub async fn run(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    releases: &[ModelRelease],
    status: &mut SecurePipelineStatus,
) -> Result<(), Error> {
    let Some(spec) = pipeline.spec.rescan.as_ref() else {
        return Ok(());
    };
    if schedule_problem(pipeline).is_some() {
        return Ok(());
    }
    let now = (ctx.now)();
    let last = status
        .last_rescan
        .as_deref()
        .and_then(|t| t.parse().ok())
        .or_else(|| pipeline.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    if let Ok(Some(at)) = due(&spec.schedule, last, now) {
        start(ctx, pipeline, releases, at).await?;
        status.last_rescan = Some(at.to_string());
    }
    judge(pipeline, releases, status, now);
    Ok(())
}

async fn start(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    releases: &[ModelRelease],
    at: Timestamp,
) -> Result<(), Error> {
    let Some(spec) = pipeline.spec.rescan.as_ref() else {
        return Ok(());
    };
    let ns = pipeline.namespace().unwrap_or_default();
    let api_: Api<TaskRun> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    for release in to_rescan(pipeline, releases) {
        for stage in pipeline
            .spec
            .stages
            .iter()
            .filter(|s| spec.stages.contains(&s.name))
        {
            let tr = task_run(release, pipeline, stage, at);
            match api_.create(&pp, &tr).await {
                Ok(_) => {
                    ctx.metrics.task_runs_created.inc();
                }
                // Deterministic names: a restart re-creating the same scheduled run is a no-op.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(api("create-rescan-taskrun")(e)),
            }
        }
    }
    Ok(())
}

/// The releases a scheduled rescan re-audits: what each Deployment runs and, with
/// `onFinding: rollback`, the release a rollback would restore (it is restored only if its own
/// latest rescan passes).
pub fn to_rescan<'a>(
    pipeline: &SecurePipeline,
    releases: &'a [ModelRelease],
) -> Vec<&'a ModelRelease> {
    let mut out = released(pipeline, releases);
    if spec_rollback(pipeline) {
        let fallbacks: Vec<&ModelRelease> = out
            .iter()
            .filter_map(|live| previous_released(live, releases))
            .collect();
        out.extend(fallbacks);
    }
    out
}

/// Sums up the rescans the release controller recorded on the live releases as the pipeline's
/// Vulnerable condition. The pipeline controller only reads release status: the release
/// controller is its one writer.
fn judge(
    pipeline: &SecurePipeline,
    releases: &[ModelRelease],
    status: &mut SecurePipelineStatus,
    now: Timestamp,
) {
    let mut vulnerable = Vec::new();
    for release in released(pipeline, releases) {
        let Some(rescan) = release.status.as_ref().and_then(|s| s.rescan.as_ref()) else {
            continue;
        };
        let blocked = blocked_reasons(rescan);
        if !blocked.is_empty() {
            vulnerable.push(format!("{}: {}", release.name_any(), blocked.join("; ")));
        }
    }
    let (value, why, message) = if vulnerable.is_empty() {
        (
            false,
            reason::RESCAN_PASSED,
            "the latest rescan of every released revision passed its gates".to_string(),
        )
    } else {
        (
            true,
            reason::VULNERABLE,
            format!(
                "the latest rescan blocks released revisions: {}",
                vulnerable.join(" | ")
            ),
        )
    };
    if status.last_rescan.is_some() {
        conditions::set(
            &mut status.conditions,
            conditions::VULNERABLE,
            value,
            why,
            &message,
            pipeline.metadata.generation,
            &Time(now),
        );
    }
}

/// The reasons of the stages a rescan blocked.
pub fn blocked_reasons(rescan: &RescanStatus) -> Vec<String> {
    rescan
        .stages
        .iter()
        .filter(|s| s.gate == Some(Verdict::Blocked))
        .filter_map(|s| s.reason.clone())
        .collect()
}

/// Records `rescan` on a release's planned status: `status.rescan` and the Vulnerable
/// condition. Returns the Event to publish when something changed, and whether it blocks.
pub fn fold(
    release: &ModelRelease,
    status: &mut ModelReleaseStatus,
    rescan: RescanStatus,
    now: Timestamp,
) -> Option<release_plan::Notice> {
    if status.rescan.as_ref() == Some(&rescan) {
        return None;
    }
    let blocked = blocked_reasons(&rescan);
    let was = conditions::is_true(&status.conditions, conditions::VULNERABLE);
    let value = !blocked.is_empty();
    let (why, message) = if value {
        (
            reason::VULNERABLE,
            format!(
                "rescan scheduled at {} blocks the running release: {}",
                rescan.scheduled_at,
                blocked.join("; ")
            ),
        )
    } else {
        (
            reason::RESCAN_PASSED,
            format!(
                "rescan scheduled at {} passed every gate",
                rescan.scheduled_at
            ),
        )
    };
    conditions::set(
        &mut status.conditions,
        conditions::VULNERABLE,
        value,
        why,
        &message,
        release.metadata.generation,
        &Time(now),
    );
    status.rescan = Some(rescan);
    (value || value != was).then_some(release_plan::Notice {
        warning: value,
        reason: why,
        note: message,
        task_run: None,
    })
}

/// The TaskRuns of `release`'s scheduled rescans.
pub async fn task_runs_of(ctx: &Ctx, release: &ModelRelease) -> Result<Vec<TaskRun>, Error> {
    let ns = release.namespace().unwrap_or_default();
    ctx.task_runs(&ns, LABEL_RESCAN_OF, &release.name_any())
        .await
}

/// The verdicts of the newest scheduled rescan of `release` whose TaskRuns all finished.
pub fn latest_rescan(
    pipeline: &SecurePipeline,
    release: &ModelRelease,
    runs: &[TaskRun],
    now: Timestamp,
) -> Option<RescanStatus> {
    let name = release.name_any();
    let mine: Vec<&TaskRun> = runs
        .iter()
        .filter(|t| t.labels().get(LABEL_RESCAN_OF) == Some(&name))
        .filter(|t| made_by_sluice(t, release, pipeline))
        .collect();
    let mut schedules: Vec<i64> = mine
        .iter()
        .filter_map(|t| t.labels().get(LABEL_RESCAN_AT)?.parse::<i64>().ok())
        .collect();
    schedules.sort_unstable_by(|a, b| b.cmp(a));
    schedules.dedup();
    let ctx = GateContext {
        exceptions: &pipeline.spec.exceptions,
        today: now.to_zoned(TimeZone::UTC).date(),
        repository: &pipeline.spec.image.repository,
    };
    // The newest schedule whose TaskRuns all finished.
    schedules.into_iter().find_map(|at| {
        let label = at.to_string();
        let mut stages = Vec::new();
        for tr in mine
            .iter()
            .filter(|t| t.labels().get(LABEL_RESCAN_AT) == Some(&label))
        {
            let stage_name = tr.labels().get(LABEL_STAGE)?;
            let stage = pipeline
                .spec
                .stages
                .iter()
                .find(|s| &s.name == stage_name)?;
            stages.push(release_plan::judge_task_run(stage, tr, ctx)?.0);
        }
        stages.sort_by(|a, b| a.name.cmp(&b.name));
        Some(RescanStatus {
            scheduled_at: Timestamp::from_second(at).ok()?.to_string(),
            stages,
        })
    })
}

/// Whether `tr` is the rescan TaskRun Sluice creates for its labels' stage and schedule: anyone
/// who can create TaskRuns could otherwise mark a release Vulnerable, or roll it back.
fn made_by_sluice(tr: &TaskRun, release: &ModelRelease, pipeline: &SecurePipeline) -> bool {
    let labels = tr.labels();
    let at = labels
        .get(LABEL_RESCAN_AT)
        .and_then(|a| a.parse::<i64>().ok())
        .and_then(|a| Timestamp::from_second(a).ok());
    let stage = labels
        .get(LABEL_STAGE)
        .and_then(|n| pipeline.spec.stages.iter().find(|s| &s.name == n));
    let (Some(at), Some(stage)) = (at, stage) else {
        return false;
    };
    let image = release.status.as_ref().and_then(|s| s.image.as_ref());
    tr.metadata.name == task_run(release, pipeline, stage, at).metadata.name
        && tekton::provenance_problem(tr, release, pipeline, stage, image, None).is_none()
}

/// Whether the pipeline restores an earlier release when a rescan blocks the live one.
pub fn spec_rollback(pipeline: &SecurePipeline) -> bool {
    pipeline.spec.rescan.as_ref().and_then(|r| r.on_finding) == Some(OnFinding::Rollback)
}

/// The newest earlier release of the same Deployment that was Released and rolled out.
fn previous_released<'a>(
    release: &ModelRelease,
    releases: &'a [ModelRelease],
) -> Option<&'a ModelRelease> {
    releases
        .iter()
        .filter(|r| r.spec.target.deployment == release.spec.target.deployment)
        .filter(|r| release_key(r) < release_key(release))
        .filter(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Released && s.rollout.is_some())
        })
        .max_by_key(|r| release_key(r))
}

/// The release an `onFinding: rollback` restores: the newest earlier Released release of the
/// same Deployment, and only if its own latest rescan passed (an older release that is just as
/// vulnerable is no refuge).
pub fn last_passing<'a>(
    release: &ModelRelease,
    releases: &'a [ModelRelease],
) -> Option<&'a ModelRelease> {
    previous_released(release, releases).filter(|r| {
        r.status.as_ref().is_some_and(|s| {
            !conditions::is_true(&s.conditions, conditions::VULNERABLE)
                && s.rescan
                    .as_ref()
                    .is_some_and(|scan| blocked_reasons(scan).is_empty())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::release::ImageRef, fixtures};

    fn audit_stage(p: &SecurePipeline) -> &crate::api::Stage {
        p.spec
            .stages
            .iter()
            .find(|s| s.name == "dependency-audit")
            .expect("stage")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn only_the_latest_missed_run_is_due() {
        let last = ts("2026-11-23T03:00:00Z");
        assert_eq!(due("0 3 * * *", last, ts("2026-11-24T02:59:59Z")), Ok(None));
        assert_eq!(
            due("0 3 * * *", last, ts("2026-11-26T04:00:00Z")),
            Ok(Some(ts("2026-11-26T03:00:00Z")))
        );
        assert_eq!(
            due("*/5 * * * * *", last, ts("2026-11-23T03:00:12Z")),
            Ok(Some(ts("2026-11-23T03:00:10Z")))
        );
        assert!(due("every night", last, last).is_err());
    }

    #[test]
    fn a_bad_schedule_or_unknown_stage_is_a_pipeline_problem() {
        let mut p = fixtures::pipeline();
        assert_eq!(schedule_problem(&p), None);
        p.spec.rescan = Some(crate::api::pipeline::RescanSpec {
            schedule: "0 3 * * *".into(),
            stages: vec!["dependency-audit".into()],
            on_finding: None,
        });
        assert_eq!(schedule_problem(&p), None);
        p.spec.rescan.as_mut().expect("rescan").stages = vec!["nope".into()];
        assert!(schedule_problem(&p).expect("problem").contains("nope"));
        p.spec.rescan.as_mut().expect("rescan").schedule = "61 * * * *".into();
        assert!(
            schedule_problem(&p)
                .expect("problem")
                .contains("invalid cron")
        );
    }

    #[test]
    fn fields_that_match_nothing_are_refused_before_croner_searches_for_ever() {
        // Found by fuzzing: croner takes `l` or an empty list in these fields, matches nothing
        // and searches to the year 5000; `L`, `#` and names stay allowed in the day fields.
        for bad in [
            "* l * * * 1",
            "l l * * * *",
            "0 L * * *",
            "0 MON * * *",
            "0 0 0",
            ", 4 * , * 0",
            "0 1, * * *",
            "*/0 * * * *",
            "5-3 * * * *",
            "- * * * *",
            "*/4 * * ,, * *",
            "0 0 * 1, *",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad} accepted");
        }
        for good in [
            "0 3 * * *",
            "*/5 * * * * *",
            "0 0 L * *",
            "0 0 * JAN 5#2",
            "@daily",
            "0,30 9-17/2 * * 1-5",
            "15 */6 * * *",
        ] {
            assert!(parse_schedule(good).is_ok(), "{good} refused");
        }
    }

    fn released_release(name: &str, created: &str, deployment: &str) -> ModelRelease {
        let mut r = fixtures::release();
        r.metadata.name = Some(name.into());
        r.metadata.creation_timestamp = Some(Time(ts(created)));
        r.spec.target.deployment = deployment.into();
        r.status = Some(crate::api::ModelReleaseStatus {
            phase: Phase::Released,
            image: Some(ImageRef {
                repository: "registry.example/evip/predictor".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
            }),
            ..Default::default()
        });
        r
    }

    #[test]
    fn the_newest_released_release_of_each_deployment_is_rescanned() {
        let p = fixtures::pipeline();
        let old = released_release("p-1", "2026-11-20T00:00:00Z", "predictor");
        let new = released_release("p-2", "2026-11-21T00:00:00Z", "predictor");
        let other = released_release("c-1", "2026-11-19T00:00:00Z", "canary");
        let mut running = released_release("p-3", "2026-11-22T00:00:00Z", "predictor");
        if let Some(s) = running.status.as_mut() {
            s.phase = Phase::Running;
        }
        let all = [old, new, other, running];
        let names: Vec<String> = released(&p, &all).iter().map(|r| r.name_any()).collect();
        assert_eq!(names, ["c-1", "p-2"]);

        let stage = audit_stage(&p);
        let tr = task_run(&all[1], &p, stage, ts("2026-11-23T03:00:00Z"));
        let labels = tr.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_RESCAN_OF).map(String::as_str), Some("p-2"));
        assert!(!labels.contains_key(LABEL_RELEASE));
        assert_eq!(
            labels.get(LABEL_STAGE).map(String::as_str),
            Some("dependency-audit")
        );
        assert!(tr.metadata.name.expect("name").starts_with("p-2-rescan-"));
        assert!(tr.spec.params.iter().any(|p| p.name == "IMAGE_DIGEST"));
    }

    #[test]
    fn only_rescan_taskruns_sluice_made_are_judged() {
        let p = fixtures::pipeline();
        let release = released_release("p-2", "2026-11-21T00:00:00Z", "predictor");
        let stage = audit_stage(&p);
        let at = ts("2026-11-23T03:00:00Z");
        let finished = |mut tr: TaskRun| {
            tr.status = Some(
                serde_json::from_value(serde_json::json!({
                    "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}],
                    "results": [{"name": "FINDINGS", "type": "string", "value": "{\"critical\":1}"}]
                }))
                .expect("status"),
            );
            tr
        };
        let ours = finished(task_run(&release, &p, stage, at));
        let now = ts("2026-11-23T04:00:00Z");
        let judged = latest_rescan(&p, &release, std::slice::from_ref(&ours), now);
        assert_eq!(
            judged.map(|r| r.stages[0].gate),
            Some(Some(Verdict::Blocked))
        );

        let mut forged = ours.clone();
        forged.metadata.owner_references = None;
        assert!(latest_rescan(&p, &release, &[forged], now).is_none());
        let mut renamed = ours;
        renamed.metadata.name = Some("p-2-rescan-custom".into());
        assert!(latest_rescan(&p, &release, &[renamed], now).is_none());
    }
}
