//! The OLM bundle: `bundle/` is exactly what `cargo xtask bundle` writes from the current chart, the
//! Operator Framework's validators accept it, and its plain manifests pass the API server's
//! server-side validation.

use std::path::Path;

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
    // The one recipe (helm template of the chart, the hand-kept CSV base, the examples) is
    // xtask's; it fails naming every file of bundle/ that differs from what it would write.
    let xtask = repo_dir().join("target/debug/xtask");
    let checked = run_program(&xtask, &["bundle", "--check"], None)?;
    assert!(checked.contains("is up to date"), "{checked}");
    let files = bundle_files(&repo_dir().join("bundle"))?;

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
    Ok(())
}
