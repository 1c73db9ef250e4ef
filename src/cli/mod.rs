//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{leader::LeaseConfig, operator, telemetry};

mod advise_cli;
mod approve_cli;
mod signing_cli;

/// Sluice: gate ML model releases behind Tekton security stages.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (uses the in-cluster config or KUBECONFIG).
    Run(Box<RunArgs>),
    /// Write a cosign-compatible key pair (cosign.key encrypted with COSIGN_PASSWORD, cosign.pub),
    /// or store it in a Kubernetes Secret with --k8s.
    GenerateKeyPair {
        /// File name prefix, as cosign's --output-key-prefix.
        #[arg(long, default_value = "cosign")]
        output_key_prefix: String,
        /// Create the Secret NAMESPACE/NAME (cosign.key, cosign.password, cosign.pub) instead of
        /// the key file, as `cosign generate-key-pair k8s://NAMESPACE/NAME` does; cosign.pub is
        /// still written locally.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        k8s: Option<String>,
    },
    /// Sign IMAGE@DIGEST with a cosign key and push the signature to the registry.
    Sign(SignArgs),
    /// Verify the signature of IMAGE@DIGEST in the registry against a cosign public key.
    Verify(VerifyArgs),
    /// Push a model file as an OCI artifact (REPOSITORY:TAG) and print REPOSITORY@DIGEST, the
    /// value for a ModelRelease's spec.model.artifact.
    PushModel {
        /// The model file (weights, a fitted model's JSON, ...).
        file: PathBuf,
        /// Where to push it: REPOSITORY:TAG.
        reference: String,
        /// Use plain HTTP for a registry that is not on loopback.
        #[arg(long)]
        allow_http_registry: bool,
    },
    /// Print the requirement changes that fix every fixable finding of a ModelRelease, as a patch
    /// to the app's requirements file (apply it with `git apply` or `patch -p1`).
    Advise {
        /// The ModelRelease.
        release: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// The app's requirements file, in the app's checkout.
        #[arg(long, default_value = "requirements.txt")]
        requirements: PathBuf,
    },
    /// Approve the signed digest of a ModelRelease with `approval: manual` for rollout.
    Approve {
        /// The ModelRelease.
        release: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Refuse unless this is the digest that was signed (sha256:HEX).
        #[arg(long)]
        digest: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Log JSON lines instead of text.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity of this replica in the election (pod name by default).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Registries (host:port) to reach over plain HTTP instead of HTTPS; comma-separated or repeated.
    #[arg(
        long = "insecure-registry",
        env = "SLUICE_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// PKCS#11 module (.so) for pipelines that sign with an HSM key (spec.signing.pkcs11).
    #[arg(long, env = "SLUICE_PKCS11_MODULE")]
    pkcs11_module: Option<std::path::PathBuf>,
    /// OTLP/HTTP collector base URL (e.g. http://otel-collector:4318) for OpenTelemetry traces; off when unset (the standard OTEL_EXPORTER_OTLP_ENDPOINT works too).
    #[arg(long, env = "SLUICE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// ModelRelease reconciles in flight at once (0: unbounded); the rest wait in the work queue.
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_RECONCILES", default_value_t = operator::DEFAULT_MAX_CONCURRENT_RECONCILES)]
    max_concurrent_reconciles: u16,
    /// Address of the enforcement webhook's HTTPS server (e.g. 0.0.0.0:9443); off when unset.
    #[arg(long, env = "SLUICE_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// Directory holding tls.crt and tls.key (cert-manager's Secret mounted); when unset the
    /// operator issues its own CA and certificate into --webhook-secret.
    #[arg(long, env = "SLUICE_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<std::path::PathBuf>,
    /// Secret (in the operator's namespace) holding the webhook's self-issued CA and certificate.
    #[arg(
        long,
        env = "SLUICE_WEBHOOK_SECRET",
        default_value = "sluice-webhook-tls"
    )]
    webhook_secret: String,
    /// Host names and IP addresses the webhook's certificate is issued for; comma-separated.
    #[arg(long, env = "SLUICE_WEBHOOK_HOSTS", value_delimiter = ',')]
    webhook_hosts: Vec<String>,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps equal to its CA.
    #[arg(
        long,
        env = "SLUICE_WEBHOOK_CONFIG",
        default_value = "sluice-enforcement"
    )]
    webhook_config: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, env = "SLUICE_LEASE_SECONDS", default_value_t = operator::DEFAULT_LEASE_DURATION.as_secs())]
    lease_seconds: u64,
}

#[derive(clap::Args, Debug)]
struct SignArgs {
    /// cosign.key (encrypted; the password comes from COSIGN_PASSWORD) or a PKCS#8 EC key.
    #[arg(long)]
    key: PathBuf,
    /// Annotation recorded in the signed payload, key=value (repeatable).
    #[arg(long = "annotation", short = 'a')]
    annotations: Vec<String>,
    /// Use plain HTTP for a registry that is not on loopback.
    #[arg(long)]
    allow_http_registry: bool,
    /// The image, by digest: REPOSITORY@sha256:HEX.
    image: String,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// cosign.pub.
    #[arg(long)]
    key: PathBuf,
    /// Also verify Sluice's gates attestation (.att) and print its predicate.
    #[arg(long)]
    attestation: bool,
    /// Use plain HTTP for a registry that is not on loopback.
    #[arg(long)]
    allow_http_registry: bool,
    /// The image, by digest: REPOSITORY@sha256:HEX.
    image: String,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    crate::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::GenerateKeyPair {
            output_key_prefix,
            k8s: None,
        } => report(signing_cli::generate_key_pair(&output_key_prefix)),
        Command::GenerateKeyPair {
            output_key_prefix,
            k8s: Some(secret),
        } => report(block_on(signing_cli::generate_key_pair_secret(
            &output_key_prefix,
            &secret,
        ))),
        Command::Sign(a) => report(block_on(signing_cli::sign(
            &a.key,
            &a.annotations,
            a.allow_http_registry,
            &a.image,
        ))),
        Command::Approve {
            release,
            namespace,
            digest,
        } => report(block_on(approve_cli::approve(
            &release,
            namespace.as_deref(),
            digest.as_deref(),
        ))),
        Command::Advise {
            release,
            namespace,
            requirements,
        } => report(block_on(advise_cli::advise(
            &release,
            namespace.as_deref(),
            &requirements,
        ))),
        Command::PushModel {
            file,
            reference,
            allow_http_registry,
        } => report(block_on(push_model(&file, &reference, allow_http_registry))),
        Command::Verify(a) => report(block_on(signing_cli::verify(
            &a.key,
            a.attestation,
            a.allow_http_registry,
            &a.image,
        ))),
    }
}

/// The ModelRelease `name` of `namespace` (the kubeconfig context's when `None`): its namespace,
/// an API for it, and the release.
async fn read_release(
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<(
    String,
    kube::Api<crate::api::ModelRelease>,
    crate::api::ModelRelease,
)> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster)")?;
    let ns = namespace.unwrap_or(client.default_namespace()).to_string();
    let api = kube::Api::<crate::api::ModelRelease>::namespaced(client, &ns);
    let release = api
        .get(name)
        .await
        .with_context(|| format!("reading ModelRelease {ns}/{name}"))?;
    Ok((ns, api, release))
}

/// `sluice push-model`: pushes the file, prints `repository@digest`.
async fn push_model(
    file: &std::path::Path,
    reference: &str,
    allow_http: bool,
) -> anyhow::Result<()> {
    let (repo, tag) = reference
        .rsplit_once(':')
        .filter(|(repo, tag)| !tag.contains('/') && !repo.is_empty() && !tag.is_empty())
        .with_context(|| format!("{reference}: expected REPOSITORY:TAG"))?;
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let title = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let registry = crate::registry::Registry::for_repository(
        repo,
        allow_http,
        oci_client::secrets::RegistryAuth::Anonymous,
    );
    let digest = crate::model_artifact::push(&registry, repo, tag, &title, data)
        .await
        .with_context(|| format!("pushing {reference}"))?;
    println!("{repo}@{digest}");
    Ok(())
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(f)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> ExitCode {
    // Held to the end: dropping it flushes the spans not yet exported.
    let _telemetry = telemetry::init(args.log_json, telemetry::Otlp::resolve(args.otlp_endpoint));
    let identity = args.identity.unwrap_or_else(default_identity);
    let webhook = args
        .webhook_listen
        .map(|listen| crate::enforcement::serve::WebhookConfig {
            listen,
            tls: match args.webhook_cert_dir {
                Some(dir) => crate::enforcement::serve::TlsSource::Files(dir),
                None => crate::enforcement::serve::TlsSource::Managed {
                    namespace: args.lease_namespace.clone(),
                    secret: args.webhook_secret,
                    hosts: args.webhook_hosts,
                    config: args.webhook_config,
                },
            },
        });
    let config = operator::RunConfig {
        webhook,
        listen: args.listen,
        insecure_registries: args.insecure_registries,
        pkcs11_module: args.pkcs11_module,
        max_concurrent_reconciles: args.max_concurrent_reconciles,
        lease: LeaseConfig {
            name: args.lease_name,
            namespace: args.lease_namespace,
            identity,
            duration: Duration::from_secs(args.lease_seconds.max(2)),
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice run: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(operator::run(config));
    // A blocking task stuck in a system call must not keep a stopping operator alive.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            operator::report(&e);
            ExitCode::FAILURE
        }
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sluice".into());
    format!("{host}-{}", std::process::id())
}
