//! The local OCI registry: the test pipeline's repository and images pushed to it with crane.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{TestNamespace, tool};

/// A digest that looks real; the gates only check its form and the repository.
pub const FAKE_DIGEST: &str =
    "sha256:4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";

/// Repository of the test models (pushed with `sluice push-model`).
pub const MODELS: &str = "127.0.0.1:35000/evip/models/ev-load-15min";

/// Repository of the test pipeline.
pub const REPOSITORY: &str = "127.0.0.1:35000/evip/predictor";

impl TestNamespace {
    /// Pushes a small image with unique content to the pipeline's repository; returns its digest.
    pub fn push_image(&self, content: &str) -> Result<String> {
        self.push_image_to(
            &format!("{REPOSITORY}:{}-{content}", self.name),
            content,
            None,
        )
    }

    /// Pushes a small image with unique content as `tag`, logging crane in first with `login`
    /// (user, password) through a private DOCKER_CONFIG; returns its digest.
    pub fn push_image_to(
        &self,
        tag: &str,
        content: &str,
        login: Option<(&str, &str)>,
    ) -> Result<String> {
        let dir = std::env::temp_dir().join(format!("{}-image-{content}", self.name));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("VERSION"), format!("{} {content}", self.name))?;
        let status = Command::new("tar")
            .current_dir(&dir)
            .args(["cf", "layer.tar", "VERSION"])
            .status()?;
        if !status.success() {
            bail!("tar failed");
        }
        let crane_bin = tool("crane")?;
        let crane = |args: &[&str]| -> Result<String> {
            let out = Command::new(&crane_bin)
                .current_dir(&dir)
                .env("DOCKER_CONFIG", &dir)
                .args(args)
                .output()?;
            if !out.status.success() {
                bail!("crane {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        if let Some((user, password)) = login {
            let host = tag.split('/').next().unwrap_or_default();
            crane(&["auth", "login", host, "-u", user, "-p", password])?;
        }
        crane(&["append", "-f", "layer.tar", "-t", tag])?;
        crane(&["digest", tag])
    }

    /// Pushes a model file with the operator's own CLI (`sluice push-model`) to MODELS, tagged
    /// after the namespace and `content`; returns its digest.
    pub fn push_model(&self, content: &str) -> Result<String> {
        let dir = std::env::temp_dir().join(format!("{}-model", self.name));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("model.json");
        std::fs::write(
            &file,
            format!(r#"{{"weights": "{content}", "ns": "{}"}}"#, self.name),
        )?;
        let out = Command::new(crate::repo_dir().join("target/debug/sluice"))
            .arg("push-model")
            .arg(&file)
            .arg(format!("{MODELS}:{}-{content}", self.name))
            .output()?;
        if !out.status.success() {
            bail!(
                "sluice push-model: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let digest = printed
            .strip_prefix(&format!("{MODELS}@"))
            .ok_or_else(|| anyhow::anyhow!("push-model printed {printed}"))?;
        Ok(digest.to_string())
    }
}
