//! The webhook's TLS when the operator manages it: a self-signed CA and a serving certificate for
//! the webhook's host names, kept in one Secret (created once, 409 means another replica won and
//! its copy is used), and the CA patched into the MutatingWebhookConfiguration's `caBundle`. With
//! cert-manager the chart mounts the certificate instead and its CA injector fills `caBundle`.

use std::{collections::BTreeMap, sync::Arc};

use base64::Engine;
use jiff::{Timestamp, ToSpan};
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Annotation on the Secret: the host names its certificate was issued for.
const ANNOTATION_HOSTS: &str = "sluice.dev/webhook-hosts";
/// Annotation on the Secret: when its serving certificate expires (RFC 3339).
const ANNOTATION_NOT_AFTER: &str = "sluice.dev/not-after";
/// A certificate closer than this to its end is replaced.
const RENEW_BEFORE_DAYS: i64 = 30;

/// A CA and the serving certificate it issued, PEM-encoded.
#[derive(Clone)]
pub struct WebhookTls {
    /// The CA certificate (what the API server trusts: `caBundle`).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key (never logged).
    pub key_pem: String,
    /// When the serving certificate expires.
    pub not_after: Timestamp,
}

impl std::fmt::Debug for WebhookTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTls")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What can go wrong managing the webhook's certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating or parsing a certificate failed.
    #[error("webhook certificate: {0}")]
    Certificate(String),
    /// The API server refused a read or write.
    #[error("webhook certificate {action}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The API error.
        source: kube::Error,
    },
}

fn cert_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(e.to_string())
}

fn api(action: &'static str) -> impl Fn(kube::Error) -> TlsError {
    move |source| TlsError::Api { action, source }
}

/// Year, month and day of `t` in UTC (what `rcgen::date_time_ymd` takes).
fn ymd(t: Timestamp) -> Result<(i32, u8, u8), TlsError> {
    let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
    let month = u8::try_from(d.month()).map_err(cert_err)?;
    let day = u8::try_from(d.day()).map_err(cert_err)?;
    Ok((i32::from(d.year()), month, day))
}

macro_rules! date {
    ($t:expr) => {{
        let (y, m, d) = ymd($t)?;
        rcgen::date_time_ymd(y, m, d)
    }};
}

/// Issues a new CA (ten years) and a serving certificate (one year) for `hosts` (DNS names or IP
/// addresses).
pub fn issue(hosts: &[String], now: Timestamp) -> Result<WebhookTls, TlsError> {
    let yesterday = now.checked_sub(24.hours()).map_err(cert_err)?;
    let in_days = |days: i64| now.checked_add((days * 24).hours()).map_err(cert_err);
    let ca_key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sluice-webhook-ca");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = date!(yesterday);
    ca.not_after = date!(in_days(3650)?);
    let ca_cert = ca.self_signed(&ca_key).map_err(cert_err)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut leaf = rcgen::CertificateParams::new(hosts.to_vec()).map_err(cert_err)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "sluice-webhook");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = in_days(365)?;
    leaf.not_before = date!(yesterday);
    leaf.not_after = date!(not_after);
    let cert = leaf.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok(WebhookTls {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        // Issued by whole days: the real end is at or after this.
        not_after,
    })
}

fn hosts_key(hosts: &[String]) -> String {
    let mut sorted = hosts.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.join(",")
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The certificate kept in `secret`, if it was issued for `hosts` and is not due for renewal.
fn usable(secret: &Secret, hosts: &[String], now: Timestamp) -> Option<WebhookTls> {
    let annotations = secret.annotations();
    if annotations.get(ANNOTATION_HOSTS)? != &hosts_key(hosts) {
        return None;
    }
    let not_after: Timestamp = annotations.get(ANNOTATION_NOT_AFTER)?.parse().ok()?;
    let renew_at = not_after
        .checked_sub((RENEW_BEFORE_DAYS * 24).hours())
        .ok()?;
    if now >= renew_at {
        return None;
    }
    let data = secret.data.as_ref()?;
    Some(WebhookTls {
        ca_pem: text(data, "ca.crt")?,
        cert_pem: text(data, "tls.crt")?,
        key_pem: text(data, "tls.key")?,
        not_after,
    })
}

fn secret_of(name: &str, tls: &WebhookTls, hosts: &[String]) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_HOSTS.to_string(), hosts_key(hosts)),
                (ANNOTATION_NOT_AFTER.to_string(), tls.not_after.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(&tls.ca_pem)),
            ("tls.crt".to_string(), bytes(&tls.cert_pem)),
            ("tls.key".to_string(), bytes(&tls.key_pem)),
        ])),
        ..Secret::default()
    }
}

/// The certificate in Secret `name` of `ns`, issued (or renewed) first when it is missing, for
/// other hosts or near its end. Every replica calls this; the API server picks one writer.
pub async fn ensure_secret(
    client: &Client,
    ns: &str,
    name: &str,
    hosts: &[String],
) -> Result<WebhookTls, TlsError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        let now = Timestamp::now();
        let current = secrets.get_opt(name).await.map_err(api("get-secret"))?;
        if let Some(tls) = current.as_ref().and_then(|s| usable(s, hosts, now)) {
            return Ok(tls);
        }
        let tls = issue(hosts, now)?;
        let mut wanted = secret_of(name, &tls, hosts);
        let written = match current {
            None => secrets.create(&PostParams::default(), &wanted).await,
            Some(old) => {
                // Replaced only over the copy judged stale: a rival's fresh one is kept.
                wanted.metadata.resource_version = old.resource_version();
                secrets.replace(name, &PostParams::default(), &wanted).await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = name, namespace = ns, not_after = %tls.not_after, "issued the webhook's certificate");
                return Ok(tls);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(api("write-secret")(e)),
        }
    }
    Err(TlsError::Certificate(format!(
        "Secret {ns}/{name} kept changing while the webhook's certificate was written"
    )))
}

/// Patches `ca_pem` into every webhook of MutatingWebhookConfiguration `name` whose `caBundle`
/// differs; the patch is tested against the resourceVersion it was computed from. Returns how
/// many webhooks were changed.
pub async fn inject_ca_bundle(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<usize, TlsError> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs.get(name).await.map_err(api("get-webhook-config"))?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut ops = vec![serde_json::json!({
        "op": "test", "path": "/metadata/resourceVersion", "value": config.resource_version()
    })];
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        if hook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            != Some(ca_pem.as_bytes())
        {
            ops.push(serde_json::json!({
                "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle
            }));
        }
    }
    let changed = ops.len() - 1;
    if changed > 0 {
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).map_err(cert_err)?;
        configs
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
            .map_err(api("patch-webhook-config"))?;
    }
    Ok(changed)
}

/// A rustls server configuration (HTTP/1.1 only) serving `tls`'s certificate.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_err)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(cert_err)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cert_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(cert_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_serves_tls_and_is_kept_until_its_renewal_is_due() {
        let hosts = vec![
            "sluice-webhook.sluice.svc".to_string(),
            "127.0.0.1".to_string(),
        ];
        let now = Timestamp::now();
        let tls = issue(&hosts, now).expect("issue");
        assert!(tls.ca_pem.contains("BEGIN CERTIFICATE") && tls.key_pem.contains("PRIVATE KEY"));
        server_config(&tls.cert_pem, &tls.key_pem).expect("rustls accepts it");
        let secret = secret_of("s", &tls, &hosts);
        assert!(usable(&secret, &hosts, now).is_some());
        let reversed: Vec<String> = hosts.iter().rev().cloned().collect();
        assert!(
            usable(&secret, &reversed, now).is_some(),
            "host order does not matter"
        );
        assert!(
            usable(&secret, &hosts[..1], now).is_none(),
            "other hosts: reissued"
        );
        let late = now.checked_add((340 * 24).hours()).expect("time");
        assert!(
            usable(&secret, &hosts, late).is_none(),
            "renewed 30 days before its end"
        );
        assert!(
            format!("{tls:?}").find("PRIVATE").is_none(),
            "the key is never printed"
        );
    }
}
