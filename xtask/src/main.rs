//! `cargo xtask`: the project's generated files, each from one command.
//!   cargo xtask crds            write crds/ and the chart's copy (charts/sluice/crds/)
//!   cargo xtask crds --check    fail naming every stale file
//!   cargo xtask bundle          render the chart with the pinned helm and write the OLM bundle
//!   cargo xtask bundle --check  fail when bundle/ differs from what `bundle` writes

mod crds;
mod olm;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sluice's generated files")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write the CustomResourceDefinitions into crds/ and charts/sluice/crds/.
    Crds {
        /// Only compare: fail naming every file that differs from what would be written.
        #[arg(long)]
        check: bool,
    },
    /// Write the OLM bundle (bundle/) from the chart, rendered by the pinned helm.
    Bundle {
        /// Only compare: fail naming every file that differs from what would be written.
        #[arg(long)]
        check: bool,
    },
}

/// Where the CRDs go: the repository's copy and the chart's (Helm installs charts/*/crds/).
const CRD_DIRS: [&str; 2] = ["crds", "charts/sluice/crds"];
/// The files whose SecurePipelines and ModelReleases become the bundle's alm-examples.
const BUNDLE_EXAMPLES: [&str; 2] = ["examples/evip/pipeline.yaml", "examples/evip/release.yaml"];
/// The namespace and Kubernetes version the chart is rendered for.
const CHART_NAMESPACE: &str = "sluice-system";
const KUBE_VERSION: &str = "1.36.0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Crds { check } => crd_files().and_then(|files| {
            // Every directory is looked at, so one run names everything that is stale.
            let problems: Vec<String> = CRD_DIRS
                .iter()
                .filter_map(|dir| sync(&repo().join(dir), &files, check).err())
                .map(|e| format!("{e:#}"))
                .collect();
            if problems.is_empty() {
                Ok(())
            } else {
                bail!("{}", problems.join("; "))
            }
        }),
        Task::Bundle { check } => {
            bundle_files().and_then(|files| sync(&repo().join("bundle"), &files, check))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root (this crate's parent).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn crd_files() -> anyhow::Result<BTreeMap<String, String>> {
    Ok(crds::rendered()?.into_iter().collect())
}

fn bundle_files() -> anyhow::Result<BTreeMap<String, String>> {
    let root = repo();
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))
    };
    let chart = helm_template(&root)?;
    let base = read("olm/csv.base.yaml")?;
    let examples = BUNDLE_EXAMPLES
        .iter()
        .map(|p| read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    olm::files(&olm::Inputs {
        chart: &chart,
        base_csv: &base,
        examples: examples.iter().map(String::as_str).collect(),
        version: sluice::VERSION,
    })
}

/// `helm template` of charts/sluice with the helm the e2e tools build (pinned, cached).
fn helm_template(root: &Path) -> anyhow::Result<String> {
    let tools = run(Command::new(root.join("e2e/tools/build.sh")).current_dir(root))?;
    let helm = PathBuf::from(tools.trim()).join("bin/helm");
    run(Command::new(helm).current_dir(root).args([
        "template",
        "sluice",
        "charts/sluice",
        "--namespace",
        CHART_NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        // OLM serves admission webhooks its own way (CSV webhookdefinitions, OLM's certificates,
        // no namespaceSelector); the bundle ships the operator without enforcement for now.
        "--set",
        "enforcement.enabled=false",
    ]))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Makes `dir` hold exactly `files` (relative paths); with `check`, only says where it does not.
/// Only the subdirectories `files` name are managed: a file there that is not in `files` is stale.
fn sync(dir: &Path, files: &BTreeMap<String, String>, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for (path, content) in files {
        if std::fs::read_to_string(dir.join(path)).ok().as_deref() != Some(content) {
            stale.push(path.clone());
        }
    }
    let extra: Vec<PathBuf> = managed_dirs(dir, files)
        .iter()
        .filter_map(|sub| std::fs::read_dir(sub).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.strip_prefix(dir)
                .ok()
                .and_then(Path::to_str)
                .is_none_or(|rel| !files.contains_key(rel))
        })
        .collect();
    if check {
        stale.extend(extra.iter().map(|p| p.display().to_string()));
        if stale.is_empty() {
            println!("{} is up to date", dir.display());
            return Ok(());
        }
        bail!(
            "{} is stale ({}): run cargo xtask",
            dir.display(),
            stale.join(", ")
        );
    }
    for path in &extra {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    write_files(dir, files)
}

/// The directories `files` live in, under `dir`.
fn managed_dirs(dir: &Path, files: &BTreeMap<String, String>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .keys()
        .map(|f| {
            dir.join(f)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Writes each file under `dir`, creating directories as needed.
fn write_files(dir: &Path, files: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (file, content) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
