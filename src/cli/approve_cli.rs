//! `sluice approve`: approve the signed digest of a ModelRelease for rollout.

use anyhow::{Context, bail};
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::api::{ANNOTATION_APPROVED_DIGEST, FIELD_MANAGER};

/// Sets `sluice.dev/approved-digest` to the release's signed digest. With `expected`, refuses
/// unless that is the digest signed, so an approval reviewed for one build never releases another.
pub async fn approve(
    name: &str,
    namespace: Option<&str>,
    expected: Option<&str>,
) -> anyhow::Result<()> {
    let (ns, api, release) = super::read_release(name, namespace).await?;
    let status = release.status.unwrap_or_default();
    let (Some(image), Some(signature)) = (status.image, status.signature) else {
        bail!(
            "ModelRelease {ns}/{name} has no signed image yet (phase {}): approve it once its gates passed and it is signed",
            status.phase.as_str()
        );
    };
    if let Some(want) = expected
        && want != image.digest
    {
        bail!(
            "ModelRelease {ns}/{name} signed {}, not {want}: nothing approved",
            image.digest
        );
    }
    let patch = json!({"metadata": {"annotations": {ANNOTATION_APPROVED_DIGEST: image.digest}}});
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("annotating ModelRelease {ns}/{name}"))?;
    eprintln!(
        "approved {}@{} (signature {}) for rollout by ModelRelease {ns}/{name}",
        image.repository, image.digest, signature.reference
    );
    Ok(())
}
