//! Sluice: a Kubernetes operator that gates ML prediction-server releases behind Tekton security
//! stages, signs the image that passed, and rolls it out by digest.

pub mod api;
pub mod cli;
pub mod dag;
pub mod enforcement;
pub mod gates;
pub mod leader;
pub mod metrics;
pub mod model_artifact;
pub mod names;
pub mod operator;
pub mod reconcile;
pub mod registry;
pub mod rollout;
pub mod signing;
pub mod tekton;
pub mod telemetry;
pub mod text;
pub mod workqueue;

#[cfg(test)]
mod fixtures;

/// The operator's version (its image tag and the OLM bundle's version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Selects rustls' process-wide crypto provider. kube links ring and the registry client links
/// aws-lc-rs, so rustls cannot choose on its own and would panic on the first TLS connection.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
