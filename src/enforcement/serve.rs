//! Starting the enforcement webhook with `sluice run`: its caches, its certificate (issued and
//! renewed by the operator, or read from cert-manager's mounted Secret), the `caBundle` of its
//! configuration, and the HTTPS server once the caches hold their first lists.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use kube::Client;
use tracing::{info, warn};

use super::{Stores, tls, webhook};
use crate::metrics::SharedMetrics;

/// Where the webhook's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Issued by the operator into a Secret; the CA is patched into the webhook configuration.
    Managed {
        /// The operator's namespace.
        namespace: String,
        /// The Secret's name.
        secret: String,
        /// DNS names and IP addresses of the certificate.
        hosts: Vec<String>,
        /// The MutatingWebhookConfiguration to keep `caBundle` on.
        config: String,
    },
    /// tls.crt and tls.key in a directory (cert-manager's Secret, mounted by the chart).
    Files(PathBuf),
}

/// Settings of the webhook.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Address of the HTTPS server.
    pub listen: SocketAddr,
    /// Its certificate's source.
    pub tls: TlsSource,
}

/// How often the certificate (and `caBundle`) is checked again: a renewal, another replica's new
/// certificate or a chart upgrade that emptied `caBundle` is repaired within this.
const REFRESH: Duration = Duration::from_secs(60);

/// The certificate and key now, and the CA when the operator manages it.
async fn load(client: &Client, source: &TlsSource) -> anyhow::Result<(String, String)> {
    match source {
        TlsSource::Managed {
            namespace,
            secret,
            hosts,
            config,
        } => {
            anyhow::ensure!(
                !hosts.is_empty(),
                "--webhook-hosts is required when the operator issues the webhook's certificate"
            );
            let issued = tls::ensure_secret(client, namespace, secret, hosts).await?;
            match tls::inject_ca_bundle(client, config, &issued.ca_pem).await {
                Ok(0) => {}
                Ok(n) => info!(
                    config,
                    webhooks = n,
                    "caBundle of the webhook configuration updated"
                ),
                Err(e) => {
                    warn!(config, error = %e, "could not update the webhook configuration's caBundle; retrying")
                }
            }
            Ok((issued.cert_pem, issued.key_pem))
        }
        TlsSource::Files(dir) => {
            let cert = tokio::fs::read_to_string(dir.join("tls.crt")).await?;
            let key = tokio::fs::read_to_string(dir.join("tls.key")).await?;
            Ok((cert, key))
        }
    }
}

/// Loads the certificate, starts the caches and spawns the server (which listens once the caches
/// are listed) and the refresh loop. The handle stops both.
pub async fn start(
    client: Client,
    config: WebhookConfig,
    metrics: SharedMetrics,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (cert, key) = load(&client, &config.tls).await?;
    let current = Arc::new(RwLock::new(tls::server_config(&cert, &key)?));
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let stores = Stores::start(&client);
    let router = webhook::router(stores.clone(), metrics);
    let serving = current.clone();
    Ok(tokio::spawn(async move {
        let refresh = async {
            loop {
                tokio::time::sleep(REFRESH).await;
                match load(&client, &config.tls).await {
                    Ok((cert, key)) => match tls::server_config(&cert, &key) {
                        Ok(c) => {
                            *current
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
                        }
                        Err(e) => {
                            warn!(error = %e, "webhook certificate unusable; keeping the previous one")
                        }
                    },
                    Err(e) => warn!(error = %e, "could not refresh the webhook certificate"),
                }
            }
        };
        let server = async {
            // Until the caches are listed every pod would look untargeted: the API server's
            // failurePolicy (Ignore) decides meanwhile, as it does while the operator is down.
            stores.ready().await;
            info!(address = %config.listen, path = webhook::PATH, "serving the enforcement webhook");
            webhook::serve(listener, serving, router).await;
        };
        tokio::join!(refresh, server);
    }))
}
