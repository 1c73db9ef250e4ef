//! The OLM bundle (what OperatorHub and the OpenShift console install): a ClusterServiceVersion
//! whose install strategy is the Helm chart's own Deployment and RBAC, the CRDs, and the bundle
//! metadata. Generated, so the bundle can never drift from the chart.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The OLM package and its only channel.
pub const PACKAGE: &str = "sluice";
const CHANNEL: &str = "candidate";

/// Labels Helm adds that would misdescribe an OLM-managed object.
const HELM_LABELS: [&str; 2] = ["helm.sh/chart", "app.kubernetes.io/managed-by"];

/// What the bundle is made from.
pub struct Inputs<'a> {
    /// `helm template` output of charts/sluice.
    pub chart: &'a str,
    /// The hand-kept part of the CSV (olm/csv.base.yaml).
    pub base_csv: &'a str,
    /// YAML files whose SecurePipeline and ModelRelease objects become `alm-examples`.
    pub examples: Vec<&'a str>,
    /// The operator's version (the crate's).
    pub version: &'a str,
}

/// Every file of the bundle as (path relative to the bundle directory, content), sorted by path.
pub fn files(inputs: &Inputs) -> anyhow::Result<BTreeMap<String, String>> {
    let objects = documents(inputs.chart)?
        .into_iter()
        .map(without_helm_metadata)
        .collect::<Vec<_>>();
    let mut out = BTreeMap::new();
    for (file, yaml) in crate::crds::rendered()? {
        out.insert(format!("manifests/{file}"), yaml);
    }
    for extra in extra_manifests(&objects) {
        out.insert(
            format!("manifests/{}", manifest_file(&extra)),
            yaml(&extra)?,
        );
    }
    let csv = csv(inputs, &objects)?;
    out.insert(
        format!("manifests/{PACKAGE}.clusterserviceversion.yaml"),
        yaml(&csv)?,
    );
    out.insert("metadata/annotations.yaml".into(), annotations_yaml());
    out.insert("bundle.Dockerfile".into(), dockerfile());
    Ok(out)
}

fn documents(stream: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(stream) {
        let value = Value::deserialize(doc).context("parsing the rendered chart")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn yaml(value: &Value) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(value)?)
}

/// OLM installs into the namespace of the OperatorGroup and manages the objects itself.
fn without_helm_metadata(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("namespace");
        strip_labels(meta);
    }
    if let Some(meta) = object
        .pointer_mut("/spec/template/metadata")
        .and_then(Value::as_object_mut)
    {
        strip_labels(meta);
    }
    object
}

fn strip_labels(meta: &mut Map<String, Value>) {
    if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
        for label in HELM_LABELS {
            labels.remove(label);
        }
    }
}

fn kind(object: &Value) -> &str {
    object.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn name(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn of_kind<'a>(objects: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> {
    objects.iter().filter(move |o| kind(o) == k)
}

/// The one Deployment of the chart and its ServiceAccount.
fn deployment(objects: &[Value]) -> anyhow::Result<(&Value, String)> {
    let mut deployments = of_kind(objects, "Deployment");
    let Some(dep) = deployments.next() else {
        bail!("the rendered chart has no Deployment")
    };
    if deployments.next().is_some() {
        bail!("the rendered chart has more than one Deployment");
    }
    let sa = dep
        .pointer("/spec/template/spec/serviceAccountName")
        .and_then(Value::as_str)
        .context("the chart's Deployment names no serviceAccountName")?;
    Ok((dep, sa.to_string()))
}

/// Rules of the roles of `role_kind` bound to `sa` by bindings of `binding_kind`.
fn bound_rules(objects: &[Value], binding_kind: &str, role_kind: &str, sa: &str) -> Vec<Value> {
    of_kind(objects, binding_kind)
        .filter(|b| {
            b.get("subjects")
                .and_then(Value::as_array)
                .is_some_and(|subjects| {
                    subjects.iter().any(|s| {
                        s.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                            && s.get("name").and_then(Value::as_str) == Some(sa)
                    })
                })
        })
        .filter_map(|b| b.pointer("/roleRef/name").and_then(Value::as_str))
        .flat_map(|role| {
            of_kind(objects, role_kind)
                .filter(move |r| name(r) == role)
                .flat_map(|r| r.get("rules").and_then(Value::as_array).cloned())
                .flatten()
        })
        .collect()
}

/// Objects OLM installs beside the CSV: the metrics Service and the ClusterRoles that aggregate
/// into edit and view (no binding: aggregation is their use).
fn extra_manifests(objects: &[Value]) -> Vec<Value> {
    let bound: Vec<&str> = of_kind(objects, "ClusterRoleBinding")
        .filter_map(|b| b.pointer("/roleRef/name").and_then(Value::as_str))
        .collect();
    objects
        .iter()
        .filter(|o| match kind(o) {
            "Service" => true,
            "ClusterRole" => !bound.contains(&name(o)),
            _ => false,
        })
        .cloned()
        .collect()
}

/// operator-sdk's naming: NAME_GROUP_VERSION_KIND.yaml.
fn manifest_file(object: &Value) -> String {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1");
    let group_version = api_version.replace('/', "_");
    format!(
        "{}_{group_version}_{}.yaml",
        name(object),
        kind(object).to_lowercase()
    )
}

fn csv(inputs: &Inputs, objects: &[Value]) -> anyhow::Result<Value> {
    let mut csv: Value =
        serde_yaml::from_str(inputs.base_csv).context("parsing the base ClusterServiceVersion")?;
    let (dep, sa) = deployment(objects)?;
    let image = dep
        .pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let examples = alm_examples(&inputs.examples)?;
    let meta = csv
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .context("the base CSV has no metadata")?;
    meta.insert(
        "name".into(),
        json!(format!("{PACKAGE}.v{}", inputs.version)),
    );
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("metadata.annotations is not a map")?;
    annotations.insert("alm-examples".into(), json!(examples));
    annotations.insert("containerImage".into(), json!(image));

    let spec = csv
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .context("the base CSV has no spec")?;
    spec.insert("version".into(), json!(inputs.version));
    spec.insert(
        "install".into(),
        json!({"strategy": "deployment", "spec": {
            "deployments": [{"name": name(dep), "label": dep.pointer("/metadata/labels"), "spec": dep["spec"]}],
            "clusterPermissions": [{"serviceAccountName": sa,
                "rules": bound_rules(objects, "ClusterRoleBinding", "ClusterRole", &sa)}],
            "permissions": [{"serviceAccountName": sa,
                "rules": bound_rules(objects, "RoleBinding", "Role", &sa)}],
        }}),
    );
    fill_owned_crds(spec)?;
    Ok(csv)
}

/// Completes each owned CRD of the base (kind, descriptors) with its name and storage version.
fn fill_owned_crds(spec: &mut Map<String, Value>) -> anyhow::Result<()> {
    let owned = spec
        .get_mut("customresourcedefinitions")
        .and_then(|c| c.get_mut("owned"))
        .and_then(Value::as_array_mut)
        .context("the base CSV lists no owned CRDs")?;
    let crds = crate::crds::all();
    if owned.len() != crds.len() {
        bail!(
            "the base CSV describes {} owned CRDs; Sluice has {}",
            owned.len(),
            crds.len()
        );
    }
    for entry in owned.iter_mut() {
        let kind = kind(entry).to_string();
        let crd = crds
            .iter()
            .find(|c| c.spec.names.kind == kind)
            .with_context(|| format!("the base CSV describes {kind}, which is not a Sluice CRD"))?;
        let version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map(|v| v.name.clone())
            .context("a CRD without a storage version")?;
        let map = entry.as_object_mut().context("owned CRD entry")?;
        map.insert("name".into(), json!(crd.metadata.name));
        map.insert("version".into(), json!(version));
    }
    Ok(())
}

/// The example SecurePipelines and ModelReleases as the JSON array OLM shows in "Create".
fn alm_examples(files: &[&str]) -> anyhow::Result<String> {
    let mut examples = Vec::new();
    for file in files {
        for mut doc in documents(file)? {
            if !matches!(kind(&doc), "SecurePipeline" | "ModelRelease") {
                continue;
            }
            if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("namespace");
            }
            examples.push(doc);
        }
    }
    if examples.is_empty() {
        bail!("no SecurePipeline or ModelRelease among the examples");
    }
    Ok(serde_json::to_string_pretty(&examples)?)
}

fn annotations_yaml() -> String {
    format!(
        "annotations:\n  operators.operatorframework.io.bundle.mediatype.v1: registry+v1\n  \
         operators.operatorframework.io.bundle.manifests.v1: manifests/\n  \
         operators.operatorframework.io.bundle.metadata.v1: metadata/\n  \
         operators.operatorframework.io.bundle.package.v1: {PACKAGE}\n  \
         operators.operatorframework.io.bundle.channels.v1: {CHANNEL}\n  \
         operators.operatorframework.io.bundle.channel.default.v1: {CHANNEL}\n"
    )
}

fn dockerfile() -> String {
    format!(
        "# Generated by `make bundle`. Build from this directory: the bundle image OLM installs.\n\
         FROM scratch\n\
         LABEL operators.operatorframework.io.bundle.mediatype.v1=registry+v1\n\
         LABEL operators.operatorframework.io.bundle.manifests.v1=manifests/\n\
         LABEL operators.operatorframework.io.bundle.metadata.v1=metadata/\n\
         LABEL operators.operatorframework.io.bundle.package.v1={PACKAGE}\n\
         LABEL operators.operatorframework.io.bundle.channels.v1={CHANNEL}\n\
         LABEL operators.operatorframework.io.bundle.channel.default.v1={CHANNEL}\n\
         COPY manifests /manifests/\n\
         COPY metadata /metadata/\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART: &str = r#"
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sluice, namespace: ops, labels: {helm.sh/chart: sluice-0.1.0}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: sluice}
rules: [{apiGroups: [apps], resources: [deployments], verbs: [patch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: sluice-view, labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}}
rules: [{apiGroups: [sluice.dev], resources: [modelreleases], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: sluice}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sluice}
subjects: [{kind: ServiceAccount, name: sluice, namespace: ops}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sluice-leader-election, namespace: ops}
rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: sluice-leader-election, namespace: ops}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sluice-leader-election}
subjects: [{kind: ServiceAccount, name: sluice, namespace: ops}]
---
apiVersion: v1
kind: Service
metadata: {name: sluice-metrics, namespace: ops}
spec: {ports: [{port: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sluice, namespace: ops, labels: {app.kubernetes.io/name: sluice, app.kubernetes.io/managed-by: Helm}}
spec:
  template:
    metadata: {labels: {app.kubernetes.io/name: sluice, helm.sh/chart: x}}
    spec:
      serviceAccountName: sluice
      containers: [{name: sluice, image: "ghcr.io/sluice-dev/sluice:0.1.0"}]
"#;

    const BASE: &str = r#"
apiVersion: operators.coreos.com/v1alpha1
kind: ClusterServiceVersion
metadata: {annotations: {capabilities: Basic Install}}
spec:
  customresourcedefinitions:
    owned:
    - {kind: SecurePipeline, displayName: Secure Pipeline}
    - {kind: ModelRelease, displayName: Model Release}
"#;

    const EXAMPLE: &str = "apiVersion: sluice.dev/v1alpha1\nkind: ModelRelease\nmetadata: {name: r, namespace: evip}\nspec: {}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";

    fn bundle() -> BTreeMap<String, String> {
        files(&Inputs {
            chart: CHART,
            base_csv: BASE,
            examples: vec![EXAMPLE],
            version: "1.2.3",
        })
        .expect("bundle")
    }

    fn csv_of(files: &BTreeMap<String, String>) -> Value {
        serde_yaml::from_str(&files["manifests/sluice.clusterserviceversion.yaml"]).expect("csv")
    }

    #[test]
    fn the_install_strategy_is_the_charts_deployment_and_bound_rbac() {
        let csv = csv_of(&bundle());
        assert_eq!(csv["metadata"]["name"], "sluice.v1.2.3");
        assert_eq!(csv["spec"]["version"], "1.2.3");
        let install = &csv["spec"]["install"]["spec"];
        assert_eq!(install["deployments"][0]["name"], "sluice");
        let labels = &install["deployments"][0]["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels, &json!({"app.kubernetes.io/name": "sluice"}));
        assert_eq!(
            install["clusterPermissions"][0]["rules"][0]["resources"],
            json!(["deployments"])
        );
        assert_eq!(
            install["clusterPermissions"][0]["rules"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "the aggregated view role is not the operator's"
        );
        assert_eq!(
            install["permissions"][0]["rules"][0]["resources"],
            json!(["leases"])
        );
        assert_eq!(
            csv["metadata"]["annotations"]["containerImage"],
            "ghcr.io/sluice-dev/sluice:0.1.0"
        );
    }

    #[test]
    fn owned_crds_get_their_names_and_examples_lose_their_namespace() {
        let csv = csv_of(&bundle());
        let owned = &csv["spec"]["customresourcedefinitions"]["owned"];
        assert_eq!(owned[0]["name"], "securepipelines.sluice.dev");
        assert_eq!(owned[1]["name"], "modelreleases.sluice.dev");
        assert_eq!(owned[1]["version"], "v1alpha1");
        let examples: Value = serde_json::from_str(
            csv["metadata"]["annotations"]["alm-examples"]
                .as_str()
                .expect("a string"),
        )
        .expect("JSON");
        assert_eq!(examples.as_array().map(Vec::len), Some(1));
        assert!(examples[0]["metadata"].get("namespace").is_none());
    }

    #[test]
    fn extra_manifests_are_the_service_and_unbound_cluster_roles() {
        let files = bundle();
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert!(names.contains(&"manifests/sluice-metrics_v1_service.yaml"));
        assert!(
            names.contains(&"manifests/sluice-view_rbac.authorization.k8s.io_v1_clusterrole.yaml")
        );
        assert!(!names.iter().any(|n| n.contains("serviceaccount")));
        assert!(names.contains(&"manifests/modelreleases.sluice.dev.yaml"));
        assert!(files["metadata/annotations.yaml"].contains("package.v1: sluice"));
        assert!(!files["manifests/sluice-metrics_v1_service.yaml"].contains("namespace"));
    }

    #[test]
    fn a_base_that_describes_an_unknown_kind_is_refused() {
        let base = BASE.replace("kind: ModelRelease", "kind: Model");
        let err = files(&Inputs {
            chart: CHART,
            base_csv: &base,
            examples: vec![EXAMPLE],
            version: "1.2.3",
        })
        .expect_err("refused");
        assert!(err.to_string().contains("Model, which is not"), "{err}");
    }
}
