//! The Helm chart: lints, its rendering passes server-side dry-run on the real API server, its pod is
//! admitted under the `restricted` Pod Security Standard, and a release completes with the operator
//! authenticated as the chart's ServiceAccount (a token for it), so a missing RBAC rule fails here.
//! Its own test binary: it swaps the shared operator for one running with the chart's credentials.

use std::{ops::ControlFlow, process::Command, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use sluice::api::Phase;
use sluice_e2e::{
    ENDED, POLL, REPOSITORY, Sim, TestNamespace,
    chart::{AdminOperatorAway, ChartNamespace, render_chart as render, run_tool as run},
    clean_sims, eventually, repo_dir, state_dir, tool,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Server-side dry-run of `manifests` on the e2e API server.
fn dry_run(manifests: &str) -> anyhow::Result<()> {
    run(
        "kubectl",
        &["apply", "--dry-run=server", "--server-side", "-f", "-"],
        Some(manifests),
    )
    .map(drop)
}

#[tokio::test]
async fn the_chart_installs_under_restricted_and_its_rbac_suffices_for_a_release()
-> anyhow::Result<()> {
    let lint = run("helm", &["lint", "--strict", "charts/sluice"], None)?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let chart = ChartNamespace::new("chart").await?;
    let ns = chart.name.as_str();

    // Everything the chart renders, CRDs included, passes the API server's own validation; with
    // a standby replica that includes a PodDisruptionBudget.
    let rendered = render(ns, true, &[])?;
    dry_run(&rendered)?;
    assert!(!rendered.contains("kind: PodDisruptionBudget"));
    let two = render(ns, false, &["--set", "replicaCount=2"])?;
    assert!(two.contains("kind: PodDisruptionBudget"), "{two}");
    dry_run(&two)?;
    let three = render(ns, false, &["--set", "replicaCount=3"]);
    assert!(
        three.is_err_and(|e| e.to_string().contains("replicaCount")),
        "values.schema.json refuses 3 replicas"
    );

    // The restricted policy is enforced here: a privileged pod is refused...
    let refused = run(
        "kubectl",
        &[
            "-n",
            ns,
            "run",
            "privileged",
            "--image=busybox",
            "--overrides={\"spec\":{\"containers\":[{\"name\":\"privileged\",\"image\":\"busybox\",\"securityContext\":{\"privileged\":true}}]}}",
        ],
        None,
    );
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("violates PodSecurity")),
        "{refused:?}"
    );
    // ...and the chart's pod is admitted and becomes Ready.
    run(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&render(ns, false, &[])?),
    )?;
    let deployments: Api<Deployment> = Api::namespaced(sluice_e2e::client().await?, ns);
    eventually(
        "the chart's Deployment available",
        TIMEOUT,
        POLL,
        async || {
            let d = deployments.get("sluice").await?;
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            Ok(if available == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{:?}", d.status))
            })
        },
    )
    .await?;

    assert_least_privilege(ns)?;
    release_as_the_chart_service_account(ns).await
}

/// What the ServiceAccount may and may not do.
fn assert_least_privilege(ns: &str) -> anyhow::Result<()> {
    let sa = format!("system:serviceaccount:{ns}:sluice");
    let can = |verb: &str, resource: &str| -> anyhow::Result<bool> {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let out = Command::new(tool("kubectl")?)
            .env("KUBECONFIG", state_dir().join("kubeconfig"))
            .args(["auth", "can-i", verb, resource, "--as", &sa, "-A"])
            .arg(format!("--subresource={subresource}"))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    };
    for (verb, resource) in [
        ("patch", "deployments.apps"),
        ("create", "taskruns.tekton.dev"),
        ("patch", "taskruns.tekton.dev"),
        ("patch", "modelreleases.sluice.dev/status"),
        ("patch", "modelreleases.sluice.dev"),
        ("update", "modelreleases.sluice.dev/finalizers"),
        ("get", "secrets"),
        ("watch", "services"),
        ("watch", "pods"),
        ("patch", "pods"),
    ] {
        assert!(
            can(verb, resource)?,
            "the chart must allow {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("list", "secrets"),
        ("delete", "deployments.apps"),
        ("create", "pods"),
        ("delete", "pods"),
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        ),
        ("update", "modelreleases.sluice.dev"),
        ("delete", "modelreleases.sluice.dev"),
        ("*", "*"),
    ] {
        assert!(
            !can(verb, resource)?,
            "the chart must not allow {verb} {resource}"
        );
    }
    Ok(())
}

/// Runs the operator with a token of the chart's ServiceAccount and takes one release to Released.
async fn release_as_the_chart_service_account(chart_ns: &str) -> anyhow::Result<()> {
    let token = run(
        "kubectl",
        &[
            "-n",
            chart_ns,
            "create",
            "token",
            "sluice",
            "--duration",
            "1h",
        ],
        None,
    )?;
    let kubeconfig = state_dir().join(format!("{chart_ns}.kubeconfig"));
    let server = run(
        "kubectl",
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    )?;
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster: {{server: {server}, certificate-authority: {}}}\nusers:\n- name: sluice\n  user: {{token: {}}}\ncontexts:\n- name: sluice\n  context: {{cluster: e2e, user: sluice}}\ncurrent-context: sluice\n",
            state_dir().join("pki/ca.crt").display(),
            token.trim()
        ),
    )?;
    let _away = AdminOperatorAway::stop()?;
    let status = Command::new(repo_dir().join("e2e/operator"))
        .env("SLUICE_OPERATOR_KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", chart_ns)
        .env("SLUICE_WEBHOOK_CONFIG", "sluice-enforcement")
        .arg("start")
        .status()?;
    anyhow::ensure!(
        status.success(),
        "operator with the chart's token did not start"
    );
    // The chart's RBAC lets it issue the webhook's certificate into its namespace and keep its
    // CA in the chart's webhook configuration (and only there).
    let bundle = eventually(
        "caBundle in the chart's webhook configuration",
        TIMEOUT,
        POLL,
        async || {
            let out = run(
                "kubectl",
                &[
                    "get",
                    "mutatingwebhookconfiguration",
                    "sluice-enforcement",
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ],
                None,
            )?;
            Ok(if out.trim().is_empty() {
                std::ops::ControlFlow::Continue("empty".to_string())
            } else {
                std::ops::ControlFlow::Break(out)
            })
        },
    )
    .await?;
    let secret_ca = run(
        "kubectl",
        &[
            "get",
            "secret",
            "-n",
            chart_ns,
            "sluice-webhook-tls",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
        None,
    )?;
    assert_eq!(bundle.trim(), secret_ca.trim());

    let ns = TestNamespace::new("chart-rbac").await?;
    ns.with_signing_key("chart-pw")?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 30)
        .await?;
    let digest = ns.push_image("chart")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    ns.release("predictor-60", &sims).await?;
    let r = ns.wait_phase("predictor-60", &ENDED, TIMEOUT).await?;
    let status = r.status.unwrap_or_default();
    assert_eq!(status.phase, Phase::Released, "{:?}", status.conditions);
    assert_eq!(ns.target_image().await?, format!("{REPOSITORY}@{digest}"));
    // Events were published under the chart's rules too.
    let events = ns.kubectl(&["get", "events.events.k8s.io", "-o", "name"])?;
    assert!(!events.trim().is_empty(), "no events published");
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}

#[test]
fn the_chart_ships_the_grafana_dashboard_as_a_sidecar_configmap() -> anyhow::Result<()> {
    let ns = format!("e2e-dashboard-{}", std::process::id());
    let off = render(&ns, false, &[])?;
    assert!(!off.contains("grafana_dashboard"), "off by default");
    let rendered = render(
        &ns,
        false,
        &[
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--set",
            "metrics.grafanaDashboard.namespace=monitoring",
            "--show-only",
            "templates/dashboard.yaml",
        ],
    )?;
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_yaml::from_str(&rendered)?;
    assert_eq!(cm.metadata.namespace.as_deref(), Some("monitoring"));
    assert_eq!(
        cm.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("grafana_dashboard"))
            .map(String::as_str),
        Some("1")
    );
    let json = cm
        .data
        .as_ref()
        .and_then(|d| d.get("sluice.json"))
        .expect("dashboard data");
    let dashboard: serde_json::Value = serde_json::from_str(json)?;
    let shipped: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo_dir().join("charts/sluice/dashboards/sluice.json"),
    )?)?;
    assert_eq!(
        dashboard, shipped,
        "the ConfigMap holds the dashboard unchanged"
    );
    // The API server accepts it (a namespace that exists: the rendered one is the user's choice).
    dry_run(&rendered.replace("namespace: monitoring", "namespace: default"))?;
    Ok(())
}
