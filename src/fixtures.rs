//! Test fixtures: object builders and a mocked API server that checks each request in turn.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use crate::{
    api::{ModelRelease, SecurePipeline},
    metrics::Metrics,
    reconcile::Context,
    tekton::TaskRun,
};

/// The fixed clock of every test: 2026-11-23T12:00:00Z.
pub fn test_now() -> jiff::Timestamp {
    "2026-11-23T12:00:00Z".parse().expect("valid timestamp")
}

/// A pipeline like the design's: tests and audit in parallel, then the build.
pub fn pipeline() -> SecurePipeline {
    serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "SecurePipeline",
        "metadata": {"name": "predictor", "namespace": "evip", "uid": "p-uid", "generation": 1},
        "spec": {
            "source": {"url": "https://git.example/evip/predictor.git"},
            "image": {"repository": "registry.example/evip/predictor"},
            "stages": [
                {"name": "unit-tests", "taskRef": {"name": "pytest"}, "gate": {"tests": {"maxFailures": 0}}},
                {"name": "dependency-audit", "taskRef": {"name": "pip-audit"}, "gate": {"findings": {"maxSeverity": "medium"}}},
                {"name": "build", "runAfter": ["unit-tests", "dependency-audit"], "taskRef": {"name": "buildah"}, "produces": "image"},
                {"name": "dast", "when": "postDeploy", "taskRef": {"name": "zap"}, "gate": {"findings": {"maxSeverity": "low"}}}
            ]
        }
    }))
    .expect("valid pipeline")
}

/// A release of revision 3f2a9c1 through `pipeline()`.
pub fn release() -> ModelRelease {
    serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "ModelRelease",
        "metadata": {
            "name": "predictor-42", "namespace": "evip", "uid": "r-uid", "generation": 1,
            "labels": {"team": "evip"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "note": "x"}
        },
        "spec": {
            "pipelineRef": {"name": "predictor"}, "revision": "3f2a9c1",
            "model": {"name": "ev-load-15min", "version": "42"},
            "target": {"deployment": "predictor", "container": "server"}
        }
    }))
    .expect("valid release")
}

/// A finished TaskRun of `release()` for `stage`, as Sluice creates it, with the given Succeeded
/// status and results.
pub fn finished_task_run(stage: &str, succeeded: bool, results: &[(&str, &str)]) -> TaskRun {
    let results: Vec<Value> = results
        .iter()
        .map(|(n, v)| json!({"name": n, "type": "string", "value": v}))
        .collect();
    let pipeline = pipeline();
    let spec = pipeline
        .spec
        .stages
        .iter()
        .find(|s| s.name == stage)
        .unwrap_or_else(|| panic!("no stage {stage} in the fixture pipeline"));
    let mut tr = crate::tekton::build(&release(), &pipeline, spec, None, None);
    tr.status = Some(
        serde_json::from_value(json!({
            "conditions": [{"type": "Succeeded", "status": if succeeded { "True" } else { "False" },
                            "reason": if succeeded { "Succeeded" } else { "Failed" }, "message": "done"}],
            "results": results,
            "completionTime": "2026-11-23T11:59:00Z"
        }))
        .expect("valid TaskRun status"),
    );
    tr
}

/// A TaskRun of `release()` for `stage` that is still running.
pub fn running_task_run(stage: &str) -> TaskRun {
    let mut tr = finished_task_run(stage, true, &[]);
    if let Some(s) = tr.status.as_mut() {
        s.conditions[0].status = "Unknown".into();
        s.results.clear();
    }
    tr
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The mocked API server side of a test: answers requests in the order the test expects them.
pub struct ApiServer(Handle);

/// A request as received, with its body parsed.
pub struct Received {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// JSON body, or Null.
    pub body: Value,
    send: tower_test::mock::SendResponse<Response<Body>>,
}

impl Received {
    /// Answers with a JSON body.
    pub fn respond(self, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("serializable");
        self.send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(bytes))
                .expect("valid response"),
        );
    }

    /// Answers 200 with the body.
    pub fn ok(self, body: &Value) {
        self.respond(StatusCode::OK, body);
    }

    /// Answers 404 Not Found.
    pub fn not_found(self) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
        self.respond(StatusCode::NOT_FOUND, &status);
    }
}

impl ApiServer {
    /// Waits for the next request and checks its method and path (and query, when `uri` has one).
    pub async fn expect(&mut self, method: Method, uri: &str) -> Received {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {uri}"));
        let (request, send) = next.unwrap_or_else(|| panic!("client gone before {method} {uri}"));
        let got_uri = request.uri().to_string();
        let got_method = request.method().clone();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("readable body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        assert_eq!(got_method, method, "method of {got_uri}");
        if uri.contains('?') {
            assert_eq!(got_uri, uri);
        } else {
            assert_eq!(got_uri.split('?').next(), Some(uri), "path");
        }
        Received {
            method: got_method,
            uri: got_uri,
            body,
            send,
        }
    }

    /// Answers an Event POST, checking its reason.
    pub async fn expect_event(&mut self, reason: &str) -> Value {
        let r = self
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/evip/events",
            )
            .await;
        assert_eq!(r.body["reason"], reason, "event {}", r.body);
        let body = r.body.clone();
        r.ok(&body);
        body
    }

    /// Asserts that no request arrives within a short while.
    pub async fn expect_nothing_more(&mut self) {
        let next =
            tokio::time::timeout(std::time::Duration::from_millis(200), self.0.next_request())
                .await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

impl Context {
    /// A context whose client talks to a mocked API server, with the fixed test clock.
    pub fn test() -> (Arc<Context>, ApiServer) {
        crate::install_crypto_provider();
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let mut ctx = Context::new(client, Arc::new(Metrics::default()));
        ctx.now = test_now;
        (Arc::new(ctx), ApiServer(handle))
    }
}
