//! The eVIP example's Task scripts run for real on this machine: each step script is taken from
//! `examples/evip/tasks.yaml`, its Tekton variables substituted, and run against the example app
//! (a local git repository) with pytest, Bandit and the PyPA advisory database installed from
//! PyPI into a virtualenv. What they write is then parsed and judged by Sluice's own gate code with
//! the example pipeline's gates: the app passes, the deliberately vulnerable variant is blocked.
//! The build (buildah) and DAST (ZAP) scripts need a container runtime and a served app: not run here.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use sluice::{
    api::{SecurePipeline, release::Verdict},
    gates::{GateContext, RunOutcome, StageResults, judge},
};
use sluice_e2e::repo_dir;

const TOOLS: &[&str] = &[
    "pytest==8.3.3",
    "bandit==1.7.10",
    "pyyaml==6.0.2",
    "packaging==24.1",
    "cvss==3.2",
];

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A virtualenv with the tools, cached by their pinned versions.
fn venv() -> anyhow::Result<PathBuf> {
    let key: String = TOOLS
        .join(",")
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        .to_string();
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = home.join(".cache/sluice/venv").join(key);
    if dir.join("ready").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    sh(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    sh(Command::new(dir.join("bin/pip"))
        .args(["install", "-q"])
        .args(TOOLS))?;
    std::fs::write(dir.join("ready"), "")?;
    Ok(dir)
}

/// The advisory database: the full snapshot in ../shared/data when present, else the example's subset.
fn advisory_db() -> PathBuf {
    let full = repo_dir().join("../shared/data/pypa-advisory-database-20241010.tar.gz");
    if full.exists() {
        full
    } else {
        repo_dir().join("examples/evip/advisories/pypa-subset.tar.gz")
    }
}

/// A git repository holding the app, with `overlay` copied over it; returns (url, revision).
fn source(work: &Path, overlay: Option<&str>) -> anyhow::Result<(String, String)> {
    let src = work.join("source");
    sh(Command::new("cp")
        .arg("-r")
        .arg(repo_dir().join("examples/evip/app"))
        .arg(&src))?;
    if let Some(o) = overlay {
        sh(Command::new("cp")
            .arg("-rT")
            .arg(repo_dir().join(o))
            .arg(&src))?;
    }
    let git = |args: &[&str]| {
        sh(Command::new("git")
            .current_dir(&src)
            .args([
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@sluice.dev",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args))
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    git(&["commit", "-qm", "example"])?;
    let rev = git(&["rev-parse", "HEAD"])?.trim().to_string();
    Ok((src.display().to_string(), rev))
}

/// The first step script of Task `task`, with its params (defaults, then `params`) and result
/// paths substituted as Tekton would.
fn script(
    task: &str,
    params: &BTreeMap<&str, String>,
    results: &Path,
) -> anyhow::Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(repo_dir().join("examples/evip/tasks.yaml"))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)?;
        if v["metadata"]["name"] != task {
            continue;
        }
        let mut s = v["spec"]["steps"][0]["script"]
            .as_str()
            .context("no script")?
            .to_string();
        for p in v["spec"]["params"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default();
            let value = params
                .get(name)
                .cloned()
                .or_else(|| p["default"].as_str().map(str::to_string));
            if let Some(value) = value {
                s = s.replace(&format!("$(params.{name})"), &value);
            }
        }
        let names: Vec<String> = v["spec"]["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect();
        for r in &names {
            s = s.replace(
                &format!("$(results.{r}.path)"),
                &results.join(r).display().to_string(),
            );
        }
        ensure!(
            !s.contains("$("),
            "unsubstituted Tekton variable in {task}: {s}"
        );
        return Ok((s, names));
    }
    bail!("Task {task} not in examples/evip/tasks.yaml")
}

use serde::Deserialize;

/// Runs `task`'s script for the stage `stage` and judges what it wrote with the example pipeline.
fn run_stage(
    work: &Path,
    venv: &Path,
    task: &str,
    stage: &str,
    source: &(String, String),
) -> anyhow::Result<sluice::gates::GateVerdict> {
    let results = work.join(format!("results-{stage}"));
    std::fs::create_dir_all(&results)?;
    let mut params = BTreeMap::from([
        ("SOURCE_URL", source.0.clone()),
        ("SOURCE_REVISION", source.1.clone()),
    ]);
    params.insert("ADVISORY_DB", advisory_db().display().to_string());
    params.insert("args", "-q".into());
    let (body, names) = script(task, &params, &results)?;
    // Each stage clones into /tmp/src as the Tasks do in their own container; here they take turns.
    let _ = std::fs::remove_dir_all("/tmp/src");
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&body)
        .current_dir(work)
        .env("PATH", path)
        .env("VIRTUAL_ENV", venv)
        .env("ADVISORY_DB", advisory_db())
        .output()?;
    eprintln!(
        "--- {task} ({stage}) exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome = if out.status.success() {
        RunOutcome::Succeeded
    } else {
        RunOutcome::Failed {
            reason: "Failed".into(),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let values = names
        .iter()
        .filter_map(|n| {
            std::fs::read_to_string(results.join(n))
                .ok()
                .map(|v| (n.clone(), Value::String(v)))
        })
        .collect();
    let pipeline: SecurePipeline = serde_yaml::from_str(&std::fs::read_to_string(
        repo_dir().join("examples/evip/pipeline.yaml"),
    )?)?;
    let stage = pipeline
        .spec
        .stages
        .iter()
        .find(|s| s.name == stage)
        .context("stage")?;
    let ctx = GateContext {
        exceptions: &pipeline.spec.exceptions,
        today: jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date(),
        repository: &pipeline.spec.image.repository,
    };
    Ok(judge(stage, &outcome, &StageResults::new(values), ctx))
}

fn workdir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluice-tasks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

// Both tests clone into /tmp/src like the Tasks do: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_example_app_passes_its_tests_audit_and_sast_gates() -> anyhow::Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = venv()?;
    let work = workdir("clean")?;
    let src = source(&work, None)?;

    let tests = run_stage(&work, &venv, "pytest", "unit-tests", &src)?;
    assert_eq!(tests.verdict, Verdict::Passed, "{}", tests.reason);
    let counts = tests.tests.expect("test counts");
    assert!(counts.successes >= 8, "{counts:?}");
    assert_eq!(counts.failures, 0);

    let audit = run_stage(&work, &venv, "pypa-audit", "dependency-audit", &src)?;
    assert_eq!(audit.verdict, Verdict::Passed, "{}", audit.reason);
    let sast = run_stage(&work, &venv, "bandit", "sast", &src)?;
    assert_eq!(sast.verdict, Verdict::Passed, "{}", sast.reason);
    assert_eq!(sast.findings.expect("findings").high, 0);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[test]
fn the_vulnerable_variant_is_blocked_by_the_audit_and_sast_findings() -> anyhow::Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = venv()?;
    let work = workdir("vulnerable")?;
    let src = source(&work, Some("examples/evip/vulnerable"))?;

    let audit = run_stage(&work, &venv, "pypa-audit", "dependency-audit", &src)?;
    assert_eq!(audit.verdict, Verdict::Blocked, "{}", audit.reason);
    assert_eq!(audit.category, "FindingsOverLimit");
    let findings = audit.findings.expect("findings");
    assert!(
        findings.critical + findings.high + findings.unknown >= 2,
        "{findings:?}"
    );

    let sast = run_stage(&work, &venv, "bandit", "sast", &src)?;
    assert_eq!(sast.verdict, Verdict::Blocked, "{}", sast.reason);
    assert!(sast.findings.expect("findings").high >= 1);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
