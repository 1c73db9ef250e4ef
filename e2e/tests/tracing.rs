//! OpenTelemetry tracing over OTLP, against a real collector: the e2e cluster runs Jaeger v2
//! (an OpenTelemetry Collector distribution, e2e/tools/jaeger.sh) and `e2e/operator start` points
//! the operator at its OTLP/HTTP receiver. Every reconcile of a release is a span of one trace
//! whose id is derived from the release's UID (the first 16 bytes of its SHA-256), and the
//! signing is a span inside a reconcile; the traces are read back from Jaeger's query API.
//! Stage outcomes are scripted (`sim.sluice.dev/*`): this proves the tracing, not the stages.

use std::{ops::ControlFlow, process::Command, time::Duration};

use kube::ResourceExt;
use serde_json::Value;
use sluice::api::Phase;
use sluice_e2e::{ENDED, Sim, TestNamespace, clean_sims, eventually, state_dir};

const TIMEOUT: Duration = Duration::from_secs(120);

fn jaeger_trace(query: &str, trace_id: &str) -> anyhow::Result<Option<Value>> {
    let out = Command::new("curl")
        .args(["-sf", &format!("{query}/api/traces/{trace_id}")])
        .output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["data"].as_array().and_then(|d| d.first()).cloned())
}

fn spans_named<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    trace["spans"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["operationName"] == name).collect())
        .unwrap_or_default()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
}

#[tokio::test]
async fn every_reconcile_of_a_release_is_a_span_of_one_trace_exported_over_otlp()
-> anyhow::Result<()> {
    let query = std::fs::read_to_string(state_dir().join("jaeger-query"))?;
    let query = query.trim();
    let ns = TestNamespace::new("tracing").await?;
    ns.with_signing_key("tracing-pw")?;
    ns.target("127.0.0.1:35000/evip/predictor:stable", 60)
        .await?;
    let digest = ns.push_image("tracing")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&digest));
    let created = ns.release("predictor-91", &sims).await?;
    let r = ns.wait_phase("predictor-91", &ENDED, TIMEOUT).await?;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Released),
        "{:?}",
        r.status
    );
    let uid = created.uid().expect("uid");
    // The contract, computed here independently: trace id = hex of SHA-256(uid)[..16].
    let hash = sluice::registry::sha256_digest(uid.as_bytes());
    let trace_id = &hash["sha256:".len()..][..32];
    let trace = eventually(
        "the release's trace in Jaeger, with its signing",
        Duration::from_secs(60),
        Duration::from_millis(500),
        async || {
            Ok(match jaeger_trace(query, trace_id)? {
                Some(t) if !spans_named(&t, "sign").is_empty() => ControlFlow::Break(t),
                Some(t) => ControlFlow::Continue(format!(
                    "{} spans, no sign span yet",
                    t["spans"].as_array().map_or(0, Vec::len)
                )),
                None => ControlFlow::Continue("no trace yet".into()),
            })
        },
    )
    .await?;
    let reconciles = spans_named(&trace, "reconcile ModelRelease");
    assert!(
        reconciles.len() >= 3,
        "one span per reconcile, from creation to Released: {}",
        reconciles.len()
    );
    for span in &reconciles {
        assert_eq!(span["traceID"], trace_id);
        assert_eq!(tag(span, "name"), Some("predictor-91"));
        assert_eq!(tag(span, "namespace"), Some(ns.name.as_str()));
    }
    // The signing ran inside one of those reconciles.
    let sign = spans_named(&trace, "sign")[0];
    let parent = sign["references"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
        .map(|r| r["spanID"].clone())
        .expect("sign has a parent");
    assert!(
        reconciles.iter().any(|s| s["spanID"] == parent),
        "sign's parent is a reconcile span"
    );
    assert!(
        tag(sign, "image").is_some_and(|i| i.ends_with(&digest)),
        "{sign}"
    );
    let process = &trace["processes"][sign["processID"].as_str().unwrap_or_default()];
    assert_eq!(process["serviceName"], "sluice");
    Ok(())
}
