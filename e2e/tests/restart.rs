//! Killing the operator (SIGKILL) mid-release and starting it again creates no duplicate TaskRun,
//! and the release still finishes. Its own test binary, so no other test shares the outage.

use std::{collections::BTreeSet, time::Duration};

use sluice::api::Phase;
use sluice_e2e::{Sim, TestNamespace, clean_sims, operator};

#[tokio::test]
async fn sigkill_mid_release_creates_no_duplicate_taskrun() -> anyhow::Result<()> {
    let ns = TestNamespace::new("restart").await?;
    // Kill as soon as the first TaskRuns exist, before the build stage was created.
    let sims: Vec<(&str, Sim)> = clean_sims();
    ns.release("predictor-50", &sims).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ns.task_runs("predictor-50").await?.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no TaskRun created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    operator("kill")?;
    let during = ns.task_runs("predictor-50").await?.len();
    operator("start")?;
    let r = ns
        .wait_phase(
            "predictor-50",
            &[Phase::Signing, Phase::Blocked],
            Duration::from_secs(90),
        )
        .await?;
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Signing));
    let trs = ns.task_runs("predictor-50").await?;
    let stages: BTreeSet<String> = trs
        .iter()
        .filter_map(|t| {
            t.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("sluice.dev/stage"))
                .cloned()
        })
        .collect();
    assert_eq!(
        trs.len(),
        4,
        "TaskRuns after the restart: {} (had {during} when killed)",
        trs.len()
    );
    assert_eq!(stages.len(), 4, "one TaskRun per stage: {stages:?}");
    Ok(())
}
