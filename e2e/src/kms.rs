//! The e2e KMS (a Vault-API server in dev mode, started by `e2e/cluster up`): transit keys and
//! scoped tokens for tests, and a TCP relay a test can stop and start to take the KMS "down".

use std::{process::Command, sync::Arc};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Notify};

use crate::state_dir;

/// The KMS as a test sees it: its address and root token (test-only, from the state dir).
pub struct Kms {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    root_token: String,
}

impl Kms {
    /// The cluster's KMS.
    pub fn get() -> Result<Self> {
        let read = |f: &str| {
            std::fs::read_to_string(state_dir().join(f))
                .with_context(|| format!("{f} missing: is the e2e cluster up?"))
        };
        Ok(Self {
            address: read("kms")?.trim().to_string(),
            root_token: read("kms-token")?.trim().to_string(),
        })
    }

    /// The directory holding the `vault` CLI.
    pub fn bin() -> Result<std::path::PathBuf> {
        Ok(std::fs::read_to_string(state_dir().join("kms-bin"))?
            .trim()
            .into())
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>, token: &str) -> Result<Value> {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-X",
            method,
            "-H",
            &format!("X-Vault-Token: {token}"),
        ]);
        if let Some(b) = body {
            cmd.args(["-d", &b.to_string()]);
        }
        let out = cmd
            .args([
                "-w",
                "\n%{http_code}",
                &format!("{}/v1/{path}", self.address),
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        if !code.starts_with('2') {
            bail!("KMS {method} {path}: HTTP {code}: {body}");
        }
        Ok(if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body)?
        })
    }

    /// Creates the ecdsa-p256 transit key `name` and returns its public key (PEM).
    pub fn create_key(&self, name: &str) -> Result<String> {
        self.call(
            "POST",
            &format!("transit/keys/{name}"),
            Some(json!({"type": "ecdsa-p256"})),
            &self.root_token,
        )?;
        self.public_key(name)
    }

    /// The public key (PEM) of the latest version of `name`.
    pub fn public_key(&self, name: &str) -> Result<String> {
        let v = self.call(
            "GET",
            &format!("transit/keys/{name}"),
            None,
            &self.root_token,
        )?;
        let latest = v["data"]["latest_version"]
            .as_u64()
            .unwrap_or(1)
            .to_string();
        v["data"]["keys"][&latest]["public_key"]
            .as_str()
            .map(str::to_string)
            .context("no public key")
    }

    /// A token allowed to sign with and read `key` only.
    pub fn token_for(&self, key: &str) -> Result<String> {
        let policy = format!(
            r#"path "transit/sign/{key}/*" {{ capabilities = ["update"] }}
path "transit/sign/{key}" {{ capabilities = ["update"] }}
path "transit/keys/{key}" {{ capabilities = ["read"] }}
path "transit/verify/{key}/*" {{ capabilities = ["update"] }}"#
        );
        self.call(
            "PUT",
            &format!("sys/policies/acl/sign-{key}"),
            Some(json!({"policy": policy})),
            &self.root_token,
        )?;
        let v = self.call(
            "POST",
            "auth/token/create",
            Some(json!({"policies": [format!("sign-{key}")], "ttl": "1h"})),
            &self.root_token,
        )?;
        v["auth"]["client_token"]
            .as_str()
            .map(str::to_string)
            .context("no client token")
    }

    /// Revokes `token`.
    pub fn revoke(&self, token: &str) -> Result<()> {
        self.call(
            "POST",
            "auth/token/revoke",
            Some(json!({"token": token})),
            &self.root_token,
        )
        .map(drop)
    }
}

/// A TCP relay from a loopback port to the KMS, owned by a test: while stopped, the KMS address
/// it hands out refuses connections, as a KMS that is down does.
pub struct Relay {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    port: u16,
    target: String,
    stop: Arc<Notify>,
    running: bool,
}

impl Relay {
    /// A relay on a free port to `target` (`host:port`), not yet running.
    pub async fn new(target: &str) -> Result<Self> {
        let probe = TcpListener::bind("127.0.0.1:0").await?;
        let port = probe.local_addr()?.port();
        drop(probe);
        Ok(Self {
            address: format!("http://127.0.0.1:{port}"),
            port,
            target: target.to_string(),
            stop: Arc::new(Notify::new()),
            running: false,
        })
    }

    /// Starts relaying.
    pub async fn start(&mut self) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let (target, stop) = (self.target.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.notified() => return,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { return };
                        let target = target.clone();
                        tokio::spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
        });
        self.running = true;
        Ok(())
    }

    /// Stops accepting (open connections finish on their own).
    pub fn stop(&mut self) {
        if self.running {
            self.stop.notify_one();
            self.running = false;
        }
    }
}
