//! The e2e cluster (`e2e/cluster`): its state directory, its tools, programs run against it, the
//! admin client, and the operator process.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Directory of the running e2e cluster's state.
pub fn state_dir() -> PathBuf {
    std::env::var_os("SLUICE_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.e2e"))
}

/// Path of one of the e2e cluster's built tools (kubectl, crane, cosign, …).
pub fn tool(name: &str) -> Result<PathBuf> {
    let bin = std::fs::read_to_string(state_dir().join("bin"))
        .context("reading .e2e/bin; is the e2e cluster up?")?;
    Ok(PathBuf::from(bin.trim()).join(name))
}

/// Path of `sluice-checks` (kstatus, Lua health, OLM validation), built once and cached by
/// e2e/checks/build.sh.
pub fn checks_bin() -> Result<PathBuf> {
    let out = Command::new(repo_dir().join("e2e/checks/build.sh")).output()?;
    if !out.status.success() {
        bail!(
            "e2e/checks/build.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs `program` from the repository root with the e2e kubeconfig, feeding `stdin`; its
/// standard output, or an error carrying everything it printed.
pub fn run_program(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::{io::Write, process::Stdio};
    let mut child = Command::new(program)
        .current_dir(repo_dir())
        .env("KUBECONFIG", state_dir().join("kubeconfig"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let input = stdin.unwrap_or_default().to_owned();
    let mut pipe = child.stdin.take().context("stdin")?;
    // A writer thread: a child that prints before reading all its input cannot deadlock us.
    let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Path of the repository root.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A client for the e2e cluster, authenticated as its admin.
pub async fn client() -> Result<Client> {
    sluice::install_crypto_provider();
    let path = state_dir().join("kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {}; is the e2e cluster up?", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Runs an `e2e/operator` action (start, stop, kill).
pub fn operator(action: &str) -> Result<()> {
    let status = Command::new(repo_dir().join("e2e/operator"))
        .arg(action)
        .status()?;
    if !status.success() {
        bail!("e2e/operator {action} failed");
    }
    Ok(())
}
