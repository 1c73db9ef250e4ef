//! OCI registry access, knowing nothing of what is stored: resolve a reference to a digest,
//! pull an artifact's layers, push layers as an artifact under a tag. Where signatures live (tags,
//! media types, annotations) is `crate::signing::storage`'s business.

use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol, Config, ImageLayer},
    errors::{OciDistributionError, OciErrorCode},
    manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest},
    secrets::RegistryAuth,
};

use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::metrics::{RegistryLabels, RegistryTimings};

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

    /// The artifact `reference` names, with only layers of `media_types`; `None` when it does
    /// not exist.
    pub async fn pull_layers(
        &self,
        reference: &str,
        media_types: &[&str],
    ) -> Result<Option<Artifact>, RegistryError> {
        let parsed = Self::reference(reference)?;
        let started = Instant::now();
        let pulled = self
            .client
            .pull(&parsed, &self.auth, media_types.to_vec())
            .await;
        self.observe("pull", started, &pulled);
        match pulled {
            Ok(image) => Ok(Some(Artifact {
                layers: image.layers,
                manifest_digest: image.digest.filter(|d| d.starts_with("sha256:")),
            })),
            Err(e) => match classify(reference, e) {
                RegistryError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Pushes exactly these layers as an OCI artifact (empty config) under the tag `reference`,
    /// provided the tag still names `expected` (`None`: no manifest) just before the manifest is
    /// written; returns the digest of the manifest pushed, or `Moved` when the tag moved.
    pub async fn push_layers(
        &self,
        reference: &str,
        layers: Vec<ImageLayer>,
        expected: Option<&str>,
    ) -> Result<Pushed, RegistryError> {
        let config = Config::oci_v1(b"{}".to_vec(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
        // Serialized here with standard JSON escaping: oci-client's canonical form leaves a
        // newline raw inside a string (an annotation holding a PEM certificate), which registries
        // refuse as invalid JSON.
        let body = serde_json::to_vec(&manifest).map_err(|e| RegistryError::Other {
            reference: reference.to_string(),
            detail: e.to_string(),
        })?;
        for layer in &layers {
            self.push_blob(reference, layer.data.to_vec()).await?;
        }
        self.push_blob(reference, config.data.to_vec()).await?;
        self.push_manifest_if(reference, body, OCI_IMAGE_MEDIA_TYPE, expected)
            .await
    }

    /// Writes a manifest under the tag `reference` provided the tag still names `expected`
    /// (`None`: no manifest); `Moved`, writing nothing, when it does not. The registry API has no
    /// compare-and-swap on a tag: the check is as late as it can be, right before the write (one
    /// round trip of window remains; `signing::storage` looks again afterwards).
    pub async fn push_manifest_if(
        &self,
        reference: &str,
        body: Vec<u8>,
        media_type: &'static str,
        expected: Option<&str>,
    ) -> Result<Pushed, RegistryError> {
        if self.current_digest(reference).await?.as_deref() != expected {
            return Ok(Pushed::Moved);
        }
        self.push_manifest(reference, body, media_type)
            .await
            .map(Pushed::Pushed)
    }

    /// The manifest `reference` names: its bytes (at most `max`), digest and media type; `None`
    /// when there is none.
    pub async fn manifest(
        &self,
        reference: &str,
        max: usize,
    ) -> Result<Option<RawManifest>, RegistryError> {
        let parsed = Self::reference(reference)?;
        let started = Instant::now();
        let pulled = self
            .client
            .pull_manifest_raw(&parsed, &self.auth, MANIFEST_MEDIA_TYPES)
            .await;
        self.observe("manifest", started, &pulled);
        let (bytes, digest) = match pulled {
            Ok(p) => p,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(classify(reference, e)),
        };
        if bytes.len() > max {
            return Err(RegistryError::Other {
                reference: reference.to_string(),
                detail: format!("manifest larger than {max} bytes"),
            });
        }
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());
        Ok(Some(RawManifest {
            bytes: bytes.to_vec(),
            digest,
            media_type,
        }))
    }

    /// Uploads `data` as a blob of `repo`; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: Vec<u8>) -> Result<String, RegistryError> {
        let reference = Self::reference(repo)?;
        let digest = sha256_digest(&data);
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        let started = Instant::now();
        let pushed = self.client.push_blob(&reference, data, &digest).await;
        self.observe("push", started, &pushed);
        pushed.map_err(|e| classify(repo, e))?;
        Ok(digest)
    }

    /// Writes a manifest (`body`, of `media_type`) under `reference` (a tag, or `repo@digest`);
    /// returns its digest.
    pub async fn push_manifest(
        &self,
        reference: &str,
        body: Vec<u8>,
        media_type: &'static str,
    ) -> Result<String, RegistryError> {
        let parsed = Self::reference(reference)?;
        let digest = sha256_digest(&body);
        self.client
            .store_auth_if_needed(parsed.resolve_registry(), &self.auth)
            .await;
        let started = Instant::now();
        let pushed = self
            .client
            .push_manifest_raw(&parsed, body, http::HeaderValue::from_static(media_type))
            .await;
        self.observe("push", started, &pushed);
        pushed.map_err(|e| classify(reference, e))?;
        Ok(digest)
    }

    /// A blob of `repo`, at most `max` bytes, its digest checked.
    pub async fn blob(
        &self,
        repo: &str,
        digest: &str,
        max: usize,
    ) -> Result<Vec<u8>, RegistryError> {
        let reference = Self::reference(repo)?;
        let descriptor = oci_client::manifest::OciDescriptor {
            digest: digest.to_string(),
            ..Default::default()
        };
        let mut out = Vec::new();
        let started = Instant::now();
        let pulled = self
            .client
            .pull_blob(&reference, &descriptor, &mut out)
            .await;
        self.observe("pull", started, &pulled);
        pulled.map_err(|e| classify(repo, e))?;
        if out.len() > max {
            return Err(RegistryError::Other {
                reference: format!("{repo}@{digest}"),
                detail: format!("blob larger than {max} bytes"),
            });
        }
        Ok(out)
    }

    /// The referrers of `repo@digest` (of `artifact_type` when given): the registry's referrers
    /// API where it has one, the referrers tag schema otherwise (what oci-client's reader does).
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<oci_client::manifest::ImageIndexEntry>, RegistryError> {
        let name = format!("{repo}@{digest}");
        let reference = Self::reference(&name)?;
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        let started = Instant::now();
        let pulled = self.client.pull_referrers(&reference, artifact_type).await;
        self.observe("referrers", started, &pulled);
        Ok(pulled.map_err(|e| classify(&name, e))?.manifests)
    }

    /// The digest `reference` names now, `None` when nothing is there.
    pub async fn current_digest(&self, reference: &str) -> Result<Option<String>, RegistryError> {
        match self.resolve_digest(reference).await {
            Ok(d) => Ok(Some(d)),
            Err(RegistryError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `sha256:<hex>` of `bytes`: the digest the registry names content by.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Manifest media types a pull accepts.
const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A manifest as the registry holds it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
}

/// The outcome of a conditional push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Written; the manifest's digest.
    Pushed(String),
    /// The tag no longer named the expected manifest: nothing was written over it.
    Moved,
}

/// An artifact in the registry: its layers and manifest digest.
#[derive(Debug, Default)]
pub struct Artifact {
    /// The layers, in manifest order.
    pub layers: Vec<ImageLayer>,
    /// `sha256:<hex>` of the manifest, when it exists.
    pub manifest_digest: Option<String>,
}

/// Whether the registry said the thing asked for does not exist.
fn is_not_found(e: &OciDistributionError) -> bool {
    let unknown = |code: &OciErrorCode| {
        matches!(
            code,
            OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown
        )
    };
    match e {
        OciDistributionError::ImageManifestNotFoundError(_)
        | OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|x| unknown(&x.code))
        }
        _ => false,
    }
}

fn classify(reference: &str, e: OciDistributionError) -> RegistryError {
    if is_not_found(&e) {
        return RegistryError::NotFound(reference.to_string());
    }
    match &e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => RegistryError::Unauthorized(reference.to_string()),
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
