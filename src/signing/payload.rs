//! The cosign simple-signing payload, byte for byte as cosign writes it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

/// `<repo>:sha256-<hex>.sig`, the tag cosign stores signatures under.
pub fn signature_tag(repo: &str, digest: &str) -> String {
    super::storage::Attached::Signature.tag(repo, digest)
}

/// The payload cosign signs for `repo@digest`: `optional` holds the annotations, or null.
pub fn simple_signing(repo: &str, digest: &str, annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let optional = if annotations.is_empty() {
        Value::Null
    } else {
        json!(annotations)
    };
    // serde_json keeps insertion order only with preserve_order; the object is written by hand so
    // the key order is cosign's: critical{identity, image, type}, optional.
    let critical = format!(
        r#"{{"identity":{{"docker-reference":{}}},"image":{{"docker-manifest-digest":{}}},"type":"cosign container image signature"}}"#,
        json!(repo),
        json!(digest)
    );
    format!(r#"{{"critical":{critical},"optional":{optional}}}"#).into_bytes()
}

/// What a payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The signed manifest digest.
    pub digest: String,
    /// The annotations.
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Raw {
    critical: Critical,
    #[serde(default)]
    optional: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    type_: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Parses a simple-signing payload; only string annotations are kept.
pub fn parse(data: &[u8]) -> Result<Payload, String> {
    let raw: Raw = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    if raw.critical.type_ != "cosign container image signature" {
        return Err(format!("unexpected type {:?}", raw.critical.type_));
    }
    let annotations = raw
        .optional
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
        .collect();
    Ok(Payload {
        digest: raw.critical.image.digest,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:d4c6d6c265558ca3f525f52ce08e2796ffad338e963440a5057c6a09de464792";

    #[test]
    fn matches_cosigns_layout_exactly() {
        let p = simple_signing("127.0.0.1:35000/evip/predictor", DIGEST, &BTreeMap::new());
        assert_eq!(
            String::from_utf8(p).expect("utf8"),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:35000/evip/predictor"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        let a = BTreeMap::from([("sluice.dev/release".to_string(), "predictor-42".to_string())]);
        let p = simple_signing("r/x", DIGEST, &a);
        assert!(
            String::from_utf8_lossy(&p)
                .ends_with(r#""optional":{"sluice.dev/release":"predictor-42"}}"#)
        );
        assert_eq!(parse(&p).expect("parses").annotations, a);
        assert_eq!(parse(&p).expect("parses").digest, DIGEST);
    }

    #[test]
    fn signature_tags() {
        assert_eq!(
            signature_tag("r/x", DIGEST),
            format!("r/x:sha256-{}.sig", &DIGEST[7..])
        );
    }
}
