//! Model weights as an OCI artifact: one layer holding the model file, an empty config, and
//! Sluice's artifact type, so registries, cosign and `oras` all see a plain OCI 1.1 artifact.

use serde_json::json;

use crate::registry::{Registry, RegistryError};

/// The artifact type of a model pushed by `sluice push-model`.
pub const ARTIFACT_TYPE: &str = "application/vnd.sluice.model.v1";
/// The media type of its one layer, the model file.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.sluice.model.layer.v1";
/// OCI 1.1's empty config descriptor.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The manifest of a model artifact whose file `title` (size `size`) is blob `layer`.
pub fn manifest(layer: &str, size: usize, title: &str, config: &str) -> serde_json::Value {
    json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer,
            "size": size,
            "annotations": {"org.opencontainers.image.title": title},
        }],
    })
}

/// Pushes `data` (the model file named `title`) as a model artifact tagged `repo:tag`;
/// returns the manifest's digest.
pub async fn push(
    registry: &Registry,
    repo: &str,
    tag: &str,
    title: &str,
    data: Vec<u8>,
) -> Result<String, RegistryError> {
    let size = data.len();
    let layer = registry.push_blob(repo, data).await?;
    let config = registry.push_blob(repo, b"{}".to_vec()).await?;
    let body = serde_json::to_vec(&manifest(&layer, size, title, &config)).map_err(|e| {
        RegistryError::Other {
            reference: format!("{repo}:{tag}"),
            detail: e.to_string(),
        }
    })?;
    registry
        .push_manifest(&format!("{repo}:{tag}"), body, MANIFEST)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_an_oci_artifact_with_one_titled_layer() {
        let m = manifest("sha256:aa", 12, "model.json", "sha256:bb");
        assert_eq!(m["artifactType"], ARTIFACT_TYPE);
        assert_eq!(m["config"]["mediaType"], EMPTY_CONFIG);
        assert_eq!(m["layers"][0]["size"], 12);
        assert_eq!(
            m["layers"][0]["annotations"]["org.opencontainers.image.title"],
            "model.json"
        );
    }
}
