//! When a release entered its phase (`status.phaseSince`), and the durations that follow from it:
//! time in each phase and time from creation to the end. Observed only once the status that
//! records the change is written, so a write that fails (and is retried) counts nothing twice.

use jiff::Timestamp;
use kube::ResourceExt;

use super::{Error, status_write::StatusWriter};
use crate::{
    api::{ModelRelease, ModelReleaseStatus, Phase},
    metrics::{Metrics, PhaseLabels},
};

/// Durations to observe once a status write succeeds.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// The phase left and the seconds spent in it.
    pub left: Option<(Phase, f64)>,
    /// The final phase reached and the seconds since the release was created.
    pub ended: Option<(Phase, f64)>,
}

/// Stamps `status.phase_since` with `now` when `status` moves to another phase than the one
/// `read` (the status this reconcile started from) holds, once per reconcile: a second write in
/// the same reconcile keeps the first stamp.
pub fn stamp(
    read: Option<&ModelReleaseStatus>,
    created: Option<Timestamp>,
    status: &mut ModelReleaseStatus,
    now: Timestamp,
) -> Observed {
    let (read_phase, read_since) =
        read.map_or((None, None), |r| (Some(r.phase), r.phase_since.clone()));
    if read_phase == Some(status.phase) || status.phase_since != read_since {
        return Observed::default();
    }
    status.phase_since = Some(now.to_string());
    let seconds_since =
        |t: Timestamp| (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0;
    let left = read_phase
        .zip(read_since.and_then(|s| s.parse::<Timestamp>().ok()))
        .map(|(phase, since)| (phase, seconds_since(since)));
    let ended_now = status.phase.is_final() && !read_phase.is_some_and(Phase::is_final);
    let ended = created
        .filter(|_| ended_now)
        .map(|c| (status.phase, seconds_since(c)));
    Observed { left, ended }
}

impl Observed {
    /// Records the durations.
    pub fn record(&self, metrics: &Metrics) {
        if let Some((phase, seconds)) = self.left {
            metrics
                .phase_duration
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .observe(seconds);
        }
        if let Some((phase, seconds)) = self.ended {
            metrics
                .release_duration
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .observe(seconds);
        }
    }
}

/// Writes `status` of `release` (as this reconcile read it) with its phase stamp, and records
/// the durations the write makes true.
pub async fn write(
    writer: &StatusWriter<ModelRelease>,
    release: &ModelRelease,
    status: &mut ModelReleaseStatus,
    now: Timestamp,
    metrics: &Metrics,
) -> Result<(), Error> {
    let created = release.creation_timestamp().map(|t| t.0);
    let observed = stamp(release.status.as_ref(), created, status, now);
    writer.write(status).await?;
    observed.record(metrics);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn status(phase: Phase, since: Option<&str>) -> ModelReleaseStatus {
        ModelReleaseStatus {
            phase,
            phase_since: since.map(str::to_string),
            ..ModelReleaseStatus::default()
        }
    }

    #[test]
    fn a_phase_change_is_stamped_once_and_measured_from_the_previous_stamp() {
        let read = status(Phase::Running, Some("2026-11-24T10:00:00Z"));
        let mut next = status(Phase::Signing, Some("2026-11-24T10:00:00Z"));
        let now = at("2026-11-24T10:00:30Z");
        let observed = stamp(
            Some(&read),
            Some(at("2026-11-24T09:59:00Z")),
            &mut next,
            now,
        );
        assert_eq!(observed.left, Some((Phase::Running, 30.0)));
        assert_eq!(observed.ended, None);
        assert_eq!(next.phase_since.as_deref(), Some("2026-11-24T10:00:30Z"));
        // A second write in the same reconcile (the rollout persists, then the end) keeps it.
        next.phase = Phase::RollingOut;
        let again = stamp(Some(&read), None, &mut next, at("2026-11-24T10:00:31Z"));
        assert_eq!(again, Observed::default());
        assert_eq!(next.phase_since.as_deref(), Some("2026-11-24T10:00:30Z"));
    }

    #[test]
    fn the_same_phase_is_not_stamped_and_an_end_is_measured_from_creation() {
        let read = status(Phase::Verifying, Some("2026-11-24T10:00:00Z"));
        let mut same = read.clone();
        assert_eq!(
            stamp(Some(&read), None, &mut same, at("2026-11-24T10:01:00Z")),
            Observed::default()
        );
        assert_eq!(same, read);
        let mut released = status(Phase::Released, Some("2026-11-24T10:00:00Z"));
        let observed = stamp(
            Some(&read),
            Some(at("2026-11-24T09:58:00Z")),
            &mut released,
            at("2026-11-24T10:01:00Z"),
        );
        assert_eq!(observed.ended, Some((Phase::Released, 180.0)));
        assert_eq!(observed.left, Some((Phase::Verifying, 60.0)));
    }

    #[test]
    fn a_status_without_a_stamp_gets_one_and_measures_nothing_it_cannot_know() {
        let mut first = status(Phase::Running, None);
        let observed = stamp(None, None, &mut first, at("2026-11-24T10:00:00Z"));
        assert_eq!(observed, Observed::default());
        assert!(first.phase_since.is_some());
        // Released → RolledBack (a rescan) is not a second end of the release.
        let read = status(Phase::Released, Some("2026-11-24T10:00:00Z"));
        let mut back = status(Phase::RolledBack, Some("2026-11-24T10:00:00Z"));
        let observed = stamp(
            Some(&read),
            Some(at("2026-11-24T09:00:00Z")),
            &mut back,
            at("2026-11-24T11:00:00Z"),
        );
        assert_eq!(observed.ended, None);
        assert_eq!(observed.left, Some((Phase::Released, 3600.0)));
    }
}
