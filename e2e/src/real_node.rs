//! The real node (kubelet + containerd + runc, `e2e/node/node`): namespaces with the eVIP example
//! placed on it (`e2e/node/example`), the app's source revisions on the node's git daemon, and
//! what a test reads back from real execution (pods, the server behind its Service).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;

use crate::{TestNamespace, repo_dir, run_program, state_dir};

/// The real node's name.
pub const NODE_NAME: &str = "sluice-node-0";

/// `e2e/node/example` builds images and rewrites the shared git repository: one call at a time.
static EXAMPLE: Mutex<()> = Mutex::new(());

/// The bare repository the node's git daemon serves as git://10.244.0.1/evip-app.git.
pub fn git_repository() -> PathBuf {
    state_dir().join("node/git/evip-app.git")
}

impl TestNamespace {
    /// A namespace with the eVIP example on the real node; returns it with the source revisions
    /// `e2e/node/example` prints (CLEAN, VULNERABLE, SHELL_TRUE, NO_MODEL) and the model artifact (MODEL).
    pub async fn on_real_node(prefix: &str) -> Result<(Self, BTreeMap<String, String>)> {
        let ns = Self::empty(prefix).await?;
        let out = {
            let _one = EXAMPLE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            run_program(&repo_dir().join("e2e/node/example"), &[&ns.name], None)?
        };
        let revisions = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok((ns, revisions))
    }

    /// The pods of the real node in this namespace that back the Service `service`.
    pub async fn service_pods(&self, service: &str) -> Result<Vec<Pod>> {
        let svc = self.api::<Service>().get(service).await?;
        let selector = svc
            .spec
            .and_then(|s| s.selector)
            .context("service without selector")?
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let lp = ListParams::default().labels(&selector);
        Ok(self.api::<Pod>().list(&lp).await?.items)
    }

    /// POSTs `body` to `path` on the Service's ClusterIP from this host (kube-proxy routes it).
    pub async fn post_to_service(
        &self,
        service: &str,
        port: u16,
        path: &str,
        body: &str,
    ) -> Result<String> {
        let post = [
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ];
        self.curl_service(service, port, path, &post).await
    }

    /// GETs `path` from the Service's ClusterIP (through kube-proxy); returns the body.
    pub async fn get_from_service(&self, service: &str, port: u16, path: &str) -> Result<String> {
        self.curl_service(service, port, path, &[]).await
    }

    async fn curl_service(
        &self,
        service: &str,
        port: u16,
        path: &str,
        args: &[&str],
    ) -> Result<String> {
        let svc = self.api::<Service>().get(service).await?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("service without a ClusterIP")?;
        let out = Command::new("curl")
            .args(["-sS", "-m", "10"])
            .args(args)
            .arg(format!("http://{ip}:{port}{path}"))
            .output()?;
        if !out.status.success() {
            bail!("{path}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Commits a change to the app on a new branch of the node's repository (from `main`) and returns
/// the revision: `edit` gets the work tree.
pub fn commit_change(branch: &str, edit: impl FnOnce(&Path) -> Result<()>) -> Result<String> {
    let work = std::env::temp_dir().join(format!("sluice-change-{branch}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&work)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let out = Command::new("git")
        .args(["clone", "-q"])
        .arg(git_repository())
        .arg(&work)
        .output()?;
    if !out.status.success() {
        bail!("git clone: {}", String::from_utf8_lossy(&out.stderr));
    }
    git(&["checkout", "-q", "-b", branch, "origin/main"])?;
    edit(&work)?;
    git(&["add", "-A"])?;
    git(&[
        "-c",
        "user.name=e2e",
        "-c",
        "user.email=e2e@sluice.dev",
        "commit",
        "-q",
        "-m",
        branch,
    ])?;
    git(&["push", "-q", "--force", "origin", branch])?;
    let revision = git(&["rev-parse", "HEAD"])?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(revision)
}
