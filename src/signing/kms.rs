//! A KMS signer: the transit engine of a Vault-API server (HashiCorp Vault, OpenBao), addressed
//! as cosign does (`hashivault://<key>`). The key never leaves the server; Sluice holds only the
//! token, in memory, and never logs it.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Signer, SigningError, keys};

/// Longest answer read from the server; a transit answer is well under 4 KiB.
const MAX_RESPONSE: usize = 64 * 1024;
/// How long one request to the server may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a transit key lives and the token that may use it.
#[derive(Clone)]
pub struct TransitKey {
    /// Server address, e.g. `https://vault.example:8200`.
    pub address: String,
    /// Mount path of the transit engine.
    pub mount: String,
    /// The key's name.
    pub name: String,
    /// The server token.
    pub token: Arc<Zeroizing<String>>,
}

impl std::fmt::Debug for TransitKey {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitKey")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The key name of a `hashivault://<key>` URI.
pub fn hashivault_key(uri: &str) -> Result<&str, SigningError> {
    uri.strip_prefix("hashivault://")
        .filter(|k| {
            !k.is_empty()
                && k.len() <= 128
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        })
        .ok_or_else(|| {
            SigningError::Key(format!(
                "KMS URI {uri:?} is not hashivault://<transit key name>"
            ))
        })
}

/// Signs with a transit key.
pub struct TransitSigner {
    client: reqwest::Client,
    key: TransitKey,
    public_key_pem: String,
    key_id: String,
}

impl std::fmt::Debug for TransitSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitSigner")
            .field("key", &self.key)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TransitSigner {
    /// Reads the key's public half (latest version; it must be ecdsa-p256, as cosign's keys).
    pub async fn connect(key: TransitKey) -> Result<Self, SigningError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(crate::operator::USER_AGENT)
            .build()
            .map_err(|e| kms_error(&key, format!("cannot build a client: {e}")))?;
        let url = format!("{}/v1/{}/keys/{}", base(&key), key.mount, key.name);
        let answer = call(&key, client.get(&url)).await?;
        let data = &answer["data"];
        if data["type"].as_str() != Some("ecdsa-p256") {
            return Err(SigningError::Key(format!(
                "transit key {} is {}, not ecdsa-p256",
                key.name,
                data["type"].as_str().unwrap_or("of an unknown type")
            )));
        }
        let latest = data["latest_version"].as_u64().unwrap_or(1).to_string();
        let public_key_pem = data["keys"][&latest]["public_key"]
            .as_str()
            .ok_or_else(|| kms_error(&key, "the key has no public_key".into()))?
            .to_string();
        let key_id = keys::key_id_of_pem(&public_key_pem)
            .ok_or_else(|| kms_error(&key, "the public key is not PEM".into()))?;
        keys::verification_key(&public_key_pem)?;
        Ok(Self {
            client,
            key,
            public_key_pem,
            key_id,
        })
    }

    async fn sign_remote(&self, payload: &[u8]) -> Result<Vec<u8>, SigningError> {
        let key = &self.key;
        let url = format!("{}/v1/{}/sign/{}/sha2-256", base(key), key.mount, key.name);
        let body = json!({"input": BASE64.encode(payload), "marshaling_algorithm": "asn1"});
        let answer = call(key, self.client.post(&url).json(&body)).await?;
        let signature = answer["data"]["signature"]
            .as_str()
            .ok_or_else(|| kms_error(key, "the answer has no signature".into()))?;
        // vault:v<version>:<base64>
        let encoded = signature
            .strip_prefix("vault:v")
            .and_then(|s| s.split_once(':'))
            .map(|(_, b64)| b64)
            .ok_or_else(|| kms_error(key, "the signature is not vault:v<n>:<base64>".into()))?;
        BASE64
            .decode(encoded)
            .map_err(|_| kms_error(key, "the signature is not base64".into()))
    }
}

impl Signer for TransitSigner {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SigningError>> {
        Box::pin(self.sign_remote(payload))
    }
}

fn base(key: &TransitKey) -> &str {
    key.address.trim_end_matches('/')
}

fn kms_error(key: &TransitKey, detail: String) -> SigningError {
    SigningError::Kms {
        category: "KmsError",
        message: format!("KMS {} key {}: {detail}", key.address, key.name),
    }
}

/// Sends a request with the token; a bounded, strictly parsed JSON answer.
async fn call(key: &TransitKey, request: reqwest::RequestBuilder) -> Result<Value, SigningError> {
    let response = request
        .header("X-Vault-Token", key.token.as_str())
        .send()
        .await
        .map_err(|e| SigningError::Kms {
            category: "KmsUnavailable",
            message: format!(
                "KMS {} cannot be reached ({}); signing waits for it",
                key.address,
                without_url(&e)
            ),
        })?;
    let status = response.status();
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|e| SigningError::Kms {
        category: "KmsUnavailable",
        message: format!("KMS {} answer cut short ({})", key.address, without_url(&e)),
    })? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(kms_error(
                key,
                format!("answer larger than {MAX_RESPONSE} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    match status.as_u16() {
        200..=299 => serde_json::from_slice(&body)
            .map_err(|_| kms_error(key, "the answer is not JSON".into())),
        401 | 403 => Err(SigningError::Kms {
            category: "KmsUnauthorized",
            message: format!(
                "KMS {} refused the token for key {} (HTTP {status}): the token was revoked or lacks the transit policy; signing waits",
                key.address, key.name
            ),
        }),
        code => Err(SigningError::Kms {
            category: if code >= 500 {
                "KmsUnavailable"
            } else {
                "KmsError"
            },
            message: format!(
                "KMS {} answered HTTP {code} for key {}: {}",
                key.address,
                key.name,
                vault_errors(&body)
            ),
        }),
    }
}

/// The server's `errors` list, bounded, for the message.
fn vault_errors(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let errors = parsed
        .as_ref()
        .and_then(|v| v["errors"].as_array())
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    crate::text::bounded(&errors, 300)
}

/// A reqwest error's text without its URL (it holds nothing secret, but is noise).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hashivault_uris_with_a_plain_key_name_are_accepted() {
        assert_eq!(
            hashivault_key("hashivault://release-key").ok(),
            Some("release-key")
        );
        assert!(hashivault_key("awskms://x").is_err());
        assert!(hashivault_key("hashivault://").is_err());
        assert!(hashivault_key("hashivault://../sys/seal").is_err());
    }

    #[test]
    fn server_errors_are_bounded_and_never_carry_the_token() {
        let key = TransitKey {
            address: "http://127.0.0.1:1".into(),
            mount: "transit".into(),
            name: "k".into(),
            token: Arc::new(Zeroizing::new("s.secret-token".into())),
        };
        assert!(!format!("{key:?}").contains("secret-token"));
        let long = format!(r#"{{"errors":["{}"]}}"#, "x".repeat(5000));
        assert!(vault_errors(long.as_bytes()).len() <= 304);
        assert_eq!(vault_errors(b"not json"), "");
    }
}
