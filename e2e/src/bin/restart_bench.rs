//! How fast a restarted operator starts judging with many TaskRuns present: creates N finished
//! releases' worth of TaskRuns (cancelled before they start, so Tekton runs no pod for them),
//! SIGKILLs the operator, starts it again and times (a) until it leads and (b) until a new
//! release has its TaskRuns created and status written, and (c) its first verdict.
//! Prints the figures; fails only if the release is never judged.
//!
//! Usage (cluster and operator up, as after `KEEP_CLUSTER=1 e2e/run-tests`):
//!   cargo run -p sluice-e2e --bin restart_bench -- [TASKRUNS, default 2000]

use std::{
    ops::ControlFlow,
    time::{Duration, Instant},
};

use anyhow::Result;
use kube::api::PostParams;
use serde_json::json;
use sluice::{api::ModelRelease, tekton::TaskRun};
use sluice_e2e::{TestNamespace, clean_sims, eventually, operator};

#[tokio::main]
async fn main() -> Result<()> {
    sluice::install_crypto_provider();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let ns = TestNamespace::new("restartbench").await?;
    let api = ns.api::<TaskRun>();
    let t = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let tr: TaskRun = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": format!("old-{i:05}-unit-tests"),
                         "labels": {"sluice.dev/release": format!("old-{:04}", i / 5),
                                    "sluice.dev/stage": "unit-tests", "sluice.dev/pipeline": "predictor"}},
            "spec": {"taskRef": {"name": "pytest"}, "status": "TaskRunCancelled"}
        }))?;
        let api = api.clone();
        pending.push(tokio::spawn(async move {
            api.create(&PostParams::default(), &tr).await.map(|_| ())
        }));
        if pending.len() == 50 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    println!("restart-bench: created {n} TaskRuns in {:?}", t.elapsed());
    // Finished TaskRuns, as an operator restarting in a busy cluster finds them: wait for Tekton.
    eventually(
        "Tekton finished the old TaskRuns",
        Duration::from_secs(900),
        Duration::from_secs(2),
        async || {
            let done = api
                .list(&kube::api::ListParams::default())
                .await?
                .items
                .iter()
                .filter(|t| sluice::tekton::outcome(t).is_some())
                .count();
            Ok(if done >= n {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{done} of {n} finished"))
            })
        },
    )
    .await?;
    println!(
        "restart-bench: Tekton finished them after {:?}",
        t.elapsed()
    );

    operator("kill")?;
    let start = Instant::now();
    operator("start")?;
    let leases = ns.client.clone();
    let leading = eventually(
        "the new process leads",
        Duration::from_secs(120),
        Duration::from_millis(100),
        async || {
            let lease = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                leases.clone(),
                "default",
            )
            .get("sluice-controller")
            .await?;
            let holder = lease
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_default();
            let pid = std::fs::read_to_string(sluice_e2e::state_dir().join("run/operator.pid"))?;
            Ok(if holder.ends_with(pid.trim()) {
                ControlFlow::Break(start.elapsed())
            } else {
                ControlFlow::Continue(holder)
            })
        },
    )
    .await?;
    ns.release("bench-release", &clean_sims()).await?;
    let created = Instant::now();
    let releases = ns.api::<ModelRelease>();
    let first_write = eventually(
        "first status write",
        Duration::from_secs(120),
        Duration::from_millis(50),
        async || {
            let r = releases.get("bench-release").await?;
            Ok(match r.status.map(|s| s.stages.len()) {
                Some(n) if n > 0 => ControlFlow::Break(created.elapsed()),
                _ => ControlFlow::Continue(String::new()),
            })
        },
    )
    .await?;
    println!(
        "restart-bench: {n} TaskRuns present: new process leads {:.1} s after start (the dead holder's Lease must expire); a release created then has its TaskRuns and status in {:.2} s",
        leading.as_secs_f64(),
        first_write.as_secs_f64()
    );
    let first_verdict = eventually(
        "first verdict",
        Duration::from_secs(180),
        Duration::from_millis(50),
        async || {
            let r = releases.get("bench-release").await?;
            let judged = r
                .status
                .is_some_and(|s| s.stages.iter().any(|e| e.gate.is_some()));
            Ok(if judged {
                ControlFlow::Break(created.elapsed())
            } else {
                ControlFlow::Continue(String::new())
            })
        },
    )
    .await?;
    println!(
        "restart-bench: its first verdict {:.2} s after it was created (this includes Tekton running its TaskRun)",
        first_verdict.as_secs_f64()
    );
    Ok(())
}
