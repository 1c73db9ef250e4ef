//! x509 signing without a transparency log: an ECDSA P-256 key with its certificate and chain,
//! attached to each signature as cosign does (`dev.sigstore.cosign/certificate` and `/chain`), so
//! `cosign verify --certificate-chain ... --certificate-identity ...` accepts it offline.

use futures::future::BoxFuture;
use jiff::Timestamp;
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};
use zeroize::Zeroizing;

use super::{Signer, SigningError, keys::KeyPairSigner};

/// Layer annotation holding the signing certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// Layer annotation holding the certificate chain (PEM, intermediates then root).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// Longest chain followed from a leaf to a root.
const MAX_CHAIN: usize = 8;

/// A signer holding an x509 key pair and the certificate chain that vouches for it.
pub struct X509Signer {
    key: KeyPairSigner,
    certificate_pem: String,
    chain_pem: String,
    leaf: Certificate,
    chain: Vec<Certificate>,
}

impl std::fmt::Debug for X509Signer {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Signer")
            .field("key_id", &self.key.key_id())
            .finish_non_exhaustive()
    }
}

impl X509Signer {
    /// Loads `x509.pem` (a private key, optionally followed by the certificate and its chain)
    /// and, when given, `cert.pem` and `chain.pem`. The key must match the certificate and the
    /// certificate must chain to the last certificate given.
    pub fn from_pems(
        x509_pem: &[u8],
        cert_pem: Option<&[u8]>,
        chain_pem: Option<&[u8]>,
    ) -> Result<Self, SigningError> {
        let blocks = pem::parse_many(x509_pem)
            .map_err(|_| SigningError::Key("x509.pem is not PEM".into()))?;
        let key_der = private_key_pkcs8(&blocks)?;
        let key_pem = Zeroizing::new(pem_lf(&pem::Pem::new("PRIVATE KEY", key_der.to_vec())));
        let key = KeyPairSigner::from_pem(key_pem.as_bytes(), b"")?;
        let mut certs = certificates(&blocks, "x509.pem")?;
        let from_x509 = certs.len();
        for (name, extra) in [("cert.pem", cert_pem), ("chain.pem", chain_pem)] {
            if let Some(text) = extra {
                let parsed = pem::parse_many(text)
                    .map_err(|_| SigningError::Certificate(format!("{name} is not PEM")))?;
                certs.extend(certificates(&parsed, name)?);
            }
        }
        // cert.pem, when given, is the leaf even if x509.pem carried certificates too.
        if cert_pem.is_some() {
            certs.rotate_left(from_x509);
        }
        let mut certs = certs.into_iter();
        let leaf = certs.next().ok_or_else(|| {
            SigningError::Certificate(
                "no certificate: put it after the key in x509.pem or in cert.pem".into(),
            )
        })?;
        let chain: Vec<Certificate> = certs.collect();
        let leaf_key = spki_der(&leaf)?;
        if keys_der(key.public_key_pem()) != Some(leaf_key) {
            return Err(SigningError::Certificate(
                "the private key does not belong to the certificate".into(),
            ));
        }
        verify_chain(&leaf, &chain, &roots(&chain), None).map_err(SigningError::Certificate)?;
        Ok(Self {
            key,
            certificate_pem: to_pem(&leaf)?,
            chain_pem: chain.iter().map(to_pem).collect::<Result<String, _>>()?,
            leaf,
            chain,
        })
    }

    /// Fails unless the certificate and every one of its chain are valid at `now`.
    pub fn check_valid_at(&self, now: Timestamp) -> Result<(), SigningError> {
        std::iter::once(&self.leaf)
            .chain(&self.chain)
            .try_for_each(|c| valid_at(c, now))
            .map_err(SigningError::Certificate)
    }

    /// The certificates the signer trusts as roots: the self-signed ones of its chain.
    pub fn roots(&self) -> Vec<Certificate> {
        roots(&self.chain)
    }
}

impl Signer for X509Signer {
    fn key_id(&self) -> &str {
        self.key.key_id()
    }

    fn public_key_pem(&self) -> &str {
        self.key.public_key_pem()
    }

    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, SigningError>> {
        self.key.sign(payload)
    }

    fn certificate_chain(&self) -> Option<(&str, &str)> {
        Some((&self.certificate_pem, &self.chain_pem))
    }

    fn usable_at(&self, now: Timestamp) -> Result<(), SigningError> {
        self.check_valid_at(now)
    }

    fn trust_roots(&self) -> Option<Vec<Certificate>> {
        Some(self.chain.clone())
    }
}

/// The private key among `blocks`, as PKCS#8 DER (SEC1 `EC PRIVATE KEY` is converted).
fn private_key_pkcs8(blocks: &[pem::Pem]) -> Result<Zeroizing<Vec<u8>>, SigningError> {
    for block in blocks {
        match block.tag() {
            "PRIVATE KEY" => return Ok(Zeroizing::new(block.contents().to_vec())),
            "EC PRIVATE KEY" => {
                use p256::pkcs8::EncodePrivateKey;
                let key = p256::SecretKey::from_sec1_der(block.contents()).map_err(|_| {
                    SigningError::Key("x509.pem: the EC key is not a P-256 SEC1 key".into())
                })?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|_| SigningError::Key("x509.pem: cannot re-encode the key".into()))?;
                return Ok(Zeroizing::new(der.as_bytes().to_vec()));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(SigningError::Key(
                    "x509.pem: the key is encrypted; store it unencrypted in the Secret (the Secret is the protection)".into(),
                ));
            }
            _ => {}
        }
    }
    Err(SigningError::Key(
        "x509.pem holds no PRIVATE KEY or EC PRIVATE KEY block".into(),
    ))
}

fn certificates(blocks: &[pem::Pem], name: &str) -> Result<Vec<Certificate>, SigningError> {
    blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| {
            Certificate::from_der(b.contents()).map_err(|e| {
                SigningError::Certificate(format!("{name}: not an x509 certificate: {e}"))
            })
        })
        .collect()
}

/// Parses the certificates of a PEM text (a signature's annotations: untrusted, bounded).
pub fn parse_pem_certificates(text: &str) -> Result<Vec<Certificate>, String> {
    if text.len() > 64 * 1024 {
        return Err("certificate annotation larger than 64 KiB".into());
    }
    let blocks =
        pem::parse_many(text).map_err(|_| "certificate annotation is not PEM".to_string())?;
    certificates(&blocks, "annotation").map_err(|e| e.to_string())
}

fn to_pem(cert: &Certificate) -> Result<String, SigningError> {
    let der = cert
        .to_der()
        .map_err(|e| SigningError::Certificate(e.to_string()))?;
    Ok(pem_lf(&pem::Pem::new("CERTIFICATE", der)))
}

/// PEM with `\n` line ends, as cosign writes and reads it (the crate's default is `\r\n`).
fn pem_lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn spki_der(cert: &Certificate) -> Result<Vec<u8>, SigningError> {
    cert.tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| SigningError::Certificate(e.to_string()))
}

fn keys_der(public_key_pem: &str) -> Option<Vec<u8>> {
    pem::parse(public_key_pem)
        .ok()
        .map(|p| p.contents().to_vec())
}

/// The certificate's public key, to verify what it signed.
pub fn leaf_key(cert: &Certificate) -> Result<CosignVerificationKey, String> {
    let der = spki_der(cert).map_err(|e| e.to_string())?;
    CosignVerificationKey::try_from_der(&der)
        .map_err(|e| format!("unsupported certificate key: {e}"))
}

/// The self-signed certificates of `chain`, or its last one when none is.
pub fn roots(chain: &[Certificate]) -> Vec<Certificate> {
    let selfsigned: Vec<_> = chain
        .iter()
        .filter(|c| c.tbs_certificate().subject() == c.tbs_certificate().issuer())
        .cloned()
        .collect();
    if selfsigned.is_empty() {
        chain.last().cloned().into_iter().collect()
    } else {
        selfsigned
    }
}

/// Checks that `leaf` chains through `intermediates` to one of `roots` (each link's signature,
/// and each certificate's validity at `at` when given).
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
    at: Option<Timestamp>,
) -> Result<(), String> {
    let mut current = leaf.clone();
    for _ in 0..MAX_CHAIN {
        if let Some(at) = at {
            valid_at(&current, at)?;
        }
        if let Some(root) = roots.iter().find(|r| issued_by(&current, r)) {
            if let Some(at) = at {
                valid_at(root, at)?;
            }
            return Ok(());
        }
        current = intermediates
            .iter()
            .find(|i| issued_by(&current, i) && **i != current)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "certificate {} does not chain to a trusted root",
                    current.tbs_certificate().subject()
                )
            })?;
    }
    Err(format!("certificate chain longer than {MAX_CHAIN}"))
}

/// Whether `issuer` signed `cert`.
fn issued_by(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
        return false;
    }
    let Some(scheme) = scheme_of(cert) else {
        return false;
    };
    let (Ok(tbs), Ok(spki)) = (cert.tbs_certificate().to_der(), spki_der(issuer)) else {
        return false;
    };
    let Ok(key) = CosignVerificationKey::from_der(&spki, &scheme) else {
        return false;
    };
    let Some(sig) = cert.signature().as_bytes() else {
        return false;
    };
    key.verify_signature(Signature::Raw(sig), &tbs).is_ok()
}

/// The verification scheme of a certificate's signature algorithm.
fn scheme_of(cert: &Certificate) -> Option<SigningScheme> {
    match cert.signature_algorithm().oid.to_string().as_str() {
        "1.2.840.10045.4.3.2" => Some(SigningScheme::ECDSA_P256_SHA256_ASN1),
        "1.2.840.10045.4.3.3" => Some(SigningScheme::ECDSA_P384_SHA384_ASN1),
        "1.2.840.113549.1.1.11" => Some(SigningScheme::RSA_PKCS1_SHA256(0)),
        _ => None,
    }
}

fn valid_at(cert: &Certificate, at: Timestamp) -> Result<(), String> {
    let validity = cert.tbs_certificate().validity();
    let secs = |t: x509_cert::time::Time| {
        i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    let (from, until) = (secs(validity.not_before), secs(validity.not_after));
    let now = at.as_second();
    let subject = cert.tbs_certificate().subject();
    let show = |s: i64| Timestamp::from_second(s).map_or_else(|_| s.to_string(), |t| t.to_string());
    if now < from {
        return Err(format!(
            "certificate {subject} is not valid yet (from {})",
            show(from)
        ));
    }
    if now > until {
        return Err(format!("certificate {subject} expired at {}", show(until)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh test PKI from `e2e/x509/make-chain.sh` (openssl).
    fn pki(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-x509-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let status = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/e2e/x509/make-chain.sh"
            ))
            .arg(&dir)
            .status()
            .expect("run make-chain.sh");
        assert!(status.success());
        dir
    }

    fn read(dir: &std::path::Path, f: &str) -> Vec<u8> {
        std::fs::read(dir.join(f)).expect(f)
    }

    #[test]
    fn a_key_with_its_chain_signs_and_the_chain_verifies_to_the_root() {
        let dir = pki("ok");
        let signer = X509Signer::from_pems(
            &read(&dir, "leaf.key"),
            Some(&read(&dir, "leaf.pem")),
            Some(&read(&dir, "chain.pem")),
        )
        .expect("signer");
        signer.check_valid_at(Timestamp::now()).expect("valid now");
        let (cert, chain) = signer.certificate_chain().expect("certificates");
        let leaf = &parse_pem_certificates(cert).expect("leaf")[0];
        let chain = parse_pem_certificates(chain).expect("chain");
        assert_eq!(chain.len(), 2);
        verify_chain(leaf, &chain, &signer.roots(), Some(Timestamp::now())).expect("chains");
        let sig = signer.key.sign_now(b"payload").expect("sign");
        assert!(
            leaf_key(leaf)
                .expect("key")
                .verify_signature(Signature::Raw(&sig), b"payload")
                .is_ok()
        );
        // Chains' layout: everything in x509.pem, the key as SEC1.
        let mut all = read(&dir, "leaf-sec1.key");
        all.extend(read(&dir, "leaf.pem"));
        all.extend(read(&dir, "chain.pem"));
        let same = X509Signer::from_pems(&all, None, None).expect("x509.pem alone");
        assert_eq!(same.key_id(), signer.key_id());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn expired_mismatched_and_unchained_certificates_are_refused_with_a_reason() {
        let dir = pki("bad");
        let (key, chain) = (read(&dir, "leaf.key"), read(&dir, "chain.pem"));
        let expired = X509Signer::from_pems(&key, Some(&read(&dir, "expired.pem")), Some(&chain))
            .expect("an expired certificate still loads");
        let err = expired
            .check_valid_at(Timestamp::now())
            .expect_err("expired");
        assert_eq!(err.category(), "CertificateInvalid");
        assert!(err.to_string().contains("expired at"), "{err}");
        let signer =
            X509Signer::from_pems(&key, Some(&read(&dir, "leaf.pem")), Some(&chain)).expect("ok");
        let before = "2000-01-01T00:00:00Z".parse().expect("ts");
        assert!(
            signer
                .check_valid_at(before)
                .expect_err("early")
                .to_string()
                .contains("not valid yet")
        );
        // The root's own key is not the leaf's.
        let other = pki("other");
        let mismatch = X509Signer::from_pems(
            &read(&other, "leaf.key"),
            Some(&read(&dir, "leaf.pem")),
            Some(&chain),
        );
        assert!(
            mismatch
                .expect_err("mismatch")
                .to_string()
                .contains("does not belong")
        );
        // A chain from another PKI does not vouch for this leaf.
        let unchained = X509Signer::from_pems(
            &key,
            Some(&read(&dir, "leaf.pem")),
            Some(&read(&other, "chain.pem")),
        );
        assert!(
            unchained
                .expect_err("unchained")
                .to_string()
                .contains("does not chain")
        );
        assert!(X509Signer::from_pems(b"junk", None, None).is_err());
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(other);
    }
}
