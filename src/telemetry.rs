//! Structured logging, and OpenTelemetry tracing when an OTLP endpoint is configured.
//!
//! Tracing is off by default. With `--otlp-endpoint` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), every reconcile is a span exported over OTLP/HTTP, and
//! all the reconciles of one object share one trace: its trace id is derived from the object's
//! UID, so a release reads in a tracing UI as one trace from creation to its end, across restarts
//! and replicas, without storing anything on the object.

use opentelemetry::{
    Context,
    trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
    },
};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use sha2::{Digest, Sha256};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

/// Keeps the span exporter alive; dropping it flushes the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Bounded: an unreachable collector must not hold a stopping operator.
            let _ = p.shutdown_with_timeout(std::time::Duration::from_secs(3));
        }
    }
}

/// The OTLP/HTTP traces URL from the flag (a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`), or
/// `None` to let the exporter read the standard variables when one of them is set.
pub enum Otlp {
    /// Tracing off.
    Off,
    /// Export to this base URL (`/v1/traces` is appended).
    Endpoint(String),
    /// Export where the standard OTEL_EXPORTER_OTLP_* variables say.
    FromEnv,
}

impl Otlp {
    /// The flag's value if given, else the standard variables if set, else off.
    pub fn resolve(flag: Option<String>) -> Self {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
        match flag.filter(|f| !f.trim().is_empty()) {
            Some(url) => Otlp::Endpoint(url),
            None if set("OTEL_EXPORTER_OTLP_ENDPOINT")
                || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") =>
            {
                Otlp::FromEnv
            }
            None => Otlp::Off,
        }
    }
}

/// Installs the global subscriber: JSON lines when `json`, human-readable otherwise, plus the
/// OTLP span exporter when `otlp` is on (it sends from a thread of its own, outside the async
/// runtime). RUST_LOG overrides the default level (info).
pub fn init(json: bool, otlp: Otlp) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn"));
    let (provider, problem) = match tracer_provider(&otlp) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sluice"))
            // Only the reconcile spans and what they contain, not every library's debug spans.
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("sluice")
            }))
    });
    let log = if json {
        fmt::layer().json().flatten_event(true).boxed()
    } else {
        fmt::layer().boxed()
    };
    // A subscriber already installed (as in tests) is fine.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(log)
        .with(otel)
        .try_init();
    if let Some(e) = problem {
        tracing::error!(error = %e, "OpenTelemetry tracing is off: the OTLP exporter could not be built");
    }
    Telemetry { provider }
}

fn tracer_provider(otlp: &Otlp) -> Result<Option<SdkTracerProvider>, String> {
    let builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let exporter = match otlp {
        Otlp::Off => return Ok(None),
        Otlp::Endpoint(base) => {
            use opentelemetry_otlp::WithExportConfig;
            builder
                .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
                .build()
        }
        Otlp::FromEnv => builder.build(),
    }
    .map_err(|e| e.to_string())?;
    let resource = Resource::builder()
        .with_service_name("sluice")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The trace every reconcile of the object with this UID belongs to: a remote parent whose trace
/// id is the first 16 bytes of SHA-256(uid) and span id the next 8.
pub fn object_trace(uid: &str) -> Context {
    let hash = Sha256::digest(uid.as_bytes());
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&hash[..16]);
    span.copy_from_slice(&hash[16..24]);
    let parent = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(parent)
}

/// Makes `span` a child of its object's trace (a no-op when tracing is off).
pub fn join_object_trace(span: &tracing::Span, uid: Option<&str>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(uid) = uid {
        let _ = span.set_parent(object_trace(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reconcile_of_an_object_joins_one_trace_and_objects_get_their_own() {
        let id = |uid: &str| object_trace(uid).span().span_context().trace_id();
        assert_eq!(id("9f1c"), id("9f1c"));
        assert_ne!(id("9f1c"), id("9f1d"));
        assert!(object_trace("9f1c").span().span_context().is_valid());
        assert!(object_trace("9f1c").span().span_context().is_sampled());
    }

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_given() {
        assert!(matches!(
            Otlp::resolve(Some("http://collector:4318".into())),
            Otlp::Endpoint(u) if u == "http://collector:4318"
        ));
        assert!(matches!(tracer_provider(&Otlp::Off), Ok(None)));
    }
}
