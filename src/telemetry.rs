//! Structured logging.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber: JSON lines when `json`, human-readable otherwise. RUST_LOG
/// overrides the default level (info).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init()
    } else {
        registry.with(fmt::layer()).try_init()
    };
    // A subscriber already installed (as in tests) is fine.
    drop(result);
}
