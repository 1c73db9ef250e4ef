//! Where cosign keeps what it attaches to an image, in one place: the `.sig` and `.att` tags,
//! their media types, and a safe append of one layer to them.
//!
//! Those tags are read-modify-write (a new manifest holding every earlier layer plus one), and
//! the registry API has no compare-and-swap, so two writers (Tekton Chains, cosign, another
//! Sluice) can each drop the other's layer. An append here therefore re-reads and retries: it
//! pushes only while the tag still names the manifest it read (checked right before the manifest
//! write), looks again once a concurrent write would have landed, and writes back every layer it
//! has seen when another writer dropped one.

use std::time::Duration;

use oci_client::client::ImageLayer;

use super::{DSSE_MEDIA_TYPE, SIMPLE_SIGNING_MEDIA_TYPE, SigningError};
use crate::registry::{Artifact, Pushed, Registry, RegistryError};

/// Reads and writes of one append before it gives up (the tag kept moving).
const APPEND_ATTEMPTS: u32 = 8;
/// The least time an append waits after its write before it looks whether the write stood.
const SETTLE: Duration = Duration::from_millis(50);

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

    /// The media type of the artifact's layers.
    pub fn media_type(self) -> &'static str {
        match self {
            Attached::Signature => SIMPLE_SIGNING_MEDIA_TYPE,
            Attached::Attestation => DSSE_MEDIA_TYPE,
        }
    }
}

/// The `kind` artifact attached to `repo@digest`; empty when there is none.
pub async fn read(
    registry: &Registry,
    kind: Attached,
    repo: &str,
    digest: &str,
) -> Result<Artifact, RegistryError> {
    Ok(registry
        .pull_layers(&kind.tag(repo, digest), &[kind.media_type()])
        .await?
        .unwrap_or_default())
}

/// Pushes the `kind` artifact of `repo@digest` with exactly `layers`, whatever is there (tests
/// and tools that rewrite a signature on purpose).
pub async fn overwrite(
    registry: &Registry,
    kind: Attached,
    repo: &str,
    digest: &str,
    layers: Vec<ImageLayer>,
) -> Result<String, RegistryError> {
    let tag = kind.tag(repo, digest);
    let current = registry.current_digest(&tag).await?;
    match registry
        .push_layers(&tag, layers, current.as_deref())
        .await?
    {
        Pushed::Pushed(d) => Ok(d),
        Pushed::Moved => Err(moved(&tag)),
    }
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The manifest holding the layer.
    pub manifest_digest: Option<String>,
    /// Whether an equivalent layer was already there (nothing was pushed).
    pub already: bool,
}

/// Adds the layer `make` builds to the `kind` artifact of `repo@digest` unless a layer `is_same`
/// says is equivalent is there already, without dropping a layer another writer added meanwhile.
/// `make` (the signature: a KMS or HSM round trip) runs only when the layer is needed, once.
pub async fn append<F>(
    registry: &Registry,
    kind: Attached,
    repo: &str,
    digest: &str,
    make: impl FnOnce() -> F,
    is_same: impl Fn(&ImageLayer) -> bool,
) -> Result<Appended, SigningError>
where
    F: std::future::Future<Output = Result<ImageLayer, SigningError>>,
{
    let mut make = Some(make);
    let mut layer: Option<ImageLayer> = None;
    let tag = kind.tag(repo, digest);
    // Every layer read at any point: a writer that pushed over us may have dropped some.
    let mut seen: Vec<ImageLayer> = Vec::new();
    for attempt in 0..APPEND_ATTEMPTS {
        let current = read(registry, kind, repo, digest).await?;
        remember(&mut seen, &current.layers);
        if complete(&current.layers, &seen, &is_same) {
            return Ok(Appended {
                manifest_digest: current.manifest_digest,
                already: attempt == 0,
            });
        }
        let mut layers = current.layers.clone();
        for l in &seen {
            if !layers.contains(l) {
                layers.push(l.clone());
            }
        }
        if !layers.iter().any(&is_same) {
            if let Some(make) = make.take() {
                layer = Some(make().await?);
            }
            layers.extend(layer.clone());
        }
        let expected = current.manifest_digest.as_deref();
        let started = std::time::Instant::now();
        if let Pushed::Pushed(pushed) = registry.push_layers(&tag, layers, expected).await? {
            settle(started).await;
            let now = read(registry, kind, repo, digest).await?;
            remember(&mut seen, &now.layers);
            if now.manifest_digest.as_deref() == Some(pushed.as_str())
                || complete(&now.layers, &seen, &is_same)
            {
                return Ok(Appended {
                    manifest_digest: now.manifest_digest,
                    already: false,
                });
            }
        }
        backoff(attempt).await;
    }
    Err(moved(&tag).into())
}

fn moved(tag: &str) -> RegistryError {
    RegistryError::Other {
        reference: tag.to_string(),
        detail: "the tag kept changing under other writers; retrying later".into(),
    }
}

fn remember(seen: &mut Vec<ImageLayer>, layers: &[ImageLayer]) {
    for l in layers {
        if !seen.contains(l) {
            seen.push(l.clone());
        }
    }
}

/// Whether `layers` hold ours and every layer seen so far.
fn complete(
    layers: &[ImageLayer],
    seen: &[ImageLayer],
    is_same: &impl Fn(&ImageLayer) -> bool,
) -> bool {
    layers.iter().any(is_same) && seen.iter().all(|l| layers.contains(l))
}

/// Waits after a guarded write until another writer's write, checked just before ours and made
/// just after (without what we wrote), would have landed: twice our own write's time, at least
/// `SETTLE`. The caller then looks again, and starts over if it did.
pub(super) async fn settle(write_started: std::time::Instant) {
    tokio::time::sleep((write_started.elapsed() * 2).max(SETTLE)).await;
}

/// A short, growing, jittered pause, so writers that collided do not collide again.
pub(super) async fn backoff(attempt: u32) {
    let jitter = u64::from(std::process::id() ^ attempt.wrapping_mul(7919)) % 20;
    let base = 10u64 << attempt.min(5);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    tokio::time::sleep(Duration::from_millis(base + jitter + nanos % base)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(data: &str) -> ImageLayer {
        ImageLayer::new(
            data.as_bytes().to_vec(),
            SIMPLE_SIGNING_MEDIA_TYPE.into(),
            None,
        )
    }

    #[test]
    fn tags_follow_cosign() {
        assert_eq!(
            Attached::Signature.tag("r/x", "sha256:ab"),
            "r/x:sha256-ab.sig"
        );
        assert_eq!(
            Attached::Attestation.tag("r/x", "sha256:ab"),
            "r/x:sha256-ab.att"
        );
    }

    #[test]
    fn an_append_is_complete_only_with_ours_and_every_layer_seen() {
        let (a, b, ours) = (layer("a"), layer("b"), layer("ours"));
        let same = |l: &ImageLayer| l.data.as_ref() == b"ours";
        let mut seen = Vec::new();
        remember(&mut seen, &[a.clone(), b.clone()]);
        assert!(!complete(&[a.clone(), b.clone()], &seen, &same));
        // Another writer dropped b while adding ours: not complete, b goes back.
        assert!(!complete(&[a.clone(), ours.clone()], &seen, &same));
        assert!(complete(&[a, b, ours], &seen, &same));
    }
}
