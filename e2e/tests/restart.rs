//! Killing the operator (SIGKILL) mid-release and starting it again creates no duplicate TaskRun,
//! and the release still finishes. Its own test binary, so no other test shares the outage.

use std::{collections::BTreeSet, ops::ControlFlow, time::Duration};

use sluice::api::Phase;
use sluice_e2e::{Sim, TestNamespace, clean_sims, eventually, operator};

#[tokio::test]
async fn sigkill_mid_release_creates_no_duplicate_taskrun() -> anyhow::Result<()> {
    let ns = TestNamespace::new("restart").await?;
    // Kill as soon as the first TaskRuns exist, before the build stage was created.
    let sims: Vec<(&str, Sim)> = clean_sims();
    ns.release("predictor-50", &sims).await?;
    // Polled often: the stages finish within a second or two.
    eventually(
        "a first TaskRun",
        Duration::from_secs(60),
        Duration::from_millis(20),
        async || {
            let n = ns.task_runs("predictor-50").await?.len();
            Ok(if n > 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue("none".into())
            })
        },
    )
    .await?;
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
