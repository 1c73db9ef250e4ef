//! The OLM bundle: `bundle/` is exactly what `make bundle` writes from the current chart, the
//! Operator Framework's validators accept it, and its plain manifests pass the API server's
//! server-side validation.

use std::path::Path;

use anyhow::Context;
use sluice_e2e::{checks_bin, repo_dir, run_program, tool};

fn bundle_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for sub in ["manifests", "metadata"] {
        for entry in std::fs::read_dir(dir.join(sub))? {
            files.push(format!("{sub}/{}", entry?.file_name().to_string_lossy()));
        }
    }
    files.push("bundle.Dockerfile".into());
    files.sort();
    Ok(files)
}

#[test]
fn the_bundle_is_generated_from_the_chart_and_passes_the_operator_framework_validators()
-> anyhow::Result<()> {
    let chart = run_program(
        &tool("helm")?,
        &[
            "template",
            "sluice",
            "charts/sluice",
            "--namespace",
            "sluice-system",
            "--kube-version",
            "1.36.0",
        ],
        None,
    )?;
    let fresh = tempfile_dir("sluice-bundle")?;
    let sluice = repo_dir().join("target/debug/sluice");
    run_program(
        &sluice,
        &[
            "olm-bundle",
            "--chart",
            "-",
            "--example",
            "examples/evip/pipeline.yaml",
            "--example",
            "examples/evip/release.yaml",
            "--out-dir",
            fresh.to_str().context("path")?,
        ],
        Some(&chart),
    )?;
    let committed = repo_dir().join("bundle");
    let files = bundle_files(&fresh)?;
    assert_eq!(
        bundle_files(&committed)?,
        files,
        "bundle/ has other files than `make bundle` writes; run make bundle"
    );
    for file in &files {
        assert_eq!(
            std::fs::read_to_string(committed.join(file))?,
            std::fs::read_to_string(fresh.join(file))?,
            "bundle/{file} is stale: run make bundle"
        );
    }

    let report = run_program(&checks_bin()?, &["olm", "bundle"], None)?;
    assert!(report.contains("is valid"), "{report}");
    assert!(!report.contains("ERROR"), "{report}");

    // The manifests OLM would create besides the CSV are valid for this API server.
    for file in files.iter().filter(|f| {
        f.starts_with("manifests/") && !f.contains("clusterserviceversion") && f.ends_with(".yaml")
    }) {
        run_program(
            &tool("kubectl")?,
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                "-n",
                "default",
                "-f",
                &format!("bundle/{file}"),
            ],
            None,
        )?;
    }
    let _ = std::fs::remove_dir_all(&fresh);
    Ok(())
}

fn tempfile_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
