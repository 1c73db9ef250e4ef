//! The parts of the e2e cluster later stages rely on: Deployments rolled out by the real
//! controller-manager and scheduler onto the kwok node, the two OCI registries, and the
//! operator's metrics endpoint.

use std::{ops::ControlFlow, process::Command, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use serde_json::json;
use sluice::api::Phase;
use sluice_e2e::{ENDED, POLL, Sim, TestNamespace, clean_sims, eventually, state_dir};

fn status(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_auth_registry_refuses_anonymous_and_wrong_credentials() -> anyhow::Result<()> {
    let addr = std::fs::read_to_string(state_dir().join("auth-registry"))?;
    let url = format!("http://{}/v2/", addr.trim());
    assert_eq!(status(&[&url])?, "401");
    assert_eq!(status(&["-u", "sluice:wrong", &url])?, "401");
    assert_eq!(status(&["-u", "sluice:e2e-only-password", &url])?, "200");
    Ok(())
}

#[test]
fn the_plain_registry_serves_anonymously() -> anyhow::Result<()> {
    let addr = std::fs::read_to_string(state_dir().join("registry"))?;
    assert_eq!(status(&[&format!("http://{}/v2/", addr.trim())])?, "200");
    Ok(())
}

#[tokio::test]
async fn a_deployment_becomes_available_on_the_kwok_node() -> anyhow::Result<()> {
    let ns = TestNamespace::new("deploy").await?;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "predictor"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "predictor"}},
            "template": {
                "metadata": {"labels": {"app": "predictor"}},
                "spec": {"containers": [{"name": "server", "image": "127.0.0.1:35000/evip/predictor:v1"}]}
            }
        }
    }))?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await?;
    let api = ns.api::<Deployment>();
    eventually(
        "2 available replicas",
        Duration::from_secs(60),
        POLL,
        async || {
            let d = api.get("predictor").await?;
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            Ok(if available == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{:?}", d.status))
            })
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn metrics_report_verdicts_taskruns_and_phases() -> anyhow::Result<()> {
    let ns = TestNamespace::new("metrics").await?;
    ns.release("predictor-60", &clean_sims()).await?;
    ns.wait_phase("predictor-60", &[Phase::Signing], Duration::from_secs(90))
        .await?;
    let port = std::env::var("SLUICE_OPERATOR_PORT").unwrap_or_else(|_| "38080".into());
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            r#"sluice_gate_verdicts_total{stage="build",verdict="Passed",category="Passed"}"#
        ),
        "{text}"
    );
    assert!(text.contains("sluice_taskruns_created_total"), "{text}");
    assert!(
        text.contains(r#"sluice_reconciles_total{controller="modelrelease"}"#),
        "{text}"
    );
    let signing = text
        .lines()
        .find(|l| l.starts_with(r#"sluice_releases{phase="Signing"}"#))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(0);
    assert!(signing >= 1, "{text}");
    Ok(())
}

fn metrics_text() -> anyhow::Result<String> {
    let port = std::env::var("SLUICE_OPERATOR_PORT").unwrap_or_else(|_| "38080".into());
    let out = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()?;
    anyhow::ensure!(out.status.success(), "curl /metrics failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the sample line starting with `prefix` (name and labels), 0 when absent.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// Stage outcomes are scripted (`sim.sluice.dev/*`): this proves the metrics and timestamps, not
/// the stages.
#[tokio::test]
async fn a_release_is_timed_by_stage_phase_and_registry_request() -> anyhow::Result<()> {
    let ns = TestNamespace::new("timing").await?;
    ns.with_signing_key("timing-pw")?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 60)
        .await?;
    let digest = ns.push_image("timing")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-62", &sims).await?;
    let r = ns
        .wait_phase("predictor-62", &ENDED, Duration::from_secs(120))
        .await?;
    let status = r.status.unwrap_or_default();
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    // Entered Released after it was created.
    let since: jiff::Timestamp = status.phase_since.as_deref().unwrap_or_default().parse()?;
    let created = r
        .metadata
        .creation_timestamp
        .map(|t| t.0)
        .unwrap_or_default();
    assert!(
        since >= created,
        "phaseSince {since} before creation {created}"
    );
    // The signature manifest recorded is the one the registry holds.
    let signature = status.signature.expect("signature");
    let crane = sluice_e2e::tool("crane")?;
    let held = sluice_e2e::run_program(&crane, &["digest", &signature.reference], None)?;
    assert_eq!(signature.manifest_digest.as_deref(), Some(held.trim()));

    let text = metrics_text()?;
    for stage in ["unit-tests", "dependency-audit", "build"] {
        let count = sample(
            &text,
            &format!(r#"sluice_stage_duration_seconds_count{{stage="{stage}"}}"#),
        );
        assert!(count >= 1.0, "stage {stage} timed: {text}");
    }
    // Signing passes within one reconcile when the registry answers: it is never left as such.
    for phase in ["Running", "RollingOut", "Verifying"] {
        let count = sample(
            &text,
            &format!(r#"sluice_phase_duration_seconds_count{{phase="{phase}"}}"#),
        );
        assert!(count >= 1.0, "time in {phase}: {text}");
    }
    assert!(
        sample(
            &text,
            r#"sluice_release_duration_seconds_count{phase="Released"}"#
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"sluice_registry_request_duration_seconds_count{operation="push",result="ok"}"#
        ) >= 2.0,
        "a signature and an attestation pushed: {text}"
    );
    assert!(text.contains("sluice_signing_queue_depth "), "{text}");
    assert!(
        text.contains("sluice_signing_wait_seconds_count "),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_workqueue_depth{controller="modelrelease"}"#),
        "{text}"
    );
    Ok(())
}

/// The addresses the cluster's and the real node's components may listen on: loopback and the
/// node's bridge (pods reach the node's services there), never every interface.
const ALLOWED_LISTEN: [&str; 3] = ["127.0.0.1:", "[::1]:", "10.244.0.1:"];

#[test]
fn every_component_listens_on_loopback_or_the_node_bridge_only() -> anyhow::Result<()> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(state_dir().join("run"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pid") {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            pids.push((std::fs::read_to_string(&path)?.trim().to_string(), name));
        }
    }
    assert!(pids.iter().any(|(_, n)| n == "kube-apiserver"), "{pids:?}");
    let out = Command::new("ss").args(["-ltnupH"]).output()?;
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut checked = 0;
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(local) = fields.get(4) else { continue };
        for (pid, name) in &pids {
            if line.contains(&format!("pid={pid},")) {
                checked += 1;
                assert!(
                    ALLOWED_LISTEN.iter().any(|a| local.starts_with(a)),
                    "{name} (pid {pid}) listens on {local}: {line}"
                );
            }
        }
    }
    // etcd, the API server, the controller-manager, the scheduler, kwok, the registries at least.
    assert!(
        checked >= 7,
        "only {checked} listeners of ours found in:\n{listing}"
    );
    Ok(())
}
