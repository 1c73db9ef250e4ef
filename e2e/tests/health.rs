//! GitOps health: real ModelRelease and SecurePipeline objects from this cluster, in each state, read
//! by kstatus (the library Flux's health checks use) and by the chart's Argo CD Lua health scripts
//! (run with gopher-lua, the interpreter Argo CD embeds).

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, ensure};
use serde_json::json;
use sluice::api::{ModelRelease, Phase, SecurePipeline};
use sluice_e2e::{Sim, TestNamespace, clean_sims, repo_dir};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `sluice-checks` and returns file stem -> (status, message).
fn run_checks(
    args: &[&str],
    files: &[PathBuf],
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let out = Command::new(sluice_e2e::checks_bin()?)
        .args(args)
        .args(files)
        .output()?;
    ensure!(
        out.status.success(),
        "sluice-checks {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(3, '\t');
        let file = PathBuf::from(parts.next().unwrap_or_default());
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("file")?
            .to_string();
        seen.insert(
            stem,
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            ),
        );
    }
    Ok(seen)
}

#[tokio::test]
async fn kstatus_and_the_argo_cd_lua_read_real_objects_as_flux_and_argo_would() -> anyhow::Result<()>
{
    let ns = TestNamespace::new("health").await?;
    ns.with_signing_key("pw")?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 30)
        .await?;
    let digest = ns.push_image("health")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("released", &sims).await?;
    ns.wait_phase("released", &[Phase::Released], TIMEOUT)
        .await?;
    let mut bad = clean_sims();
    bad[1] = ("dependency-audit", Sim::findings(1, 0, 0, 0));
    ns.release("blocked", &bad).await?;
    ns.wait_phase("blocked", &[Phase::Blocked], TIMEOUT).await?;
    let other = ns.push_image("health-approve")?;
    sims[3] = ("build", Sim::built(&other));
    ns.release_with("approval", &sims, json!({"approval": "manual"}))
        .await?;
    ns.wait_phase("approval", &[Phase::AwaitingApproval], TIMEOUT)
        .await?;
    ns.release_with("orphan", &sims, json!({"pipelineRef": {"name": "missing"}}))
        .await?;
    ns.release_condition("orphan", "Stalled", "True").await?;
    let api = ns.api::<ModelRelease>();

    let dir = std::env::temp_dir().join(format!("{}-objects", ns.name));
    std::fs::create_dir_all(&dir)?;
    let mut releases = Vec::new();
    for name in ["released", "blocked", "approval", "orphan"] {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&api.get(name).await?)?)?;
        releases.push(path);
    }
    // One that the operator has not seen yet: its generation is ahead of any status.
    let mut fresh = serde_json::to_value(api.get("released").await?)?;
    fresh["metadata"]["generation"] = json!(2);
    let path = dir.join("fresh.json");
    std::fs::write(&path, serde_json::to_vec(&fresh)?)?;
    releases.push(path);
    let pipeline = dir.join("pipeline.json");
    std::fs::write(
        &pipeline,
        serde_json::to_vec(&ns.api::<SecurePipeline>().get("predictor").await?)?,
    )?;

    let mut all = releases.clone();
    all.push(pipeline.clone());
    let kstatus = run_checks(&["kstatus"], &all)?;
    let status = |k: &str| kstatus.get(k).map(|s| s.0.as_str());
    assert_eq!(status("released"), Some("Current"), "{kstatus:?}");
    assert_eq!(status("blocked"), Some("Failed"), "{kstatus:?}");
    assert_eq!(status("approval"), Some("InProgress"), "{kstatus:?}");
    assert_eq!(status("orphan"), Some("Failed"), "{kstatus:?}");
    assert_eq!(status("fresh"), Some("InProgress"), "{kstatus:?}");
    assert_eq!(status("pipeline"), Some("Current"), "{kstatus:?}");

    let lua = repo_dir().join("charts/sluice/health/modelrelease.lua");
    let argo = run_checks(&["lua", lua.to_str().context("path")?], &releases)?;
    let health = |k: &str| argo.get(k).map(|s| s.0.as_str());
    assert_eq!(health("released"), Some("Healthy"), "{argo:?}");
    assert_eq!(health("blocked"), Some("Degraded"), "{argo:?}");
    assert!(argo["blocked"].1.contains("1 critical"), "{argo:?}");
    assert_eq!(health("approval"), Some("Suspended"), "{argo:?}");
    assert_eq!(health("orphan"), Some("Degraded"), "{argo:?}");
    assert_eq!(health("fresh"), Some("Progressing"), "{argo:?}");
    let lua = repo_dir().join("charts/sluice/health/securepipeline.lua");
    let argo = run_checks(&["lua", lua.to_str().context("path")?], &[pipeline])?;
    assert_eq!(
        argo.get("pipeline").map(|s| s.0.as_str()),
        Some("Healthy"),
        "{argo:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
