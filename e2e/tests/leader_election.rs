//! Two replicas, as the chart runs with `replicaCount: 2`: the second stands by while the first
//! holds the Lease, takes over when the first dies without releasing it (SIGKILL), and then runs
//! releases itself. Its own test binary: it kills the shared operator.

use std::{ops::ControlFlow, process::Command, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use sluice::api::Phase;
use sluice_e2e::{
    ENDED, Sim, TestNamespace, clean_sims, eventually, operator, repo_dir, state_dir,
};

const LEASE: &str = "sluice-controller";
const STANDBY_PORT: &str = "38081";

fn standby(action: &str) -> anyhow::Result<()> {
    let status = Command::new(repo_dir().join("e2e/operator"))
        .env("SLUICE_OPERATOR_INSTANCE", "standby")
        .env("SLUICE_OPERATOR_PORT", STANDBY_PORT)
        .arg(action)
        .status()?;
    anyhow::ensure!(status.success(), "e2e/operator {action} (standby) failed");
    Ok(())
}

fn pid(instance: &str) -> anyhow::Result<String> {
    let file = state_dir().join(format!("run/operator{instance}.pid"));
    Ok(std::fs::read_to_string(file)?.trim().to_string())
}

/// Stops the standby and brings the shared operator back, however the test ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = standby("stop");
        let _ = operator("start");
    }
}

async fn holder(leases: &Api<Lease>) -> anyhow::Result<String> {
    Ok(leases
        .get(LEASE)
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

async fn release_once(ns: &TestNamespace, name: &str, content: &str) -> anyhow::Result<Phase> {
    let digest = ns.push_image(content)?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release(name, &sims).await?;
    let r = ns
        .wait_phase(name, &ENDED, Duration::from_secs(120))
        .await?;
    Ok(r.status.map(|s| s.phase).unwrap_or_default())
}

#[tokio::test]
async fn a_standby_replica_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(sluice_e2e::client().await?, "default");
    let ns = TestNamespace::new("leader").await?;
    ns.with_signing_key("leader-pw")?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 30)
        .await?;

    let leader = pid("")?;
    let _restore = Restore;
    standby("start")?;
    let standby_pid = pid("-standby")?;
    // The standby is alive and ready (it serves probes) but does not lead.
    let ready = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{STANDBY_PORT}/readyz"),
        ])
        .status()?;
    assert!(ready.success(), "the standby must answer /readyz");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = holder(&leases).await?;
    assert!(
        first.ends_with(&format!("-{leader}")),
        "holder {first}, leader pid {leader}"
    );
    assert_eq!(
        release_once(&ns, "predictor-70", "leader-a").await?,
        Phase::Released
    );

    // The leader dies without giving the Lease up: the standby waits for it to expire (5 s).
    operator("kill")?;
    let took_over = std::time::Instant::now();
    eventually(
        "the standby holds the Lease",
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let h = holder(&leases).await?;
            Ok(if h.ends_with(&format!("-{standby_pid}")) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(h)
            })
        },
    )
    .await?;
    println!(
        "standby took over {:?} after the leader was killed",
        took_over.elapsed()
    );
    assert_eq!(
        release_once(&ns, "predictor-71", "leader-b").await?,
        Phase::Released,
        "the new leader runs releases"
    );
    Ok(())
}
