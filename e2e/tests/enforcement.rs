//! Enforcement in a namespace labelled `sluice.dev/enforce=true`, against the real API server and
//! the operator's real webhook (HTTPS, its own CA patched into the MutatingWebhookConfiguration
//! that `e2e/operator start` applies with failurePolicy Ignore): new pods of a targeted Deployment
//! are held by a scheduling gate until their digest is one a release verified. The release uses
//! `spec.target.mode: gate`, so Git (this test, patching as "flux") sets the image and Sluice never
//! writes the Deployment. Stage outcomes are scripted on the kwok node (the state machine is what
//! is proven here); the signature and its verification are real (cosign key, local registry).

use std::{
    ops::ControlFlow,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Event, Pod},
};
use kube::api::{ListParams, PostParams};
use serde_json::json;
use sluice::{
    api::{ModelRelease, Phase, conditions},
    enforcement::{ANNOTATION_HELD, GATE_ADMITTED, LABEL_GATE, gate_index},
};
use sluice_e2e::{ENDED, MODELS, POLL, REPOSITORY, Sim, TestNamespace, clean_sims, eventually};

const TIMEOUT: Duration = Duration::from_secs(120);
const STABLE: &str = "127.0.0.1:35000/evip/predictor:stable";

fn ready_reason(r: &ModelRelease) -> String {
    r.status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, conditions::READY))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// A namespace that opted in, with a signing key and the target Deployment running STABLE.
async fn gated_namespace(prefix: &str) -> anyhow::Result<TestNamespace> {
    let ns = TestNamespace::new(prefix).await?;
    ns.kubectl(&["label", "namespace", &ns.name, "sluice.dev/enforce=true"])?;
    ns.with_signing_key("enforce-pw")?;
    // Before any release targets it, the Deployment's pods are none of Sluice's business.
    ns.target(STABLE, 30).await?;
    Ok(ns)
}

fn gated(p: &Pod) -> bool {
    gate_index(p).is_some()
}

fn server_image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "server"))
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn pod_phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// The pods running `image`, once `pick` accepts them.
async fn pods_of(
    ns: &TestNamespace,
    image: &str,
    what: &str,
    pick: impl Fn(&[Pod]) -> bool,
) -> anyhow::Result<Vec<Pod>> {
    let api = ns.api::<Pod>();
    eventually(what, TIMEOUT, POLL, async || {
        let pods: Vec<Pod> = api
            .list(&ListParams::default().labels("app=predictor"))
            .await?
            .items
            .into_iter()
            .filter(|p| server_image(p) == image && p.metadata.deletion_timestamp.is_none())
            .collect();
        let seen = format!(
            "{:?}",
            pods.iter()
                .map(|p| (
                    pod_phase(p),
                    gated(p),
                    p.annotations().get(ANNOTATION_HELD).cloned()
                ))
                .collect::<Vec<_>>()
        );
        Ok(if !pods.is_empty() && pick(&pods) {
            ControlFlow::Break(pods)
        } else {
            ControlFlow::Continue(seen)
        })
    })
    .await
}

use kube::ResourceExt;

/// The Warning Event Sluice published on `pod`, with its reason.
async fn held_event(ns: &TestNamespace, pod: &str) -> anyhow::Result<Event> {
    let events = ns.api::<Event>();
    eventually(
        &format!("an Event on held pod {pod}"),
        TIMEOUT,
        POLL,
        async || {
            let list = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
                .await?;
            let found = list
                .items
                .into_iter()
                .find(|e| e.type_.as_deref() == Some("Warning"));
            Ok(match found {
                Some(e) => ControlFlow::Break(e),
                None => ControlFlow::Continue("none yet".into()),
            })
        },
    )
    .await
}

/// No field of the Deployment is managed by Sluice and no Sluice annotation is on it.
fn never_written_by_sluice(dep: &Deployment) {
    let managers: Vec<String> = dep
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m.contains("sluice")),
        "the Deployment was written by Sluice: managers {managers:?}"
    );
    let annotated = dep
        .annotations()
        .keys()
        .any(|k| k.starts_with("sluice.dev/"));
    let template = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .is_some_and(|a| a.keys().any(|k| k.starts_with("sluice.dev/")));
    assert!(!annotated && !template, "{:?}", dep.metadata.annotations);
}

#[tokio::test]
async fn in_a_gated_namespace_an_unsigned_pod_stays_pending_with_the_reason_and_the_released_digest_runs()
-> anyhow::Result<()> {
    let ns = gated_namespace("enforce").await?;
    let released = ns.push_image("server")?;
    let unsigned = ns.push_image("unsigned")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&released));
    let gate_mode =
        json!({"target": {"deployment": "predictor", "container": "server", "mode": "gate"}});
    ns.release_with("predictor-70", &sims, gate_mode).await?;

    // Signed and verified: admitted, waiting for Git to set the digest (DAST runs after that).
    let api = ns.api::<ModelRelease>();
    let r = eventually("release admitted", TIMEOUT, POLL, async || {
        let r = api.get("predictor-70").await?;
        let phase = r.status.as_ref().map(|s| s.phase).unwrap_or_default();
        Ok(
            if ready_reason(&r) == conditions::reason::WAITING_FOR_DEPLOYMENT {
                ControlFlow::Break(r)
            } else if phase.is_final() {
                anyhow::bail!("ended before admission: {:?}", r.status)
            } else {
                ControlFlow::Continue(format!("{:?}", r.status))
            },
        )
    })
    .await?;
    assert_eq!(r.status.as_ref().map(|s| s.phase), Some(Phase::RollingOut));
    never_written_by_sluice(&ns.api::<Deployment>().get("predictor").await?);

    // Someone sets an unsigned digest: its pod is held, Pending, with the reason.
    let unsigned_ref = format!("{REPOSITORY}@{unsigned}");
    ns.git_sets_image(&unsigned_ref, None).await?;
    let held = pods_of(
        &ns,
        &unsigned_ref,
        "unsigned pod held with its reason",
        |pods| {
            pods.iter()
                .all(|p| gated(p) && p.annotations().contains_key(ANNOTATION_HELD))
        },
    )
    .await?;
    let pod = &held[0];
    assert_eq!(pod_phase(pod), "Pending");
    let why = pod.annotations()[ANNOTATION_HELD].clone();
    assert!(why.starts_with("ImageNotVerified:"), "{why}");
    assert!(why.contains(&unsigned) && why.contains(&released), "{why}");
    let event = held_event(&ns, &pod.name_any()).await?;
    assert_eq!(event.reason.as_deref(), Some("ImageNotVerified"));
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(&unsigned),
        "{event:?}"
    );
    // Still held after the gate controller had its say (not a race it happened to win).
    let again = ns.api::<Pod>().get(&pod.name_any()).await?;
    assert!(gated(&again) && pod_phase(&again) == "Pending");

    // Git sets the released digest: its pods are admitted and run; the release finishes.
    let released_ref = format!("{REPOSITORY}@{released}");
    ns.git_sets_image(&released_ref, None).await?;
    let running = pods_of(&ns, &released_ref, "released pods running", |pods| {
        pods.len() == 2 && pods.iter().all(|p| !gated(p) && pod_phase(p) == "Running")
    })
    .await?;
    for p in &running {
        assert_eq!(
            p.labels().get(LABEL_GATE).map(String::as_str),
            Some(GATE_ADMITTED)
        );
        assert!(!p.annotations().contains_key(ANNOTATION_HELD));
    }
    let r = ns.wait_phase("predictor-70", &ENDED, TIMEOUT).await?;
    assert_eq!(
        r.status.as_ref().map(|s| s.phase),
        Some(Phase::Released),
        "{:?}",
        r.status
    );

    // A bare pod wearing the Deployment's labels with an unsigned image is held too.
    let bare: Pod = serde_json::from_value(json!({
        "metadata": {"name": "impostor", "labels": {"app": "predictor"}},
        "spec": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "server", "image": unsigned_ref}]
        }
    }))?;
    ns.api::<Pod>()
        .create(&PostParams::default(), &bare)
        .await?;
    let event = held_event(&ns, "impostor").await?;
    assert_eq!(event.reason.as_deref(), Some("ImageNotVerified"));
    let impostor = ns.api::<Pod>().get("impostor").await?;
    assert!(gated(&impostor) && pod_phase(&impostor) == "Pending");

    // Started by hand (`kubectl run`: no Deployment's labels) from the application's repository:
    // an unsigned digest is held, the released one runs.
    for (name, image) in [
        ("by-hand-unsigned", &unsigned_ref),
        ("by-hand-released", &released_ref),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"run": name}},
            "spec": {
                "nodeSelector": {"type": "kwok"},
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "main", "image": image}]
            }
        }))?;
        ns.api::<Pod>().create(&PostParams::default(), &pod).await?;
    }
    let event = held_event(&ns, "by-hand-unsigned").await?;
    assert_eq!(event.reason.as_deref(), Some("ImageNotVerified"));
    let pods = ns.api::<Pod>();
    eventually(
        "the released digest started by hand runs",
        TIMEOUT,
        POLL,
        async || {
            let p = pods.get("by-hand-released").await?;
            Ok(if !gated(&p) && pod_phase(&p) == "Running" {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{} gated={}", pod_phase(&p), gated(&p)))
            })
        },
    )
    .await?;
    let unsigned_pod = pods.get("by-hand-unsigned").await?;
    assert!(gated(&unsigned_pod) && pod_phase(&unsigned_pod) == "Pending");

    never_written_by_sluice(&ns.api::<Deployment>().get("predictor").await?);
    Ok(())
}

fn model_of(p: &Pod) -> Option<String> {
    sluice::rollout::model_ref_of(
        p.spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == "server")?,
    )
}

#[tokio::test]
async fn a_pod_handed_another_model_is_held_and_a_failed_post_deploy_gate_withdraws_the_admission()
-> anyhow::Result<()> {
    let ns = gated_namespace("enforce-model").await?;
    let released = ns.push_image("server")?;
    let model = ns.push_model("signed")?;
    let other_model = ns.push_model("swapped")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&released));
    // The scripted DAST finds a high: the post-deploy gate blocks once the digest runs.
    sims[4] = ("dast", Sim::findings(0, 1, 0, 0));
    let spec = json!({
        "target": {"deployment": "predictor", "container": "server", "mode": "gate"},
        "model": {"name": "ev-load-15min", "version": "7",
                  "artifact": {"repository": MODELS, "digest": model}},
    });
    ns.release_with("predictor-72", &sims, spec).await?;
    let api = ns.api::<ModelRelease>();
    eventually("release admitted", TIMEOUT, POLL, async || {
        let r = api.get("predictor-72").await?;
        Ok(
            if ready_reason(&r) == conditions::reason::WAITING_FOR_DEPLOYMENT {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{:?}", r.status))
            },
        )
    })
    .await?;

    // The signed image handed another model's digest: held, and the reason names both models.
    let released_ref = format!("{REPOSITORY}@{released}");
    let swapped_ref = format!("{MODELS}@{other_model}");
    ns.git_sets_image(&released_ref, Some(&swapped_ref)).await?;
    let held = pods_of(
        &ns,
        &released_ref,
        "pod with the swapped model held",
        |pods| {
            pods.iter().any(|p| {
                model_of(p).as_deref() == Some(swapped_ref.as_str())
                    && p.annotations().contains_key(ANNOTATION_HELD)
            })
        },
    )
    .await?;
    let pod = held
        .iter()
        .find(|p| model_of(p).as_deref() == Some(swapped_ref.as_str()))
        .expect("held pod");
    let why = &pod.annotations()[ANNOTATION_HELD];
    assert!(why.starts_with("ModelNotVerified:"), "{why}");
    assert!(why.contains(&other_model) && why.contains(&model), "{why}");
    assert!(gated(pod) && pod_phase(pod) == "Pending");

    // The signed model: the pods run, DAST runs against them and blocks.
    let signed_ref = format!("{MODELS}@{model}");
    ns.git_sets_image(&released_ref, Some(&signed_ref)).await?;
    let r = ns.wait_phase("predictor-72", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Failed, "{:?}", status.conditions);
    let message = conditions::get(&status.conditions, conditions::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("withdrawn"), "{message}");

    // Withdrawn: a new pod of the same digest and model is held again.
    let running = pods_of(&ns, &released_ref, "pods of the signed model", |pods| {
        pods.iter()
            .any(|p| model_of(p).as_deref() == Some(signed_ref.as_str()) && !gated(p))
    })
    .await?;
    let victim = running
        .iter()
        .find(|p| model_of(p).as_deref() == Some(signed_ref.as_str()) && !gated(p))
        .expect("running pod")
        .name_any();
    ns.api::<Pod>().delete(&victim, &Default::default()).await?;
    pods_of(&ns, &released_ref, "a replacement pod held", |pods| {
        pods.iter().any(|p| {
            p.name_any() != victim
                && model_of(p).as_deref() == Some(signed_ref.as_str())
                && gated(p)
                && p.annotations()
                    .get(ANNOTATION_HELD)
                    .is_some_and(|w| w.starts_with("ImageNotVerified:"))
        })
    })
    .await?;
    never_written_by_sluice(&ns.api::<Deployment>().get("predictor").await?);
    Ok(())
}

/// Percentile `q` of `samples` (sorted in place).
fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64) * q).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Creates `n` bare pods (the Deployment's labels, `image`) one after another; returns the time
/// each create took, as the client saw it.
async fn create_pods(
    ns: &TestNamespace,
    prefix: &str,
    n: usize,
    image: &str,
) -> anyhow::Result<Vec<Duration>> {
    let api = ns.api::<Pod>();
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        // No node tolerates them: they are never scheduled, so the 400 pods cost the API server
        // and the scheduler only, not kwok (whose slowness then tripped later tests' deadlines).
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{prefix}-{i}"), "labels": {"app": "predictor", "bulk": prefix}},
            "spec": {"containers": [{"name": "server", "image": image}]}
        }))?;
        let started = Instant::now();
        api.create(&PostParams::default(), &pod).await?;
        took.push(started.elapsed());
    }
    Ok(took)
}

/// Deletes the bulk pods of `ns` and waits until they are gone: their cleanup stays inside this
/// test instead of loading the cluster under the next test binary.
async fn delete_pods(ns: &TestNamespace, prefix: &str) -> anyhow::Result<()> {
    let api = ns.api::<Pod>();
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let selector = format!("bulk={prefix}");
    api.delete_collection(&dp, &ListParams::default().labels(&selector))
        .await?;
    eventually(
        &format!("{prefix} pods of {} deleted", ns.name),
        Duration::from_secs(120),
        POLL,
        async || {
            let left = api
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .len();
            Ok(if left == 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{left} left"))
            })
        },
    )
    .await
}

/// The webhook's p99 from the operator's histogram: the smallest bucket bound holding 99 % of
/// the gated answers counted between two scrapes.
fn histogram_p99(before: &str, after: &str) -> Option<String> {
    let buckets = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| {
                l.starts_with("sluice_webhook_admission_duration_seconds_bucket")
                    && l.contains(r#"decision="gated""#)
            })
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
                let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
                Some((le, n))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let delta: Vec<(String, f64)> = a
        .iter()
        .map(|(le, n)| {
            let old = b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            (le.clone(), n - old)
        })
        .collect();
    let total = delta.last()?.1;
    delta
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map(|(le, _)| le.clone())
}

async fn scrape() -> anyhow::Result<String> {
    let port = std::env::var("SLUICE_OPERATOR_PORT").unwrap_or_else(|_| "38080".into());
    let out = tokio::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "curl /metrics failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// 200 pod creations in a gated namespace against 200 in a namespace that did not opt in: every
/// gated one is held or admitted by the cache alone (no registry on the path). Prints the
/// latencies; fails only on the invariants (every targeted pod gated, verdicts right).
#[tokio::test]
async fn two_hundred_pod_creations_are_each_gated_from_the_cache() -> anyhow::Result<()> {
    const N: usize = 200;
    let ns = gated_namespace("enforce-bulk").await?;
    let released = ns.push_image("server")?;
    let mut sims = clean_sims();
    sims[3] = ("build", Sim::built(&released));
    sims.retain(|(s, _)| *s != "dast");
    // Without post-deploy stages an admitted release is Released at once.
    ns.kubectl(&[
        "patch",
        "securepipeline",
        "predictor",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/spec/stages/4/name","value":"dast"},{"op":"remove","path":"/spec/stages/4"}]"#,
    ])?;
    let gate_mode =
        json!({"target": {"deployment": "predictor", "container": "server", "mode": "gate"}});
    ns.release_with("predictor-71", &sims, gate_mode).await?;
    let r = ns.wait_phase("predictor-71", &ENDED, TIMEOUT).await?;
    assert_eq!(
        ready_reason(&r),
        conditions::reason::ADMITTED,
        "{:?}",
        r.status
    );

    let plain = TestNamespace::empty("enforce-plain").await?;
    let released_ref = format!("{REPOSITORY}@{released}");
    let before = scrape().await?;
    let mut gated_took = create_pods(&ns, "bulk", N, &released_ref).await?;
    let after = scrape().await?;
    let mut plain_took = create_pods(&plain, "bulk", N, &released_ref).await?;

    // Every pod was gated at creation (the label is the webhook's) and is then admitted.
    let api = ns.api::<Pod>();
    let pods = eventually(
        "200 pods admitted",
        Duration::from_secs(300),
        POLL,
        async || {
            let list = api
                .list(&ListParams::default().labels(LABEL_GATE))
                .await?
                .items;
            let bulk: Vec<Pod> = list
                .into_iter()
                .filter(|p| p.name_any().starts_with("bulk-"))
                .collect();
            let admitted = bulk
                .iter()
                .filter(|p| {
                    p.labels().get(LABEL_GATE).map(String::as_str) == Some(GATE_ADMITTED)
                        && !gated(p)
                })
                .count();
            Ok(if admitted == N {
                ControlFlow::Break(bulk)
            } else {
                ControlFlow::Continue(format!("{} labelled, {admitted} admitted", bulk.len()))
            })
        },
    )
    .await?;
    assert_eq!(pods.len(), N);
    let untouched = plain
        .api::<Pod>()
        .list(&ListParams::default().labels(LABEL_GATE))
        .await?
        .items
        .len();
    assert_eq!(untouched, 0, "a namespace without the label is never gated");

    let server_p99 = histogram_p99(&before, &after).unwrap_or_else(|| "?".into());
    let (g50, g99) = (
        percentile(&mut gated_took, 0.5),
        percentile(&mut gated_took, 0.99),
    );
    let (p50, p99) = (
        percentile(&mut plain_took, 0.5),
        percentile(&mut plain_took, 0.99),
    );
    eprintln!(
        "webhook: {N} pod creations in a gated namespace: create p50 {:.1} ms, p99 {:.1} ms; without enforcement p50 {:.1} ms, p99 {:.1} ms (p99 ratio {:.2}); webhook answer p99 <= {server_p99} s (operator histogram)",
        g50.as_secs_f64() * 1e3,
        g99.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        g99.as_secs_f64() / p99.as_secs_f64().max(1e-9),
    );
    delete_pods(&ns, "bulk").await?;
    delete_pods(&plain, "bulk").await
}
