//! The operator's own image — built from `Containerfile` by buildah (`e2e/node/operator-image.sh`,
//! run by `e2e/run-tests` before any test's clock starts) — installed by the Helm chart as a real
//! pod on the real node, under the `restricted` Pod Security Standard and a read-only root
//! filesystem, takes a release to `Released` through the in-cluster API as the chart's
//! ServiceAccount and signs in the registry from inside the pod network.
//! The release's stages are scripted on the kwok node (`sim.sluice.dev`): this proves the
//! operator's container, not the stages (e2e/tests/real_node.rs runs those for real).
//! Its own test binary: it swaps the shared operator for the chart's pod.

use std::{ops::ControlFlow, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod};
use kube::api::{Api, ListParams};
use sluice::api::Phase;
use sluice_e2e::{
    ENDED, POLL, REPOSITORY, Sim, TestNamespace,
    chart::{AdminOperatorAway, ChartNamespace, render_chart, run_tool},
    clean_sims, client, eventually,
    real_node::NODE_NAME,
    state_dir,
};

const TIMEOUT: Duration = Duration::from_secs(180);
/// The local registry as pods on the real node reach it (e2e/node/node relays the bridge address).
const BRIDGE_REGISTRY: &str = "10.244.0.1:35000";

/// The image `e2e/node/operator-image.sh` pushed: (repository, digest).
fn operator_image() -> anyhow::Result<(String, String)> {
    let path = state_dir().join("operator-image");
    let line = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (e2e/run-tests writes it with e2e/node/operator-image.sh)",
            path.display()
        )
    })?;
    let reference = line
        .trim()
        .strip_prefix("OPERATOR_IMAGE=")
        .ok_or_else(|| anyhow::anyhow!("{}: {line:?}", path.display()))?;
    let (repository, digest) = reference
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("not pinned by digest: {reference}"))?;
    Ok((repository.to_string(), digest.to_string()))
}

/// The chart's values for a pod on the real node running the image under test.
fn values(repository: &str, digest: &str) -> String {
    format!(
        "image: {{repository: \"{repository}\", digest: \"{digest}\"}}\n\
         insecureRegistries: [\"{BRIDGE_REGISTRY}\"]\n\
         nodeSelector: {{kubernetes.io/hostname: {NODE_NAME}}}\n\
         tolerations: [{{key: sluice.dev/real-node, operator: Exists, effect: NoSchedule}}]\n"
    )
}

#[tokio::test]
async fn the_operator_image_runs_as_a_restricted_pod_on_the_real_node_and_completes_a_release()
-> anyhow::Result<()> {
    let (repository, digest) = operator_image()?;
    // Declared first, dropped last: the shared operator comes back after the chart's is gone.
    let _away = AdminOperatorAway::stop()?;
    let chart = ChartNamespace::new("operator-pod").await?;
    let values_file = state_dir().join(format!("{}-values.yaml", chart.name));
    std::fs::write(&values_file, values(&repository, &digest))?;
    let rendered = render_chart(
        &chart.name,
        false,
        &["-f", &values_file.display().to_string()],
    )?;
    run_tool("kubectl", &["apply", "-f", "-"], Some(&rendered))?;

    let client = client().await?;
    let pod = the_operator_pod_ready(&client, &chart.name, &digest).await?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &chart.name);
    eventually("the pod holds the Lease", TIMEOUT, POLL, async || {
        let holder = leases
            .get_opt("sluice")
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        Ok(if holder.as_deref() == Some(name.as_str()) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("holder {holder:?}"))
        })
    })
    .await?;

    let released = release_through_the_pod().await;
    let logs = run_tool("kubectl", &["-n", &chart.name, "logs", &name], None)?;
    released?;
    assert!(
        logs.contains("predictor-61"),
        "the pod's log names no reconcile of the test release:\n{logs}"
    );
    let _ = std::fs::remove_file(&values_file);
    // Gone before the shared operator returns, so that the two never run at once.
    run_tool(
        "kubectl",
        &[
            "-n",
            &chart.name,
            "delete",
            "deployment",
            "sluice",
            "--wait",
        ],
        None,
    )?;
    run_tool(
        "kubectl",
        &[
            "-n",
            &chart.name,
            "wait",
            "--for=delete",
            "pod",
            &name,
            "--timeout=60s",
        ],
        None,
    )
    .or_else(|e| {
        if e.to_string().contains("NotFound") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

/// Waits for the chart's pod to be Ready on the real node, and checks what it runs and how.
async fn the_operator_pod_ready(
    client: &kube::Client,
    namespace: &str,
    digest: &str,
) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    eventually(
        "the chart's pod Ready on the real node",
        TIMEOUT,
        POLL,
        async || {
            let available = deployments
                .get("sluice")
                .await?
                .status
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            let listed = pods.list(&ListParams::default()).await?;
            let phases: Vec<_> = listed
                .items
                .iter()
                .map(|p| {
                    (
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        p.status.as_ref().and_then(|s| s.container_statuses.clone()),
                    )
                })
                .collect();
            Ok(if available == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("available {available}, pods {phases:?}"))
            })
        },
    )
    .await?;
    let pod = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .ok_or_else(|| anyhow::anyhow!("no pod"))?;
    let spec = pod.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(NODE_NAME),
        "not on the real node"
    );
    let container = &spec.containers[0];
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let status = pod.status.clone().unwrap_or_default();
    let running = status.container_statuses.unwrap_or_default();
    assert!(
        running
            .iter()
            .any(|c| c.ready && c.image_id.ends_with(digest)),
        "the pod does not run {digest}: {running:?}"
    );
    Ok(pod)
}

/// A release in a namespace of its own whose pipeline's repository is the registry's bridge
/// address: the operator pod resolves, signs and verifies there.
async fn release_through_the_pod() -> anyhow::Result<()> {
    let ns = TestNamespace::new("operator-pod").await?;
    ns.with_signing_key("pod-pw")?;
    let repository = format!("{BRIDGE_REGISTRY}/evip/predictor");
    ns.patch_pipeline(&format!(
        r#"{{"spec":{{"image":{{"repository":"{repository}"}}}}}}"#
    ))?;
    ns.target(&format!("{repository}:stable"), 30).await?;
    // Pushed through loopback; the same registry serves it as {BRIDGE_REGISTRY}.
    let digest = ns.push_image("operator-pod")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built_in(&repository, &digest));
    ns.release("predictor-61", &sims).await?;
    let r = ns.wait_phase("predictor-61", &ENDED, TIMEOUT).await?;
    let status = r.status.unwrap_or_default();
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    assert_eq!(ns.target_image().await?, format!("{repository}@{digest}"));
    // The signature the pod pushed is in the registry.
    let signature_tag = format!("{}.sig", digest.replace(':', "-"));
    let tags = run_tool("crane", &["ls", REPOSITORY], None)?;
    assert!(
        tags.lines().any(|t| t == signature_tag),
        "no {signature_tag} among {tags}"
    );
    Ok(())
}
