//! OCI registry access: confirm a manifest exists, read and write cosign's `.sig` artifacts.

use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol, Config, ImageLayer},
    errors::{OciDistributionError, OciErrorCode},
    manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest},
    secrets::RegistryAuth,
};

use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::{
    metrics::{RegistryLabels, RegistryTimings},
    signing::{DSSE_MEDIA_TYPE, SIMPLE_SIGNING_MEDIA_TYPE},
};

/// The two artifacts cosign attaches to an image digest, each under its own tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// `sha256-<hex>.sig`: simple-signing payloads with their signature annotation.
    Signature,
    /// `sha256-<hex>.att`: DSSE envelopes holding in-toto statements.
    Attestation,
}

impl Attached {
    /// `<repo>:sha256-<hex>.<sig|att>`.
    pub fn tag(self, repo: &str, digest: &str) -> String {
        let suffix = match self {
            Attached::Signature => "sig",
            Attached::Attestation => "att",
        };
        format!("{repo}:{}.{suffix}", digest.replace(':', "-"))
    }

    fn media_type(self) -> &'static str {
        match self {
            Attached::Signature => SIMPLE_SIGNING_MEDIA_TYPE,
            Attached::Attestation => DSSE_MEDIA_TYPE,
        }
    }
}

/// Errors talking to the registry. Credentials never appear in them.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference cannot be parsed.
    #[error("invalid image reference {0}")]
    Reference(String),
    /// The image digest is not in the repository.
    #[error("{0} does not exist in the registry")]
    NotFound(String),
    /// The registry refused our credentials, or none were given.
    #[error("the registry refused access to {0}: check the credentials Secret")]
    Unauthorized(String),
    /// Anything else.
    #[error("registry request for {reference} failed: {detail}")]
    Other {
        /// What was accessed.
        reference: String,
        /// The client's message.
        detail: String,
    },
}

impl RegistryError {
    /// Bounded category.
    pub fn category(&self) -> &'static str {
        match self {
            RegistryError::Reference(_) => "InvalidReference",
            RegistryError::NotFound(_) => "DigestNotFound",
            RegistryError::Unauthorized(_) => "RegistryUnauthorized",
            RegistryError::Other { .. } => "RegistryError",
        }
    }
}

/// A registry client with its credentials; clones share connections and tokens.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    timings: Option<RegistryTimings>,
}

/// Whether a registry host is on the loopback interface (plain HTTP, as go-containerregistry does).
pub fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

impl Registry {
    /// A client using HTTPS except for the given hosts (host:port).
    pub fn new(insecure_hosts: Vec<String>, auth: RegistryAuth) -> Self {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_hosts),
            ..ClientConfig::default()
        };
        Self {
            client: Client::new(config),
            auth,
            timings: None,
        }
    }

    /// The same client, recording each request's duration in `timings`.
    #[must_use]
    pub fn timed(mut self, timings: RegistryTimings) -> Self {
        self.timings = Some(timings);
        self
    }

    fn observe<T, E>(&self, operation: &'static str, started: Instant, result: &Result<T, E>) {
        if let Some(t) = &self.timings {
            let labels = RegistryLabels {
                operation,
                result: if result.is_ok() { "ok" } else { "error" },
            };
            t.get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// A client that speaks plain HTTP to the registry of `repo` when it is on loopback (or when
    /// `allow_http` is set), HTTPS otherwise.
    pub fn for_repository(repo: &str, allow_http: bool, auth: RegistryAuth) -> Self {
        let host = repo.split('/').next().unwrap_or_default().to_string();
        let insecure = if allow_http || is_loopback(&host) {
            vec![host]
        } else {
            vec![]
        };
        Self::new(insecure, auth)
    }

    fn reference(s: &str) -> Result<Reference, RegistryError> {
        s.parse()
            .map_err(|_| RegistryError::Reference(s.to_string()))
    }

    /// Fails unless `repo@digest` exists.
    pub async fn require_manifest(&self, repo: &str, digest: &str) -> Result<(), RegistryError> {
        let name = format!("{repo}@{digest}");
        match self.resolve_digest(&name).await? {
            found if found == digest => Ok(()),
            other => Err(RegistryError::Other {
                reference: name,
                detail: format!("registry answered digest {other}"),
            }),
        }
    }

    /// The digest the manifest `reference` (usually a tag) names now.
    pub async fn resolve_digest(&self, reference: &str) -> Result<String, RegistryError> {
        let parsed = Self::reference(reference)?;
        let started = Instant::now();
        let result = self.client.fetch_manifest_digest(&parsed, &self.auth).await;
        self.observe("resolve", started, &result);
        result.map_err(|e| classify(reference, e))
    }

    /// The layers of the `kind` artifact attached to `repo@digest`, or none when it does not exist.
    pub async fn attached_layers(
        &self,
        kind: Attached,
        repo: &str,
        digest: &str,
    ) -> Result<Vec<ImageLayer>, RegistryError> {
        Ok(self.attached(kind, repo, digest).await?.layers)
    }

    /// The `kind` artifact attached to `repo@digest` with its manifest digest, or an empty one.
    pub async fn attached(
        &self,
        kind: Attached,
        repo: &str,
        digest: &str,
    ) -> Result<AttachedArtifact, RegistryError> {
        let tag = kind.tag(repo, digest);
        let reference = Self::reference(&tag)?;
        let started = Instant::now();
        let pulled = self
            .client
            .pull(&reference, &self.auth, vec![kind.media_type()])
            .await;
        self.observe("pull", started, &pulled);
        match pulled {
            Ok(image) => Ok(AttachedArtifact {
                layers: image.layers,
                manifest_digest: image.digest.filter(|d| d.starts_with("sha256:")),
            }),
            Err(e) => match classify(&tag, e) {
                RegistryError::NotFound(_) => Ok(AttachedArtifact::default()),
                other => Err(other),
            },
        }
    }

    /// Pushes the `kind` artifact of `repo@digest` with exactly these layers; returns the digest
    /// of the manifest pushed.
    pub async fn push_attached_layers(
        &self,
        kind: Attached,
        repo: &str,
        digest: &str,
        layers: Vec<ImageLayer>,
    ) -> Result<String, RegistryError> {
        let tag = kind.tag(repo, digest);
        let reference = Self::reference(&tag)?;
        let config = Config::oci_v1(b"{}".to_vec(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
        // Serialized here with standard JSON escaping: oci-client's canonical form leaves a
        // newline raw inside a string (an annotation holding a PEM certificate), which registries
        // refuse as invalid JSON. The manifest's digest is then known without asking.
        let body = serde_json::to_vec(&manifest).map_err(|e| RegistryError::Other {
            reference: tag.clone(),
            detail: e.to_string(),
        })?;
        let manifest_digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
        let started = Instant::now();
        let pushed = self
            .push_parts(&reference, &layers, config, &manifest, body)
            .await;
        self.observe("push", started, &pushed);
        pushed
            .map(|()| manifest_digest)
            .map_err(|e| classify(&tag, e))
    }

    async fn push_parts(
        &self,
        reference: &Reference,
        layers: &[ImageLayer],
        config: Config,
        manifest: &OciImageManifest,
        body: Vec<u8>,
    ) -> Result<(), OciDistributionError> {
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        for (layer, descriptor) in layers.iter().zip(&manifest.layers) {
            self.client
                .push_blob(reference, layer.data.clone(), &descriptor.digest)
                .await?;
        }
        self.client
            .push_blob(reference, config.data, &manifest.config.digest)
            .await?;
        let media_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
        self.client
            .push_manifest_raw(reference, body, media_type)
            .await
            .map(drop)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An artifact attached to an image (`.sig`, `.att`): its layers and manifest digest.
#[derive(Debug, Default)]
pub struct AttachedArtifact {
    /// The layers, in manifest order.
    pub layers: Vec<ImageLayer>,
    /// `sha256:<hex>` of the manifest, when it exists.
    pub manifest_digest: Option<String>,
}

fn classify(reference: &str, e: OciDistributionError) -> RegistryError {
    let not_found = |code: &OciErrorCode| {
        matches!(
            code,
            OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown
        )
    };
    match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            RegistryError::NotFound(reference.to_string())
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| not_found(&x.code)) =>
        {
            RegistryError::NotFound(reference.to_string())
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            RegistryError::Unauthorized(reference.to_string())
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => RegistryError::Unauthorized(reference.to_string()),
        OciDistributionError::ServerError { code: 404, .. } => {
            RegistryError::NotFound(reference.to_string())
        }
        _ => RegistryError::Other {
            reference: reference.to_string(),
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_use_plain_http() {
        assert!(is_loopback("127.0.0.1:35000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
