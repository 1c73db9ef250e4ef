//! The Helm chart in `charts/sluice`: rendering it, a namespace under the `restricted` Pod
//! Security Standard to install it into, and swapping the shared operator out while it runs.

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::{client, operator, run_program, tool};

/// Runs a tool of the e2e cluster (`helm`, `kubectl`, ...) from the repository root.
pub fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    run_program(&tool(program)?, args, stdin)
}

/// `helm template` of the chart into `namespace`, with extra `helm` arguments (`--set ...`).
pub fn render_chart(namespace: &str, include_crds: bool, extra: &[&str]) -> Result<String> {
    let mut args = vec![
        "template",
        "sluice",
        "charts/sluice",
        "--namespace",
        namespace,
        "--kube-version",
        "1.36.0",
    ];
    if include_crds {
        args.push("--include-crds");
    }
    // The chart's webhook configuration is cluster-wide: scoped to a label no namespace carries,
    // it is installed and validated without calling a webhook the API server cannot reach (the
    // suite's own enforcement tests use the operator process's webhook).
    let scope = format!(
        r#"enforcement.namespaceSelector={{"matchLabels":{{"sluice.dev/enforce":"chart-{namespace}"}}}}"#
    );
    args.extend_from_slice(&["--set-json", &scope]);
    args.extend_from_slice(extra);
    run_tool("helm", &args, None)
}

/// A namespace for the chart, labelled to enforce the restricted Pod Security Standard; deleted,
/// with the chart's cluster-scoped objects, when dropped.
pub struct ChartNamespace {
    /// The namespace's name.
    pub name: String,
}

impl ChartNamespace {
    /// Creates `e2e-<prefix>-<pid>`.
    pub async fn new(prefix: &str) -> Result<Self> {
        let name = format!("e2e-{prefix}-{}", std::process::id());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}}}))?;
        Api::<Namespace>::all(client().await?)
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { name })
    }
}

impl Drop for ChartNamespace {
    // kubectl, not the async client: the test's runtime is blocked while this runs, and a kube
    // Client created on it would wait forever for that runtime's tasks.
    fn drop(&mut self) {
        // The chart's cluster-scoped objects (ClusterRoles and their binding) go too.
        if let Ok(rendered) = render_chart(&self.name, false, &[]) {
            let _ = run_tool(
                "kubectl",
                &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
                Some(&rendered),
            );
        }
        let _ = run_tool(
            "kubectl",
            &["delete", "namespace", &self.name, "--wait=false"],
            None,
        );
    }
}

/// Stops the shared admin operator; puts it back when dropped, however the test ends.
pub struct AdminOperatorAway;

impl AdminOperatorAway {
    /// Stops the shared operator.
    pub fn stop() -> Result<Self> {
        operator("stop")?;
        Ok(Self)
    }
}

impl Drop for AdminOperatorAway {
    fn drop(&mut self) {
        let _ = operator("stop");
        let _ = operator("start");
    }
}
