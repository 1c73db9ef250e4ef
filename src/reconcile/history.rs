//! `spec.history.keep`: the TaskRuns of finished releases beyond the newest `keep` are deleted
//! (their verdicts stay in each ModelRelease's status), and of each release's rescans only the
//! two latest scheduled runs are kept.

use std::collections::{BTreeMap, BTreeSet};

use kube::{Api, ResourceExt, api::DeleteParams};

use super::{Ctx, Error, api, rescan};
use crate::{
    api::{LABEL_PIPELINE, LABEL_RELEASE, ModelRelease, SecurePipeline},
    tekton::TaskRun,
};

/// Finished releases of `pipeline` older than its newest `keep` finished ones. The release each
/// Deployment runs (its newest Released one) never expires, whatever `keep` says: its TaskRuns
/// and its rescans are the evidence for what is live.
pub fn expired(pipeline: &SecurePipeline, releases: &[ModelRelease]) -> BTreeSet<String> {
    let Some(keep) = pipeline.spec.history.as_ref().map(|h| h.keep as usize) else {
        return BTreeSet::new();
    };
    let live: BTreeSet<String> = rescan::released(pipeline, releases)
        .into_iter()
        .map(ResourceExt::name_any)
        .collect();
    let name = pipeline.name_any();
    let mut finished: Vec<&ModelRelease> = releases
        .iter()
        .filter(|r| r.spec.pipeline_ref.name == name)
        .filter(|r| r.status.as_ref().is_some_and(|s| s.phase.is_final()))
        .collect();
    finished.sort_by_key(|r| {
        std::cmp::Reverse((
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.name_any(),
        ))
    });
    finished
        .iter()
        .skip(keep)
        .map(|r| r.name_any())
        .filter(|r| !live.contains(r))
        .collect()
}

/// Rescan TaskRuns older than the two latest scheduled runs of their release (the newest may still
/// be running while the one before it is the verdict on record), never those of the schedule a
/// release's status records (`on_record`: release name and Unix second), however far it lags.
pub fn stale_rescans(runs: &[TaskRun], on_record: &BTreeSet<(String, i64)>) -> Vec<String> {
    let at = |t: &TaskRun| -> Option<(String, i64)> {
        let of = t.labels().get(rescan::LABEL_RESCAN_OF)?.clone();
        let at = t.labels().get(rescan::LABEL_RESCAN_AT)?.parse().ok()?;
        Some((of, at))
    };
    let mut schedules: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for (of, when) in runs.iter().filter_map(at) {
        schedules.entry(of).or_default().insert(when);
    }
    let kept = |of: &str, when: i64| {
        on_record.contains(&(of.to_string(), when))
            || schedules
                .get(of)
                .is_some_and(|s| s.iter().rev().take(2).any(|k| *k == when))
    };
    runs.iter()
        .filter(|t| at(t).is_some_and(|(of, when)| !kept(&of, when)))
        .map(|t| t.name_any())
        .collect()
}

/// Deletes what `expired` and `stale_rescans` name.
pub async fn prune(
    ctx: &Ctx,
    pipeline: &SecurePipeline,
    releases: &[ModelRelease],
) -> Result<(), Error> {
    let ns = pipeline.namespace().unwrap_or_default();
    let api_: Api<TaskRun> = Api::namespaced(ctx.client.clone(), &ns);
    let runs = ctx
        .task_runs(&ns, LABEL_PIPELINE, &pipeline.name_any())
        .await?;
    let expired = expired(pipeline, releases);
    let mut doomed: Vec<String> = runs
        .iter()
        .filter(|t| {
            t.labels()
                .get(LABEL_RELEASE)
                .or_else(|| t.labels().get(rescan::LABEL_RESCAN_OF))
                .is_some_and(|r| expired.contains(r))
        })
        .map(|t| t.name_any())
        .collect();
    let on_record: BTreeSet<(String, i64)> = releases
        .iter()
        .filter_map(|r| {
            let at: jiff::Timestamp = r
                .status
                .as_ref()?
                .rescan
                .as_ref()?
                .scheduled_at
                .parse()
                .ok()?;
            Some((r.name_any(), at.as_second()))
        })
        .collect();
    doomed.extend(stale_rescans(&runs, &on_record));
    doomed.sort();
    doomed.dedup();
    for name in doomed {
        match api_.delete(&name, &DeleteParams::background()).await {
            Ok(_) => tracing::debug!(task_run = %name, namespace = %ns, "deleted by history.keep"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api("delete-taskrun")(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{
        api::{ModelReleaseStatus, Phase, pipeline::HistorySpec},
        fixtures,
    };

    fn release(name: &str, day: u32, phase: Phase) -> ModelRelease {
        let mut r = fixtures::release();
        r.metadata.name = Some(name.into());
        let created = format!("2026-11-{day:02}T00:00:00Z");
        r.metadata.creation_timestamp = Some(Time(created.parse().expect("time")));
        r.status = Some(ModelReleaseStatus {
            phase,
            ..ModelReleaseStatus::default()
        });
        r
    }

    #[test]
    fn finished_releases_beyond_keep_expire_and_running_ones_never() {
        let mut p = fixtures::pipeline();
        let all = [
            release("r1", 1, Phase::Released),
            release("r2", 2, Phase::Blocked),
            release("r3", 3, Phase::Running),
            release("r4", 4, Phase::RolledBack),
            release("r5", 5, Phase::Released),
        ];
        assert!(expired(&p, &all).is_empty(), "no history spec keeps all");
        p.spec.history = Some(HistorySpec { keep: 2 });
        assert_eq!(
            expired(&p, &all).into_iter().collect::<Vec<_>>(),
            ["r1", "r2"]
        );
    }

    #[test]
    fn the_release_a_deployment_runs_never_expires() {
        let mut p = fixtures::pipeline();
        p.spec.history = Some(HistorySpec { keep: 1 });
        let all = [
            release("r1", 1, Phase::Released),
            release("r2", 2, Phase::Released),
            release("r3", 3, Phase::Blocked),
        ];
        // keep: 1 keeps r3; r2 is what the Deployment runs, so its TaskRuns and rescans stay.
        assert_eq!(expired(&p, &all).into_iter().collect::<Vec<_>>(), ["r1"]);
    }

    #[test]
    fn only_the_two_latest_rescans_of_each_release_stay() {
        let run = |name: &str, of: &str, at: &str| {
            let mut t = TaskRun::new(name, Default::default());
            t.metadata.labels = Some(BTreeMap::from([
                (rescan::LABEL_RESCAN_OF.to_string(), of.to_string()),
                (rescan::LABEL_RESCAN_AT.to_string(), at.to_string()),
            ]));
            t
        };
        let runs = [
            run("a-1", "a", "100"),
            run("a-2", "a", "200"),
            run("a-3", "a", "300"),
            run("b-1", "b", "100"),
        ];
        assert_eq!(stale_rescans(&runs, &BTreeSet::new()), ["a-1"]);
        // The schedule a release's status records stays, however far behind it is.
        let recorded = BTreeSet::from([("a".to_string(), 100)]);
        assert!(stale_rescans(&runs, &recorded).is_empty());
    }
}
