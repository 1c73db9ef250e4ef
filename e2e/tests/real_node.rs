//! The real-node group: the eVIP example's stages run for real on the real node (kubelet,
//! containerd, runc; `e2e/node/node`). Nothing here is scripted: no sim.sluice.dev annotation is
//! set, every verdict comes from what pytest, the PyPA audit, Bandit, coverage.py + ruff, buildah
//! and wapiti printed, and the rollout is of the server that buildah built.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::ListParams;
use serde_json::{Value, json};
use sluice::{
    api::{ModelRelease, Phase, release::Verdict},
    tekton::TaskRun,
};
use sluice_e2e::{
    ENDED, TestNamespace,
    real_node::{NODE_NAME, commit_change},
    repo_dir, tool,
};

/// A whole release on the real node: four parallel stages, a build, a rollout and a DAST scan.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

fn stage<'a>(r: &'a ModelRelease, name: &str) -> &'a sluice::api::release::StageStatus {
    r.status
        .as_ref()
        .and_then(|s| s.stages.iter().find(|e| e.name == name))
        .unwrap_or_else(|| panic!("no stage {name}"))
}

fn revision<'a>(revisions: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    revisions
        .get(name)
        .unwrap_or_else(|| panic!("e2e/node/example printed no {name}: {revisions:?}"))
}

async fn release(ns: &TestNamespace, name: &str, revision: &str) -> anyhow::Result<()> {
    ns.release_with(name, &[], json!({"revision": revision}))
        .await?;
    Ok(())
}

/// Every TaskRun of the release ran its pod on the real node.
async fn ran_on_the_real_node(ns: &TestNamespace, release: &str) -> anyhow::Result<usize> {
    let runs = ns.task_runs(release).await?;
    for tr in &runs {
        let name = tr.metadata.name.clone().unwrap_or_default();
        let pod_name = tr
            .status
            .as_ref()
            .and_then(|s| s.pod_name.clone())
            .with_context(|| format!("TaskRun {name} has no pod"))?;
        let pod = ns.api::<Pod>().get(&pod_name).await?;
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert_eq!(node, NODE_NAME, "TaskRun {name} ran on {node}");
    }
    Ok(runs.len())
}

#[tokio::test]
async fn the_example_is_released_for_real_and_an_image_without_its_model_is_rolled_back()
-> anyhow::Result<()> {
    let (ns, revisions) = TestNamespace::on_real_node("real").await?;
    // Bound to the model fitted and pushed as an artifact by e2e/node/example.
    let model = revision(&revisions, "MODEL").to_string();
    let (model_repo, model_digest) = model.split_once('@').expect("MODEL is repository@digest");
    ns.release_with(
        "predictor-42",
        &[],
        json!({"revision": revision(&revisions, "CLEAN"),
               "model": {"name": "ev-load-15min", "version": "42",
                         "artifact": {"repository": model_repo, "digest": model_digest}}}),
    )
    .await?;
    let r = ns
        .wait_phase("predictor-42", &ENDED, RELEASE_TIMEOUT)
        .await?;
    let status = r.status.clone().expect("status");
    assert_eq!(status.phase, Phase::Released, "{status:?}");
    assert!(
        r.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("sim.sluice.dev/")),
        "a real release carries no scripted outcome"
    );
    assert_eq!(ran_on_the_real_node(&ns, "predictor-42").await?, 6);

    // pytest's own count: at least one test per test function of the app.
    let functions = std::fs::read_dir(repo_dir().join("examples/evip/app/tests"))?
        .map(|e| std::fs::read_to_string(e?.path()))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .map(|text| text.matches("\ndef test_").count())
        .sum::<usize>();
    let tests = stage(&r, "unit-tests").tests.clone().expect("test counts");
    assert!(
        tests.successes as usize >= functions && functions > 0,
        "{tests:?} for {functions} test functions"
    );
    assert_eq!(tests.failures, 0);
    let quality = stage(&r, "code-quality").quality.clone().expect("quality");
    assert!(
        quality.coverage > 0.0 && quality.coverage <= 100.0,
        "{quality:?}"
    );
    assert_eq!(
        stage(&r, "dast").gate,
        Some(Verdict::Passed),
        "{:?}",
        stage(&r, "dast")
    );

    // The digest buildah pushed is in the registry, signed (the cosign CLI verifies it), and
    // running on the real node behind the Service, which answers /predict.
    let image = status.image.clone().expect("image");
    let reference = format!("{}@{}", image.repository, image.digest);
    let crane = std::process::Command::new(tool("crane")?)
        .args(["manifest", &reference])
        .output()?;
    assert!(crane.status.success(), "{reference} is not in the registry");
    let verify = std::process::Command::new(tool("cosign")?)
        .env("KUBECONFIG", sluice_e2e::state_dir().join("kubeconfig"))
        .args([
            "verify",
            "--key",
            &format!("k8s://{}/cosign-key", ns.name),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            &reference,
        ])
        .output()?;
    assert!(
        verify.status.success(),
        "cosign verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(ns.target_image().await?, reference);
    let pods = ns.service_pods("predictor").await?;
    let ready: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().all(|c| c.ready))
        })
        .collect();
    assert!(!ready.is_empty(), "no ready server pod: {pods:?}");
    for pod in &ready {
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(NODE_NAME)
        );
    }
    let answer: Value = serde_json::from_str(
        &ns.post_to_service("predictor", 8080, "/predict", r#"{"site": "mall-west", "readings": [{"timestamp": "2024-09-10T12:00:00Z", "kw": 20}]}"#)
            .await?,
    )?;
    assert_eq!(answer["site"], "mall-west", "{answer}");
    assert!(answer["kw"].is_number(), "{answer}");
    // The server loaded the model by the digest Sluice handed it, not the data in its image.
    let health: Value =
        serde_json::from_str(&ns.get_from_service("predictor", 8080, "/healthz").await?)?;
    assert_eq!(health["model"], model.as_str(), "{health}");
    assert_eq!(model_env(&ns).await?.as_deref(), Some(model.as_str()));

    // An image without the model's data: every gate passes, the server never becomes ready,
    // Sluice rolls the Deployment back to exactly what predictor-42 released.
    release(&ns, "predictor-45", revision(&revisions, "NO_MODEL")).await?;
    let r = ns
        .wait_phase("predictor-45", &ENDED, RELEASE_TIMEOUT)
        .await?;
    let status = r.status.clone().expect("status");
    assert_eq!(status.phase, Phase::RolledBack, "{status:?}");
    assert_ne!(
        status.image.as_ref().map(|i| &i.digest),
        Some(&image.digest)
    );
    assert_eq!(ns.target_image().await?, reference);
    // predictor-45 bound no model (its apply dropped the variable); the rollback restored it.
    assert_eq!(model_env(&ns).await?.as_deref(), Some(model.as_str()));
    let dep = ns.api::<Deployment>().get("predictor").await?;
    assert_eq!(dep.status.and_then(|s| s.available_replicas), Some(2));
    Ok(())
}

/// SLUICE_MODEL_REF on the server container of the Deployment.
async fn model_env(ns: &TestNamespace) -> anyhow::Result<Option<String>> {
    let dep = ns.api::<Deployment>().get("predictor").await?;
    Ok(dep
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().find(|c| c.name == "server"))
        .and_then(|c| c.env)
        .and_then(|env| env.into_iter().find(|e| e.name == "SLUICE_MODEL_REF"))
        .and_then(|e| e.value))
}

#[tokio::test]
async fn a_change_to_the_app_is_blocked_by_the_stage_that_really_found_it() -> anyhow::Result<()> {
    let (ns, _) = TestNamespace::on_real_node("change").await?;
    let branch = |what: &str| format!("{what}-{}", ns.name);
    // A test that fails: the server answers 404 for an unknown site, the test wants 200.
    let failing = commit_change(&branch("failing-test"), |dir| {
        std::fs::write(
            dir.join("tests/test_regression.py"),
            "from predictor.app import create_app\nfrom predictor.model import train\n\n\n\
             def test_an_unknown_site_is_served():\n    client = create_app(train()).test_client()\n    \
             r = client.post(\"/predict\", json={\"site\": \"nowhere\", \"readings\": [{\"timestamp\": \"2024-09-10T12:00:00Z\", \"kw\": 1}]})\n    \
             assert r.status_code == 200\n",
        )?;
        Ok(())
    })?;
    // A helper that runs a shell command built from its argument.
    let shell = commit_change(&branch("shell"), |dir| {
        std::fs::write(
            dir.join("predictor/housekeeping.py"),
            "import subprocess\n\n\ndef disk_usage(path):\n    return subprocess.run(f\"du -sh {path}\", shell=True, capture_output=True).stdout\n",
        )?;
        Ok(())
    })?;
    // An old pin with published advisories.
    let pin = commit_change(&branch("old-pin"), |dir| {
        let path = dir.join("requirements.txt");
        let text = std::fs::read_to_string(&path)?.replace("werkzeug==3.0.4", "werkzeug==2.2.2");
        anyhow::ensure!(
            text.contains("werkzeug==2.2.2"),
            "requirements.txt no longer pins werkzeug"
        );
        std::fs::write(path, text)?;
        Ok(())
    })?;
    for (name, rev) in [
        ("failing-test", &failing),
        ("shell", &shell),
        ("old-pin", &pin),
    ] {
        release(&ns, name, rev).await?;
    }
    let r = ns
        .wait_phase("failing-test", &ENDED, RELEASE_TIMEOUT)
        .await?;
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Blocked));
    let unit = stage(&r, "unit-tests");
    assert_eq!(unit.gate, Some(Verdict::Blocked), "{unit:?}");
    assert!(
        unit.tests.as_ref().is_some_and(|t| t.failures == 1),
        "pytest's count: {unit:?}"
    );

    let r = ns.wait_phase("shell", &ENDED, RELEASE_TIMEOUT).await?;
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Blocked));
    let sast = stage(&r, "sast");
    assert_eq!(sast.gate, Some(Verdict::Blocked), "{sast:?}");
    assert!(
        sast.reason
            .as_deref()
            .is_some_and(|why| why.contains("housekeeping.py")),
        "{sast:?}"
    );

    let r = ns.wait_phase("old-pin", &ENDED, RELEASE_TIMEOUT).await?;
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::Blocked));
    let audit = stage(&r, "dependency-audit");
    assert_eq!(audit.gate, Some(Verdict::Blocked), "{audit:?}");
    assert!(
        audit
            .reason
            .as_deref()
            .is_some_and(|why| why.contains("PYSEC-")),
        "{audit:?}"
    );
    // None of them was built.
    let built = ns
        .api::<TaskRun>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|tr| {
            tr.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-build"))
        })
        .count();
    assert_eq!(built, 0);
    Ok(())
}
