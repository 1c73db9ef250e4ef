//! Sluice: a Kubernetes operator that gates ML prediction-server releases behind Tekton security
//! stages, signs the image that passed, and rolls it out by digest.

pub mod api;
pub mod cli;
pub mod crds;
pub mod dag;
pub mod gates;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod olm;
pub mod operator;
pub mod reconcile;
pub mod registry;
pub mod rollout;
pub mod signing;
pub mod tekton;
pub mod telemetry;
pub mod text;

#[cfg(test)]
mod fixtures;

/// Selects rustls' process-wide crypto provider. kube links ring and the registry client links
/// aws-lc-rs, so rustls cannot choose on its own and would panic on the first TLS connection.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
